"""Dataset examples with provenance, and snapshots identified by a content hash.

Examples are chat conversations (``messages`` format read by Hugging Face datasets, TRL and
axolotl). Anything that came from a patient is scrubbed of PII before it is stored, and only
patients who consented (and did not ask to be forgotten) contribute.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Iterable

from bot.storage import Database, dumps, now
from pipeline.privacy import scrub

SOURCES = ("seed", "synthetic", "expert_approved", "expert_edited")


def content_hash(messages: list[dict[str, str]]) -> str:
    return hashlib.sha256(dumps(messages).encode("utf-8")).hexdigest()


async def add_example(
    db: Database,
    task: str,
    source: str,
    messages: list[dict[str, str]],
    provenance: dict[str, Any] | None = None,
    patient_id: int | None = None,
    review_item_id: int | None = None,
) -> int | None:
    """Store one example; returns its id, or None if the same content is already stored."""
    if source not in SOURCES:
        raise ValueError(f"unknown dataset source {source!r}; expected one of {SOURCES}")
    if source.startswith("expert_"):
        messages = [{"role": m["role"], "content": scrub(m["content"])} for m in messages]
    async with db.transaction() as conn:
        if review_item_id is not None:
            cursor = await conn.execute("SELECT id FROM dataset_examples WHERE review_item_id = ?", (review_item_id,))
            if await cursor.fetchone():
                return None
        cursor = await conn.execute(
            "INSERT OR IGNORE INTO dataset_examples (task, source, messages, provenance, content_hash,"
            " patient_id, review_item_id, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (task, source, dumps(messages), dumps(provenance or {}), content_hash(messages),
             patient_id, review_item_id, now()),
        )
        return cursor.lastrowid if cursor.rowcount else None


async def import_seeds(db: Database, pack: Any) -> int:
    """Put the pack's seed vignettes in the dataset (idempotent); returns how many were new."""
    added = 0
    for seed, messages in zip(pack.seeds, pack.seed_conversations()):
        if await add_example(db, seed.task, "seed", messages, {"pack": pack.name, "seed_id": seed.id}):
            added += 1
    return added


async def counts(db: Database) -> dict[str, dict[str, int]]:
    rows = await db.fetchall("SELECT task, source, COUNT(*) FROM dataset_examples GROUP BY task, source")
    result: dict[str, dict[str, int]] = {}
    for task, source, n in rows:
        result.setdefault(task, {})[source] = n
    return result


async def examples(db: Database, tasks: Iterable[str] | None = None) -> list[dict[str, Any]]:
    rows = await db.fetchall("SELECT id, task, source, messages, provenance FROM dataset_examples ORDER BY id")
    wanted = set(tasks) if tasks else None
    return [
        {"id": r["id"], "task": r["task"], "source": r["source"], "messages": json.loads(r["messages"]),
         "provenance": json.loads(r["provenance"])}
        for r in rows
        if wanted is None or r["task"] in wanted
    ]


async def export_jsonl(db: Database, path: Path) -> tuple[int, str]:
    """Write every example as one JSON line; returns (count, snapshot hash of the content)."""
    items = await examples(db)
    digest = hashlib.sha256()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    with tmp.open("w", encoding="utf-8") as out:
        for item in items:
            line = dumps({"messages": item["messages"], "task": item["task"], "source": item["source"]})
            digest.update(line.encode("utf-8"))
            out.write(line + "\n")
    tmp.replace(path)
    return len(items), digest.hexdigest()
