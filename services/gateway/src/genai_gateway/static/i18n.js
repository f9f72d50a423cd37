// Every interface string, in Russian and English. Pages mark static text with data-i18n attributes;
// code asks t(key, params). Parameters are substituted as plain text and end up in textContent only.

const STRINGS = {
  en: {
    appTitle: "GenAI — IT assistant",
    adminTitle: "GenAI — admin console",
    language: "Language",
    skipToContent: "Skip to main content",
    // login
    loginTitle: "Sign in",
    username: "Username",
    password: "Password",
    signIn: "Sign in",
    loginFailed: "Sign-in failed: {message}",
    sessionEnded: "Your session has ended. Please sign in again.",
    signedOut: "You have signed out.",
    // top bar
    signedInAs: "{username} ({role})",
    logout: "Sign out",
    adminConsole: "Admin console",
    backToChat: "Back to chat",
    showDialogs: "Dialogs",
    // Telegram (telegram.js)
    telegramTitle: "Link Telegram",
    telegramHint: "Chat with the assistant from Telegram as yourself: get a code and send it to the bot.",
    telegramMakeCode: "Get a code",
    telegramSendCode: "Send this to the bot in Telegram (shown once):",
    telegramOpenBot: "Open the bot in Telegram",
    telegramExpiresIn: "The code works for about {minutes} min more, once.",
    telegramExpired: "The code has expired; get a new one.",
    telegramAccount: "{name}, linked {date}",
    telegramUnlink: "Unlink",
    telegramNone: "No Telegram account is linked.",
    telegramLinks: "Telegram links",
    telegramAccountColumn: "Telegram account",
    telegramLinkedAt: "Linked",
    telegramRevoke: "Revoke",
    telegramPasswordTitle: "Confirm with your password",
    telegramPasswordHint: "A link lets the bot act as you until you unlink it: enter your password to get a code.",
    // sidebar
    conversations: "Conversations",
    recent: "Recent",
    newChat: "New chat",
    searchLabel: "Search your dialogs",
    searchPlaceholder: "Words or \"a phrase\"",
    search: "Search",
    clearSearch: "Clear search",
    searchResults: "Search results for “{query}”",
    noResults: "Nothing found.",
    noConversations: "No conversations yet.",
    apiCalls: "API calls",
    apiCallsNote: "Requests your scripts and programs sent through the API without a conversation.",
    noApiCalls: "No API calls yet.",
    backToDialogs: "Back to dialogs",
    loadMore: "Load more",
    rename: "Rename",
    renameAria: "Rename “{title}”",
    renameTitle: "Rename the conversation",
    newTitle: "New title",
    delete: "Delete",
    deleteAria: "Delete “{title}”",
    confirmDelete: "Delete the conversation “{title}”? This cannot be undone.",
    deleted: "Conversation deleted.",
    cancel: "Cancel",
    save: "Save",
    confirm: "Confirm",
    untitled: "Untitled",
    messageCount: "{n} messages",
    exportAll: "Export all dialogs",
    exportThis: "Export this dialog",
    exportAllAs: "Download all dialogs as {format}",
    exportThisAs: "Download this dialog as {format}",
    downloaded: "Downloaded {name}.",
    // chat
    newConversation: "New conversation",
    emptyChat: "Ask a question to start a conversation. Answers are formatted with Markdown.",
    promptLabel: "Your question",
    promptPlaceholder: "For example: how do I fix “Permission denied” when running a script?",
    promptHint: "Enter sends, Shift+Enter starts a new line.",
    send: "Send",
    stop: "Stop",
    regenerate: "Regenerate",
    regenerateHint: "Ask the last question again, bypassing the cache",
    copy: "Copy",
    copyAnswer: "Copy answer",
    copyPrompt: "Copy question",
    copyCode: "Copy code",
    copied: "Copied",
    copyFailed: "Could not copy",
    you: "You",
    assistant: "Assistant",
    fromCache: "from cache",
    fromCacheTitle: "This answer was served from the response cache, not generated now",
    fromSimilar: "similar question · {percent}%",
    fromSimilarTitle:
      "Answered with the cached answer of a similar question (similarity {percent}%), not generated now; Regenerate asks the model",
    model: "model {model}",
    tokens: "{n} tokens",
    seconds: "{s} s",
    stopped: "stopped",
    truncated: "cut off at the length limit",
    queued: "Queued, position {position}",
    generating: "Generating…",
    answerReady: "Answer ready.",
    answerStopped: "Generation stopped.",
    code: "code",
    // errors
    error401: "Your session has ended. Please sign in again.",
    error403: "Not allowed: {message}",
    error404: "Not found: {message}",
    error429: "Too many requests. Try again in {seconds} s.",
    error429NoWait: "Too many requests. Try again a little later.",
    error503: "The service is busy or temporarily unavailable. Try again in {seconds} s.",
    error503NoWait: "The service is busy or temporarily unavailable. Try again in a minute.",
    errorNetwork: "No connection to the server. Check your network and try again.",
    errorGeneric: "Error: {message}",
    // admin
    adminOnly: "This page is for administrators only.",
    notSignedIn: "You are not signed in.",
    goToLogin: "Sign in on the chat page",
    sections: "Sections",
    users: "Users",
    createUser: "Create a user",
    newUsername: "Username",
    role: "Role",
    roleUser: "user",
    roleAdmin: "admin",
    create: "Create",
    passwordOnce: "Password for {username} — shown only once, copy it now:",
    copyPassword: "Copy password",
    status: "Status",
    active: "active",
    disabled: "disabled",
    disable: "Disable",
    enable: "Enable",
    disableAria: "Disable {username}",
    enableAria: "Enable {username}",
    limits: "Limits",
    editLimits: "Set limits",
    editLimitsAria: "Set limits for {username}",
    roleAria: "Role of {username}",
    resetPassword: "Reset password",
    resetPasswordAria: "Reset the password of {username}",
    resetPasswordTitle: "Reset the password of {username}?",
    resetPasswordText: "A new password is generated and shown once; the user's current sessions end. API keys keep working.",
    passwordReset: "Password of {username} reset.",
    limitsFor: "Limits for {username}",
    limitsHint: "Empty: the role's default. −1: unlimited.",
    limitsDefault: "role defaults",
    source: "Source",
    sourceLocal: "local",
    sourceDirectory: "directory",
    directoryGroupsNone: "no mapped group",
    directoryRoleHint: "Role and password come from the directory; the groups that gave them:",
    requests_per_minute: "Requests per minute",
    tokens_per_minute: "Tokens per minute",
    concurrent_requests: "Concurrent requests",
    tokens_per_day: "Tokens per day",
    created: "Created",
    actions: "Actions",
    userCreated: "User {username} created.",
    userUpdated: "User {username} updated.",
    refresh: "Refresh",
    usage: "Usage per user and day",
    fromDay: "From",
    toDay: "To",
    owner: "User",
    allUsers: "All users",
    show: "Show",
    day: "Day",
    requests: "Requests",
    promptTokens: "Prompt tokens",
    completionTokens: "Completion tokens",
    cacheHits: "Cache hits",
    noRows: "No data.",
    dialogs: "Dialogs of users",
    auditedNote: "Every list, read or export of another user's dialogs is recorded in the audit log.",
    showDialogs2: "Show dialogs",
    title: "Title",
    updated: "Updated",
    messages: "Messages",
    open: "Open",
    openAria: "Open “{title}”",
    dialogOf: "Dialog “{title}” of {owner}",
    audit: "Audit log",
    auditNote: "Read-only: nobody can change or delete these records.",
    when: "When",
    who: "Who",
    action: "Action",
    whose: "Whose",
    conversation: "Conversation",
    requestId: "Request id",
    action_read_conversation: "read a dialog",
    action_list_conversations: "listed dialogs",
    action_export_conversation: "exported a dialog",
    action_export_user: "exported all dialogs of a user",
    usersTable: "Table of users",
    usageTable: "Table of usage",
    dialogsTable: "Table of dialogs",
    auditTable: "Table of audit records",
  },
  ru: {
    appTitle: "GenAI — IT-ассистент",
    adminTitle: "GenAI — консоль администратора",
    language: "Язык",
    skipToContent: "Перейти к содержимому",
    loginTitle: "Вход",
    username: "Имя пользователя",
    password: "Пароль",
    signIn: "Войти",
    loginFailed: "Ошибка входа: {message}",
    sessionEnded: "Сеанс завершён. Войдите снова.",
    signedOut: "Вы вышли из системы.",
    signedInAs: "{username} ({role})",
    logout: "Выйти",
    adminConsole: "Консоль администратора",
    backToChat: "К чату",
    showDialogs: "Диалоги",
    // Telegram (telegram.js)
    telegramTitle: "Привязать Telegram",
    telegramHint: "Общайтесь с ассистентом из Telegram от своего имени: получите код и отправьте его боту.",
    telegramMakeCode: "Получить код",
    telegramSendCode: "Отправьте это боту в Telegram (показывается один раз):",
    telegramOpenBot: "Открыть бота в Telegram",
    telegramExpiresIn: "Код действует ещё около {minutes} мин, один раз.",
    telegramExpired: "Срок кода истёк; получите новый.",
    telegramAccount: "{name}, привязан {date}",
    telegramUnlink: "Отвязать",
    telegramNone: "Ни один аккаунт Telegram не привязан.",
    telegramLinks: "Привязки Telegram",
    telegramAccountColumn: "Аккаунт Telegram",
    telegramLinkedAt: "Привязан",
    telegramRevoke: "Отозвать",
    telegramPasswordTitle: "Подтвердите паролем",
    telegramPasswordHint: "Привязка позволяет боту действовать от вашего имени, пока вы её не отмените: введите пароль, чтобы получить код.",
    conversations: "Диалоги",
    recent: "Недавние",
    newChat: "Новый диалог",
    searchLabel: "Поиск по диалогам",
    searchPlaceholder: "Слова или \"фраза\"",
    search: "Найти",
    clearSearch: "Сбросить поиск",
    searchResults: "Результаты поиска «{query}»",
    noResults: "Ничего не найдено.",
    noConversations: "Диалогов пока нет.",
    apiCalls: "Вызовы API",
    apiCallsNote: "Запросы ваших скриптов и программ к API без указания диалога.",
    noApiCalls: "Вызовов API пока нет.",
    backToDialogs: "Назад к диалогам",
    loadMore: "Показать ещё",
    rename: "Переименовать",
    renameAria: "Переименовать «{title}»",
    renameTitle: "Переименовать диалог",
    newTitle: "Новое название",
    delete: "Удалить",
    deleteAria: "Удалить «{title}»",
    confirmDelete: "Удалить диалог «{title}»? Это действие нельзя отменить.",
    deleted: "Диалог удалён.",
    cancel: "Отмена",
    save: "Сохранить",
    confirm: "Подтвердить",
    untitled: "Без названия",
    messageCount: "сообщений: {n}",
    exportAll: "Экспорт всех диалогов",
    exportThis: "Экспорт диалога",
    exportAllAs: "Скачать все диалоги в формате {format}",
    exportThisAs: "Скачать этот диалог в формате {format}",
    downloaded: "Файл {name} скачан.",
    newConversation: "Новый диалог",
    emptyChat: "Задайте вопрос, чтобы начать диалог. Ответы оформляются в Markdown.",
    promptLabel: "Ваш вопрос",
    promptPlaceholder: "Например: как исправить ошибку «Permission denied» при запуске скрипта?",
    promptHint: "Enter — отправить, Shift+Enter — новая строка.",
    send: "Отправить",
    stop: "Остановить",
    regenerate: "Сгенерировать заново",
    regenerateHint: "Задать последний вопрос ещё раз, минуя кэш",
    copy: "Копировать",
    copyAnswer: "Копировать ответ",
    copyPrompt: "Копировать вопрос",
    copyCode: "Копировать код",
    copied: "Скопировано",
    copyFailed: "Не удалось скопировать",
    you: "Вы",
    assistant: "Ассистент",
    fromCache: "из кэша",
    fromCacheTitle: "Этот ответ взят из кэша ответов, а не сгенерирован сейчас",
    fromSimilar: "похожий вопрос · {percent}%",
    fromSimilarTitle:
      "Ответ на похожий вопрос из кэша (сходство {percent}%), а не сгенерирован сейчас; «Сгенерировать заново» спросит модель",
    model: "модель {model}",
    tokens: "токенов: {n}",
    seconds: "{s} с",
    stopped: "остановлено",
    truncated: "обрезано по лимиту длины",
    queued: "В очереди, позиция {position}",
    generating: "Генерация…",
    answerReady: "Ответ готов.",
    answerStopped: "Генерация остановлена.",
    code: "код",
    error401: "Сеанс завершён. Войдите снова.",
    error403: "Нет доступа: {message}",
    error404: "Не найдено: {message}",
    error429: "Слишком много запросов. Повторите через {seconds} с.",
    error429NoWait: "Слишком много запросов. Повторите чуть позже.",
    error503: "Сервис занят или временно недоступен. Повторите через {seconds} с.",
    error503NoWait: "Сервис занят или временно недоступен. Повторите через минуту.",
    errorNetwork: "Нет связи с сервером. Проверьте сеть и повторите.",
    errorGeneric: "Ошибка: {message}",
    adminOnly: "Эта страница только для администраторов.",
    notSignedIn: "Вы не вошли в систему.",
    goToLogin: "Войти на странице чата",
    sections: "Разделы",
    users: "Пользователи",
    createUser: "Создать пользователя",
    newUsername: "Имя пользователя",
    role: "Роль",
    roleUser: "пользователь",
    roleAdmin: "администратор",
    create: "Создать",
    passwordOnce: "Пароль для {username} показывается только один раз — скопируйте его сейчас:",
    copyPassword: "Копировать пароль",
    status: "Состояние",
    active: "активен",
    disabled: "отключён",
    disable: "Отключить",
    enable: "Включить",
    disableAria: "Отключить {username}",
    enableAria: "Включить {username}",
    limits: "Лимиты",
    editLimits: "Лимиты",
    editLimitsAria: "Задать лимиты для {username}",
    roleAria: "Роль пользователя {username}",
    resetPassword: "Сбросить пароль",
    resetPasswordAria: "Сбросить пароль пользователя {username}",
    resetPasswordTitle: "Сбросить пароль пользователя {username}?",
    resetPasswordText: "Будет создан новый пароль, он покажется один раз; текущие сеансы пользователя завершатся. API-ключи продолжат работать.",
    passwordReset: "Пароль пользователя {username} сброшен.",
    limitsFor: "Лимиты для {username}",
    limitsHint: "Пусто — по умолчанию для роли. −1 — без ограничения.",
    limitsDefault: "по умолчанию",
    source: "Источник",
    sourceLocal: "локальный",
    sourceDirectory: "каталог",
    directoryGroupsNone: "нет сопоставленных групп",
    directoryRoleHint: "Роль и пароль задаёт каталог; группы, давшие их:",
    requests_per_minute: "Запросов в минуту",
    tokens_per_minute: "Токенов в минуту",
    concurrent_requests: "Одновременных запросов",
    tokens_per_day: "Токенов в день",
    created: "Создан",
    actions: "Действия",
    userCreated: "Пользователь {username} создан.",
    userUpdated: "Пользователь {username} изменён.",
    refresh: "Обновить",
    usage: "Использование по пользователям и дням",
    fromDay: "С",
    toDay: "По",
    owner: "Пользователь",
    allUsers: "Все пользователи",
    show: "Показать",
    day: "День",
    requests: "Запросы",
    promptTokens: "Токены запроса",
    completionTokens: "Токены ответа",
    cacheHits: "Из кэша",
    noRows: "Нет данных.",
    dialogs: "Диалоги пользователей",
    auditedNote: "Каждый просмотр списка, чтение или экспорт чужих диалогов записывается в журнал аудита.",
    showDialogs2: "Показать диалоги",
    title: "Название",
    updated: "Изменён",
    messages: "Сообщений",
    open: "Открыть",
    openAria: "Открыть «{title}»",
    dialogOf: "Диалог «{title}» пользователя {owner}",
    audit: "Журнал аудита",
    auditNote: "Только чтение: эти записи нельзя изменить или удалить.",
    when: "Когда",
    who: "Кто",
    action: "Действие",
    whose: "Чей",
    conversation: "Диалог",
    requestId: "Id запроса",
    action_read_conversation: "прочитал диалог",
    action_list_conversations: "просмотрел список диалогов",
    action_export_conversation: "экспортировал диалог",
    action_export_user: "экспортировал все диалоги пользователя",
    usersTable: "Таблица пользователей",
    usageTable: "Таблица использования",
    dialogsTable: "Таблица диалогов",
    auditTable: "Таблица журнала аудита",
  },
};

