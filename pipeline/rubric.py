"""The experts' judgement per adapter version: rubric scores aggregated with 95% CIs.

Every reply row stores the adapter version that wrote it (``replies.adapter_version``; NULL
when the base model served) and every review decision stores its rubric scores (accuracy,
appropriateness, empathy, 1–5). Joining the two gives, per version, what the experts thought
of the replies it actually wrote in service — the measure closest to the product's purpose,
shown beside the multiple-choice table in ``llm4sweat eval`` and ``/eval``.

The interval is Student's t 95% interval of the mean (scipy), the usual choice for means of
small samples of bounded scores; with a single score there is no interval.
"""

from __future__ import annotations

import math
from typing import Any

CRITERIA = ("accuracy", "appropriateness", "empathy")
BASE_NAME = "base model"


def mean_ci(values: list[float]) -> dict[str, Any]:
    """Mean, 95% t interval (None for fewer than two values) and n."""
    n = len(values)
    if n == 0:
        return {"n": 0, "mean": None, "ci95": None}
    mean = sum(values) / n
    if n < 2:
        return {"n": n, "mean": round(mean, 3), "ci95": None}
    from scipy import stats

    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))
    if sd == 0:
        return {"n": n, "mean": round(mean, 3), "ci95": [round(mean, 3), round(mean, 3)]}
    low, high = stats.t.interval(0.95, n - 1, loc=mean, scale=sd / math.sqrt(n))
    return {"n": n, "mean": round(mean, 3), "ci95": [round(float(low), 3), round(float(high), 3)]}


async def rubric_by_version(db: Any) -> dict[str, dict[str, Any]]:
    """Per adapter version (``base model`` for replies of the base model): every criterion's
    mean with its 95% CI and n, and the number of decisions by action."""
    rows = await db.fetchall(
        "SELECT COALESCE(r.adapter_version, '') AS version, d.action, d.accuracy, d.appropriateness, d.empathy"
        " FROM review_decisions d JOIN review_items i ON i.id = d.item_id JOIN replies r ON r.id = i.reply_id"
        " ORDER BY d.id"
    )
    grouped: dict[str, list[Any]] = {}
    for row in rows:
        grouped.setdefault(row["version"] or BASE_NAME, []).append(row)
    out: dict[str, dict[str, Any]] = {}
    for version, decisions in grouped.items():
        entry: dict[str, Any] = {
            c: mean_ci([float(d[c]) for d in decisions if d[c] is not None]) for c in CRITERIA
        }
        actions: dict[str, int] = {}
        for d in decisions:
            actions[d["action"]] = actions.get(d["action"], 0) + 1
        entry["decisions"] = actions
        out[version] = entry
    return out


def _cell(stat: dict[str, Any]) -> str:
    if not stat or stat.get("mean") is None:
        return "-"
    ci = stat.get("ci95")
    return f"{stat['mean']:.2f}" + (f" [{ci[0]:.2f}-{ci[1]:.2f}]" if ci else "") + f" n={stat['n']}"


def rubric_table_text(rubric: dict[str, dict[str, Any]], width: int = 130) -> str:
    """The per-version rubric table as plain text."""
    import io

    from rich import box
    from rich.console import Console
    from rich.table import Table

    table = Table(box=box.ASCII2, title_justify="left",
                  title="Expert rubric scores (1-5) of replies in service, mean [95% t CI] per adapter version")
    table.add_column("version")
    for c in CRITERIA:
        table.add_column(c, justify="right", no_wrap=True)
    table.add_column("decisions", justify="right")
    for version, entry in rubric.items():
        actions = ", ".join(f"{k} {v}" for k, v in sorted((entry.get("decisions") or {}).items()))
        table.add_row(version, *[_cell(entry.get(c) or {}) for c in CRITERIA], actions or "-")
    buffer = io.StringIO()
    Console(file=buffer, width=width, color_system=None, force_terminal=False, highlight=False).print(table)
    return "\n".join(line.rstrip() for line in buffer.getvalue().splitlines()).strip("\n")
