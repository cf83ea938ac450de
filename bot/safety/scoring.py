"""Scoring the safety layer: the ``llm4sweat triage`` command and ``bench/bench_safety.py``.

Input rows are dicts with a ``text`` and, when labelled, one of:

* ``label`` (or ``kind``): ``crisis`` | ``red_flag`` | ``benign`` | ``injection`` (anything
  else is scored as "not a crisis, no red flag");
* ``crisis``: true / false;
* ``red_flags``: the expected red-flag ids.

Figures: crisis recall / precision (positives: crisis rows; everything else labelled counts
as a negative), red-flag recall / precision at message level (a red-flag row must get at
least one flag; a flag on a crisis-free, non-red-flag row is a false positive) and at flag
level, injection recall and false alarms.
"""

from __future__ import annotations

import asyncio
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence, TextIO

from bot.safety.detector import triage
from bot.safety.policy import combine
from bot.safety.remote import run_layers
from bot.safety.verdict import Triage


def read_messages(stream: Iterable[str]) -> Iterator[dict[str, Any]]:
    """Plain lines, or JSONL objects with a ``text`` field (mixed is fine); blank lines skipped."""
    for number, line in enumerate(stream, 1):
        raw = line.rstrip("\n")
        if not raw.strip():
            continue
        row: dict[str, Any]
        stripped = raw.strip()
        if stripped.startswith("{"):
            try:
                row = json.loads(stripped)
            except ValueError:
                row = {"text": raw}
            if not isinstance(row, dict) or "text" not in row:
                row = {"text": raw}
        else:
            row = {"text": raw}
        row.setdefault("line", number)
        yield row


def expected(row: dict[str, Any]) -> dict[str, Any] | None:
    """What a labelled row expects, or None for an unlabelled one."""
    label = str(row.get("label") or row.get("kind") or "").strip().lower().replace("-", "_")
    if label in ("redflag", "red_flags"):
        label = "red_flag"
    if "crisis" in row and isinstance(row["crisis"], bool):
        crisis = row["crisis"]
    elif label:
        crisis = label == "crisis"
    else:
        crisis = None
    flags = row.get("red_flags")
    if crisis is None and flags is None and not label:
        return None
    return {
        "crisis": bool(crisis),
        "red_flag": label == "red_flag" or bool(flags),
        "red_flags": list(flags or []),
        "injection": label == "injection" or bool(row.get("injection")),
        "label": label or ("crisis" if crisis else "benign"),
    }


@dataclass
class Counts:
    tp: int = 0
    fp: int = 0
    fn: int = 0
    tn: int = 0
    misses: list[str] = field(default_factory=list)
    false_alarms: list[str] = field(default_factory=list)

    def add(self, predicted: bool, actual: bool, name: str) -> None:
        if predicted and actual:
            self.tp += 1
        elif predicted:
            self.fp += 1
            self.false_alarms.append(name)
        elif actual:
            self.fn += 1
            self.misses.append(name)
        else:
            self.tn += 1

    @property
    def recall(self) -> float:
        return self.tp / (self.tp + self.fn) if self.tp + self.fn else float("nan")

    @property
    def precision(self) -> float:
        return self.tp / (self.tp + self.fp) if self.tp + self.fp else float("nan")

    def as_json(self) -> dict[str, Any]:
        return {
            "recall": round(self.recall, 4), "precision": round(self.precision, 4),
            "tp": self.tp, "fp": self.fp, "fn": self.fn, "tn": self.tn,
            "misses": self.misses, "false_alarms": self.false_alarms,
        }


