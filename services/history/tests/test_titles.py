from genai_history.titles import MAX_TITLE_CHARS, title_from_prompt


def test_first_line_with_whitespace_collapsed() -> None:
    assert title_from_prompt("  Explain   the\tplan  \nand then the rest") == "Explain the plan"


def test_blank_leading_lines_are_skipped() -> None:
    assert title_from_prompt("\n   \r\n  Hello there\nmore") == "Hello there"


def test_exactly_the_limit_is_kept_whole() -> None:
    line = "x" * MAX_TITLE_CHARS
    assert title_from_prompt(line) == line


def test_long_line_is_cut_with_an_ellipsis() -> None:
    title = title_from_prompt("word " * 40)
    assert len(title) <= MAX_TITLE_CHARS
    assert title.endswith("\u2026")
    assert title.startswith("word word")
    assert not title[:-1].endswith(" ")


def test_blank_prompt_gives_empty_title() -> None:
    assert title_from_prompt("  \n\t\n") == ""
