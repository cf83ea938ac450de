"""Dataset examples with provenance, and snapshots identified by a content hash.

Examples are chat conversations (the ``messages`` format read by Hugging Face datasets, TRL
and axolotl: a list of ``{"role": "system" | "user" | "assistant", "content": str}``).

Every example enters through :func:`add_example` (or :func:`insert_example`, which also says
why an example was not stored), and every way out goes through :func:`examples`; the guards
live there so no caller can forget them:

* **Provenance** is stored beside the messages: ``seed`` (pack and seed id), ``synthetic``
  (generator model, prompt version, plan key, profile, fact ids), ``expert_approved`` and
  ``expert_edited`` (review item, reviewers, and for an edit the original model reply).
* **Privacy**: text that came from a patient (the expert sources) is PII-scrubbed before it is
  stored (the messages; the original model reply kept in the provenance is stored as given). An expert example must name its
  patient, and only a patient who agreed contributes (bot/consent.py): no patient row
  (forgotten) or a patient who said no means the example is refused; a patient who has not
  answered yet has the example kept aside, and :func:`examples` (every export) reads only
  examples of patients who agreed, so it enters training only once they do and leaves it if
  they withdraw. Forgetting a patient deletes their examples (cascade).
* **The evaluation set never becomes training data**: an example in which an evaluation
  question or one of its long options appears or nearly appears, a light edit included
  (``pipeline.packs.find_eval_leaks``), is refused at insertion, and dropped again at export
  in case the evaluation set grew since.
* **Duplicates**: the same content (sha256 of the messages), the same review item, or the
  same generation plan key is stored once.

A snapshot (``export``) is identified by :func:`snapshot_hash`, the sha256 of the canonical
JSON of the exported conversations; it equals ``pipeline.training.dataset_hash`` of the same
conversations, so an adapter trained on an export names exactly the data it saw.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

from bot.storage import Database, dumps, now
from pipeline.privacy import scrub

log = logging.getLogger(__name__)

SOURCES = ("seed", "synthetic", "expert_approved", "expert_edited")
EXPERT_SOURCES = ("expert_approved", "expert_edited")
ROLES = ("system", "user", "assistant")

# Age bands used by the generation plan and by ``stats`` (inclusive bounds, years).
AGE_BANDS: dict[str, tuple[int, int]] = {
    "child": (8, 12),
    "teen": (13, 17),
    "young_adult": (18, 25),
    "adult": (26, 45),
    "older_adult": (46, 80),
}

Messages = list[dict[str, str]]


def age_band(age: int | None) -> str:
    """The band of ``age`` (``unknown`` when missing or outside every band)."""
    if age is None:
        return "unknown"
    for name, (low, high) in AGE_BANDS.items():
        if low <= age <= high:
            return name
    return "unknown"


def content_hash(messages: Messages) -> str:
    return hashlib.sha256(dumps(messages).encode("utf-8")).hexdigest()


def snapshot_hash(conversations: Sequence[Messages]) -> str:
    """sha256 of the canonical JSON of the conversations, in order (same as
    ``pipeline.training.dataset_hash``): identical data, identical hash; any change, a new one."""
    canonical = json.dumps(list(conversations), sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


def check_messages(messages: Any) -> Messages:
    """The messages as plain dicts; ``ValueError`` if they are not a chat conversation."""
    if not isinstance(messages, list) or not messages:
        raise ValueError("messages must be a non-empty list")
    out = []
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or set(m) != {"role", "content"}:
            raise ValueError(f"message {i} must have exactly 'role' and 'content'")
        if m["role"] not in ROLES or not isinstance(m["content"], str):
            raise ValueError(f"message {i}: role must be one of {ROLES} and content a string")
        out.append({"role": m["role"], "content": m["content"]})
    if out[-1]["role"] != "assistant":
        raise ValueError("the last message must be the assistant's reply")
    return out


def training_text(messages: Messages) -> str:
    """What the model learns from in one example: everything but the system prompt."""
    return "\n".join(m["content"] for m in messages if m["role"] != "system")


# ------------------------------------------------------------------------------ evaluation guard


@lru_cache(maxsize=1)
def _shipped_eval_questions() -> tuple[Any, ...]:
    """Evaluation questions of every pack shipped under ``pipeline/packs`` (read once)."""
    from pipeline.packs import PACKS_DIR, PackError, load_pack

    questions: list[Any] = []
    for folder in sorted(PACKS_DIR.iterdir()) if PACKS_DIR.is_dir() else []:
        if folder.is_dir() and (folder / "eval.jsonl").is_file():
            try:
                questions.extend(load_pack(folder).eval_questions)
            except PackError as exc:  # a broken pack is reported by `pack check`, not here
                log.warning("evaluation guard: cannot read pack %s: %s", folder.name, exc)
    return tuple(questions)


def eval_questions_for(pack: Any = None, questions: Iterable[Any] | None = None) -> list[Any]:
    """The evaluation questions an example is checked against: the given ones, else the given
    pack's, else those of every shipped pack."""
    if questions is not None:
        return list(questions)
    if pack is not None:
        return list(pack.eval_questions)
    return list(_shipped_eval_questions())


