"""`llm4sweat db backup` / `db restore` (issue 15 item 6): a consistent copy while the service
runs under load, a restore that brings back every reviewed example, and never half a restore."""

from __future__ import annotations

import asyncio
import os
import sqlite3
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from bot.backup import BackupError, backup, check_backup, restore
from bot.inference.fixed import FixedBackend
from bot.instance import Instance
from bot.platform import IncomingMessage
from bot.service import Service
from reviewers.models import Action, Actor, Rubric
from tests.recording_platform import RecordingPlatform

REVIEWER = Actor("local", "rev1", "Dr Rev", frozenset({"reviewer"}))
EXPERT = "SELECT content_hash FROM dataset_examples WHERE source IN ('expert_approved', 'expert_edited')"


def rows(path: Path, sql: str) -> list[tuple]:
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        return conn.execute(sql).fetchall()
    finally:
        conn.close()  # an open reader would (rightly) make a restore refuse


def cli(*args: str, data_dir: Path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LLM4SWEAT_")}
    env["LLM4SWEAT_DATA_DIR"] = str(data_dir)
    return subprocess.run([sys.executable, "-m", "bot.cli", "db", *args], capture_output=True, text=True, env=env,
                          timeout=120)


async def started(settings) -> Service:
    service = Service(settings, FixedBackend())
    service.add_platform(RecordingPlatform())
    await service.start(retry_loop=False)
    return service


async def reviewed(service: Service, n: int, start: int = 0) -> None:
    """``n`` patient questions answered and decided by a reviewer (approved or edited)."""
    for i in range(start, start + n):
        result = await service.core.handle_message(
            IncomingMessage("local", f"pat{i}", "console", f"pat{i}", f"Question {i}: does iontophoresis help palms?"))
        action = Action.APPROVE if i % 2 else Action.EDIT
        await service.core.decide(result.item_id, REVIEWER, action, None if i % 2 else f"Edited answer {i}.",
                                  Rubric(4, 4, 4))


@pytest.mark.slow  # a backup under write load: 17 s of the fast tier (runs in CI's full suite)
async def test_backup_while_the_service_writes_is_one_consistent_owner_only_snapshot(settings, tmp_path):
    """Backups taken while patients write and reviewers decide, and while another writer commits
    pairs of rows in single transactions: each copy is intact, owner-only, holds whole
    transactions only (every pair complete) and every reviewed example it holds is whole."""
    service = await started(settings)
    stop = asyncio.Event()
    pairs = [0]

    async def pair_writer() -> None:
        while not stop.is_set():
            async with service.db.transaction() as conn:
                for kind in ("pair-a", "pair-b"):
                    await conn.execute("INSERT INTO incidents (kind, detail, created_at) VALUES (?, ?, 0)",
                                       (kind, str(pairs[0])))
            pairs[0] += 1
            await asyncio.sleep(0)

    async def load() -> None:
        i = 0
        while not stop.is_set():
            await reviewed(service, 1, start=i)
            i += 1

    tasks = [asyncio.create_task(pair_writer()), asyncio.create_task(load())]
    copies = []
    try:
        while pairs[0] < 20:  # the writers are under way
            await asyncio.sleep(0.01)
        for n in range(3):
            target = tmp_path / f"backup-{n}.db"
            summary = await asyncio.to_thread(backup, settings.db_path, target)
            copies.append((target, summary))
    finally:
        stop.set()
        await asyncio.gather(*tasks)
        await service.stop()
    assert pairs[0] > 20
    seen = []
    for target, summary in copies:
        assert stat.S_IMODE(os.stat(target).st_mode) == 0o600
        assert rows(target, "PRAGMA integrity_check") == [("ok",)]
        assert rows(target, "PRAGMA journal_mode") == [("delete",)]  # one self-contained file
        a = rows(target, "SELECT detail FROM incidents WHERE kind = 'pair-a' ORDER BY id")
        b = rows(target, "SELECT detail FROM incidents WHERE kind = 'pair-b' ORDER BY id")
        assert a == b and a, "a transaction was copied by halves"
        assert summary.reviewed_examples == len(rows(target, EXPERT))
        seen.append(len(a))
        check_backup(target)
    assert seen == sorted(seen) and seen[-1] > seen[0]  # live copies while the writers went on
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


async def test_restore_into_a_fresh_data_dir_brings_back_every_reviewed_example(settings, tmp_path):
    service = await started(settings)
    try:
        await reviewed(service, 6)
    finally:
        await service.stop()
    expected = sorted(rows(settings.db_path, EXPERT))
    assert len(expected) == 6
    target = tmp_path / "backup.db"
    made = cli("backup", str(target), data_dir=settings.data_dir)
    assert made.returncode == 0 and "6 reviewed examples" in made.stdout, made.stdout + made.stderr
    with pytest.raises(BackupError, match="exists already"):  # never overwritten unasked
        backup(settings.db_path, target)

    fresh = tmp_path / "fresh"
    done = cli("restore", str(target), data_dir=fresh)
    assert done.returncode == 0 and "6 reviewed examples" in done.stdout, done.stdout + done.stderr
    restored = fresh / "llm4sweat.db"
    assert stat.S_IMODE(os.stat(restored).st_mode) == 0o600
    assert sorted(rows(restored, EXPERT)) == expected
    # The service starts on it and finds the reviewed examples in its dataset.
    from bot.settings import load_settings

    service = await started(load_settings(data_dir=fresh))
    try:
        got = await service.db.fetchall(EXPERT)
        assert sorted(tuple(r) for r in got) == expected
    finally:
        await service.stop()


async def test_restore_replaces_the_database_whole_and_keeps_the_previous_one(settings, tmp_path):
    """A restore over a database whose latest writes are still in its WAL: the result is the
    backup exactly (no old WAL replayed onto it), and the previous database is kept whole."""
    service = await started(settings)
    try:
        await reviewed(service, 2)
        target = tmp_path / "backup.db"
        await asyncio.to_thread(backup, settings.db_path, target)
        await reviewed(service, 3, start=2)  # after the backup: only in the current database
    finally:
        await service.stop()
    current = sorted(rows(settings.db_path, EXPERT))
    summary, kept = await asyncio.to_thread(restore, target, settings.db_path)
    assert summary.reviewed_examples == 2 and len(rows(settings.db_path, EXPERT)) == 2
    assert rows(settings.db_path, "PRAGMA integrity_check") == [("ok",)]
    assert kept is not None and sorted(rows(kept, EXPERT)) == current and len(current) == 5
    assert stat.S_IMODE(os.stat(kept).st_mode) == 0o600


async def test_restore_refuses_while_the_service_runs_and_bad_backups_change_nothing(settings, tmp_path):
    service = await started(settings)
    try:
        await reviewed(service, 2)
    finally:
        await service.stop()
    good = tmp_path / "good.db"
    backup(settings.db_path, good)
    before = sorted(rows(settings.db_path, EXPERT))

    held = Instance(settings.data_dir)  # what `llm4sweat run` holds while it serves
    try:
        out = cli("restore", str(good), data_dir=settings.data_dir)
        assert out.returncode == 1 and "not restored" in out.stderr and "already running" in out.stderr, out.stderr
        assert "Traceback" not in out.stderr
    finally:
        held.release()

    garbage = tmp_path / "garbage.db"
    garbage.write_bytes(b"not a database at all" * 100)
    newer = tmp_path / "newer.db"
    backup(settings.db_path, newer)
    with sqlite3.connect(newer) as conn:
        conn.execute("INSERT INTO schema_migrations (package, version, name, applied_at) VALUES ('bot', 999, 'x', 0)")
    foreign = tmp_path / "foreign.db"
    with sqlite3.connect(foreign) as conn:
        conn.execute("CREATE TABLE t (x)")
    for bad, reason in ((garbage, "not a usable SQLite database"), (newer, "newer llm4sweat"),
                        (foreign, "not an llm4sweat database"), (tmp_path / "missing.db", "no file")):
        with pytest.raises(BackupError, match=reason):
            await asyncio.to_thread(restore, bad, settings.db_path)
        assert sorted(rows(settings.db_path, EXPERT)) == before
    assert not [p for p in settings.data_dir.iterdir() if p.name.endswith(".tmp") or "before-restore" in p.name]
