"""The moderator's charts: where people compare, a picture beside the numbers.

* ``evaluation`` — per-task multiple-choice accuracy with 95% Wilson intervals for the base
  model, the live adapter and the candidate of the newest evaluation (the same figure as the
  retrain result's PNG, ``pipeline.evaluate.bar_figure``), each model named as it is now;
* ``versions`` — across adapter versions in the order they were trained: each version's own
  overall accuracy (95% CI) and the experts' mean rubric scores of the replies it wrote;
* ``reviews`` — review decisions per week (throughput) and the share approved / edited /
  rejected each week.

Each ``*_data`` function reads the database and returns plain JSON (also served to the page,
so the numbers are there for anyone who cannot see the picture); ``svg(name, data)`` draws it
with matplotlib's object API (no pyplot state, so it may run in a thread).
"""

from __future__ import annotations

import datetime
import io
from typing import Any

from bot.reports import statuses, title_now

NAMES = ("evaluation", "versions", "reviews")
ACTIONS = ("approve", "edit", "reject")
PAST = {"approve": "approved", "edit": "edited", "reject": "rejected"}
RUBRIC = ("accuracy", "appropriateness", "empathy")
WEEKS = 12  # the reviews chart shows the last twelve weeks that had decisions


async def evaluation_data(db: Any) -> dict[str, Any] | None:
    """The newest stored evaluation with today's names (None before the first one)."""
    from pipeline import registry

    for row in await registry.all_versions(db):
        record = row["evaluation"]
        if record and record.get("runs"):
            now = await statuses(db)
            runs = {label: {**run, "title": title_now(label, now)} for label, run in record["runs"].items()}
            return {**record, "runs": runs, "order": [x for x in (record.get("order") or list(runs)) if x in runs],
                    "version": row["version"]}
    return None


async def versions_data(db: Any) -> dict[str, Any]:
    """One point per model, oldest first: the base model, then each trained version."""
    from pipeline import registry
    from pipeline.rubric import BASE_NAME, rubric_by_version

    rows = list(reversed(await registry.all_versions(db)))
    rubric = await rubric_by_version(db)
    points: list[dict[str, Any]] = []
    base = None
    for row in rows:
        base = ((row["evaluation"] or {}).get("runs") or {}).get("base") or base
    if base is not None or BASE_NAME in rubric:
        points.append({"version": BASE_NAME, "status": "", "at": None,
                       "accuracy": (base or {}).get("overall"), "rubric": _means(rubric.get(BASE_NAME))})
    for row in rows:
        own = ((row["evaluation"] or {}).get("runs") or {}).get(row["version"]) or {}
        points.append({"version": row["version"], "status": row["status"], "at": row["created_at"],
                       "accuracy": own.get("overall"), "rubric": _means(rubric.get(row["version"]))})
    return {"points": points}


def _means(entry: dict[str, Any] | None) -> dict[str, Any]:
    return {c: ((entry or {}).get(c) or {}).get("mean") for c in RUBRIC} | {
        "n": max([((entry or {}).get(c) or {}).get("n") or 0 for c in RUBRIC], default=0)}


async def reviews_data(db: Any) -> dict[str, Any]:
    """Decisions per ISO week (Monday, local time) with their split by action."""
    rows = await db.fetchall("SELECT action, created_at FROM review_decisions ORDER BY created_at")
    weeks: dict[str, dict[str, int]] = {}
    for row in rows:
        day = datetime.datetime.fromtimestamp(float(row["created_at"])).date()
        monday = (day - datetime.timedelta(days=day.weekday())).isoformat()
        week = weeks.setdefault(monday, {a: 0 for a in ACTIONS})
        week[row["action"]] = week.get(row["action"], 0) + 1
    out = []
    for monday in sorted(weeks)[-WEEKS:]:
        counts = weeks[monday]
        total = sum(counts.values())
        out.append({"week": monday, "total": total, "counts": counts,
                    "rates": {a: round(counts[a] / total, 3) if total else None for a in ACTIONS}})
    return {"weeks": out}


async def data(db: Any, name: str) -> Any:
    return await {"evaluation": evaluation_data, "versions": versions_data, "reviews": reviews_data}[name](db)


# ---------------------------------------------------------------------------- drawing