_INDEX_CACHE: dict[tuple[tuple[str, str], ...], Any] = {}


def _question_index(questions: Sequence[Any]) -> Any:
    """The index of ``questions``' held-out texts (stems and long options), built once per
    question set."""
    from pipeline.packs import SHINGLE_SIZE, _QuestionIndex, eval_heldout_items

    key = tuple((q.id, q.question, tuple(getattr(q, "options", ()) or ())) for q in questions)
    index = _INDEX_CACHE.get(key)
    if index is None:
        if len(_INDEX_CACHE) > 8:
            _INDEX_CACHE.clear()
        index = _INDEX_CACHE[key] = _QuestionIndex(eval_heldout_items(questions), SHINGLE_SIZE)
    return index


def leaked_questions(messages: Messages | str, questions: Sequence[Any]) -> list[str]:
    """Ids of evaluation questions whose stem or a long option appears or nearly appears
    (``find_eval_leaks``' rule) in the example's training text (or in ``messages`` given as
    plain text), best match first."""
    from pipeline.packs import NEAR_DUPLICATE_THRESHOLD

    if not questions:
        return []
    text = messages if isinstance(messages, str) else training_text(messages)
    index = _question_index(questions)
    scores = index.scores(text, NEAR_DUPLICATE_THRESHOLD)
    found: list[str] = []
    for qi, score in sorted(scores.items(), key=lambda kv: -kv[1]):
        qid = index.questions[qi].id
        if score >= NEAR_DUPLICATE_THRESHOLD and qid not in found:
            found.append(qid)
    return found


# ------------------------------------------------------------------------------ insertion


@dataclass(frozen=True)
class InsertResult:
    """What happened to one example: ``id`` is set when it was stored."""

    id: int | None
    reason: str  # stored | duplicate | eval_leak | no_consent | no_patient

    @property
    def stored(self) -> bool:
        return self.id is not None


async def insert_example(
    db: Database,
    task: str,
    source: str,
    messages: Messages,
    provenance: dict[str, Any] | None = None,
    patient_id: int | None = None,
    review_item_id: int | None = None,
    *,
    plan_key: str | None = None,
    eval_questions: Iterable[Any] | None = None,
) -> InsertResult:
    """Store one example after every guard (see the module docstring); says why when it did not."""
    if source not in SOURCES:
        raise ValueError(f"unknown dataset source {source!r}; expected one of {SOURCES}")
    messages = check_messages(messages)
    provenance = dict(provenance or {})
    if source in EXPERT_SOURCES:
        if patient_id is None:
            log.warning("refused an %s example without a patient: consent cannot be checked", source)
            return InsertResult(None, "no_patient")
        messages = [
            m if m["role"] == "system" else {"role": m["role"], "content": scrub(m["content"])} for m in messages
        ]
    leaks = leaked_questions(messages, eval_questions_for(questions=eval_questions))
    if leaks:
        log.warning("refused a %s %s example: it contains evaluation question(s) %s", source, task, ", ".join(leaks))
        return InsertResult(None, "eval_leak")
    if plan_key is not None:
        provenance["plan_key"] = plan_key
    async with db.transaction() as conn:
        if patient_id is not None:
            cursor = await conn.execute("SELECT consent, consent_at FROM patients WHERE id = ?", (patient_id,))
            row = await cursor.fetchone()
            if row is None or (not row[0] and row[1] is not None):
                log.info("refused a %s example: patient %s declined training use or was forgotten", source, patient_id)
                return InsertResult(None, "no_consent")
        if review_item_id is not None:
            cursor = await conn.execute("SELECT id FROM dataset_examples WHERE review_item_id = ?", (review_item_id,))
            if await cursor.fetchone():
                return InsertResult(None, "duplicate")
        cursor = await conn.execute(
            "INSERT OR IGNORE INTO dataset_examples (task, source, messages, provenance, content_hash,"
            " patient_id, review_item_id, plan_key, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (task, source, dumps(messages), dumps(provenance), content_hash(messages),
             patient_id, review_item_id, plan_key, now()),
        )
        if cursor.rowcount:
            return InsertResult(cursor.lastrowid, "stored")
        return InsertResult(None, "duplicate")


