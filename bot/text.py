"""Splitting long replies for platforms with a message-size limit.

Splits at the most natural boundary that fits (paragraph, line, sentence, word) and never
inside a word; a fenced code block that must be cut is closed and reopened so markdown
renders correctly in every part.
"""

from __future__ import annotations

import re

_BOUNDARIES = ("\n\n", "\n", ". ", "! ", "? ", "; ", ", ", " ")
FENCE = "```"


def split_message(text: str, limit: int) -> list[str]:
    """Parts of ``text``, each at most ``limit`` characters, that read naturally in order."""
    if limit < 20:
        raise ValueError("limit must be at least 20 characters")
    text = text.strip()
    if len(text) <= limit:
        return [text] if text else []
    parts: list[str] = []
    rest = text
    reopen = ""
    while rest:
        rest = reopen + rest
        if len(rest) <= limit:
            parts.append(rest)
            break
        budget = limit - len(FENCE) - 1  # room to close an open fence
        cut = _best_cut(rest, budget)
        part, rest = rest[:cut].rstrip(), rest[cut:].lstrip()
        if part.count(FENCE) % 2 == 1:
            lang = _open_fence_lang(part)
            part += "\n" + FENCE
            reopen = FENCE + lang + "\n"
        else:
            reopen = ""
        parts.append(part)
    return [p for p in parts if p.strip()]


def _best_cut(text: str, budget: int) -> int:
    window = text[:budget]
    for boundary in _BOUNDARIES:
        index = window.rfind(boundary)
        if index >= budget // 3:
            return index + len(boundary)
    return budget  # a single word longer than the budget: cut it, nothing else fits


def _open_fence_lang(part: str) -> str:
    last = part.rfind(FENCE)
    match = re.match(r"[A-Za-z0-9_+-]*", part[last + len(FENCE):])
    return match.group(0) if match else ""


def fit_lines(lines: list[str], limit: int, sep: str = "\n") -> str:
    """Join ``lines`` (oldest first) in at most ``limit`` characters: the newest are kept, and
    what does not fit is taken from the oldest — dropped, or the oldest kept one cut short."""
    kept: list[str] = []
    used = 0
    for line in reversed(lines):
        gap = len(sep) if kept else 0
        if used + gap + len(line) <= limit:
            kept.append(line)
            used += gap + len(line)
            continue
        room = limit - used - gap
        if room >= 40:  # a cut turn still says something
            kept.append(line[: room - 1].rstrip() + "…")
        break
    return sep.join(reversed(kept))


# How a text split for editing was cut, one letter per cut: the separator removed there.
EDIT_SEPARATORS = {"p": "\n\n", "l": "\n", "s": " ", "n": ""}


def split_for_editing(text: str, limit: int, max_parts: int) -> tuple[list[str], str] | None:
    """``text`` as at most ``max_parts`` parts of at most ``limit`` characters, for forms whose
    inputs hold ``limit`` each, and the separators removed at the cuts (see EDIT_SEPARATORS);
    :func:`join_edited` puts them back, so an unchanged form gives back exactly ``text``. Cuts
    are at a paragraph, a line or a space in the second half of a part, else mid-word. None when
    the text needs more parts (the caller must then say so, never cut silently)."""
    parts: list[str] = []
    seps = ""
    rest = text
    while len(rest) > limit:
        if len(parts) + 1 >= max_parts:
            return None
        for key in ("p", "l", "s"):
            sep = EDIT_SEPARATORS[key]
            at = rest.rfind(sep, 0, limit + len(sep))
            if at >= limit // 2 and at <= limit:
                parts.append(rest[:at])
                seps += key
                rest = rest[at + len(sep):]
                break
        else:
            parts.append(rest[:limit])
            seps += "n"
            rest = rest[limit:]
    parts.append(rest)
    return parts, seps


def join_edited(parts: list[str], seps: str) -> str:
    """The text of an edit form's parts (inverse of :func:`split_for_editing`)."""
    out = []
    for index, part in enumerate(parts):
        out.append(part)
        if index < len(parts) - 1:
            out.append(EDIT_SEPARATORS.get(seps[index] if index < len(seps) else "p", "\n\n"))
    return "".join(out)


def local_time(ts: float | None) -> str:
    """A stored time (epoch seconds) as people read it: this machine's local date and time
    with its zone ("2026-12-02 16:30 CET"); "-" for none. One rule for the CLI and commands."""
    if ts is None:
        return "-"
    import datetime

    return datetime.datetime.fromtimestamp(float(ts)).astimezone().strftime("%Y-%m-%d %H:%M %Z")
