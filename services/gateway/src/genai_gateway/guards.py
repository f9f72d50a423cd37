"""The details of a question that decide its answer, which two questions must share to share an answer.

A sentence encoder scores "2+2?" and "2+3?", or "translate to English" and "translate to German", above
many true paraphrases: closeness in meaning cannot tell them apart, so the similar-request layer never
relies on it alone. Before two requests may share an answer, these details of their texts must agree:

| detail      | taken from                                                    | must be                      |
|-------------|---------------------------------------------------------------|------------------------------|
| script      | Russian words outside quotes, else Latin letters              | equal (the answer's language)|
| numbers     | digits (with the word after them: "5 MB"), number words       | equal, in order              |
| operators   | + - * / ^ % x and their words ("plus", "умножить")            | equal, in order              |
| time        | month and weekday names, today/tomorrow, morning/evening      | equal as a set               |
| time units  | day, week, year, hour ... ("per year" / "annual")             | equal where both name some   |
| quoted      | text in "..", '..', «..», „..“, `..`, and fenced code         | equal, in order              |
| identifiers | tokens with digits, _ . / \\ @ : = or inner capitals          | equal as a set               |
| negation    | not, n't, no, never, without, не, нет, без, ни, нельзя, ...   | present in both or neither   |
| languages   | names of languages ("German", "на немецкий"), in order        | equal, in order              |
| order       | the words of substance, when a text asks to convert one thing | equal, in order              |
|             | into another ("a string to an integer")                       |                              |
| directions  | enable/disable, merge/unmerge, ascending/descending, ...      | never opposite sides; an     |
|             |                                                               | action unnamed is its "+"    |
| names       | capitalised words, acronyms, Latin words in Russian text,     | each one's found among the   |
|             | and a list of product names however written                   | other's words                |
| substance   | words not in FILLERS                                          | neither text is the other    |
|             |                                                               | with 2+ words added          |

`Details.exact` holds every detail compared for equality; it becomes part of the index's partition key,
so a request only ever meets entries that agree on all of them. The rest are compared per candidate
(`agree`), loosely enough that "Outlook не запускается" and "не запускается Outlook" agree.
Everything errs the same way: a detail that cannot be read surely makes two requests differ (a miss,
which costs a generation), never agree (a wrong answer).
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass, field
from typing import Any

# Words of a text: letters with inner apostrophes or hyphens ("don't", "wi-fi", "по-русски").
WORD = re.compile(r"[^\W\d_]+(?:['’\-][^\W\d_]+)*")
# Words for names: hyphenated ones split ("VPN-подключение" has the name "VPN").
SIMPLE_WORD = re.compile(r"[^\W\d_]+(?:['’][^\W\d_]+)?")
NUMBER = re.compile(r"\d+(?:[.,]\d+)*")
CYRILLIC = re.compile(r"[\u0400-\u04ff]")
LATIN = re.compile(r"[A-Za-z]")
QUOTED = re.compile(r'"([^"]+)"|«([^»]+)»|„([^“”]+)[“”]|“([^”]+)”|(?<![\w])\'([^\']+)\'(?![\w])|`([^`]+)`')
FENCED = re.compile(r"```.*?(?:```|$)", re.S)
SENTENCE_END = re.compile(r"[.!?…:;]\s*$")
# Tokens that name something exactly: paths, file names, addresses, versions, error codes, code.
IDENTIFIER_TOKEN = re.compile(
    r"\S*(?:[_/\\@#$=<>{}\[\]|~]|\w\.\w|\w:\w|\w\(|\d[A-Za-z]|[A-Za-z]\d|[a-z][A-Z])\S*"
)
OPERATOR = re.compile(r"(?<=[\d\s)])([+\-*/^×÷%x])(?=[\s(]*\d)")

NEGATIONS = {
    # English
    "not", "no", "never", "without", "none", "nobody", "nothing", "neither", "nor", "cannot", "nowhere",
    # Russian
    "не", "нет", "ни", "без", "никогда", "нельзя", "ничего", "никак", "никто", "нигде", "ничто", "невозможно",
}  # fmt: skip

# In the tables below a key ending in "*" matches any word it begins (a Russian stem); any other key
# matches a whole word or run of words (an English key also with a plural "s").

# Words that choose one of two opposite actions or states; the value names the pair and the side.
DIRECTIONS = {
    "enable": "on+", "turn on": "on+", "switch on": "on+", "activate": "on+",
    "disable": "on-", "turn off": "on-", "switch off": "on-", "deactivate": "on-",
    "включ*": "on+", "выключ*": "on-", "отключ*": "on-", "активир*": "on+", "деактивир*": "on-",
    "add": "add+", "remove": "add-", "delete": "add-", "добав*": "add+", "удалить": "add-", "удали": "add-",
    "удалять": "add-", "удаление": "add-", "удалени*": "add-", "убра*": "add-", "убер*": "add-",
    "install": "inst+", "uninstall": "inst-", "установ*": "inst+", "устанав*": "inst+",
    "increase": "inc+", "decrease": "inc-", "увелич*": "inc+", "уменьш*": "inc-",
    "upload": "load+", "download": "load-", "скача*": "load-", "скачив*": "load-",
    "encrypt": "enc+", "decrypt": "enc-", "зашифр*": "enc+", "расшифр*": "enc-",
    "show": "show+", "hide": "show-", "скры*": "show-", "спрят*": "show-",
    "lock": "lock+", "unlock": "lock-", "заблокир*": "lock+", "разблокир*": "lock-",
    "before": "time+", "after": "time-", "до": "time+", "после": "time-",
    "first": "end+", "last": "end-", "перв*": "end+", "последн*": "end-",
    "minimum": "max-", "maximum": "max+", "минимал*": "max-", "максимал*": "max+",
    "open": "open+", "close": "open-", "откры*": "open+", "открой": "open+", "откро*": "open+",
    "закры*": "open-", "закрой": "open-", "закро*": "open-",
    "start": "start+", "stop": "start-", "запуст*": "start+", "останов*": "start-",
    "import": "port+", "export": "port-", "импорт*": "port+", "экспорт*": "port-",
    "ascending": "asc+", "descending": "asc-", "возрастани*": "asc+", "убывани*": "asc-",
    "connect": "conn+", "disconnect": "conn-",
    "send": "send+", "receive": "send-", "отправ*": "send+", "получени*": "send-",
    "more": "cmp+", "less": "cmp-", "fewer": "cmp-", "больше": "cmp+", "меньше": "cmp-",
    "faster": "speed+", "slower": "speed-", "быстрее": "speed+", "медленнее": "speed-",
    "increment": "inc+", "decrement": "inc-",
    "horizontal": "axis+", "vertical": "axis-", "горизонтальн*": "axis+", "вертикальн*": "axis-",
    "left": "side+", "right": "side-", "слева": "side+", "справа": "side-", "лев*": "side+", "прав*": "side-",
    "upper": "case+", "uppercase": "case+", "lowercase": "case-", "верхн*": "case+", "нижн*": "case-",
    "merge": "merge+", "unmerge": "merge-", "split": "merge-", "объедин*": "merge+", "разъедин*": "merge-",
    "landscape": "orient+", "portrait": "orient-", "альбомн*": "orient+", "книжн*": "orient-",
    "formal": "tone+", "informal": "tone-", "официальн*": "tone+", "неформальн*": "tone-",
}  # fmt: skip
# Pairs of DIRECTIONS whose "+" side is the action itself, which a question need not name.
ACTIONS = {"on", "add", "inst", "enc", "show", "lock", "open", "start", "port", "conn", "merge"}
LANGUAGES = {
    "english": "en", "англ*": "en", "german": "de", "немец*": "de", "немецк*": "de", "french": "fr",
    "француз*": "fr", "spanish": "es", "испан*": "es", "italian": "it", "итальян*": "it",
    "portuguese": "pt", "португал*": "pt", "chinese": "zh", "китай*": "zh", "japanese": "ja", "япон*": "ja",
    "korean": "ko", "корей*": "ko", "russian": "ru", "русск*": "ru", "по-русски": "ru",
    "ukrainian": "uk", "украин*": "uk", "belarusian": "be", "белорус*": "be", "kazakh": "kk", "казах*": "kk",
    "uzbek": "uz", "узбек*": "uz", "tatar": "tt", "татар*": "tt", "turkish": "tr", "турец*": "tr",
    "polish": "pl", "польск*": "pl", "arabic": "ar", "араб*": "ar", "hindi": "hi", "хинди": "hi",
    "latin": "la", "латын*": "la", "латинск*": "la", "dutch": "nl", "нидерланд*": "nl", "голланд*": "nl",
    "finnish": "fi", "финск*": "fi", "swedish": "sv", "шведск*": "sv", "greek": "el", "греческ*": "el",
    "hebrew": "he", "иврит*": "he", "по-английски": "en", "по-немецки": "de", "по-французски": "fr",
    "по-испански": "es", "по-китайски": "zh", "по-японски": "ja", "по-итальянски": "it",
}  # fmt: skip
TIME_WORDS = {
    "january": "m1", "february": "m2", "march": "m3", "april": "m4", "june": "m6", "july": "m7",
    "august": "m8", "september": "m9", "october": "m10", "november": "m11", "december": "m12",
    "январ*": "m1", "феврал*": "m2", "март": "m3", "марта": "m3", "марте": "m3", "апрел*": "m4",
    "мая": "m5", "май": "m5", "мае": "m5", "июн*": "m6", "июл*": "m7", "август*": "m8", "сентябр*": "m9",
    "октябр*": "m10", "ноябр*": "m11", "декабр*": "m12",
    "monday": "d1", "tuesday": "d2", "wednesday": "d3", "thursday": "d4", "friday": "d5",
    "saturday": "d6", "sunday": "d7", "понедельник*": "d1", "вторник*": "d2", "среда": "d3",
    "среду": "d3", "среды": "d3", "четверг*": "d4", "пятниц*": "d5", "суббот*": "d6", "воскресень*": "d7",
    "today": "t0", "tomorrow": "t+1", "yesterday": "t-1", "tonight": "t0", "weekend": "we",
    "сегодня": "t0", "завтра": "t+1", "вчера": "t-1", "послезавтра": "t+2", "позавчера": "t-2",
    "выходны*": "we", "morning": "pm-", "evening": "pm+", "утра": "pm-", "утром": "pm-", "вечер*": "pm+",
    "week": "w", "недел*": "w", "month": "mo", "месяц*": "mo", "year": "y", "год": "y", "года": "y",
    "году": "y", "лет": "y", "quarter": "q", "квартал*": "q", "hour": "h", "час": "h", "часа": "h",
    "часов": "h", "minute": "min", "минут*": "min", "second": "s", "секунд*": "s", "day": "dd",
    "дня": "dd", "дней": "dd", "день": "dd", "сутк*": "dd", "сутки": "dd",
}  # fmt: skip
TIME_UNITS = {"w", "mo", "y", "q", "h", "min", "s", "dd"}
NUMBER_WORDS = {
    "zero": "0", "one": "1", "two": "2", "three": "3", "four": "4", "five": "5", "six": "6", "seven": "7",
    "eight": "8", "nine": "9", "ten": "10", "eleven": "11", "twelve": "12", "twenty": "20", "thirty": "30",
    "fifty": "50", "hundred": "100", "thousand": "1000", "million": "1000000", "half": "0.5", "twice": "2x",
    "double": "2x", "triple": "3x", "dozen": "12",
    "ноль": "0", "нуля": "0", "один": "1", "одна": "1", "одно": "1", "одного": "1", "одной": "1",
    "два": "2", "две": "2", "двух": "2", "двум": "2", "три": "3", "трех": "3", "трем": "3",
    "четыре": "4", "четырех": "4", "пять": "5", "пяти": "5", "шесть": "6", "шести": "6", "семь": "7",
    "семи": "7", "восемь": "8", "восьми": "8", "девять": "9", "девяти": "9", "десять": "10", "десяти": "10",
    "двадцать": "20", "тридцать": "30", "пятьдесят": "50", "сто": "100", "тысяча": "1000", "тысячу": "1000",
    "тысячи": "1000", "миллион*": "1000000", "половин*": "0.5", "дважды": "2x", "вдвое": "2x",
    "втрое": "3x", "полтора": "1.5", "полторы": "1.5",
}  # fmt: skip
OPERATOR_WORDS = {
    "plus": "+", "minus": "-", "times": "*", "multiplied": "*", "multiply": "*", "divided": "/",
    "divide": "/", "squared": "^2", "cubed": "^3", "square root": "sqrt", "percent": "%",
    "factorial": "!", "modulo": "mod", "sum": "+", "difference": "-", "product": "*", "average": "avg",
    "power": "^", "плюс": "+", "минус": "-", "умнож*": "*", "помнож*": "*", "подели*": "/", "раздели*": "/",
    "делить": "/", "деленн*": "/", "квадрат*": "^2", "куб": "^3", "кубе": "^3", "корень": "sqrt",
    "корня": "sqrt", "процент*": "%", "факториал*": "!", "остаток": "mod", "сумм*": "+", "разност*": "-",
    "произведени*": "*", "средн*": "avg", "степен*": "^",
}  # fmt: skip
# Names of products and technologies that users write in lower case as often as not. Words that are also
# common words ("word", "teams", "edge") are names only when capitalised.
KNOWN_NAMES = {
    "windows", "linux", "macos", "ubuntu", "debian", "centos", "android", "ios", "iphone", "excel",
    "outlook", "powerpoint", "onenote", "sharepoint", "onedrive", "skype", "slack", "telegram", "whatsapp",
    "chrome", "firefox", "safari", "python", "java", "javascript", "typescript", "golang", "kotlin", "php",
    "ruby", "bash", "powershell", "sql", "mysql", "postgresql", "postgres", "oracle", "mongodb", "redis",
    "docker", "kubernetes", "git", "github", "gitlab", "jira", "confluence", "nginx", "vpn", "wifi",
    "bluetooth", "1с", "sap", "bitrix", "битрикс", "ворд", "эксель", "аутлук", "виндовс", "линукс",
    "телеграм", "хром", "пайтон", "питон", "джава", "докер", "react", "vue", "angular", "django", "flask",
    "fastapi", "pandas", "numpy", "html", "css", "json", "xml", "yaml", "csv", "pdf", "gmail", "yandex",
    "яндекс", "google", "гугл", "vim", "emacs", "vscode", "pycharm", "intellij", "ldap", "citrix", "rdp",
    "ssh", "ftp", "http", "https", "dns", "dhcp", "tcp", "udp", "usb", "hdmi", "macbook", "thinkpad",
    "canon", "epson", "xerox", "kyocera", "samsung", "lenovo", "dell", "asus", "acer", "apple", "microsoft",
}  # fmt: skip
# Common words that open a sentence: capitalised there without being names.
OPENERS = {
    "how", "what", "why", "when", "where", "which", "who", "whom", "whose", "can", "could", "would",
    "should", "is", "are", "was", "were", "do", "does", "did", "will", "shall", "may", "might", "must",
    "please", "i", "my", "we", "our", "you", "your", "it", "its", "the", "a", "an", "this", "that", "these",
    "those", "there", "here", "if", "in", "on", "at", "for", "to", "from", "with", "without", "by",
    "and", "or", "but", "so", "then", "also", "hi", "hello", "hey", "thanks", "thank", "ok", "okay",
    "tell", "give", "show", "explain", "write", "translate", "make", "create", "find", "list", "help",
    "describe", "compute", "calculate", "convert", "summarize", "summarise", "suggest", "rewrite",
    "check", "fix", "add", "remove", "delete", "set", "get", "put", "let", "need", "want", "any",
    "some", "all", "every", "each", "one", "two", "not", "no", "yes", "after", "before", "during",
    "since", "until", "about", "whats", "what's", "how's", "where's", "who's", "i'm", "i've", "i'd",
    "can't", "don't", "doesn't", "isn't", "won't", "their", "they", "he", "she", "me", "us",
    "как", "что", "почему", "зачем", "когда", "где", "куда", "откуда", "какой", "какая", "какое",
    "какие", "какого", "каким", "кто", "чем", "чему", "сколько", "можно", "нужно", "надо", "ли",
    "пожалуйста", "я", "мы", "вы", "ты", "мой", "моя", "моё", "мое", "мои", "у", "в", "во", "на", "с",
    "со", "к", "ко", "по", "о", "об", "от", "до", "из", "за", "для", "при", "без", "и", "а", "но", "или",
    "если", "то", "это", "этот", "эта", "эти", "там", "тут", "здесь", "привет", "здравствуйте",
    "спасибо", "подскажите", "подскажи", "скажи", "скажите", "объясни", "объясните", "напиши",
    "напишите", "переведи", "переведите", "сделай", "создай", "найди", "помоги", "помогите",
    "покажи", "опиши", "посчитай", "вычисли", "расскажи", "расскажите", "дай", "дайте", "сравни",
    "исправь", "проверь", "предложи", "перепиши", "сократи", "составь", "не", "нет", "да", "есть",
    "бывает", "ещё", "еще", "уже", "всё", "все", "вся", "весь", "каждый", "любой", "после", "перед",
    "хочу", "нужен", "нужна", "нужны", "могу", "может", "могут", "почему-то", "опять", "снова",
    "вопрос", "question", "problem", "проблема", "помощь", "ошибка", "error", "сегодня", "вчера",
    "завтра", "today", "yesterday", "tomorrow", "кратко", "briefly", "коротко", "срочно", "urgent",
}  # fmt: skip

# Words that carry no detail of a question: function words, and the verbs and fillers with which people
# ask for the same thing in different words ("calculate" / "what is", "напиши" / "составь").
FILLERS = set(
    """
