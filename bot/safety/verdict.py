"""The verdict of the safety triage on one patient message."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Triage:
    crisis: bool = False
    red_flags: tuple[str, ...] = ()
    injection: bool = False
    reasons: tuple[str, ...] = field(default_factory=tuple)
    crisis_kind: str | None = None  # self_harm | harm_others | medical_emergency | classifier
    crisis_score: float = 0.0  # the classifier's probability
    out_of_scope: str | None = None  # dosing | someone_else | other_condition
    language: str = "en"
    language_supported: bool = True
    possible_crisis: bool = False  # classifier unsure (between the two thresholds): a human looks first

    @property
    def review_first(self) -> bool:
        """The model may answer, but nobody sees the reply until a specialist has reviewed it."""
        return bool(self.red_flags) or self.possible_crisis or self.injection

    @property
    def risk_flags(self) -> list[str]:
        flags = []
        if self.crisis:
            flags.append("crisis")
        if self.possible_crisis:
            flags.append("possible_crisis")
        flags.extend(f"red_flag:{name}" for name in self.red_flags)
        if self.out_of_scope:
            flags.append(f"out_of_scope:{self.out_of_scope}")
        if self.injection:
            flags.append("injection")
        if not self.language_supported:
            flags.append(f"language:{self.language}")
        return flags

    @property
    def action(self) -> str:
        if self.crisis:
            return "crisis_resources_and_alert"
        if not self.language_supported:
            return "language_notice"
        if self.red_flags:
            return "answer_with_doctor_advice_gated"
        if self.out_of_scope:
            return "out_of_scope_boundary"
        if self.injection:
            return "answer_with_injection_guard_gated"
        if self.possible_crisis:
            return "answer_gated_possible_crisis"
        return "answer"

    def as_json(self) -> dict[str, Any]:
        return {
            "crisis": self.crisis,
            "crisis_kind": self.crisis_kind,
            "crisis_score": round(self.crisis_score, 3),
            "possible_crisis": self.possible_crisis,
            "red_flags": list(self.red_flags),
            "out_of_scope": self.out_of_scope,
            "injection": self.injection,
            "language": self.language,
            "language_supported": self.language_supported,
            "action": self.action,
        }
