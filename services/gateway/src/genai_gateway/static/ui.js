// Helpers both pages share: building elements, messages for API errors, dialogs, copying, dates.
// Text always goes in as text (textContent, createTextNode): nothing here parses HTML.

import { ApiError } from "./api.js";
import { lang, t } from "./i18n.js";

/** An element with attributes, properties and children; strings become text nodes. */
export function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (value === undefined || value === null || value === false) continue;
    if (key === "class") node.className = value;
    else if (key === "text") node.textContent = value;
    else if (key === "dataset") Object.assign(node.dataset, value);
    else if (key.startsWith("on") && typeof value === "function") node.addEventListener(key.slice(2), value);
    else if (key === "hidden" || key === "disabled" || key === "checked" || key === "value") node[key] = value;
    else node.setAttribute(key, value === true ? "" : String(value));
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined || child === false) continue;
    node.appendChild(typeof child === "string" ? document.createTextNode(child) : child);
  }
  return node;
}

/** What to tell a person about a failed call. */
export function errorText(err) {
  if (!(err instanceof ApiError)) return t("errorGeneric", { message: (err && err.message) || String(err) });
  switch (err.status) {
    case 0:
      return t("errorNetwork");
    case 401:
      return t("error401");
    case 403:
      return t("error403", { message: err.message });
    case 404:
      return t("error404", { message: err.message });
    case 429:
      return err.retryAfter !== null ? t("error429", { seconds: err.retryAfter }) : t("error429NoWait");
    case 502:
    case 503:
    case 504:
      return err.retryAfter !== null ? t("error503", { seconds: err.retryAfter }) : t("error503NoWait");
    default:
      return t("errorGeneric", { message: err.message });
  }
}

/** Shows `message` in an alert box (role="alert"), or hides the box for an empty message. */
export function showMessage(box, message, kind = "error") {
  box.textContent = message || "";
  box.hidden = !message;
  box.classList.toggle("error", kind === "error");
  box.classList.toggle("notice", kind !== "error");
}

export function formatTime(ms) {
  if (!ms) return "";
  return new Intl.DateTimeFormat(lang(), { dateStyle: "short", timeStyle: "short" }).format(new Date(ms));
}

export function formatNumber(n) {
  return new Intl.NumberFormat(lang()).format(n);
}

/** Copies text; the clipboard API needs HTTPS, which the site always has, with a fallback for old browsers. */
export async function copyText(text) {
  if (navigator.clipboard && window.isSecureContext) {
    await navigator.clipboard.writeText(text);
    return;
  }
  const area = el("textarea", { class: "offscreen", "aria-hidden": "true", tabindex: "-1" });
  area.value = text;
  document.body.appendChild(area);
  area.select();
  const ok = document.execCommand("copy");
  area.remove();
  if (!ok) throw new Error("copy failed");
}

/** A button that copies what `getText()` returns and says so for a moment. */
export function copyButton(labelKey, getText, ariaLabel) {
  const button = el("button", { type: "button", class: "small secondary copy", text: t(labelKey) });
  if (ariaLabel) button.setAttribute("aria-label", ariaLabel);
  button.addEventListener("click", async () => {
    try {
      await copyText(getText());
      button.textContent = t("copied");
    } catch {
      button.textContent = t("copyFailed");
    }
    setTimeout(() => {
      button.textContent = t(labelKey);
    }, 1500);
  });
  return button;
}

// --- modal dialogs (<dialog>, not window.confirm/prompt: styled, translated, and testable) ----------

let modal = null;

function modalDialog() {
  if (modal) return modal;
  const title = el("h2", { id: "modal-title", class: "modal-title" });
  const body = el("div", { class: "modal-body" });
  const actions = el("div", { class: "modal-actions" });
  const form = el("form", { method: "dialog", class: "modal-form" }, title, body, actions);
  const dialog = el("dialog", { id: "modal", "aria-labelledby": "modal-title" }, form);
  document.body.appendChild(dialog);
  modal = { dialog, form, title, body, actions };
  return modal;
}

/**
 * Opens the modal with `title`, the given body nodes and buttons; resolves with the value of the button
 * used (or null when cancelled with Escape). `onSubmit(value)` may return false to keep it open.
 */
function openModal(title, nodes, buttons, focus) {
  const m = modalDialog();
  m.title.textContent = title;
  m.body.replaceChildren(...nodes);
  m.actions.replaceChildren();
  const opener = document.activeElement;
  return new Promise((resolve) => {
    let result = null;
    for (const { label, value, primary } of buttons) {
      const button = el("button", {
        type: value === null ? "button" : "submit",
        class: primary ? "" : "secondary",
        text: label,
      });
      button.addEventListener("click", (event) => {
        event.preventDefault();
        if (value !== null && !m.form.reportValidity()) return;
        result = value;
        m.dialog.close();
      });
      m.actions.appendChild(button);
    }
    const onSubmit = (event) => {
      // Enter in a text field: the first primary button.
      event.preventDefault();
      if (!m.form.reportValidity()) return;
      result = buttons.find((b) => b.primary)?.value ?? null;
      m.dialog.close();
    };
    m.form.addEventListener("submit", onSubmit);
    m.dialog.addEventListener(
      "close",
      () => {
        m.form.removeEventListener("submit", onSubmit);
        if (opener && typeof opener.focus === "function" && document.contains(opener)) opener.focus();
        resolve(result);
      },
      { once: true },
    );
    m.dialog.showModal();
    (focus || m.actions.querySelector("button:last-child")).focus();
  });
}

export async function confirmDialog(title, message, confirmLabel) {
  const result = await openModal(title, [el("p", { text: message })], [
    { label: t("cancel"), value: null },
    { label: confirmLabel || t("confirm"), value: "ok", primary: true },
  ]);
  return result === "ok";
}

export async function promptDialog(title, label, value, { maxLength = 200 } = {}) {
  const input = el("input", { id: "modal-input", type: "text", maxlength: String(maxLength), required: true });
  input.value = value || "";
  const nodes = [el("label", { for: "modal-input", text: label }), input];
  const result = await openModal(title, nodes, [
    { label: t("cancel"), value: null },
    { label: t("save"), value: "ok", primary: true },
  ], input);
  return result === "ok" ? input.value.trim() : null;
}

/** A dialog with arbitrary content (nodes) and a primary button; resolves true when it was used. */
export async function formDialog(title, nodes, saveLabel) {
  const result = await openModal(title, nodes, [
    { label: t("cancel"), value: null },
    { label: saveLabel || t("save"), value: "ok", primary: true },
  ], nodes.find((n) => n.querySelector && n.querySelector("input"))?.querySelector("input"));
  return result === "ok";
}

/** The top bar's language <select>, signed-in user and sign-out button: shared markup ids. */
export function whoText(me) {
  return t("signedInAs", { username: me.username, role: me.role === "admin" ? t("roleAdmin") : t("roleUser") });
}