@dataclass
class Score:
    crisis: Counts = field(default_factory=Counts)
    red_flag: Counts = field(default_factory=Counts)  # message level
    flags: Counts = field(default_factory=Counts)  # flag level (expected ids vs found ids)
    injection: Counts = field(default_factory=Counts)
    by_label: dict[str, dict[str, int]] = field(default_factory=dict)  # label -> {"n", "crisis"}

    def add(self, row: dict[str, Any], verdict: Triage) -> None:
        exp = expected(row)
        if exp is None:
            return
        name = str(row.get("id") or f"line {row.get('line')}")
        self.crisis.add(verdict.crisis, exp["crisis"], name)
        if not exp["crisis"]:
            self.red_flag.add(bool(verdict.red_flags), exp["red_flag"], name)
            if exp["red_flags"] or not exp["red_flag"]:
                found, wanted = set(verdict.red_flags), set(exp["red_flags"])
                for flag in found | wanted:
                    self.flags.add(flag in found, flag in wanted, f"{name}:{flag}")
        self.injection.add(verdict.injection, exp["injection"], name)
        stats = self.by_label.setdefault(exp["label"], {"n": 0, "crisis": 0, "red_flag": 0, "injection": 0})
        stats["n"] += 1
        stats["crisis"] += verdict.crisis
        stats["red_flag"] += bool(verdict.red_flags)
        stats["injection"] += verdict.injection

    @property
    def labelled(self) -> int:
        return sum(s["n"] for s in self.by_label.values())

    def as_json(self) -> dict[str, Any]:
        return {
            "labelled": self.labelled,
            "crisis": self.crisis.as_json(),
            "red_flag_messages": self.red_flag.as_json(),
            "red_flag_ids": self.flags.as_json(),
            "injection": self.injection.as_json(),
            "by_label": self.by_label,
        }

    def summary(self) -> str:
        def pct(x: float) -> str:
            return "n/a" if x != x else f"{x:.3f}"

        c, r, f, i = self.crisis, self.red_flag, self.flags, self.injection
        lines = [
            f"labelled messages: {self.labelled}",
            f"crisis:    recall {pct(c.recall)} ({c.tp}/{c.tp + c.fn})  precision {pct(c.precision)}  "
            f"false positives {c.fp} of {c.fp + c.tn} non-crisis",
            f"red flags: recall {pct(r.recall)} ({r.tp}/{r.tp + r.fn} messages)  precision {pct(r.precision)}  "
            f"false positives {r.fp}; by flag id: recall {pct(f.recall)} precision {pct(f.precision)}",
            f"injection: recall {pct(i.recall)} ({i.tp}/{i.tp + i.fn})  false alarms {i.fp}",
        ]
        for label, stats in sorted(self.by_label.items()):
            lines.append(
                f"  {label:<10} n={stats['n']:<4} crisis={stats['crisis']:<4} red_flag={stats['red_flag']:<4} "
                f"injection={stats['injection']}"
            )
        return "\n".join(lines)


def triage_rows(
    rows: Iterable[dict[str, Any]], pack: Any, *, remote: Sequence[Any] = (), deadline_s: float = 5.0, **options: Any
) -> Iterator[tuple[dict[str, Any], Triage]]:
    """The offline triage of each row; with ``remote`` layers, combined with theirs as the bot does."""
    loop = asyncio.new_event_loop() if remote else None  # one loop: the layers' HTTP clients live in it
    try:
        for row in rows:
            text = str(row["text"])
            verdict = triage(text, pack, **options)
            if loop is not None:
                verdict = combine(verdict, loop.run_until_complete(run_layers(remote, text, "user", deadline_s=deadline_s)))
            yield row, verdict
    finally:
        if loop is not None:
            loop.close()


def output_line(row: dict[str, Any], verdict: Triage, show_text: bool = False) -> dict[str, Any]:
    out: dict[str, Any] = {"line": row.get("line")}
    if row.get("id") is not None:
        out["id"] = row["id"]
    if show_text:
        out["text"] = row["text"]
    out.update(verdict.as_json())
    return out


def run_triage(
    stream: Iterable[str],
    pack: Any,
    out: TextIO | None = None,
    *,
    score: Score | None = None,
    show_text: bool = False,
    **options: Any,
) -> int:
    """Triage every message of ``stream``; one JSON line each to ``out``. Returns the count."""
    out = out if out is not None else sys.stdout
    count = 0
    for row, verdict in triage_rows(read_messages(stream), pack, **options):
        out.write(json.dumps(output_line(row, verdict, show_text), ensure_ascii=False) + "\n")
        if score is not None:
            score.add(row, verdict)
        count += 1
    out.flush()
    return count


def score_files(paths: Iterable[Path], pack: Any, **options: Any) -> Score:
    score = Score()
    for path in paths:
        with open(path, encoding="utf-8") as fh:
            for row, verdict in triage_rows(read_messages(fh), pack, **options):
                score.add(row, verdict)
    return score
