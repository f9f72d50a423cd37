// The gateway's HTTP API from the browser: tokens, refresh, errors, streamed answers, downloads.
//
// Tokens live in sessionStorage: they survive a reload but not the closing of the tab, and no other
// site can read them. The access token is refreshed shortly before it expires, and once more when a
// call answers 401; if that fails too the session ends and the page goes back to the login form.

const SESSION_KEY = "genai.session";
// Refresh this long before the access token expires (or at 80% of its life, if that is sooner).
const REFRESH_MARGIN_MS = 60_000;

export class ApiError extends Error {
  constructor(status, message, { code = "", type = "", retryAfter = null } = {}) {
    super(message);
    this.name = "ApiError";
    this.status = status;
    this.code = code;
    this.type = type;
    // Seconds to wait, from Retry-After (429 and 503); null when the server said nothing.
    this.retryAfter = retryAfter;
  }
}

// --- the session ----------------------------------------------------------------------------------

export function session() {
  try {
    return JSON.parse(sessionStorage.getItem(SESSION_KEY) || "null");
  } catch {
    return null;
  }
}

function store(value) {
  if (value) sessionStorage.setItem(SESSION_KEY, JSON.stringify(value));
  else sessionStorage.removeItem(SESSION_KEY);
}

function fromTokenPair(pair, previous = {}) {
  const lifetimeMs = Math.max(1, Number(pair.expires_in) || 0) * 1000;
  return {
    ...previous,
    access_token: pair.access_token,
    refresh_token: pair.refresh_token || previous.refresh_token,
    role: pair.role || previous.role,
    issued_at: Date.now(),
    expires_at: Date.now() + lifetimeMs,
  };
}

let refreshTimer = null;
let refreshing = null;

function scheduleRefresh() {
  clearTimeout(refreshTimer);
  const current = session();
  if (!current || !current.refresh_token) return;
  const lifetime = current.expires_at - current.issued_at;
  const margin = Math.min(REFRESH_MARGIN_MS, lifetime * 0.2);
  const wait = Math.max(1_000, current.expires_at - margin - Date.now());
  refreshTimer = setTimeout(() => {
    refresh().catch(() => {
      // refresh() has already ended the session when the server refused.
    });
  }, wait);
}

/** Ends the session on this side and tells the page (which shows the login form). */
export function endSession(reason = "expired") {
  clearTimeout(refreshTimer);
  store(null);
  window.dispatchEvent(new CustomEvent("genai:session-ended", { detail: { reason } }));
}

/** A new token pair from the refresh token; one refresh at a time however many calls need it. */
export function refresh() {
  if (refreshing) return refreshing;
  const current = session();
  if (!current || !current.refresh_token) {
    endSession();
    return Promise.reject(new ApiError(401, "not signed in"));
  }
  refreshing = (async () => {
    try {
      const response = await fetch("/api/v1/auth/refresh", {
        method: "POST",
        headers: { "Content-Type": "application/json" },
        body: JSON.stringify({ refresh_token: current.refresh_token }),
      });
      if (!response.ok) {
        const error = await errorFrom(response);
        // Only a refusal ends the session; a passing outage (503) leaves it for the next try.
        if (response.status === 401 || response.status === 403) endSession();
        throw error;
      }
      store(fromTokenPair(await response.json(), session() || current));
      scheduleRefresh();
    } finally {
      refreshing = null;
    }
  })();
  return refreshing;
}

export async function login(username, password) {
  const response = await fetch("/token", {
    method: "POST",
    headers: { "Content-Type": "application/json" },
    body: JSON.stringify({ username, password }),
  });
  if (!response.ok) throw await errorFrom(response);
  store(fromTokenPair(await response.json(), { username }));
  scheduleRefresh();
  const me = await json("/api/v1/me");
  store({ ...session(), username: me.username, role: me.role, user_id: me.id });
  return me;
}

export async function logout() {
  const current = session();
  clearTimeout(refreshTimer);
  if (current) {
    try {
      await fetch("/api/v1/auth/logout", {
        method: "POST",
        headers: { "Content-Type": "application/json", Authorization: `Bearer ${current.access_token}` },
        body: JSON.stringify({ refresh_token: current.refresh_token || "" }),
      });
    } catch {
      // The session ends on this side whatever the server says.
    }
  }
  store(null);
}

/** Call on page load: resumes the refresh schedule of a session kept in this tab. */
export async function resume() {
  const current = session();
  if (!current) return null;
  if (current.expires_at - Date.now() < 30_000) await refresh();
  else scheduleRefresh();
  const me = await json("/api/v1/me");
  store({ ...session(), username: me.username, role: me.role, user_id: me.id });
  return me;
}

// --- calls ----------------------------------------------------------------------------------------

function retryAfterSeconds(response) {
  const value = response.headers.get("Retry-After");
  if (!value) return null;
  if (/^\d+$/.test(value.trim())) return Number(value.trim());
  const when = Date.parse(value);
  return Number.isNaN(when) ? null : Math.max(0, Math.ceil((when - Date.now()) / 1000));
}

/** The API's one error shape, {"error": {"message", "type", "code"}, "detail"}, as an ApiError. */
export async function errorFrom(response) {
  let body = null;
  try {
    body = await response.json();
  } catch {
    body = null;
  }
  const error = (body && body.error) || {};
  let message = error.message || (body && typeof body.detail === "string" ? body.detail : "");
  if (!message) message = response.statusText || `HTTP ${response.status}`;
  return new ApiError(response.status, message, {
    code: error.code || "",
    type: error.type || "",
    retryAfter: retryAfterSeconds(response),
  });
}

