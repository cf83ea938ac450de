"""Safety triage of every patient message, before the model is asked.

This is the one place that decides whether a message is a crisis (the model is not asked),
carries red flags for a secondary cause (the reply must advise a doctor and is gated), or is
an attempt to override the assistant's instructions.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

_CRISIS = [
    r"\b(kill|killing|hurt|hurting|harm|harming|cut|cutting)\s+(my\s*self|myself|me)\b",
    r"\bsuicid\w*",
    r"\b(end|ending|take|taking)\s+(my|own)\s+(own\s+)?life\b",
    r"\b(want|wanna|going|plan|planning)\s+(to\s+)?die\b",
    r"\bdon'?t\s+want\s+to\s+(live|be\s+alive|be\s+here|wake\s+up)\b",
    r"\bno\s+(reason|point)\s+(to|in)\s+(live|living|going\s+on)\b",
    r"\bbetter\s+off\s+(dead|without\s+me)\b",
    r"\boverdos\w*",
    r"\b(chest\s+pain|can'?t\s+breathe|cannot\s+breathe|passing\s+out|fainted)\b",
]
_INJECTION = [
    r"\bignore\s+(all\s+|your\s+|the\s+|previous\s+|prior\s+)*(instructions|rules|prompt)",
    r"\b(reveal|show|print|repeat)\s+(me\s+)?(your|the)\s+(system\s+)?(prompt|instructions)",
    r"^\s*(system|assistant)\s*:",
    r"\byou\s+are\s+now\s+(a|an|in)\b",
    r"\bdeveloper\s+mode\b",
]
_CRISIS_RE = [re.compile(p, re.I) for p in _CRISIS]
_INJECTION_RE = [re.compile(p, re.I | re.M) for p in _INJECTION]


@dataclass(frozen=True)
class Triage:
    crisis: bool = False
    red_flags: tuple[str, ...] = ()
    injection: bool = False
    reasons: tuple[str, ...] = field(default_factory=tuple)

    @property
    def risk_flags(self) -> list[str]:
        flags = []
        if self.crisis:
            flags.append("crisis")
        flags.extend(f"red_flag:{name}" for name in self.red_flags)
        if self.injection:
            flags.append("injection")
        return flags

    @property
    def action(self) -> str:
        if self.crisis:
            return "crisis_resources_and_alert"
        if self.red_flags:
            return "answer_with_doctor_advice_gated"
        return "answer"


def triage(text: str, pack: Any) -> Triage:
    """Classify one message with the rules above and the pack's red-flag patterns."""
    crisis = [p.pattern for p in _CRISIS_RE if p.search(text)]
    flags = tuple(flag.id for flag in pack.red_flags if any(re.search(p, text, re.I) for p in flag.patterns))
    injection = any(p.search(text) for p in _INJECTION_RE)
    return Triage(crisis=bool(crisis), red_flags=flags, injection=injection, reasons=tuple(crisis))
