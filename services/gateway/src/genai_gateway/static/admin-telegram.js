// The admin console's "Telegram links": every user's linked Telegram accounts, each with "Revoke", which
// ends the link and its chat key at once (the bot then answers that account with the linking steps).
// Everything goes in as text.

import * as api from "./api.js";
import { onLangChange, t } from "./i18n.js";
import { el, errorText, formatTime, showMessage } from "./ui.js";

const $ = (id) => document.getElementById(id);
let links = [];

function render() {
  const rows = links.map((link) =>
    el(
      "tr",
      { dataset: { link: link.id } },
      el("td", { text: link.owner }),
      el("td", { text: link.telegram_username ? `@${link.telegram_username}` : String(link.telegram_user_id) }),
      el("td", { text: formatTime(link.created_at * 1000) }),
      el(
        "td",
        {},
        el("button", {
          type: "button",
          class: "danger small",
          text: t("telegramRevoke"),
          onclick: () => revoke(link),
        }),
      ),
    ),
  );
  $("telegram-table").tBodies[0].replaceChildren(...rows);
  $("telegram-empty").hidden = rows.length > 0;
}

async function load() {
  try {
    links = (await api.json("/api/v1/admin/telegram/links")).links;
    render();
  } catch (err) {
    showMessage($("telegram-error"), errorText(err));
  }
}

async function revoke(link) {
  showMessage($("telegram-error"), "");
  try {
    await api.json(`/api/v1/telegram/links/${encodeURIComponent(link.id)}`, { method: "DELETE" });
  } catch (err) {
    showMessage($("telegram-error"), errorText(err));
  }
  await load();
}

/** Wires the section and loads it (the console is shown to admins only; the API checks anyway). */
export async function initTelegramAdmin() {
  $("telegram-refresh").addEventListener("click", load);
  onLangChange(render);
  await load();
}
