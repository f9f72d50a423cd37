// Minimal chat page. Model output is only ever put into the page with textContent, never as HTML.

const $ = (id) => document.getElementById(id);
const TOKEN_KEY = "genai.access_token";

function showError(message) {
  const box = $("error");
  box.textContent = message;
  box.hidden = !message;
}

function showView(loggedIn) {
  $("login-view").hidden = loggedIn;
  $("chat-view").hidden = !loggedIn;
}

async function api(path, options = {}) {
  const token = sessionStorage.getItem(TOKEN_KEY);
  const headers = { "Content-Type": "application/json", ...(options.headers || {}) };
  if (token) headers.Authorization = `Bearer ${token}`;
  const response = await fetch(path, { ...options, headers });
  let body = null;
  try {
    body = await response.json();
  } catch {
    body = null;
  }
  if (!response.ok) {
    const message = (body && (body.detail || (body.error && body.error.message))) || response.statusText;
    if (response.status === 401 && token) {
      sessionStorage.removeItem(TOKEN_KEY);
      showView(false);
    }
    const retry = response.headers.get("Retry-After");
    throw new Error(retry && response.status === 429 ? `${message}` : message);
  }
  return body;
}

async function loadMe() {
  const me = await api("/api/v1/me");
  $("whoami").textContent = `${me.username} (${me.role})`;
  showView(true);
}

$("login-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  showError("");
  try {
    const body = await api("/token", {
      method: "POST",
      body: JSON.stringify({ username: $("username").value, password: $("password").value }),
    });
    sessionStorage.setItem(TOKEN_KEY, body.access_token);
    $("password").value = "";
    await loadMe();
  } catch (err) {
    showError(`Ошибка входа: ${err.message}`);
  }
});

$("logout").addEventListener("click", async () => {
  try {
    await api("/api/v1/auth/logout", { method: "POST" });
  } catch {
    // The session ends on this side regardless.
  }
  sessionStorage.removeItem(TOKEN_KEY);
  showView(false);
});

$("ask-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  const prompt = $("prompt").value.trim();
  if (!prompt) return;
  showError("");
  const button = $("ask-button");
  button.disabled = true;
  $("answer").hidden = false;
  $("answer-text").textContent = "Генерация…";
  $("answer-source").textContent = "";
  try {
    const body = await api("/ask", { method: "POST", body: JSON.stringify({ prompt }) });
    $("answer-text").textContent = body.response;
    $("answer-source").textContent = body.source === "cache" ? "источник: кэш" : `источник: модель ${body.model}`;
  } catch (err) {
    $("answer").hidden = true;
    showError(`Ошибка: ${err.message}`);
  } finally {
    button.disabled = false;
  }
});

if (sessionStorage.getItem(TOKEN_KEY)) {
  loadMe().catch(() => showView(false));
}