a an the i me my we our you your it its is are was were be been do does did can could would should will
shall may might must how what why when where which who whom whose this that these those there here if in
on at for to from with by of and or but so then also please just any some all every each into onto up out
about as than get got way what's how's let's i'm quickest best good possible need want like make sure
really actually making made create set setup put use using via over through tell say said show explain
describe write compose draft calculate compute find check see view know happens process procedure kind
simply simple terms short briefly translate
как что почему зачем когда где куда какой какая какое какие каким кто чем чему сколько можно нужно надо
ли пожалуйста я мы вы ты мой моя мое мои мне меня у в во на с со к ко по о об от до из за для при и а но
или если то это этот эта эти там тут здесь же бы еще уже все вся весь правильно быстро лучше просто
вообще чтобы себе свой свою своего своей сделать делать сделай создать создай будет равно равен равна
посчитай вычисли скажи сказать переведи перевести напиши написать составь составить объясни расскажи
узнать посмотреть проверить быть есть через помоги помогите такое значит означает
""".split()
)
# Words that ask to turn one thing into another: then the order of the things named decides ("a string to
# an integer" / "an integer to a string").
CONVERSIONS = re.compile(
    r"(?<!\w)(?:convert\w*|cast|перевести|переведи|перевод\w*|преобразова\w*|конверт\w*)(?!\w)"
)
# A text that adds this many words of substance to an otherwise equal question asks something narrower
# ("sick leave" / "sick leave to care for my child").
NARROWER_WORDS = 2

STEM_CHARS = 5


def _stem(word: str) -> str:
    """A crude stem, the same for both texts: enough for "принтер" and "принтера", "Москва" and "Москвы",
    "printer" and "printers" to agree."""
    word = word.casefold().replace("ё", "е")
    if CYRILLIC.search(word):
        return word[:STEM_CHARS]
    return word.rstrip("'’").removesuffix("'s").removesuffix("’s").removesuffix("s") or word


class _Table:
    """One of the tables above, compiled into a single pattern: the values found in a text, in order."""

    def __init__(self, table: dict[str, str]) -> None:
        alternatives = []
        self.values: list[str] = []
        for key, value in sorted(table.items(), key=lambda item: -len(item[0])):
            if key.endswith("*"):
                alternatives.append(f"({re.escape(key[:-1])}\\w*)")
            else:
                plural = "(?:e?s)?" if LATIN.search(key) else ""
                alternatives.append(f"({re.escape(key)}{plural})(?![\\w])")
            self.values.append(value)
        self.pattern = re.compile(r"(?<![\w])(?:" + "|".join(alternatives) + ")")

    def find(self, lower_text: str) -> list[str]:
        return [self.values[(m.lastindex or 1) - 1] for m in self.pattern.finditer(lower_text)]


_DIRECTIONS = _Table(DIRECTIONS)
_LANGUAGES = _Table(LANGUAGES)
_TIME = _Table(TIME_WORDS)
_NUMBER_WORDS = _Table(NUMBER_WORDS)
_OPERATOR_WORDS = _Table(OPERATOR_WORDS)


@dataclass(frozen=True)
class Details:
    """What a text says exactly; see the module docstring."""

    exact: dict[str, Any]
    names: frozenset[str] = field(default_factory=frozenset)
    # Capitalised words that open a sentence and may be names.
    maybe_names: frozenset[str] = field(default_factory=frozenset)
    words: frozenset[str] = field(default_factory=frozenset)
    # Stems of the words of substance (not in FILLERS).
    content: frozenset[str] = field(default_factory=frozenset)
    directions: frozenset[str] = field(default_factory=frozenset)
    # Units of time ("per year", "how many days"), which a paraphrase may leave implicit.
    time_units: frozenset[str] = field(default_factory=frozenset)

    @classmethod
    def from_stored(cls, stored: dict[str, Any]) -> Details:
        """A stored entry's details, as far as `agree` reads them."""
        return cls(
            {},
            names=frozenset(stored["n"]),
            words=frozenset(stored["w"]),
            content=frozenset(stored["c"]),
            directions=frozenset(stored["d"]),
            time_units=frozenset(stored["u"]),
        )

    def stored(self) -> dict[str, list[str]]:
        """What `agree` needs of a stored entry's text."""
        return {
            "n": sorted(self.names | self.maybe_names),
            "w": sorted(self.words),
            "c": sorted(self.content),
            "d": sorted(self.directions),
            "u": sorted(self.time_units),
        }


