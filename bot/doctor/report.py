"""What one doctor check found, and the report they make together."""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from typing import Any

OK_MARK = "✓"
FAIL_MARK = "✗"


@dataclass(frozen=True)
class Check:
    """One check's outcome. ``name`` is stable (tests and logs key on it, e.g.
    ``discord.channel_permissions``); ``subject`` says which thing was checked when a check
    runs once per thing (a channel, a replica); ``fix`` is one line telling the operator what
    to do, always given when the check failed."""

    name: str
    ok: bool
    detail: str
    fix: str = ""
    subject: str = ""

    def __post_init__(self) -> None:
        if not self.ok and not self.fix:
            raise ValueError(f"check {self.name} failed without a fix")

    @property
    def title(self) -> str:
        return f"{self.name} {self.subject}".strip()

    def lines(self) -> list[str]:
        mark = OK_MARK if self.ok else FAIL_MARK
        out = [f"{mark} {self.title}: {self.detail}"]
        if not self.ok:
            out.append(f"    fix: {self.fix}")
        return out


def ok(name: str, detail: str, subject: str = "") -> Check:
    return Check(name, True, detail, subject=subject)


def fail(name: str, detail: str, fix: str, subject: str = "") -> Check:
    return Check(name, False, detail, fix, subject)


@dataclass
class Report:
    checks: list[Check] = field(default_factory=list)
    finished_at: float = field(default_factory=time.time)

    @property
    def failed(self) -> list[Check]:
        return [c for c in self.checks if not c.ok]

    @property
    def passed(self) -> bool:
        return not self.failed

    def named(self, name: str) -> list[Check]:
        return [c for c in self.checks if c.name == name]

    def summary(self) -> str:
        bad = len(self.failed)
        good = len(self.checks) - bad
        return f"{good} {OK_MARK}, {bad} {FAIL_MARK}"

    def text(self) -> str:
        return "\n".join(line for check in self.checks for line in check.lines())

    def as_json(self) -> dict[str, Any]:
        return {"passed": self.passed, "summary": self.summary(), "finished_at": self.finished_at,
                "checks": [asdict(c) for c in self.checks]}
