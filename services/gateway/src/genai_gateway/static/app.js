// The chat page: sign-in, the conversation list with search, the chat with streamed answers, exports.
// The list shows the page's own dialogs (origin "chat"); conversations that scripts started through the
// API without naming one (origin "api") are listed apart, behind the "API calls" switch.
// Model output and everything else users wrote reach the page only through markdown.js (DOM nodes
// made with createElement, text with createTextNode) or textContent: never as HTML.

import * as api from "./api.js";
import { applyI18n, languageSelect, onLangChange, t } from "./i18n.js";
import { renderMarkdown } from "./markdown.js";
import { initTelegram, resetTelegram } from "./telegram.js";
import {
  confirmDialog,
  copyButton,
  el,
  errorText,
  formatNumber,
  formatTime,
  promptDialog,
  showMessage,
  whoText,
} from "./ui.js";

const $ = (id) => document.getElementById(id);
const PAGE_SIZE = 20;

const state = {
  me: null,
  conversationId: null,
  title: "",
  // {prompt, response, source, model, usage, finish_reason, latency_ms, id, pending, queued, error}
  messages: [],
  list: [],
  listCursor: null,
  origin: "chat", // which conversations the list shows: "chat" or "api"
  search: null, // {query, hits, cursor} while search results are shown
  streaming: null, // {controller, message}
  lastPrompt: null,
};

// --- messages and views --------------------------------------------------------------------------

function clearError() {
  showMessage($("error"), "");
}

function showError(err) {
  if (err instanceof api.ApiError && err.status === 401) return; // the login form says it
  showMessage($("error"), errorText(err));
}

function notice(text) {
  showMessage($("notice"), text, "notice");
  clearTimeout(notice.timer);
  notice.timer = setTimeout(() => showMessage($("notice"), "", "notice"), 5000);
}

function announce(text) {
  $("stream-status").textContent = text;
}

function showLogin(message = "", kind = "error") {
  state.me = null;
  resetTelegram();
  $("login-view").hidden = false;
  $("chat-view").hidden = true;
  $("sidebar").hidden = true;
  $("sidebar-toggle").hidden = true;
  $("whoami").hidden = true;
  $("logout").hidden = true;
  $("admin-link").hidden = true;
  showMessage($("error"), kind === "error" ? message : "");
  if (kind !== "error") notice(message);
  $("username").focus();
}

function showChat(me) {
  state.me = me;
  clearError();
  $("login-view").hidden = true;
  $("chat-view").hidden = false;
  $("sidebar").hidden = false;
  $("sidebar-toggle").hidden = false;
  $("whoami").hidden = false;
  $("whoami").textContent = whoText(me);
  $("logout").hidden = false;
  // Only a convenience: the admin API refuses everyone else whatever the page shows.
  $("admin-link").hidden = me.role !== "admin";
}

function resetChat({ keepHash = false } = {}) {
  if (state.streaming) state.streaming.controller.abort();
  state.conversationId = null;
  state.title = "";
  state.messages = [];
  state.lastPrompt = null;
  if (!keepHash) setHash(null);
  renderChat();
  if (!state.search) renderList(); // no conversation is the current one any more
}

/** The open conversation is kept in the address (#c=<id>): a reload or a bookmark opens it again. */
function setHash(id) {
  history.replaceState(null, "", id ? `#c=${encodeURIComponent(id)}` : location.pathname + location.search);
}

function hashConversation() {
  const match = /^#c=([\w-]{1,64})$/.exec(location.hash);
  return match ? match[1] : null;
}

// --- rendering of one exchange ---------------------------------------------------------------------

function decorateCode(body) {
  for (const pre of body.querySelectorAll("pre")) {
    const code = pre.querySelector("code");
    const label = pre.dataset.language || t("code");
    const head = el(
      "div",
      { class: "code-head" },
      el("span", { class: "code-lang", text: label }),
      copyButton("copyCode", () => (code ? code.textContent : pre.textContent)),
    );
    pre.before(head);
  }
}

function renderBody(body, text) {
  body.replaceChildren(renderMarkdown(text));
  decorateCode(body);
}