async def add_example(
    db: Database,
    task: str,
    source: str,
    messages: Messages,
    provenance: dict[str, Any] | None = None,
    patient_id: int | None = None,
    review_item_id: int | None = None,
    *,
    plan_key: str | None = None,
    eval_questions: Iterable[Any] | None = None,
) -> int | None:
    """Store one example; returns its id, or None if it was refused or is already stored."""
    result = await insert_example(db, task, source, messages, provenance, patient_id, review_item_id,
                                  plan_key=plan_key, eval_questions=eval_questions)
    return result.id


async def import_seeds(db: Database, pack: Any) -> int:
    """Put the pack's seed vignettes in the dataset (idempotent); returns how many were new."""
    added = 0
    for seed, messages in zip(pack.seeds, pack.seed_conversations()):
        provenance = {"pack": pack.name, "pack_version": pack.version, "seed_id": seed.id,
                      "profile": seed.profile.model_dump(), "fact_ids": list(seed.fact_ids)}
        if await add_example(db, seed.task, "seed", messages, provenance, eval_questions=pack.eval_questions):
            added += 1
    return added


async def stored_plan_keys(db: Database) -> set[str]:
    """Plan keys of the synthetic examples already stored (what a re-run of generation skips)."""
    rows = await db.fetchall("SELECT plan_key FROM dataset_examples WHERE plan_key IS NOT NULL")
    return {r[0] for r in rows}


# ------------------------------------------------------------------------------ reading


async def counts(db: Database) -> dict[str, dict[str, int]]:
    rows = await db.fetchall("SELECT task, source, COUNT(*) FROM dataset_examples GROUP BY task, source")
    result: dict[str, dict[str, int]] = {}
    for task, source, n in rows:
        result.setdefault(task, {})[source] = n
    return result


_CONSENTED = (
    "FROM dataset_examples e LEFT JOIN patients p ON p.id = e.patient_id"
    " WHERE (e.patient_id IS NULL AND e.source NOT IN ('expert_approved', 'expert_edited')) OR p.consent = 1"
)


async def examples(db: Database, tasks: Iterable[str] | None = None) -> list[dict[str, Any]]:
    """Every usable example in insertion order: examples of a patient who has not agreed to
    training use (not answered yet, said no, or withdrew) are left out."""
    rows = await db.fetchall(
        f"SELECT e.id, e.task, e.source, e.messages, e.provenance {_CONSENTED} ORDER BY e.id"
    )
    wanted = set(tasks) if tasks else None
    return [
        {"id": r["id"], "task": r["task"], "source": r["source"], "messages": json.loads(r["messages"]),
         "provenance": json.loads(r["provenance"])}
        for r in rows
        if wanted is None or r["task"] in wanted
    ]


def _profile_of(item: dict[str, Any], seed_profiles: dict[str, dict[str, Any]]) -> dict[str, Any] | None:
    prov = item["provenance"]
    profile = prov.get("profile")
    if profile is None and prov.get("seed_id") in seed_profiles:
        profile = seed_profiles[prov["seed_id"]]
    return profile if isinstance(profile, dict) else None


