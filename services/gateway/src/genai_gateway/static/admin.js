// The admin console: users, usage, other users' dialogs (every read is audited by the server), the
// audit log. The page hides itself from anyone who is not an admin, but that is a courtesy: the
// gateway answers 403 to every admin call from a plain user whatever a page does.

import * as api from "./api.js";
import { applyI18n, has, languageSelect, onLangChange, t } from "./i18n.js";
import { initTelegramAdmin } from "./admin-telegram.js";
import { renderMarkdown } from "./markdown.js";
import {
  confirmDialog,
  copyButton,
  el,
  errorText,
  formatNumber,
  formatTime,
  formDialog,
  showMessage,
  whoText,
} from "./ui.js";

const $ = (id) => document.getElementById(id);
const LIMIT_FIELDS = ["requests_per_minute", "tokens_per_minute", "concurrent_requests", "tokens_per_day"];

const state = {
  me: null,
  users: [],
  usersCursor: null,
  usage: { rows: [], cursor: null, params: null },
  dialogs: { rows: [], cursor: null, owner: "" },
  audit: { events: [], cursor: null },
  dialog: null,
};

function showError(err) {
  if (err instanceof api.ApiError && err.status === 401) return;
  showMessage($("error"), errorText(err));
}

function clearError() {
  showMessage($("error"), "");
}

function notice(text) {
  showMessage($("notice"), text, "notice");
  clearTimeout(notice.timer);
  notice.timer = setTimeout(() => showMessage($("notice"), "", "notice"), 6000);
}

function deny(messageKey) {
  $("console").hidden = true;
  $("denied").hidden = false;
  $("denied-title").textContent = t(messageKey);
  $("denied-title").dataset.i18n = messageKey;
  $("denied-link").hidden = messageKey === "adminOnly";
  $("logout").hidden = !state.me;
}

function usernameOf(id) {
  if (!id) return "—";
  const user = state.users.find((u) => u.id === id);
  return user ? user.username : id;
}

function isoDay(date) {
  return date.toISOString().slice(0, 10);
}

// --- users ------------------------------------------------------------------------------------------

function limitsText(limits) {
  const entries = Object.entries(limits || {});
  if (!entries.length) return t("limitsDefault");
  return entries.map(([key, value]) => `${t(key)}: ${value === -1 ? "∞" : formatNumber(value)}`).join("; ");
}

// Where the user comes from; for a directory user, the mapped groups (their CN, the whole DN on hover)
// that gave the role and limits.
function sourceCell(user) {
  if (user.source !== "ldap") return el("td", { text: t("sourceLocal") });
  const groups = user.directory_groups || [];
  const names = groups.map((dn) => {
    const first = dn.split(",")[0];
    return first.includes("=") ? first.slice(first.indexOf("=") + 1) : dn;
  });
  return el(
    "td",
    { class: "source-directory", title: `${t("directoryRoleHint")} ${groups.join("; ") || "—"}` },
    el("strong", { text: t("sourceDirectory") }),
    el("div", { class: "hint", text: names.join(", ") || t("directoryGroupsNone") }),
  );
}

function userRow(user) {
  const fromDirectory = user.source === "ldap";
  const toggle = el("button", {
    type: "button",
    class: user.disabled ? "small" : "small danger",
    text: user.disabled ? t("enable") : t("disable"),
    "aria-label": t(user.disabled ? "enableAria" : "disableAria", { username: user.username }),
    // An admin cannot lock themselves out from here (auth refuses it too).
    disabled: state.me && user.id === state.me.id,
  });
  toggle.addEventListener("click", () => setDisabled(user, !user.disabled));
  const limits = el("button", {
    type: "button",
    class: "small secondary",
    text: t("editLimits"),
    "aria-label": t("editLimitsAria", { username: user.username }),
  });
  limits.addEventListener("click", () => editLimits(user));
  const reset = el("button", {
    type: "button",
    class: "small secondary",
    text: t("resetPassword"),
    "aria-label": t("resetPasswordAria", { username: user.username }),
    // The directory keeps a directory user's password (auth refuses a reset too).
    disabled: fromDirectory,
  });
  reset.addEventListener("click", () => resetPassword(user));
  const role = el(
    "select",
    {
      class: "role-select",
      "aria-label": t("roleAria", { username: user.username }),
      // An admin cannot demote themselves (auth refuses it too), so that an admin always remains; a
      // directory user's role comes from their groups.
      disabled: (state.me && user.id === state.me.id) || fromDirectory,
    },
    el("option", { value: "user", text: t("roleUser") }),
    el("option", { value: "admin", text: t("roleAdmin") }),
  );
  role.value = user.role;
  role.addEventListener("change", () => setRole(user, role.value));
  return el(
    "tr",
    { dataset: { username: user.username } },
    el("td", { text: user.username }),
    el("td", {}, role),
    sourceCell(user),
    el("td", {
      class: user.disabled ? "status-disabled" : "",
      text: user.disabled ? t("disabled") : t("active"),
    }),
    // What applies: the groups' limits with the admin's overrides laid over them.
    el("td", { text: limitsText({ ...(user.directory_limits || {}), ...user.limits }) }),
    el("td", { text: formatTime(user.created_at * 1000) }),
    el("td", {}, el("div", { class: "row" }, toggle, limits, reset)),
  );
}

