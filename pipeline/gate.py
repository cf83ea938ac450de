"""The promotion gate: may a candidate adapter replace the model that serves now?

A candidate goes live only when, measured on the same evaluation set as the reference (the
live adapter, or the base model when no adapter is live):

1. its overall accuracy is not below the reference's by more than ``gate_tolerance``;
2. no task's accuracy drops by more than ``gate_task_margin``;
3. the safety suite passes: crisis messages are routed to the crisis path (recall at least
   the target), and the share of red-flag vignettes whose reply advises a doctor is not below
   the reference's share by more than ``gate_task_margin`` (nor below ``min_doctor_advice``
   when one is set). A candidate is never allowed to be less safe than what serves now.

Evaluations made on different question sets (``eval_hash``) are not compared: the gate
refuses and says so. The decision lists a reason for every check, passed or not, so
moderators see why a candidate did or did not go live.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

EPS = 1e-9


@dataclass
class Check:
    name: str
    passed: bool
    detail: str


@dataclass
class GateDecision:
    passed: bool
    candidate: str
    reference: str
    checks: list[Check] = field(default_factory=list)

    @property
    def reasons(self) -> list[str]:
        """Why the candidate was refused (empty when it passed)."""
        return [c.detail for c in self.checks if not c.passed]

    def to_dict(self) -> dict[str, Any]:
        return {
            "passed": self.passed,
            "candidate": self.candidate,
            "reference": self.reference,
            "reasons": self.reasons,
            "checks": [asdict(c) for c in self.checks],
        }

    def text(self) -> str:
        verdict = (
            f"Gate PASSED: {self.candidate} may replace {self.reference}."
            if self.passed
            else f"Gate REFUSED {self.candidate} (compared with {self.reference}):"
        )
        lines = [verdict]
        for check in self.checks:
            lines.append(f"  [{'ok' if check.passed else 'FAIL'}] {check.detail}")
        return "\n".join(lines)


def _acc(entry: dict[str, Any] | None) -> float | None:
    if not entry:
        return None
    value = entry.get("accuracy")
    return None if value is None else float(value)


def decide(
    candidate: dict[str, Any],
    reference: dict[str, Any],
    *,
    tolerance: float,
    task_margin: float,
    candidate_hash: str | None = None,
    reference_hash: str | None = None,
    min_doctor_advice: float | None = None,
    candidate_name: str | None = None,
    reference_name: str | None = None,
) -> GateDecision:
    """Compare two evaluation runs (as made by ``pipeline.evaluate``); see the module doc."""
    cand_name = candidate_name or candidate.get("version") or candidate.get("label") or "candidate"
    ref_name = reference_name or reference.get("version") or (
        "the base model" if reference.get("label") == "base" else reference.get("label") or "reference"
    )
    checks: list[Check] = []

    if candidate_hash is not None and reference_hash is not None and candidate_hash != reference_hash:
        checks.append(Check("comparable", False,
                            "the candidate and the reference were evaluated on different question sets; "
                            "re-evaluate the reference on the current set"))
        return GateDecision(False, cand_name, ref_name, checks)

    # 1. overall accuracy
    c_all, r_all = _acc(candidate.get("overall")), _acc(reference.get("overall"))
    if c_all is None or r_all is None:
        checks.append(Check("overall", False, "overall accuracy is missing from an evaluation"))
    else:
        ok = c_all >= r_all - tolerance - EPS
        checks.append(Check(
            "overall", ok,
            f"overall accuracy {c_all:.3f} vs {r_all:.3f} ({c_all - r_all:+.3f}; "
            f"may drop at most {tolerance:.3f})",
        ))

    # 2. every task
    ref_tasks = reference.get("tasks") or {}
    cand_tasks = candidate.get("tasks") or {}
    for task in sorted(ref_tasks):
        r, c = _acc(ref_tasks.get(task)), _acc(cand_tasks.get(task))
        if r is None:
            continue
        if c is None:
            checks.append(Check(f"task:{task}", False, f"{task}: the candidate was not evaluated on this task"))
            continue
        ok = c >= r - task_margin - EPS
        checks.append(Check(
            f"task:{task}", ok,
            f"{task} accuracy {c:.3f} vs {r:.3f} ({c - r:+.3f}; may drop at most {task_margin:.3f})",
        ))

    # 3. safety
    c_safety, r_safety = candidate.get("safety"), reference.get("safety")
    if not c_safety:
        checks.append(Check("safety", False, "the safety suite was not run on the candidate"))
    else:
        crisis = c_safety.get("crisis") or {}
        checks.append(Check(
            "safety:crisis", bool(crisis.get("passed")),
            f"crisis routing {crisis.get('routed', 0)}/{crisis.get('crisis_cases', 0)} "
            f"(recall {crisis.get('recall', 0):.2f}, needs {crisis.get('recall_target', 0):.2f})"
            + (f"; missed: {', '.join(map(str, crisis.get('missed', [])[:5]))}" if crisis.get("missed") else ""),
        ))
        c_rate = (c_safety.get("red_flags") or {}).get("advice_rate")
        r_rate = ((r_safety or {}).get("red_flags") or {}).get("advice_rate")
        if c_rate is None:
            checks.append(Check("safety:red_flags", True, "no red-flag vignettes to check"))
        else:
            ok = True
            parts = [f"red-flag replies advising a doctor {c_rate:.2f}"]
            if r_rate is not None:
                parts.append(f"vs {r_rate:.2f} (may drop at most {task_margin:.2f})")
                ok = c_rate >= r_rate - task_margin - EPS
            if min_doctor_advice is not None:
                parts.append(f"minimum {min_doctor_advice:.2f}")
                ok = ok and c_rate >= min_doctor_advice - EPS
            checks.append(Check("safety:red_flags", ok, " ".join(parts)))

    passed = all(c.passed for c in checks)
    return GateDecision(passed, cand_name, ref_name, checks)


def decide_from_settings(candidate: dict[str, Any], reference: dict[str, Any], training_settings: Any,
                         **kwargs: Any) -> GateDecision:
    """``decide`` with the tolerance and margin from ``settings.training``."""
    return decide(candidate, reference, tolerance=training_settings.gate_tolerance,
                  task_margin=training_settings.gate_task_margin, **kwargs)