async function authorised(path, init, retried = false) {
  const current = session();
  if (!current) {
    endSession();
    throw new ApiError(401, "not signed in");
  }
  if (current.expires_at - Date.now() < 30_000 && !retried) {
    try {
      await refresh();
    } catch (err) {
      if (err instanceof ApiError && err.status === 401) throw err;
      // Otherwise try with the token we have: it may still be valid.
    }
  }
  const token = (session() || current).access_token;
  const headers = new Headers(init.headers || {});
  headers.set("Authorization", `Bearer ${token}`);
  let response;
  try {
    response = await fetch(path, { ...init, headers });
  } catch (err) {
    if (err && err.name === "AbortError") throw err;
    throw new ApiError(0, "network error", { code: "network" });
  }
  if (response.status === 401) {
    if (!retried) {
      await refresh();
      return authorised(path, init, true);
    }
    endSession();
  }
  if (!response.ok) throw await errorFrom(response);
  return response;
}

/** A call with the session's token; the Response on success, an ApiError otherwise. */
export function call(path, { method = "GET", body, headers = {}, signal } = {}) {
  const init = { method, headers: { ...headers }, signal };
  if (body !== undefined) {
    init.headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  return authorised(path, init);
}

/** A call whose answer is JSON (or nothing, for 204). */
export async function json(path, options = {}) {
  const response = await call(path, options);
  if (response.status === 204) return null;
  return response.json();
}

export function query(params) {
  const search = new URLSearchParams();
  for (const [key, value] of Object.entries(params)) {
    if (value !== undefined && value !== null && value !== "") search.set(key, String(value));
  }
  const text = search.toString();
  return text ? `?${text}` : "";
}

// --- streamed answers -----------------------------------------------------------------------------

// An error inside a stream has no HTTP status of its own: its type says which one it stands for.
const TYPE_STATUS = {
  invalid_request_error: 400,
  authentication_error: 401,
  permission_error: 403,
  not_found_error: 404,
  conflict_error: 409,
  rate_limit_error: 429,
  internal_error: 500,
  service_unavailable: 503,
  timeout_error: 504,
};

/** Server-sent events from a response body: each `data:` payload parsed as JSON, until [DONE]. */
export async function* sseEvents(body) {
  const reader = body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  try {
    for (;;) {
      const { value, done } = await reader.read();
      if (done) return;
      buffer += value.replace(/\r\n?/g, "\n");
      let end;
      while ((end = buffer.indexOf("\n\n")) >= 0) {
        const block = buffer.slice(0, end);
        buffer = buffer.slice(end + 2);
        const data = block
          .split("\n")
          .filter((line) => line.startsWith("data:"))
          .map((line) => line.slice(5).replace(/^ /, ""))
          .join("\n");
        // Comments (": keep-alive") carry no data.
        if (!data) continue;
        if (data === "[DONE]") return;
        yield JSON.parse(data);
      }
    }
  } finally {
    reader.releaseLock();
  }
}

/**
 * POST /ask with stream=true. Yields {type: "queued"|"delta"|"done"} events; an error event is thrown
 * as an ApiError. Aborting `signal` cancels the request, and with it the generation on the server.
 * `regenerate` sends Cache-Control: no-cache, so the model answers again instead of the cache.
 * `origin` ("chat" or "api") says where a new conversation belongs; the server takes "api" without it.
 */
export async function* ask({
  prompt,
  conversationId = null,
  origin = null,
  regenerate = false,
  maxTokens = null,
  signal,
}) {
  const headers = { Accept: "text/event-stream" };
  if (regenerate) headers["Cache-Control"] = "no-cache";
  const body = { prompt, stream: true };
  if (conversationId) body.conversation_id = conversationId;
  if (origin) body.origin = origin;
  if (maxTokens) body.max_tokens = maxTokens;
  const response = await call("/ask", { method: "POST", body, headers, signal });
  for await (const event of sseEvents(response.body)) {
    if (event.type === "error") {
      const error = event.error || {};
      const status = /^\d{3}$/.test(String(error.code)) ? Number(error.code) : TYPE_STATUS[error.type] || 500;
      throw new ApiError(status, error.message || event.detail || "error", {
        code: String(error.code || ""),
        type: error.type || "",
      });
    }
    yield event;
  }
}

// --- downloads ------------------------------------------------------------------------------------

function filenameFrom(response, fallback) {
  const disposition = response.headers.get("Content-Disposition") || "";
  const star = /filename\*\s*=\s*UTF-8''([^;]+)/i.exec(disposition);
  if (star) {
    try {
      return decodeURIComponent(star[1].trim());
    } catch {
      // fall through to the plain form
    }
  }
  const plain = /filename\s*=\s*"?([^";]+)"?/i.exec(disposition);
  return plain ? plain[1].trim() : fallback;
}

/** Fetches a file with the session's token and hands it to the browser as a download. */
export async function download(path, fallbackName) {
  const response = await call(path);
  const blob = await response.blob();
  const name = filenameFrom(response, fallbackName);
  const url = URL.createObjectURL(blob);
  const link = document.createElement("a");
  link.href = url;
  link.download = name;
  link.hidden = true;
  document.body.appendChild(link);
  link.click();
  link.remove();
  // Late enough for the browser to have started reading the blob.
  setTimeout(() => URL.revokeObjectURL(url), 60_000);
  return name;
}