function renderUsers() {
  $("users-table").tBodies[0].replaceChildren(...state.users.map(userRow));
  $("users-more").hidden = !state.usersCursor;
  for (const select of document.querySelectorAll(".owner-select")) {
    const value = select.value;
    select.replaceChildren(
      el("option", { value: "", text: t("allUsers") }),
      ...state.users.map((u) => el("option", { value: u.id, text: u.username })),
    );
    select.value = value;
  }
}

async function loadUsers({ more = false } = {}) {
  try {
    const page = await api.json(`/api/v1/users${api.query({ limit: 200, cursor: more ? state.usersCursor : "" })}`);
    state.users = more ? state.users.concat(page.users) : page.users;
    state.usersCursor = page.next_cursor;
    renderUsers();
  } catch (err) {
    showError(err);
  }
}

async function createUser(event) {
  event.preventDefault();
  clearError();
  const username = $("new-username").value.trim();
  const role = $("new-role").value;
  $("password-once").hidden = true;
  try {
    // No password sent: the server generates one and returns it this once.
    const created = await api.json("/api/v1/users", { method: "POST", body: { username, role } });
    $("new-username").value = "";
    if (created.password) showPasswordOnce(created.username, created.password);
    notice(t("userCreated", { username: created.username }));
    await loadUsers();
  } catch (err) {
    showError(err);
  }
}

async function setDisabled(user, disabled) {
  clearError();
  try {
    await api.json(`/api/v1/users/${encodeURIComponent(user.username)}`, { method: "PATCH", body: { disabled } });
    notice(t("userUpdated", { username: user.username }));
    await loadUsers();
  } catch (err) {
    showError(err);
  }
}

async function setRole(user, role) {
  clearError();
  try {
    await api.json(`/api/v1/users/${encodeURIComponent(user.username)}`, { method: "PATCH", body: { role } });
    notice(t("userUpdated", { username: user.username }));
  } catch (err) {
    showError(err);
  }
  // Also after a refusal, so that the select shows the role actually stored.
  await loadUsers();
}

function showPasswordOnce(username, password) {
  $("password-label").textContent = t("passwordOnce", { username });
  $("password-value").textContent = password;
  $("password-once").hidden = false;
  // The box sits by the create form; a reset is started further down the table.
  $("password-once").scrollIntoView({ block: "nearest" });
}

async function resetPassword(user) {
  const ok = await confirmDialog(
    t("resetPasswordTitle", { username: user.username }),
    t("resetPasswordText"),
    t("resetPassword"),
  );
  if (!ok) return;
  clearError();
  $("password-once").hidden = true;
  try {
    // No password sent: the server generates one and returns it this once.
    const reset = await api.json(`/api/v1/users/${encodeURIComponent(user.username)}/password`, {
      method: "POST",
      body: {},
    });
    if (reset.password) showPasswordOnce(reset.username, reset.password);
    notice(t("passwordReset", { username: reset.username }));
  } catch (err) {
    showError(err);
  }
}