function metaParts(message) {
  const parts = [];
  if (message.model) parts.push(t("model", { model: message.model }));
  if (message.usage && message.usage.total_tokens) parts.push(t("tokens", { n: formatNumber(message.usage.total_tokens) }));
  if (message.latency_ms) parts.push(t("seconds", { s: (message.latency_ms / 1000).toFixed(1) }));
  if (message.finish_reason === "cancelled") parts.push(t("stopped"));
  if (message.finish_reason === "length") parts.push(t("truncated"));
  if (message.created_at_ms) parts.push(formatTime(message.created_at_ms));
  return parts.join(" · ");
}

function userNode(message) {
  const body = el("div", { class: "msg-body md" });
  renderBody(body, message.prompt);
  return el(
    "div",
    { class: "msg user", dataset: { messageId: message.id || "" } },
    el(
      "div",
      { class: "msg-head" },
      el("span", { class: "who", text: t("you") }),
      copyButton("copy", () => message.prompt, t("copyPrompt")),
    ),
    body,
  );
}

function assistantNode(message) {
  const badge = el("span", { class: "badge cache", text: t("fromCache"), title: t("fromCacheTitle") });
  const meta = el("span", { class: "meta" });
  const queue = el("p", { class: "queue", hidden: true });
  const body = el("div", { class: "msg-body md answer" });
  const copy = copyButton("copy", () => message.response, t("copyAnswer"));
  const root = el(
    "div",
    { class: "msg assistant" },
    el("div", { class: "msg-head" }, el("span", { class: "who", text: t("assistant") }), badge, meta, copy),
    queue,
    body,
  );
  const parts = { root, badge, meta, queue, body, copy, rendered: null, frame: 0 };
  updateAssistant(parts, message);
  return parts;
}

function updateAssistant(parts, message) {
  parts.badge.hidden = message.source !== "cache";
  // A similar question's answer says so, and how similar, quietly: Regenerate asks the model.
  const similar = message.source === "cache" && typeof message.similarity === "number";
  const percent = similar ? Math.floor(message.similarity * 100) : 0;
  parts.badge.textContent = similar ? t("fromSimilar", { percent }) : t("fromCache");
  parts.badge.title = similar ? t("fromSimilarTitle", { percent }) : t("fromCacheTitle");
  parts.root.classList.toggle("from-cache", message.source === "cache");
  parts.root.classList.toggle("pending", Boolean(message.pending));
  parts.root.setAttribute("aria-busy", message.pending ? "true" : "false");
  parts.meta.textContent = message.pending ? "" : metaParts(message);
  parts.copy.hidden = Boolean(message.pending) || !message.response;
  if (message.queued && !message.response) {
    parts.queue.hidden = false;
    parts.queue.textContent = t("queued", { position: message.queued });
  } else if (message.pending && !message.response) {
    parts.queue.hidden = false;
    parts.queue.textContent = t("generating");
  } else {
    parts.queue.hidden = true;
  }
  if (parts.rendered !== message.response) {
    parts.rendered = message.response;
    renderBody(parts.body, message.response);
  }
}

/** Re-renders on the next frame: many deltas in one frame cost one render. */
function scheduleUpdate(parts, message) {
  if (parts.frame) return;
  parts.frame = requestAnimationFrame(() => {
    parts.frame = 0;
    updateAssistant(parts, message);
    followBottom();
  });
}

let stickToBottom = true;

// On a wide screen the message list scrolls by itself; on a phone the whole page does.
function scrollsItself(box) {
  return getComputedStyle(box).overflowY === "auto";
}

function followBottom() {
  if (!stickToBottom) return;
  const box = $("messages");
  if (scrollsItself(box)) box.scrollTop = box.scrollHeight;
  else window.scrollTo(0, document.documentElement.scrollHeight);
}

function renderChat() {
  const box = $("messages");
  box.replaceChildren();
  for (const message of state.messages) {
    box.appendChild(userNode(message));
    const parts = assistantNode(message);
    message.parts = parts;
    box.appendChild(parts.root);
  }
  $("empty-chat").hidden = state.messages.length > 0;
  $("chat-title").textContent = state.conversationId ? state.title || t("untitled") : t("newConversation");
  $("chat-actions").hidden = !state.conversationId;
  updateComposer();
  stickToBottom = true;
  followBottom();
}

function updateComposer() {
  const busy = Boolean(state.streaming);
  $("send").disabled = busy;
  $("stop").hidden = !busy;
  $("regenerate").hidden = busy || !state.lastPrompt;
}