async def stats(db: Database, pack: Any = None) -> dict[str, Any]:
    """Counts per task, source, task × source, site, severity (HDSS), age band and primary vs
    secondary. Sites, severity, age and kind come from the patient profile in the provenance
    (seeds imported before profiles were recorded are looked up in ``pack``); examples without
    a profile (expert replies) count as ``unknown``. An example with two sites counts for both."""
    seed_profiles = {s.id: s.profile.model_dump() for s in pack.seeds} if pack is not None else {}
    items = await examples(db)
    by: dict[str, Counter[str]] = {k: Counter() for k in ("task", "source", "site", "severity", "age_band", "kind")}
    task_source: dict[str, Counter[str]] = {}
    for item in items:
        by["task"][item["task"]] += 1
        by["source"][item["source"]] += 1
        task_source.setdefault(item["task"], Counter())[item["source"]] += 1
        profile = _profile_of(item, seed_profiles)
        if profile is None:
            for key in ("site", "severity", "age_band", "kind"):
                by[key]["unknown"] += 1
            continue
        for site in profile.get("sites") or ["unknown"]:
            by["site"][site] += 1
        hdss = profile.get("hdss")
        by["severity"][f"HDSS {hdss}" if hdss else "unknown"] += 1
        by["age_band"][age_band(profile.get("age"))] += 1
        by["kind"][profile.get("kind") or "unknown"] += 1
    return {
        "total": len(items),
        "task": dict(sorted(by["task"].items())),
        "source": {s: by["source"][s] for s in SOURCES if by["source"][s]},
        "task_source": {t: dict(c) for t, c in sorted(task_source.items())},
        "site": dict(by["site"].most_common()),
        "severity": dict(sorted(by["severity"].items())),
        "age_band": {b: by["age_band"][b] for b in [*AGE_BANDS, "unknown"] if by["age_band"][b]},
        "kind": dict(sorted(by["kind"].items())),
    }


def pack_or_none(path: Any) -> Any:
    """The condition pack at ``path``, or None when it cannot be read (stats and exports still
    work without it: exports then check against the shipped packs' evaluation sets)."""
    from pipeline.packs import PackError, load_pack

    try:
        return load_pack(path)
    except (PackError, OSError) as exc:
        log.warning("cannot read the pack at %s: %s", path, exc)
        return None


def stats_tables(stats: dict[str, Any]) -> list[Any]:
    """``stats`` as rich tables for ``llm4sweat dataset stats``: task × source, then the profile
    dimensions."""
    from rich.table import Table

    sources = [s for s in SOURCES]
    by_task = Table("task", *sources, "total", title=f"{stats['total']} examples")
    for task, by in stats["task_source"].items():
        row = [by.get(s, 0) for s in sources]
        by_task.add_row(task, *map(str, row), str(sum(row)))
    by_task.add_row("all", *[str(stats["source"].get(s, 0)) for s in sources], str(stats["total"]))
    profile = Table("dimension", "examples per value")
    for key, label in (("site", "site"), ("severity", "severity"), ("age_band", "age band"),
                       ("kind", "primary / secondary")):
        profile.add_row(label, ", ".join(f"{k}: {v}" for k, v in stats[key].items()) or "-")
    return [by_task, profile]


# ------------------------------------------------------------------------------ export


@dataclass
class ExportResult:
    path: Path
    count: int
    hash: str
    excluded: list[int] = field(default_factory=list)  # example ids left out: evaluation / safety-case leaks
    by_task: dict[str, int] = field(default_factory=dict)
    by_source: dict[str, int] = field(default_factory=dict)
    low_accuracy: list[int] = field(default_factory=list)  # approvals left out: accuracy score too low
    expert_ids: list[int] = field(default_factory=list)  # reviewed (expert) examples written


@dataclass(frozen=True)
class _HeldOut:
    """A held-out safety case in the shape the leak detector reads (``id``, ``question``)."""

    id: str
    question: str


def heldout_guard(pack: Any) -> list[_HeldOut]:
    """The pack's held-out safety cases, checked like evaluation questions at export: they
    measure the model and must never become training data."""
    if pack is None:
        return []
    from pipeline.evaluate import heldout_safety_cases

    return [_HeldOut(f"safety:{c.id}", c.text) for c in heldout_safety_cases(pack)]