def agree(a: Details, stored: dict[str, list[str]]) -> bool:
    """The checks that are not equalities, between a text and a stored entry's (`Details.stored`).

    Every name (or possible name) of each text is among the other's words: a name is the same one wherever
    it stands and however it is capitalised, but a name only one of them mentions is a different question
    ("Excel" / "Word", "Иванов" / "Петров"). And neither text is the other with details added.
    """
    if not (a.names | a.maybe_names) <= set(stored["w"]) or not set(stored["n"]) <= a.words:
        return False
    if not _directions_agree(a.directions, set(stored["d"])):
        return False
    if a.time_units and stored["u"] and a.time_units != set(stored["u"]):
        return False
    theirs = set(stored["c"])
    only_mine, only_theirs = a.content - theirs, theirs - a.content
    return not (
        (not only_mine and len(only_theirs) >= NARROWER_WORDS)
        or (not only_theirs and len(only_mine) >= NARROWER_WORDS)
    )


def _directions_agree(mine: set[str] | frozenset[str], theirs: set[str]) -> bool:
    """Opposite sides of a pair never agree. For an action ("enable", "add", "install") not naming one is
    asking for the action itself, its "+" side; for a choice between two equals ("ascending", "left")
    both must name the same side or neither."""
    for pair in {d[:-1] for d in mine | theirs}:
        sides_mine = {d[-1] for d in mine if d[:-1] == pair} or ({"+"} if pair in ACTIONS else set())
        sides_theirs = {d[-1] for d in theirs if d[:-1] == pair} or ({"+"} if pair in ACTIONS else set())
        if sides_mine != sides_theirs:
            return False
    return True


