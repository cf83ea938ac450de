"""Out of scope (from the pack's ``safety/policy.toml``): dosing questions, diagnosing someone
else, other conditions; and the dosing ranges the reply checks use."""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, Iterable

BOUNDARY = {
    "other_condition": (
        "Thank you for asking. I'm an assistant for hyperhidrosis (excessive sweating) only, so I can't give "
        "reliable advice about other health conditions. A doctor, nurse or pharmacist is the right person for "
        "this question. If sweating is part of what's going on, I'm glad to help with that side of it."
    ),
    "dosing": (
        "I understand you want to get this right. I can't advise on doses, how often to take a medicine, or "
        "changing a dose: that has to come from the person who prescribed it, the pharmacist, or the leaflet "
        "that came with the medicine. Please don't change a dose on your own. If you took more than you should "
        "and feel unwell (very hot, confused, fast heartbeat, unable to pass urine), call your local emergency "
        "number or poison line now."
    ),
    "someone_else": (
        "It's kind of you to look out for them. I can't diagnose someone else: that needs a clinician who can "
        "talk with and examine them, so please encourage them to see a doctor. I'm happy to share general "
        "information about hyperhidrosis and its treatments if that helps."
    ),
}


@dataclass(frozen=True)
class DoseRange:
    id: str
    names: tuple[re.Pattern[str], ...]
    unit: str
    min: float
    max: float
    source: str = ""


@dataclass(frozen=True)
class SafetyPolicy:
    dosing: tuple[DoseRange, ...] = ()
    other_conditions: tuple[re.Pattern[str], ...] = ()
    in_scope_words: tuple[re.Pattern[str], ...] = ()
    dosing_questions: tuple[re.Pattern[str], ...] = ()
    someone_else: tuple[re.Pattern[str], ...] = ()


def _compile_all(items: Iterable[str]) -> tuple[re.Pattern[str], ...]:
    return tuple(re.compile(p if p.startswith("\\b") else rf"\b{p}", re.IGNORECASE) for p in items)


@lru_cache(maxsize=16)
def _load_policy(path: str, mtime: int) -> SafetyPolicy:
    data = tomllib.loads(Path(path).read_text(encoding="utf-8"))
    scope = data.get("out_of_scope", {})
    dosing = tuple(
        DoseRange(
            id=d["id"],
            names=tuple(re.compile(rf"\b(?:{n})\b", re.IGNORECASE) for n in d["names"]),
            unit=d["unit"],
            min=float(d["min"]),
            max=float(d["max"]),
            source=d.get("source", ""),
        )
        for d in data.get("dosing", [])
    )
    return SafetyPolicy(
        dosing=dosing,
        other_conditions=_compile_all(scope.get("other_conditions", [])),
        in_scope_words=_compile_all(scope.get("in_scope_words", [])),
        dosing_questions=_compile_all(scope.get("dosing_questions", [])),
        someone_else=_compile_all(scope.get("someone_else", [])),
    )


_pack_policies: dict[int, tuple[Any, SafetyPolicy]] = {}


def policy_for(pack: Any) -> SafetyPolicy:
    """The pack's ``safety/policy.toml`` (an empty policy when the pack has none)."""
    cached = _pack_policies.get(id(pack))
    if cached is not None and cached[0] is pack:
        return cached[1]
    policy = _read_policy(pack)
    if pack is not None:
        _pack_policies[id(pack)] = (pack, policy)
    return policy


def _read_policy(pack: Any) -> SafetyPolicy:
    pack_path = getattr(pack, "path", None)
    if pack_path is None:
        return SafetyPolicy()
    file = Path(pack_path) / "safety" / "policy.toml"
    if not file.is_file():
        return SafetyPolicy()
    return _load_policy(str(file), file.stat().st_mtime_ns)


@lru_cache(maxsize=64)
def _any_of(patterns: tuple[re.Pattern[str], ...]) -> re.Pattern[str] | None:
    if not patterns:
        return None
    return re.compile("|".join(f"(?:{p.pattern})" for p in patterns), re.IGNORECASE)


def _found(patterns: tuple[re.Pattern[str], ...], text: str) -> bool:
    combined = _any_of(patterns)
    return combined is not None and combined.search(text) is not None


def out_of_scope(text: str, policy: SafetyPolicy) -> str | None:
    """``dosing``, ``someone_else``, ``other_condition`` or None."""
    if _found(policy.dosing_questions, text):
        return "dosing"
    if _found(policy.someone_else, text):
        return "someone_else"
    if _found(policy.other_conditions, text) and not _found(policy.in_scope_words, text):
        return "other_condition"
    return None
