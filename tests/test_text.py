import pytest

from bot.text import split_message


def test_short_text_untouched():
    assert split_message("Hello there.", 2000) == ["Hello there."]
    assert split_message("   ", 2000) == []


def test_never_splits_mid_word_and_keeps_everything():
    words = [f"word{i}" for i in range(3000)]
    text = " ".join(words)
    parts = split_message(text, 2000)
    assert all(len(p) <= 2000 for p in parts)
    assert " ".join(parts).split() == words


def test_prefers_paragraphs():
    text = ("a" * 900 + "\n\n") * 3
    parts = split_message(text, 2000)
    assert all(p.strip("a") == "" or "\n\n" in p for p in parts)
    assert len(parts) == 2


def test_code_fence_closed_and_reopened():
    text = "Intro\n```python\n" + "\n".join(f"x = {i}" for i in range(600)) + "\n```\nEnd."
    parts = split_message(text, 500)
    assert len(parts) > 2
    for part in parts:
        assert len(part) <= 500
        assert part.count("```") % 2 == 0


def test_limit_too_small():
    with pytest.raises(ValueError):
        split_message("x", 5)


def test_fit_lines_gives_way_from_the_oldest():
    from bot.text import fit_lines

    lines = ["oldest " + "a" * 60, "middle " + "b" * 60, "newest " + "c" * 60]
    assert fit_lines(lines, 1000) == "\n".join(lines)
    two = fit_lines(lines, 140)
    assert two == "\n".join(lines[1:])  # the oldest dropped whole
    cut = fit_lines(lines, 190)
    assert cut.endswith("\n".join(lines[1:])) and cut.startswith("oldest") and "…" in cut and len(cut) <= 190
    assert fit_lines(lines, 30) == ""  # not even the newest fits: nothing rather than a stub


def test_split_for_editing_joins_back_exactly():
    from bot.text import join_edited, split_for_editing

    paragraphs = ["Paragraph %d. " % i + "word " * 150 for i in range(12)]
    text = "\n\n".join(p.strip() for p in paragraphs) + "\nlast line " + "x" * 5000  # and a 5,000-char "word"
    parts, seps = split_for_editing(text, 4000, 5)
    assert all(len(p) <= 4000 for p in parts) and len(parts) <= 5 and len(seps) == len(parts) - 1
    assert join_edited(parts, seps) == text
    assert "p" in seps and "n" in seps  # paragraph boundaries where possible, mid-word only when forced
    assert split_for_editing(text, 4000, 2) is None  # too long for the form: the caller must say so
    assert split_for_editing("short", 3000, 1) == (["short"], "")
