"""What a patient's /forget-me reaches beyond the database's rows (issue 12 item 4).

The database cascade deletes the patient's messages, replies, reviews and dataset examples
(bot/core.py). Their words may also sit in files the service kept: dataset snapshots of past
retraining jobs (``jobs/retrain-N/dataset.jsonl``, ``jobs/cli-train/dataset.jsonl``) and any
other JSONL export under the data directory. And adapters trained on those snapshots learned
from them. Before the rows go, :func:`trace` reads what identifies the patient's training
text; after, :func:`scrub_files` rewrites every such file without their lines (atomically,
owner-only) and :func:`mark_adapters` marks every adapter trained on a snapshot that held
them, in the registry (``manifest.forgotten``, and a note) and in the adapter folder's
``manifest.json``. A marked live adapter is never
"nothing new" for the next retrain (pipeline/retrain.py), which exports without them.

Adapter ↔ snapshot: an adapter's manifest records the snapshot hash it was trained on
(``dataset_hash`` / ``snapshot.hash``), which is :func:`pipeline.dataset.snapshot_hash` of the
file's conversations; so a snapshot's hash before scrubbing names the adapters that saw it.
An adapter whose snapshot file is gone is marked when its snapshot could have held the
patient's examples (its ``snapshot.max_example_id`` is at least their oldest example's id).
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bot.storage import Database, dumps, now
from pipeline.dataset import snapshot_hash
from pipeline.privacy import scrub

log = logging.getLogger(__name__)

SHORT = 12  # a patient text shorter than this matches a line only as a whole turn, never inside one


@dataclass
class Trace:
    """What identifies one patient's text in files, read before their rows are deleted."""

    texts: set[str] = field(default_factory=set)  # their turns as stored in training data (scrubbed)
    first_example_id: int | None = None

    def __bool__(self) -> bool:
        return bool(self.texts)

    def matches(self, conversation: list[dict[str, Any]]) -> bool:
        for message in conversation:
            if message.get("role") != "user":
                continue
            content = str(message.get("content", ""))
            if content in self.texts or any(len(t) >= SHORT and t in content for t in self.texts):
                return True
        return False


@dataclass
class Outcome:
    files: list[str] = field(default_factory=list)  # files rewritten without the patient's lines
    lines: int = 0
    adapters: list[str] = field(default_factory=list)  # versions marked as trained on the patient's data


async def trace(db: Database, patient_ids: list[int]) -> Trace:
    """The patient's words as training data holds them: every message they wrote (scrubbed, as
    the dataset stores patient turns, and as written) and the user turns of their examples."""
    found = Trace()
    if not patient_ids:
        return found
    marks = ", ".join("?" * len(patient_ids))
    for (text,) in await db.fetchall(
            f"SELECT m.text FROM messages m JOIN conversations c ON c.id = m.conversation_id"
            f" WHERE c.patient_id IN ({marks})", patient_ids):
        if text and text.strip():
            found.texts.update({text, scrub(text)})
    for row in await db.fetchall(
            f"SELECT id, messages FROM dataset_examples WHERE patient_id IN ({marks}) ORDER BY id", patient_ids):
        if found.first_example_id is None:
            found.first_example_id = int(row["id"])
        for message in json.loads(row["messages"]):
            if message.get("role") == "user" and message.get("content", "").strip():
                found.texts.add(message["content"])
    return found


def _rewrite(path: Path, keep: list[str]) -> None:
    tmp = path.with_name(path.name + ".forget.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as out:
        out.writelines(keep)
    os.replace(tmp, path)


def scrub_files(data_dir: Path, found: Trace) -> tuple[Outcome, set[str], set[str]]:
    """Rewrite every JSONL file under ``data_dir`` without the lines holding the patient's text;
    returns what changed, the snapshot hashes the changed files had before, and the hashes of
    every file seen (to find the adapters trained on them, and those whose file is gone)."""
    outcome, hashes, seen = Outcome(), set(), set()
    if not found or not data_dir.is_dir():
        return outcome, hashes, seen
    for path in sorted(data_dir.rglob("*.jsonl")):
        try:
            lines = path.read_text(encoding="utf-8").splitlines(keepends=True)
        except (OSError, UnicodeDecodeError) as exc:
            log.warning("forget-me: cannot read %s: %s", path, exc)
            continue
        keep, conversations, dropped = [], [], 0
        for line in lines:
            try:
                row = json.loads(line)
            except ValueError:
                row = None
            messages = row.get("messages") if isinstance(row, dict) else None
            if isinstance(messages, list):
                conversations.append(messages)
                if found.matches(messages):
                    dropped += 1
                    continue
            elif any(len(t) >= SHORT and t in line for t in found.texts):
                dropped += 1  # not a conversation, but it holds their words all the same
                continue
            keep.append(line)
        seen.add(snapshot_hash(conversations))
        if dropped:
            hashes.add(snapshot_hash(conversations))
            _rewrite(path, keep)
            outcome.files.append(str(path))
            outcome.lines += dropped
    if outcome.files:
        log.info("forget-me: %d line(s) removed from %d kept file(s)", outcome.lines, len(outcome.files))
    return outcome, hashes, seen


async def mark_adapters(db: Database, hashes: set[str], seen: set[str], found: Trace) -> list[str]:
    """Mark every adapter trained on one of ``hashes`` (or on a snapshot, now gone, that could
    have held the patient's examples); returns their versions."""
    marked: list[str] = []
    rows = await db.fetchall("SELECT version, path, manifest FROM adapters ORDER BY id")
    for row in rows:
        manifest = json.loads(row["manifest"] or "{}")
        snapshot = manifest.get("snapshot") or {}
        trained = manifest.get("dataset_hash") or snapshot.get("hash")
        hit = trained in hashes if trained else False
        if not hit and found.first_example_id is not None and trained not in seen:  # its snapshot is gone
            since = snapshot.get("max_example_id")
            hit = since is not None and int(since) >= found.first_example_id
        if not hit:
            continue
        manifest["forgotten"] = {"patients": int((manifest.get("forgotten") or {}).get("patients", 0)) + 1,
                                 "at": now()}
        await db.execute(
            "UPDATE adapters SET manifest = ?, note = ? WHERE version = ?",
            (dumps(manifest), "trained on data a patient asked to delete: replace it at the next retrain",
             row["version"]))
        _mark_folder(Path(row["path"]), manifest["forgotten"])
        marked.append(row["version"])
    return marked


def _mark_folder(adapter_dir: Path, mark: dict[str, Any]) -> None:
    """The same mark in the adapter folder's manifest.json, for whoever reads the folder (vLLM
    hosts, the GPU trainer); kept owner-only."""
    from pipeline.training import MANIFEST_NAME

    path = adapter_dir / MANIFEST_NAME
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return  # no folder here (another machine) or no readable manifest: the registry holds the mark
    data["forgotten"] = mark
    tmp = path.with_name(path.name + ".forget.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as out:
        json.dump(data, out, indent=2, ensure_ascii=False)
    os.replace(tmp, path)


def trained_on_forgotten(adapter: dict[str, Any] | None) -> bool:
    """Whether an adapter (a registry row) learned from data a patient has since deleted."""
    return bool(adapter and (adapter.get("manifest") or {}).get("forgotten"))
