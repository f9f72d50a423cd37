"""What the bot says, in Russian and English, chosen by the Telegram account's language."""

from __future__ import annotations

TEXTS: dict[str, dict[str, str]] = {
    "en": {
        "not_linked": (
            "This Telegram account is not linked to the assistant yet.\n"
            '1. Sign in at {page} and choose "Link Telegram".\n'
            "2. Send me the code it shows: /link CODE"
        ),
        "linked": "Linked to {owner}. Ask me anything; /new starts another conversation, /history lists them.",
        "bad_code": "That code is wrong, already used or expired. Make a new one in the web page and send /link CODE.",
        "link_usage": "Send the code from the web page: /link CODE",
        "unlinked": "Unlinked. This account no longer acts for {owner}.",
        "link_ended": (
            "This account's link was ended (from the web page or by an administrator), so I cannot answer. "
            "To link again, make a code at {page} and send /link CODE."
        ),
        "groups": "I only answer in a private chat with you. Open a chat with me to ask.",
        "anonymous": "I cannot tell who sends this (an anonymous admin or a channel). Write from your own account.",
        "new": "A new conversation starts with your next message.",
        "busy": "I am still answering your earlier questions. Send this one again once they are answered.",
        "no_history": "No conversations yet: just send a question.",
        "history": "Recent conversations (tap one to continue it):",
        "switched": "Continuing \u201c{title}\u201d. Your next message goes there.",
        "gone": "That conversation no longer exists.",
        "limited": "You have reached your usage limit. Please try again in {wait}.",
        "unavailable": "The assistant is unavailable right now. Please try again in a minute.",
        "restarting": "the assistant is restarting; please ask again in a minute",
        "refused": "The assistant could not take this request: {message}",
        "cut_short": "(The answer was cut short: {message})",
        "help": (
            "Send a question and I answer in your current conversation.\n"
            "/new: start another conversation\n/history: recent conversations, to switch\n"
            "/unlink: stop this account acting for you"
        ),
        "seconds": "{n} s",
        "minutes": "{n} min",
        "untitled": "Untitled",
    },
    "ru": {
        "not_linked": (
            "Этот аккаунт Telegram ещё не привязан к ассистенту.\n"
            "1. Войдите на {page} и выберите «Привязать Telegram».\n"
            "2. Пришлите мне показанный код: /link КОД"
        ),
        "linked": "Привязано к {owner}. Задавайте вопросы; /new начинает новый диалог, /history показывает их.",
        "bad_code": "Код неверный, уже использован или истёк. Получите новый на веб-странице и пришлите /link КОД.",
        "link_usage": "Пришлите код с веб-страницы: /link КОД",
        "unlinked": "Привязка снята. Этот аккаунт больше не действует от имени {owner}.",
        "link_ended": (
            "Привязка этого аккаунта снята (на веб-странице или администратором), поэтому ответить я не могу. "
            "Чтобы привязать снова, получите код на {page} и пришлите /link КОД."
        ),
        "groups": "Я отвечаю только в личном чате. Откройте чат со мной, чтобы спросить.",
        "anonymous": "Я не вижу, кто пишет (анонимный администратор или канал). Напишите от своего аккаунта.",
        "new": "Следующее сообщение начнёт новый диалог.",
        "busy": "Я ещё отвечаю на ваши прошлые вопросы. Пришлите этот снова, когда я на них отвечу.",
        "no_history": "Диалогов пока нет: просто задайте вопрос.",
        "history": "Недавние диалоги (нажмите, чтобы продолжить):",
        "switched": "Продолжаем «{title}». Следующее сообщение попадёт туда.",
        "gone": "Этого диалога больше нет.",
        "limited": "Вы исчерпали лимит запросов. Попробуйте снова через {wait}.",
        "unavailable": "Ассистент сейчас недоступен. Попробуйте через минуту.",
        "refused": "Ассистент не смог принять запрос: {message}",
        "cut_short": "(Ответ прервался: {message})",
        "restarting": "ассистент перезапускается; спросите ещё раз через минуту",
        "help": (
            "Пришлите вопрос, и я отвечу в текущем диалоге.\n"
            "/new: начать новый диалог\n/history: недавние диалоги, чтобы переключиться\n"
            "/unlink: отвязать этот аккаунт"
        ),
        "seconds": "{n} с",
        "minutes": "{n} мин",
        "untitled": "Без названия",
    },
}


def language(code: str | None) -> str:
    """The account's Telegram language as one of ours: Russian for ru (and its variants), else English."""
    return "ru" if code and code.lower().startswith("ru") else "en"


def text(lang: str, key: str, **values: object) -> str:
    return TEXTS[lang][key].format(**values)


def wait(lang: str, seconds: int) -> str:
    if seconds < 120:
        return text(lang, "seconds", n=seconds)
    return text(lang, "minutes", n=(seconds + 59) // 60)