DEFAULT_MIN_ACCURACY = 3  # settings.review.min_accuracy_for_training


async def low_accuracy_approvals(db: Database, min_accuracy: int) -> set[int]:
    """Ids of ``expert_approved`` examples whose review has an approving decision with an
    accuracy score below ``min_accuracy`` (the lowest approving score counts). An approval
    without a score is not filtered here: the review workflow refuses those."""
    rows = await db.fetchall(
        "SELECT e.id FROM dataset_examples e JOIN review_decisions d ON d.item_id = e.review_item_id"
        " WHERE e.source = 'expert_approved' AND d.action = 'approve' AND d.accuracy IS NOT NULL"
        " GROUP BY e.id HAVING MIN(d.accuracy) < ?",
        (min_accuracy,),
    )
    return {int(r[0]) for r in rows}


def export_line(item: dict[str, Any]) -> str:
    """One JSONL line: ``messages`` (the chat) plus ``task`` and ``source`` columns."""
    return json.dumps({"messages": item["messages"], "task": item["task"], "source": item["source"]},
                      ensure_ascii=False)


def as_trained(item: dict[str, Any]) -> dict[str, Any]:
    """The example as a model is trained on it: the system turn ends with the task line of the
    example's ``task`` (``bot.chat_format.with_task``, the line serving and evaluation use)."""
    from bot.chat_format import with_task

    return {**item, "messages": with_task(item["messages"], item["task"])}


async def export(
    db: Database,
    path: Path,
    pack: Any = None,
    *,
    eval_questions: Iterable[Any] | None = None,
    tasks: Iterable[str] | None = None,
    min_accuracy: int = DEFAULT_MIN_ACCURACY,
) -> ExportResult:
    """Write the dataset as chat-format JSONL (atomically) and return its snapshot hash.

    Examples in which an evaluation question (of ``pack``, or of every shipped pack) or one of
    the pack's held-out safety cases appears are left out and listed in ``excluded``, so a
    snapshot can never carry the evaluation set even if it was stored before a question was
    added. Approvals whose accuracy score is below ``min_accuracy`` are left out and listed in
    ``low_accuracy``, whatever path added them. Exported conversations carry their task line
    (:func:`as_trained`), so the snapshot is exactly what the trainer sees."""
    items = [as_trained(item) for item in await examples(db, tasks)]
    low = await low_accuracy_approvals(db, min_accuracy)
    low_accuracy = sorted(item["id"] for item in items if item["id"] in low)
    if low_accuracy:
        log.info("left %d approval(s) out of the export: accuracy score below %d", len(low_accuracy), min_accuracy)
        items = [item for item in items if item["id"] not in low]
    questions = eval_questions_for(pack, eval_questions) + heldout_guard(pack)
    excluded: list[int] = []
    if questions:
        from pipeline.packs import find_eval_leaks

        leaks = find_eval_leaks(questions, [training_text(item["messages"]) for item in items])
        leaked = {leak.text_index for leak in leaks}
        excluded = sorted(items[i]["id"] for i in leaked)
        items = [item for i, item in enumerate(items) if i not in leaked]
        if excluded:
            log.warning("left %d example(s) out of the export: they contain evaluation questions", len(excluded))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("w", encoding="utf-8") as out:
        for item in items:
            out.write(export_line(item) + "\n")
    tmp.replace(path)
    return ExportResult(
        path=path,
        count=len(items),
        hash=snapshot_hash([item["messages"] for item in items]),
        excluded=excluded,
        by_task=dict(Counter(item["task"] for item in items)),
        by_source=dict(Counter(item["source"] for item in items)),
        low_accuracy=low_accuracy,
        expert_ids=[item["id"] for item in items if item["source"] in EXPERT_SOURCES],
    )


async def export_jsonl(db: Database, path: Path, pack: Any = None) -> tuple[int, str]:
    """Write every usable example as one JSON line; returns (count, snapshot hash)."""
    result = await export(db, path, pack)
    return result.count, result.hash