// --- asking ---------------------------------------------------------------------------------------

async function send(prompt, { regenerate = false } = {}) {
  if (state.streaming || !prompt.trim()) return;
  clearError();
  // A dialog started here belongs with the dialogs: the list goes back to them, so that it appears there.
  if (!state.conversationId && state.origin !== "chat") {
    await showOrigin("chat");
    if (state.streaming) {
      // Another question went out meanwhile: this one goes back into the box rather than being lost.
      if (!$("prompt").value) $("prompt").value = prompt;
      return;
    }
  }
  const message = { prompt, response: "", source: "", model: "", pending: true, queued: 0 };
  const knownIds = new Set(state.list.map((c) => c.id));
  const startedNew = !state.conversationId;
  state.messages.push(message);
  const box = $("messages");
  const promptNode = userNode(message);
  box.appendChild(promptNode);
  const parts = assistantNode(message);
  message.parts = parts;
  box.appendChild(parts.root);
  $("empty-chat").hidden = true;
  stickToBottom = true;
  followBottom();

  const controller = new AbortController();
  state.streaming = { controller, message };
  state.lastPrompt = prompt;
  updateComposer();
  announce(t("generating"));
  let failed = null;
  try {
    const events = api.ask({
      prompt,
      conversationId: state.conversationId,
      // Only a new conversation takes it; one that goes on keeps where it came from.
      origin: startedNew ? "chat" : null,
      regenerate,
      signal: controller.signal,
    });
    for await (const event of events) {
      if (event.type === "queued") {
        message.queued = event.position;
        announce(t("queued", { position: event.position }));
        updateAssistant(parts, message);
      } else if (event.type === "delta") {
        message.queued = 0;
        message.response += event.text;
        scheduleUpdate(parts, message);
      } else if (event.type === "done") {
        Object.assign(message, {
          response: event.response,
          source: event.source,
          model: event.model,
          usage: event.usage,
          finish_reason: event.finish_reason,
          request_id: event.request_id,
          similarity: event.similarity,
        });
        if (event.conversation_id) adopt(event.conversation_id);
      }
    }
    announce(t("answerReady"));
  } catch (err) {
    if (err && err.name === "AbortError") {
      message.finish_reason = "cancelled";
      announce(t("answerStopped"));
    } else {
      failed = err;
    }
  } finally {
    if (parts.frame) cancelAnimationFrame(parts.frame);
    parts.frame = 0;
    message.pending = false;
    message.queued = 0;
    state.streaming = null;
  }
  if (failed) {
    if (!message.response) {
      // Nothing was answered: take the exchange back and give the question back for another try.
      state.messages.pop();
      promptNode.remove();
      parts.root.remove();
      $("empty-chat").hidden = state.messages.length > 0;
      if (!$("prompt").value) $("prompt").value = prompt;
    }
    showError(failed);
    announce(errorText(failed));
  }
  updateAssistant(parts, message);
  updateComposer();
  followBottom();
  if (message.finish_reason === "cancelled" && startedNew && message.response) {
    // The server keeps what was shown of a stopped answer in a new conversation, but the stream ended
    // before it could say which: the conversation that appeared since is this one.
    for (let attempt = 0; attempt < 6 && !state.conversationId; attempt += 1) {
      await new Promise((resolve) => setTimeout(resolve, 500));
      await loadList();
      const appeared = state.list.find((c) => !knownIds.has(c.id));
      if (appeared && !state.conversationId) adopt(appeared.id);
    }
  }
  await loadList();
}

function adopt(conversationId) {
  if (state.conversationId === conversationId) return;
  state.conversationId = conversationId;
  setHash(conversationId);
  $("chat-actions").hidden = false;
}

// --- conversations ------------------------------------------------------------------------------

function conversationTitle(c) {
  return c.title || c.conversation_title || t("untitled");
}

function syncTitle() {
  const current = state.list.find((c) => c.id === state.conversationId);
  if (current) state.title = current.title;
  $("chat-title").textContent = state.conversationId ? state.title || t("untitled") : t("newConversation");
}