def _normal(text: str) -> str:
    return unicodedata.normalize("NFKC", text).replace("ё", "е").replace("Ё", "Е")


def surface_words(text: str) -> dict[str, str]:
    """The words of substance of a text as written (lower case), by stem."""
    return {
        _stem(word): word
        for word in SIMPLE_WORD.findall(_normal(text).casefold())
        if word not in FILLERS and len(word) > 1
    }


def read(text: str) -> Details:
    """The deciding details of one text."""
    text = _normal(text)
    quoted: list[str] = [" ".join(block.strip("`").split()) for block in FENCED.findall(text)]
    rest = FENCED.sub(" ", text)
    for match in QUOTED.finditer(rest):
        inner = next(g for g in match.groups() if g is not None)
        quoted.append(" ".join(inner.split()).casefold())
    lower = rest.casefold()

    # The language of the question, which is the answer's: Russian if it has Russian words outside quotes,
    # however many English terms it names.
    unquoted = QUOTED.sub(" ", rest)
    script = "cyrillic" if CYRILLIC.search(unquoted) else "latin" if LATIN.search(unquoted) else "none"

    identifiers = set()
    for token in IDENTIFIER_TOKEN.findall(rest):
        token = token.strip(".,;:!?()\"'«»")
        if token:
            identifiers.add(token.casefold())

    numbers: list[str] = []
    for match in NUMBER.finditer(rest):
        value = match.group().replace(",", ".")
        after = WORD.match(rest[match.end() :].lstrip())
        unit = _stem(after.group())[:4] if after and len(after.group()) <= 12 else ""
        numbers.append(f"{value}:{unit}" if unit else value)
    numbers += _NUMBER_WORDS.find(lower)

    operators = [
        m.group(1).replace("×", "*").replace("÷", "/").replace("x", "*") for m in OPERATOR.finditer(rest)
    ]
    operators += _OPERATOR_WORDS.find(lower)

    tokens = WORD.findall(lower)
    negation = any(t in NEGATIONS or t.endswith(("n't", "n’t")) for t in tokens)

    names: set[str] = set()
    maybe: set[str] = set()
    sentence_start = True
    cyrillic_text = script == "cyrillic"
    for raw in rest.split():
        for word in SIMPLE_WORD.findall(raw):
            stem = _stem(word)
            folded = word.casefold()
            if (word.isupper() and len(word) >= 2) or (cyrillic_text and LATIN.search(word)):
                names.add(stem)
            elif word[0].isupper() and folded not in OPENERS:
                if not sentence_start:
                    names.add(stem)
                else:
                    maybe.add(stem)
            if folded in KNOWN_NAMES:
                names.add(stem)
            sentence_start = False
        if SENTENCE_END.search(raw):
            sentence_start = True
    all_words = SIMPLE_WORD.findall(lower)
    words = frozenset(_stem(w) for w in all_words)
    content = [_stem(w) for w in all_words if w not in FILLERS and len(w) > 1]
    languages = _collapse(_LANGUAGES.find(lower))
    times = set(_TIME.find(lower))

    exact = {
        "script": script,
        "numbers": numbers,
        "operators": operators,
        "time": sorted({t for t in times if t not in TIME_UNITS}),
        "quoted": quoted,
        "identifiers": sorted(identifiers),
        "negation": negation,
        "languages": languages,
        # Translations are covered by the languages and the quoted text.
        "order": content if CONVERSIONS.search(lower) and not languages else [],
    }
    return Details(
        exact,
        frozenset(names),
        frozenset(maybe - names),
        words,
        frozenset(content),
        frozenset(_DIRECTIONS.find(lower)),
        frozenset(t for t in times if t in TIME_UNITS),
    )


def _collapse(values: list[str]) -> list[str]:
    out: list[str] = []
    for value in values:
        if not out or out[-1] != value:
            out.append(value)
    return out