export const LANGUAGES = { ru: "Русский", en: "English" };
const LANG_KEY = "genai.lang";

function initialLanguage() {
  let saved = null;
  try {
    saved = localStorage.getItem(LANG_KEY);
  } catch {
    saved = null;
  }
  if (saved && STRINGS[saved]) return saved;
  const wanted = (navigator.languages && navigator.languages[0]) || navigator.language || "en";
  return wanted.toLowerCase().startsWith("ru") ? "ru" : "en";
}

let current = initialLanguage();
const listeners = new Set();

export function lang() {
  return current;
}

export function t(key, params = {}) {
  const table = STRINGS[current];
  const template = key in table ? table[key] : key in STRINGS.en ? STRINGS.en[key] : key;
  return template.replace(/\{(\w+)\}/g, (match, name) => (name in params ? String(params[name]) : match));
}

export function has(key) {
  return key in STRINGS[current];
}

/** Fills every element marked with data-i18n* under root; the values are always set as text. */
export function applyI18n(root = document) {
  for (const node of root.querySelectorAll("[data-i18n]")) node.textContent = t(node.dataset.i18n);
  for (const node of root.querySelectorAll("[data-i18n-placeholder]")) {
    node.setAttribute("placeholder", t(node.dataset.i18nPlaceholder));
  }
  for (const node of root.querySelectorAll("[data-i18n-aria-label]")) {
    node.setAttribute("aria-label", t(node.dataset.i18nAriaLabel));
  }
  for (const node of root.querySelectorAll("[data-i18n-title]")) {
    node.setAttribute("title", t(node.dataset.i18nTitle));
  }
  document.documentElement.lang = current;
}

export function setLang(value) {
  if (!STRINGS[value] || value === current) return;
  current = value;
  try {
    localStorage.setItem(LANG_KEY, value);
  } catch {
    // Private mode: the choice lasts for this page only.
  }
  applyI18n();
  for (const listener of listeners) listener(value);
}

export function onLangChange(listener) {
  listeners.add(listener);
}

/** Wires a <select> to the language, filling its options. */
export function languageSelect(select) {
  select.replaceChildren();
  for (const [code, name] of Object.entries(LANGUAGES)) {
    const option = document.createElement("option");
    option.value = code;
    option.textContent = name;
    option.lang = code;
    select.appendChild(option);
  }
  select.value = current;
  select.addEventListener("change", () => setLang(select.value));
}