async function loadList({ more = false } = {}) {
  const origin = state.origin;
  try {
    const params = { origin, limit: PAGE_SIZE, cursor: more ? state.listCursor : "" };
    const page = await api.json(`/api/v1/history${api.query(params)}`);
    if (origin !== state.origin) return; // the switch was used meanwhile: a newer load has the list
    state.list = more ? state.list.concat(page.conversations) : page.conversations;
    state.listCursor = page.next_cursor;
  } catch (err) {
    showError(err);
  }
  syncTitle();
  if (!state.search) renderList();
}

function conversationItem(c) {
  const title = conversationTitle(c);
  const open = el(
    "button",
    {
      type: "button",
      class: "conv-open",
      "aria-current": c.id === state.conversationId ? "true" : null,
      dataset: { conversationId: c.id },
    },
    el("span", { class: "conv-title", text: title }),
    el("span", {
      class: "conv-meta",
      text: `${formatTime(c.updated_at_ms)} · ${t("messageCount", { n: c.message_count })}`,
    }),
  );
  open.addEventListener("click", () => openConversation(c.id));
  const rename = el("button", {
    type: "button",
    class: "icon secondary",
    "aria-label": t("renameAria", { title }),
    title: t("rename"),
    text: "✎",
  });
  rename.addEventListener("click", () => renameConversation(c.id, title));
  const remove = el("button", {
    type: "button",
    class: "icon danger-text",
    "aria-label": t("deleteAria", { title }),
    title: t("delete"),
    text: "×",
  });
  remove.addEventListener("click", () => deleteConversation(c.id, title));
  return el("li", { class: "conv" }, open, el("div", { class: "conv-actions" }, rename, remove));
}

function snippetNodes(snippet) {
  // Matches come between « and »: shown as <mark>, the text around them as text.
  const nodes = [];
  const pattern = /«([^»]*)»/g;
  let last = 0;
  let match;
  while ((match = pattern.exec(snippet))) {
    if (match.index > last) nodes.push(document.createTextNode(snippet.slice(last, match.index)));
    nodes.push(el("mark", { text: match[1] }));
    last = match.index + match[0].length;
  }
  if (last < snippet.length) nodes.push(document.createTextNode(snippet.slice(last)));
  return nodes;
}

function hitItem(hit) {
  const open = el(
    "button",
    { type: "button", class: "conv-open", dataset: { conversationId: hit.conversation_id } },
    el("span", { class: "conv-title", text: conversationTitle(hit) }),
    el("span", { class: "snippet" }, ...snippetNodes(hit.snippet)),
    el("span", { class: "conv-meta", text: formatTime(hit.created_at_ms) }),
  );
  open.addEventListener("click", () => openConversation(hit.conversation_id, hit.message_id));
  return el("li", { class: "conv hit" }, open);
}

function renderList() {
  const list = $("conversation-list");
  const empty = $("list-empty");
  if (state.search) {
    $("list-title").textContent = t("searchResults", { query: state.search.query });
    list.replaceChildren(...state.search.hits.map(hitItem));
    empty.textContent = t("noResults");
    empty.hidden = state.search.hits.length > 0;
    $("list-more").hidden = !state.search.cursor;
    $("search-clear").hidden = false;
  } else {
    const apiCalls = state.origin === "api";
    $("list-title").textContent = apiCalls ? t("apiCalls") : t("recent");
    list.replaceChildren(...state.list.map(conversationItem));
    empty.textContent = apiCalls ? t("noApiCalls") : t("noConversations");
    empty.hidden = state.list.length > 0;
    $("list-more").hidden = !state.listCursor;
    $("search-clear").hidden = true;
  }
  // Search covers every conversation, whatever their origin: the switch is for the list only.
  const toggle = $("origin-toggle");
  toggle.hidden = Boolean(state.search);
  toggle.textContent = state.origin === "api" ? t("backToDialogs") : t("apiCalls");
  $("list-note").hidden = Boolean(state.search) || state.origin !== "api";
}

/** Shows the conversations of one origin ("chat": the page's dialogs, "api": scripts' calls). */
async function showOrigin(origin) {
  if (state.origin === origin) return;
  state.origin = origin;
  state.list = [];
  state.listCursor = null;
  renderList();
  await loadList();
}