async function editLimits(user) {
  const inputs = {};
  const nodes = [el("p", { class: "hint", text: t("limitsHint") })];
  for (const field of LIMIT_FIELDS) {
    const input = el("input", { id: `limit-${field}`, type: "number", min: "-1", step: "1", inputmode: "numeric" });
    if (user.limits && field in user.limits) input.value = String(user.limits[field]);
    inputs[field] = input;
    nodes.push(el("div", {}, el("label", { for: input.id, text: t(field) }), input));
  }
  const ok = await formDialog(t("limitsFor", { username: user.username }), nodes);
  if (!ok) return;
  const limits = {};
  for (const field of LIMIT_FIELDS) {
    const raw = inputs[field].value.trim();
    if (raw !== "") limits[field] = Number(raw);
  }
  clearError();
  try {
    await api.json(`/api/v1/users/${encodeURIComponent(user.username)}`, { method: "PATCH", body: { limits } });
    notice(t("userUpdated", { username: user.username }));
    await loadUsers();
  } catch (err) {
    showError(err);
  }
}

// --- usage ------------------------------------------------------------------------------------------

function renderUsage() {
  const rows = state.usage.rows.map((row) =>
    el(
      "tr",
      {},
      el("td", { text: row.day }),
      el("td", { text: usernameOf(row.owner_id) }),
      el("td", { class: "num", text: formatNumber(row.requests) }),
      el("td", { class: "num", text: formatNumber(row.prompt_tokens) }),
      el("td", { class: "num", text: formatNumber(row.completion_tokens) }),
      el("td", { class: "num", text: formatNumber(row.cache_hits) }),
    ),
  );
  $("usage-table").tBodies[0].replaceChildren(...rows);
  $("usage-empty").hidden = rows.length > 0;
  $("usage-more").hidden = !state.usage.cursor;
}

async function loadUsage({ more = false } = {}) {
  clearError();
  const params = more
    ? state.usage.params
    : { from: $("usage-from").value, to: $("usage-to").value, owner: $("usage-owner").value };
  try {
    const page = await api.json(
      `/api/v1/admin/usage${api.query({ ...params, limit: 500, cursor: more ? state.usage.cursor : "" })}`,
    );
    state.usage = {
      rows: more ? state.usage.rows.concat(page.rows) : page.rows,
      cursor: page.next_cursor,
      params,
    };
    renderUsage();
  } catch (err) {
    showError(err);
  }
}

// --- dialogs of users ----------------------------------------------------------------------------------

function renderDialogs() {
  const rows = state.dialogs.rows.map((c) => {
    const title = c.title || t("untitled");
    const open = el("button", {
      type: "button",
      class: "small secondary",
      text: t("open"),
      "aria-label": t("openAria", { title }),
    });
    open.addEventListener("click", () => openDialog(c.id));
    return el(
      "tr",
      { dataset: { conversationId: c.id } },
      el("td", { text: title }),
      el("td", { text: usernameOf(c.owner_id) }),
      el("td", { text: formatTime(c.updated_at_ms) }),
      el("td", { class: "num", text: formatNumber(c.message_count) }),
      el("td", {}, open),
    );
  });
  $("dialogs-table").hidden = false;
  $("dialogs-table").tBodies[0].replaceChildren(...rows);
  $("dialogs-empty").hidden = rows.length > 0;
  $("dialogs-more").hidden = !state.dialogs.cursor;
}

async function loadDialogs({ more = false } = {}) {
  clearError();
  const owner = more ? state.dialogs.owner : $("dialogs-owner").value;
  try {
    const page = await api.json(
      `/api/v1/admin/conversations${api.query({ owner, limit: 20, cursor: more ? state.dialogs.cursor : "" })}`,
    );
    state.dialogs = {
      rows: more ? state.dialogs.rows.concat(page.conversations) : page.conversations,
      cursor: page.next_cursor,
      owner,
    };
    renderDialogs();
  } catch (err) {
    showError(err);
  }
}

function renderDialog() {
  const dialog = state.dialog;
  if (!dialog) return;
  $("dialog-view").hidden = false;
  $("dialog-view-title").textContent = t("dialogOf", {
    title: dialog.title || t("untitled"),
    owner: usernameOf(dialog.owner_id),
  });
  const nodes = [];
  for (const message of dialog.messages) {
    const prompt = el("div", { class: "msg-body md" });
    prompt.appendChild(renderMarkdown(message.prompt));
    const answer = el("div", { class: "msg-body md" });
    answer.appendChild(renderMarkdown(message.response));
    const meta = [message.model, formatTime(message.created_at_ms)].filter(Boolean).join(" · ");
    nodes.push(
      el("div", { class: "msg user" }, el("div", { class: "msg-head" }, el("span", { class: "who", text: t("you") })), prompt),
      el(
        "div",
        { class: "msg assistant" },
        el(
          "div",
          { class: "msg-head" },
          el("span", { class: "who", text: t("assistant") }),
          message.source === "cache" ? el("span", { class: "badge cache", text: t("fromCache") }) : null,
          el("span", { class: "meta", text: meta }),
        ),
        answer,
      ),
    );
  }
  $("dialog-messages").replaceChildren(...nodes);
}

