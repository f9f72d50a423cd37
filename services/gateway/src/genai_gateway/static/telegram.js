// "Link Telegram" in the chat page's sidebar: a one-time code for the bot (shown once, until it expires),
// and the user's linked Telegram accounts, each with "Unlink". Everything goes in as text.

import * as api from "./api.js";
import { onLangChange, t } from "./i18n.js";
import { el, errorText, formDialog, formatTime, showMessage } from "./ui.js";

const $ = (id) => document.getElementById(id);
let timer = null;

function showCode(made) {
  const box = $("telegram-code");
  clearInterval(timer);
  const command = el("code", { class: "telegram-command", text: made.command });
  const expires = el("p", { class: "hint" });
  const tick = () => {
    const left = Math.max(0, Math.round((made.expires_at * 1000 - Date.now()) / 1000));
    expires.textContent = left ? t("telegramExpiresIn", { minutes: Math.ceil(left / 60) }) : t("telegramExpired");
    if (!left) {
      clearInterval(timer);
      command.remove();
    }
  };
  box.replaceChildren(
    el("p", { text: t("telegramSendCode") }),
    command,
    made.link ? el("p", {}, el("a", { href: made.link, target: "_blank", rel: "noopener", text: t("telegramOpenBot") })) : null,
    expires,
  );
  box.hidden = false;
  tick();
  timer = setInterval(tick, 15_000);
}

async function renderLinks() {
  const list = $("telegram-links");
  try {
    const { links } = await api.json("/api/v1/telegram/links");
    list.replaceChildren(
      ...links.map((link) =>
        el(
          "li",
          {},
          el("span", {
            text: t("telegramAccount", {
              name: link.telegram_username ? `@${link.telegram_username}` : String(link.telegram_user_id),
              date: formatTime(link.created_at * 1000),
            }),
          }),
          " ",
          el("button", {
            type: "button",
            class: "link small-link",
            text: t("telegramUnlink"),
            onclick: () => unlink(link.id),
          }),
        ),
      ),
    );
    $("telegram-none").hidden = links.length > 0;
  } catch (err) {
    showMessage($("telegram-error"), errorText(err));
  }
}

async function unlink(id) {
  showMessage($("telegram-error"), "");
  try {
    await api.json(`/api/v1/telegram/links/${encodeURIComponent(id)}`, { method: "DELETE" });
  } catch (err) {
    showMessage($("telegram-error"), errorText(err));
  }
  await renderLinks();
}

/** The password, asked for when the sign-in is not recent (a link gives the bot a lasting key); null: cancelled. */
async function askPassword() {
  const input = el("input", { id: "telegram-password", type: "password", autocomplete: "current-password", required: true });
  const nodes = [
    el("p", { text: t("telegramPasswordHint") }),
    el("div", {}, el("label", { for: input.id, text: t("password") }), input),
  ];
  return (await formDialog(t("telegramPasswordTitle"), nodes, t("telegramMakeCode"))) ? input.value : null;
}

async function makeCode() {
  showMessage($("telegram-error"), "");
  try {
    let made;
    try {
      made = await api.json("/api/v1/telegram/codes", { method: "POST" });
    } catch (err) {
      // 403 without a recent sign-in: the same request with the password.
      if (!(err instanceof api.ApiError) || err.status !== 403) throw err;
      const password = await askPassword();
      if (password === null) return;
      made = await api.json("/api/v1/telegram/codes", { method: "POST", body: { password } });
    }
    showCode(made);
  } catch (err) {
    showMessage($("telegram-error"), errorText(err));
  }
}

/** Wires the panel once; `refresh()` reloads the list (after sign-in, or when the panel opens). */
export function initTelegram() {
  $("telegram-code-button").addEventListener("click", makeCode);
  $("telegram-panel").addEventListener("toggle", () => {
    if ($("telegram-panel").open) renderLinks();
  });
  onLangChange(() => {
    if ($("telegram-panel").open) renderLinks();
  });
}

export function resetTelegram() {
  clearInterval(timer);
  $("telegram-code").replaceChildren();
  $("telegram-code").hidden = true;
  $("telegram-links").replaceChildren();
  $("telegram-panel").open = false;
}