async function openConversation(id, highlightMessageId = null) {
  if (state.streaming) state.streaming.controller.abort();
  clearError();
  closeSidebar();
  try {
    const conversation = await api.json(`/api/v1/history/${encodeURIComponent(id)}`);
    state.conversationId = conversation.id;
    state.title = conversation.title;
    state.messages = conversation.messages.map((m) => ({ ...m, pending: false }));
    state.lastPrompt = state.messages.length ? state.messages[state.messages.length - 1].prompt : null;
    setHash(conversation.id);
    renderChat();
    if (!state.search) renderList();
    if (highlightMessageId) {
      const node = $("messages").querySelector(`[data-message-id="${CSS.escape(highlightMessageId)}"]`);
      if (node) {
        node.classList.add("highlight");
        node.setAttribute("tabindex", "-1");
        node.scrollIntoView({ block: "center" });
        node.focus({ preventScroll: true });
      }
    } else {
      $("prompt").focus();
    }
  } catch (err) {
    if (err instanceof api.ApiError && err.status === 404) {
      setHash(null);
      resetChat();
    }
    showError(err);
  }
}

async function renameConversation(id, title) {
  const value = await promptDialog(t("renameTitle"), t("newTitle"), title);
  if (!value || value === title) return;
  try {
    const summary = await api.json(`/api/v1/history/${encodeURIComponent(id)}`, {
      method: "PATCH",
      body: { title: value },
    });
    if (id === state.conversationId) state.title = summary.title;
    await loadList();
    if (state.search) await runSearch(state.search.query);
  } catch (err) {
    showError(err);
  }
}

async function deleteConversation(id, title) {
  const ok = await confirmDialog(t("delete"), t("confirmDelete", { title }), t("delete"));
  if (!ok) return;
  try {
    await api.json(`/api/v1/history/${encodeURIComponent(id)}`, { method: "DELETE" });
    if (id === state.conversationId) resetChat();
    notice(t("deleted"));
    await loadList();
    if (state.search) await runSearch(state.search.query);
  } catch (err) {
    showError(err);
  }
}

async function runSearch(query, { more = false } = {}) {
  clearError();
  try {
    const cursor = more && state.search ? state.search.cursor : "";
    const page = await api.json(`/api/v1/history/search${api.query({ q: query, limit: PAGE_SIZE, cursor })}`);
    const hits = more && state.search ? state.search.hits.concat(page.hits) : page.hits;
    state.search = { query, hits, cursor: page.next_cursor };
    renderList();
  } catch (err) {
    showError(err);
  }
}

// --- exports ----------------------------------------------------------------------------------------

async function exportFile(path, fallback) {
  clearError();
  try {
    const name = await api.download(path, fallback);
    notice(t("downloaded", { name }));
  } catch (err) {
    showError(err);
  }
}

// --- the phone layout's sidebar ---------------------------------------------------------------------

function closeSidebar() {
  $("sidebar").classList.remove("open");
  $("sidebar-toggle").setAttribute("aria-expanded", "false");
}

// --- wiring -----------------------------------------------------------------------------------------

