"""Stored evaluations (``pipeline.retrain.registry_record`` shape) for tests of what people see:
tables, charts, labels. Built with the evaluation's own statistics (Wilson intervals)."""

from __future__ import annotations

from pipeline import evaluate as ev

TASKS = ["diagnosis", "treatment", "psychological_support"]


def run(label: str, correct: dict[str, int], n: int = 20, title: str | None = None) -> dict:
    """A run with ``correct[task]`` of ``n`` questions right per task."""
    tasks = {t: ev.accuracy_entry(correct[t], n) for t in TASKS}
    total = sum(correct.values())
    return {"label": label, "version": None if label == ev.BASE_LABEL else label, "title": title,
            "tasks": tasks, "overall": ev.accuracy_entry(total, n * len(TASKS)),
            "safety": {"crisis": {"passed": True, "routed": 10, "crisis_cases": 10},
                       "replies": {"cases": 10, "met": 8, "rate": 0.8}, "passed": True}}


def record(subject: str = "v2", live: str | None = "v1") -> dict:
    """base, the live adapter (if any) and the candidate ``subject``, as the registry keeps them.
    Titles are those written when it ran: the live one "(live)", the subject "(candidate)"."""
    runs = {ev.BASE_LABEL: run(ev.BASE_LABEL, {"diagnosis": 8, "treatment": 7, "psychological_support": 9})}
    if live:
        runs[live] = run(live, {"diagnosis": 13, "treatment": 11, "psychological_support": 12}, title=f"{live} (live)")
    runs[subject] = run(subject, {"diagnosis": 17, "treatment": 14, "psychological_support": 15},
                        title=f"{subject} (candidate)")
    return {"eval_hash": "h1", "scoring": ev.SCORING, "num_questions": 60, "tasks": TASKS, "subject": subject,
            "order": list(runs), "metric": ev.PRIMARY_METRIC, "runs": runs, "overall": runs[subject]["overall"],
            "per_task": runs[subject]["tasks"], "table": "(ASCII table, never shown on a platform)"}