def svg(name: str, payload: Any) -> bytes:
    """The chart as SVG with its words kept as text (selectable, read by screen readers)."""
    import matplotlib

    with matplotlib.rc_context({"svg.fonttype": "none"}):
        fig = {"evaluation": _evaluation_figure, "versions": _versions_figure, "reviews": _reviews_figure}[name](payload)
        buffer = io.BytesIO()
        fig.savefig(buffer, format="svg")
    return buffer.getvalue()


def _empty(text: str) -> Any:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6.0, 1.2), dpi=100)
    fig.text(0.5, 0.5, text, ha="center", va="center", fontsize=11, color="#555")
    return fig


def _evaluation_figure(record: dict[str, Any] | None) -> Any:
    if not record:
        return _empty("No evaluation yet: the first retraining job makes one.")
    from pipeline.evaluate import bar_figure

    return bar_figure(record, record["order"], title=f"Evaluation of {record['runs'][record['version']]['title']}"
                      if record["version"] in record["runs"] else None)


def _versions_figure(payload: dict[str, Any]) -> Any:
    points = payload["points"]
    if not points:
        return _empty("No adapter versions yet.")
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7.5, 4.6), dpi=100)
    top, bottom = fig.subplots(2, 1, sharex=True)
    xs = list(range(len(points)))
    labels = [p["version"] + (f"\n{p['status']}" if p["status"] else "") +
              (f"\n{datetime.datetime.fromtimestamp(p['at']).strftime('%d %b')}" if p["at"] else "") for p in points]
    acc = [(x, p["accuracy"]) for x, p in zip(xs, points) if p["accuracy"] and p["accuracy"].get("accuracy") is not None]
    if acc:
        values = [a["accuracy"] for _, a in acc]
        low = [v - a["ci95"][0] for v, (_, a) in zip(values, acc)]
        high = [a["ci95"][1] - v for v, (_, a) in zip(values, acc)]
        top.errorbar([x for x, _ in acc], values, yerr=[low, high], marker="o", capsize=3, label="overall accuracy")
        for x, v in zip([x for x, _ in acc], values):
            top.annotate(f"{v:.2f}", (x, v), xytext=(6, 0), textcoords="offset points", fontsize=7, va="center")
        top.legend(fontsize=7, loc="lower right")
    top.set_ylim(0, 1.05)
    top.set_ylabel("accuracy (95% CI)")
    top.set_title("Across adapter versions, oldest first", fontsize=10)
    for criterion, marker in zip(RUBRIC, "os^"):
        pts = [(x, p["rubric"][criterion]) for x, p in zip(xs, points) if p["rubric"].get(criterion) is not None]
        if pts:
            bottom.plot([x for x, _ in pts], [v for _, v in pts], marker=marker, label=criterion)
    bottom.set_ylim(0.8, 5.2)
    bottom.set_ylabel("mean expert score (1–5)")
    bottom.set_xticks(xs, labels, fontsize=7)
    if bottom.get_legend_handles_labels()[0]:
        bottom.legend(fontsize=7, loc="lower right")
    else:
        bottom.text(0.5, 0.5, "no rubric scores yet", transform=bottom.transAxes, ha="center", color="#777")
    fig.tight_layout()
    return fig


def _reviews_figure(payload: dict[str, Any]) -> Any:
    weeks = payload["weeks"]
    if not weeks:
        return _empty("No review decisions yet.")
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7.5, 4.6), dpi=100)
    top, bottom = fig.subplots(2, 1, sharex=True)
    xs = list(range(len(weeks)))
    bars = top.bar(xs, [w["total"] for w in weeks], color="#4a78b5")
    top.bar_label(bars, fontsize=7)
    top.set_ylabel("decisions")
    top.set_title("Review throughput and outcomes per week", fontsize=10)
    bottomline = [0.0] * len(weeks)
    colors = {"approve": "#3a9a5b", "edit": "#e0a030", "reject": "#c8453c"}
    for action in ACTIONS:
        values = [w["rates"][action] or 0.0 for w in weeks]
        bottom.bar(xs, values, bottom=bottomline, color=colors[action], label=PAST[action])
        bottomline = [b + v for b, v in zip(bottomline, values)]
    bottom.set_ylim(0, 1)
    bottom.set_ylabel("share of decisions")
    bottom.set_xticks(xs, [f"week of\n{w['week']}" for w in weeks], fontsize=7)
    bottom.legend(fontsize=7, loc="upper left", ncols=3)
    fig.tight_layout()
    return fig