function wire() {
  languageSelect($("lang"));
  applyI18n();
  onLangChange(() => {
    if (state.me) {
      $("whoami").textContent = whoText(state.me);
      renderChat();
      renderList();
    }
  });

  $("login-form").addEventListener("submit", async (event) => {
    event.preventDefault();
    clearError();
    const button = $("login-button");
    button.disabled = true;
    try {
      const me = await api.login($("username").value.trim(), $("password").value);
      $("password").value = "";
      await start(me);
    } catch (err) {
      const wrong = err instanceof api.ApiError && err.status === 401;
      showMessage($("error"), wrong ? t("loginFailed", { message: err.message }) : errorText(err));
    } finally {
      button.disabled = false;
    }
  });

  $("logout").addEventListener("click", async () => {
    resetChat();
    await api.logout();
    showLogin(t("signedOut"), "notice");
  });

  window.addEventListener("genai:session-ended", () => {
    if (state.streaming) state.streaming.controller.abort();
    if (state.me) showLogin(t("sessionEnded"));
  });

  $("new-chat").addEventListener("click", () => {
    resetChat();
    closeSidebar();
    $("prompt").focus();
    showOrigin("chat");
  });
  $("origin-toggle").addEventListener("click", () => showOrigin(state.origin === "api" ? "chat" : "api"));

  $("ask-form").addEventListener("submit", (event) => {
    event.preventDefault();
    const prompt = $("prompt").value;
    if (!prompt.trim() || state.streaming) return;
    $("prompt").value = "";
    send(prompt);
  });
  // Enter sends where there is a keyboard; on touch screens Enter is a new line and the button sends.
  const touch = window.matchMedia("(pointer: coarse)").matches;
  if (touch) $("prompt-hint").hidden = true;
  $("prompt").addEventListener("keydown", (event) => {
    if (event.key === "Enter" && !event.shiftKey && !event.isComposing && !touch) {
      event.preventDefault();
      $("ask-form").requestSubmit();
    }
  });
  $("stop").addEventListener("click", () => {
    if (state.streaming) state.streaming.controller.abort();
  });
  $("regenerate").addEventListener("click", () => {
    if (state.lastPrompt) send(state.lastPrompt, { regenerate: true });
  });
  $("messages").addEventListener("scroll", () => {
    const box = $("messages");
    if (scrollsItself(box)) stickToBottom = box.scrollHeight - box.scrollTop - box.clientHeight < 40;
  });
  window.addEventListener("scroll", () => {
    if (scrollsItself($("messages"))) return;
    const page = document.documentElement;
    stickToBottom = page.scrollHeight - window.scrollY - window.innerHeight < 80;
  });

  $("rename").addEventListener("click", () => {
    if (state.conversationId) renameConversation(state.conversationId, state.title);
  });
  $("delete").addEventListener("click", () => {
    if (state.conversationId) deleteConversation(state.conversationId, state.title || t("untitled"));
  });

  $("search-form").addEventListener("submit", (event) => {
    event.preventDefault();
    const query = $("search-input").value.trim();
    if (query) runSearch(query);
    else {
      state.search = null;
      renderList();
    }
  });
  $("search-input").addEventListener("input", () => {
    if (!$("search-input").value.trim() && state.search) {
      state.search = null;
      renderList();
    }
  });
  $("search-clear").addEventListener("click", () => {
    $("search-input").value = "";
    state.search = null;
    renderList();
    $("search-input").focus();
  });
  $("list-more").addEventListener("click", () => {
    if (state.search) runSearch(state.search.query, { more: true });
    else loadList({ more: true });
  });

  for (const button of document.querySelectorAll("[data-export-this]")) {
    button.setAttribute("aria-label", t("exportThisAs", { format: button.textContent }));
    button.addEventListener("click", () => {
      if (!state.conversationId) return;
      const format = button.dataset.exportThis;
      const id = encodeURIComponent(state.conversationId);
      exportFile(`/api/v1/history/${id}/export?format=${format}`, `conversation-${id}.${format}`);
    });
  }
  for (const button of document.querySelectorAll("[data-export-all]")) {
    button.setAttribute("aria-label", t("exportAllAs", { format: button.textContent }));
    button.addEventListener("click", () => {
      const format = button.dataset.exportAll;
      exportFile(`/api/v1/history/export?format=${format}`, `conversations.${format}`);
    });
  }
  onLangChange(() => {
    for (const button of document.querySelectorAll("[data-export-this]")) {
      button.setAttribute("aria-label", t("exportThisAs", { format: button.textContent }));
    }
    for (const button of document.querySelectorAll("[data-export-all]")) {
      button.setAttribute("aria-label", t("exportAllAs", { format: button.textContent }));
    }
  });

  $("sidebar-toggle").addEventListener("click", () => {
    const open = !$("sidebar").classList.contains("open");
    $("sidebar").classList.toggle("open", open);
    $("sidebar-toggle").setAttribute("aria-expanded", String(open));
    if (open) $("new-chat").focus();
  });
  document.addEventListener("keydown", (event) => {
    if (event.key === "Escape" && $("sidebar").classList.contains("open")) {
      closeSidebar();
      $("sidebar-toggle").focus();
    }
  });
}

async function start(me) {
  const wanted = hashConversation();
  state.origin = "chat";
  showChat(me);
  resetChat({ keepHash: true });
  await loadList();
  if (wanted) await openConversation(wanted);
  else $("prompt").focus();
}

async function boot() {
  wire();
  initTelegram();
  if (!api.session()) {
    showLogin();
    return;
  }
  try {
    await start(await api.resume());
  } catch (err) {
    showLogin(err instanceof api.ApiError && err.status === 401 ? t("sessionEnded") : errorText(err));
  }
}

boot();
