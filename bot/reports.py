"""Results people compare (an evaluation, before/after), in a form every platform can show.

A :class:`Report` is prose, tables and an optional chart. The core builds it; each platform
renders the tables its own way — Discord embed fields, Slack Block Kit section fields, an
HTML table in the console — and attaches the chart (Discord file + embed image, Slack file
upload). Never an ASCII table in prose: on a phone it collapses into an unreadable paragraph
of ``+----+`` characters.

The evaluation table names each model as it is *now* (``v1 (live)``, ``v2 (candidate)``),
read from the registry when the report is made, not the titles stored when it was run: an
adapter that was a candidate when evaluated and is live today must not read "(candidate)".
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass(frozen=True)
class ReportTable:
    """Rows of cells; the first column names the row (a task), the others are compared."""

    title: str
    columns: list[str]
    rows: list[list[str]]


@dataclass(frozen=True)
class Report:
    title: str
    text: str = ""
    tables: list[ReportTable] = field(default_factory=list)
    image: str | None = None  # path of a PNG chart on this machine

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None) -> "Report | None":
        if not data:
            return None
        tables = [ReportTable(t["title"], list(t["columns"]), [list(r) for r in t["rows"]])
                  for t in data.get("tables") or []]
        return cls(data.get("title", ""), data.get("text", ""), tables, data.get("image"))


def table_fields(table: ReportTable, name_max: int = 256, value_max: int = 1024) -> list[tuple[str, str]]:
    """One (name, value) field per row: ``row name`` over one ``column: cell`` line per compared
    column — how Discord embed fields and Block Kit section fields show a table."""
    out = []
    for row in table.rows:
        lines = [f"{column}: {cell}" for column, cell in zip(table.columns[1:], row[1:]) if str(cell).strip()]
        out.append((row[0][:name_max] or "-", ("\n".join(lines) or "-")[:value_max]))
    return out


# ---------------------------------------------------------------------------- evaluation


def title_now(label: str, statuses: dict[str, str]) -> str:
    """How a model in an evaluation is named today: base model, ``v2 (live)``, ``v3 (candidate)``."""
    from pipeline.evaluate import BASE_LABEL

    if label == BASE_LABEL:
        return "base model"
    status = statuses.get(label)
    return f"{label} ({status})" if status else label


def evaluation_report(record: dict[str, Any], statuses: dict[str, str], *, heading: str = "",
                      rubric: dict[str, Any] | None = None, image: str | None = None, gate: bool = True) -> Report:
    """The comparison table of a stored evaluation (``registry_record``) with today's names, the
    experts' rubric scores per version when there are any, and the chart."""
    from pipeline import evaluate as ev

    runs = {label: {**run, "title": title_now(label, statuses)} for label, run in (record.get("runs") or {}).items()}
    order = [label for label in (record.get("order") or list(runs)) if label in runs]
    subject = record.get("subject")
    delta = None
    if subject in runs and len(order) > 1:
        reference = order[-2] if order[-1] == subject else order[0]
        delta = (reference, subject)
    header, rows = ev.table_rows(runs, order, record.get("tasks") or [], delta)
    split = next((run.get("headline_split") for run in runs.values() if run.get("headline_split")), ev.REPORT_SPLIT)
    tables = [ReportTable(f"Multiple-choice accuracy [95% CI], {record.get('metric') or ev.PRIMARY_METRIC}, "
                          f"{split} split", header, rows)]
    if rubric:
        tables.append(rubric_table(rubric))
    text = heading
    if gate and record.get("gate"):
        from pipeline.retrain import gate_text

        text += ("\n" if text else "") + gate_text(record["gate"])
    return Report(f"Evaluation of {title_now(subject, statuses)}" if subject else "Evaluation", text, tables, image)


def rubric_table(rubric: dict[str, Any]) -> ReportTable:
    from pipeline.rubric import CRITERIA, _cell

    rows = []
    for version, entry in rubric.items():
        actions = ", ".join(f"{k} {v}" for k, v in sorted((entry.get("decisions") or {}).items()))
        rows.append([version, *[_cell(entry.get(c) or {}) for c in CRITERIA], actions or "-"])
    return ReportTable("Expert rubric scores (1-5) of replies in service, mean [95% t CI]",
                       ["version", *CRITERIA, "decisions"], rows)


async def statuses(db: Any) -> dict[str, str]:
    """Every adapter version's registry status now."""
    from pipeline import registry

    return {row["version"]: row["status"] for row in await registry.all_versions(db)}
