"""guards: the details two questions must share before one's answer may serve the other."""

from __future__ import annotations

import pytest

from genai_gateway import guards


def same(a: str, b: str) -> bool:
    da, db = guards.read(a), guards.read(b)
    return da.exact == db.exact and guards.agree(da, db.stored()) and guards.agree(db, da.stored())


@pytest.mark.parametrize(
    ("a", "b"),
    [
        ("Сколько будет 2+2?", "Сколько будет 2+3?"),
        ("What is 7 * 8?", "What is 7 + 8?"),
        ("What is two plus two?", "What is two plus three?"),
        ("Translate 'good morning' into German", "Translate 'good morning' into French"),
        ("Переведи на английский «Пароль истёк»", "Переведи на английский «Пароль неверный»"),
        ("Outlook не синхронизирует почту", "Thunderbird не синхронизирует почту"),
        ("How do I clear the cache in Chrome?", "How do I clear the cache in Firefox?"),
        ("How do I enable two-factor authentication?", "How do I disable two-factor authentication?"),
        ("Как объединить ячейки в Excel?", "Как разъединить ячейки в Excel?"),
        ("Почему компьютер выключается сам?", "Почему компьютер не выключается?"),
        ("Is the maintenance on Saturday?", "Is the maintenance on Sunday?"),
        ("What does `print(3 // 2)` output?", "What does `print(3 / 2)` output?"),
        ("How do I open port 8080?", "How do I open port 443?"),
        ("I can't reach intranet.corp.local", "I can't reach jira.corp.local"),
        ("Convert a string to an integer in Python", "Convert an integer to a string in Python"),
        ("How do I report sick leave?", "How do I report sick leave to care for my child?"),
        # The language of the question is the answer's.
        ("Как сбросить пароль?", "How do I reset my password?"),
    ],
)
def test_a_decisive_detail_makes_two_questions_differ(a: str, b: str) -> None:
    assert not same(a, b)


@pytest.mark.parametrize(
    ("a", "b"),
    [
        ("Outlook не синхронизирует почту, что делать?", "Что делать, если Outlook не синхронизирует почту?"),
        ("Сколько будет 17 умножить на 23?", "Чему равно 17 умножить на 23?"),
        ("How do I clear the cache in Chrome?", "How can I clear Chrome's browser cache?"),
        ("Как установить драйвер для сканера?", "Как поставить драйвер на сканер?"),
        ("Почему git пишет, что у меня detached HEAD?", "Что значит detached HEAD в git?"),
        ('Translate "Good morning" into German', 'How do you say "Good morning" in German?'),
        ("Как закрепить верхнюю строку в Excel?", "Как в Excel закрепить верхнюю строку?"),
    ],
)
def test_paraphrases_keep_their_details(a: str, b: str) -> None:
    assert same(a, b)


def test_details_read_from_a_text() -> None:
    details = guards.read("Напиши письмо Ивану Петрову о переносе встречи на 15 марта в 10:00, не позже")
    assert details.exact["script"] == "cyrillic"
    assert details.exact["numbers"][0] == "15:март"
    assert "10:00" in details.exact["identifiers"]
    assert "m3" in details.exact["time"]
    assert details.exact["negation"] is True
    assert {"ивану", "петро"} <= details.names  # stems: "Петрову" and "Петрова" agree