async function openDialog(id) {
  clearError();
  try {
    state.dialog = await api.json(`/api/v1/admin/conversations/${encodeURIComponent(id)}`);
    renderDialog();
    $("dialog-view").scrollIntoView({ block: "start" });
    // The read was just audited: show it.
    await loadAudit();
  } catch (err) {
    showError(err);
  }
}

// --- audit ------------------------------------------------------------------------------------------

function actionText(action) {
  const key = `action_${action}`;
  return has(key) ? t(key) : action;
}

function renderAudit() {
  const rows = state.audit.events.map((event) =>
    el(
      "tr",
      { dataset: { action: event.action } },
      el("td", {}, el("time", { datetime: event.at, text: formatTime(event.at_ms) })),
      el("td", { text: event.actor_username || event.actor_id }),
      el("td", { text: actionText(event.action) }),
      el("td", { text: usernameOf(event.target_owner_id) }),
      el("td", { class: "mono", text: event.target_conversation_id || "—" }),
      el("td", { class: "mono", text: event.request_id || "—" }),
    ),
  );
  $("audit-table").tBodies[0].replaceChildren(...rows);
  $("audit-empty").hidden = rows.length > 0;
  $("audit-more").hidden = !state.audit.cursor;
}

async function loadAudit({ more = false } = {}) {
  try {
    const page = await api.json(`/api/v1/admin/audit${api.query({ limit: 50, cursor: more ? state.audit.cursor : "" })}`);
    state.audit = {
      events: more ? state.audit.events.concat(page.events) : page.events,
      cursor: page.next_cursor,
    };
    renderAudit();
  } catch (err) {
    showError(err);
  }
}

// --- start ------------------------------------------------------------------------------------------

function renderAll() {
  if (state.me) $("whoami").textContent = whoText(state.me);
  renderUsers();
  renderUsage();
  if (state.dialogs.rows.length || !$("dialogs-table").hidden) renderDialogs();
  renderDialog();
  renderAudit();
}

function wire() {
  languageSelect($("lang"));
  applyI18n();
  onLangChange(() => {
    if (!$("denied").hidden) $("denied-title").textContent = t($("denied-title").dataset.i18n);
    if (!$("console").hidden) renderAll();
  });
  $("create-form").addEventListener("submit", createUser);
  const copyPassword = copyButton("copyPassword", () => $("password-value").textContent);
  copyPassword.id = "password-copy";
  $("password-copy").replaceWith(copyPassword);
  $("users-more").addEventListener("click", () => loadUsers({ more: true }));
  $("usage-form").addEventListener("submit", (event) => {
    event.preventDefault();
    loadUsage();
  });
  $("usage-more").addEventListener("click", () => loadUsage({ more: true }));
  $("dialogs-form").addEventListener("submit", (event) => {
    event.preventDefault();
    loadDialogs();
  });
  $("dialogs-more").addEventListener("click", () => loadDialogs({ more: true }));
  $("audit-refresh").addEventListener("click", () => loadAudit());
  $("audit-more").addEventListener("click", () => loadAudit({ more: true }));
  $("logout").addEventListener("click", async () => {
    await api.logout();
    location.assign("/");
  });
  window.addEventListener("genai:session-ended", () => {
    state.me = null;
    deny("notSignedIn");
  });

  const today = new Date();
  const weekAgo = new Date(today.getTime() - 6 * 86_400_000);
  $("usage-from").value = isoDay(weekAgo);
  $("usage-to").value = isoDay(today);
}

async function boot() {
  wire();
  if (!api.session()) {
    deny("notSignedIn");
    return;
  }
  try {
    state.me = await api.resume();
  } catch (err) {
    deny("notSignedIn");
    if (!(err instanceof api.ApiError && err.status === 401)) showError(err);
    return;
  }
  $("whoami").textContent = whoText(state.me);
  $("whoami").hidden = false;
  $("logout").hidden = false;
  if (state.me.role !== "admin") {
    deny("adminOnly");
    return;
  }
  $("console").hidden = false;
  await loadUsers();
  await Promise.all([loadUsage(), loadAudit(), initTelegramAdmin()]);
}

boot();
