import asyncio
import re
import sqlite3
import threading

import pytest

from bot.storage import Database, StorageError, all_migrations


async def test_wal_foreign_keys_and_migrations(tmp_path):
    db = await Database(tmp_path / "x.db").open()
    try:
        assert (await db.fetchval("PRAGMA journal_mode")).lower() == "wal"
        assert await db.fetchval("PRAGMA foreign_keys") == 1
        tables = {r[0] for r in await db.fetchall("SELECT name FROM sqlite_master WHERE type = 'table'")}
        for name in ("patients", "conversations", "messages", "replies", "review_items", "review_decisions",
                     "review_audit", "dataset_examples", "adapters", "jobs", "schema_migrations"):
            assert name in tables
        applied = await db.fetchval("SELECT COUNT(*) FROM schema_migrations")
        assert applied == len(all_migrations())
        assert await db.upgrade() == []  # idempotent
        with pytest.raises(sqlite3.IntegrityError):
            await db.execute(
                "INSERT INTO conversations (patient_id, platform, channel_id, thread_id, created_at, updated_at)"
                " VALUES (999, 'x', 'c', 't', 0, 0)"
            )
    finally:
        await db.close()


async def test_transaction_rolls_back(tmp_path):
    db = await Database(tmp_path / "x.db").open()
    try:
        with pytest.raises(RuntimeError):
            async with db.transaction() as conn:
                await conn.execute(
                    "INSERT INTO patients (platform, platform_user_id, created_at) VALUES ('local', 'a', 0)"
                )
                raise RuntimeError("boom")
        assert await db.fetchval("SELECT COUNT(*) FROM patients") == 0
    finally:
        await db.close()


async def test_unwritable_location_is_a_clear_error(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(StorageError, match="database"):
        await Database(blocker / "sub" / "x.db").open()


# Tables that stay small whatever the traffic (a few adapter versions, jobs, settings).
SMALL = ("adapters", "jobs", "service_state", "schema_migrations")


async def test_the_hot_paths_find_rows_by_index_not_by_reading_whole_tables(service):
    """A message, its follow-up (the history join), a decision, a crisis and /forget-me: every
    statement they run (foreign-key cascades included) finds rows through an index. A full scan
    of a table that grows makes each message slower as the database fills (the history join on
    replies.message_id did: one scan of all replies per earlier turn)."""
    from reviewers.models import Action
    from tests.test_core import REVIEWER, SCORED, msg

    statements: list[str] = []
    await service.db.run(lambda conn: conn.set_trace_callback(statements.append), write=False)
    await service.core.handle_message(msg("My palms sweat when I write, what helps?"))
    second = await service.core.handle_message(msg("And what about my feet at night?"))
    await service.core.decide(second.item_id, REVIEWER, Action.APPROVE, rubric=SCORED)
    crisis = await service.core.handle_message(msg("I want to kill myself tonight"))
    await service.core.handle_message(msg("/forget-me"))
    await service.db.run(lambda conn: conn.set_trace_callback(None), write=False)
    assert crisis.status == "crisis" and len(statements) > 20
    scans = []
    for sql in dict.fromkeys(statements):  # expanded SQL (values inline), each distinct one once
        if not re.match(r"\s*(SELECT|INSERT|UPDATE|DELETE|WITH)\b", sql, re.IGNORECASE):
            continue
        plan = [row[3] for row in await service.db.fetchall("EXPLAIN QUERY PLAN " + sql)]
        # "SCAN <table or alias>" reads every row; "SEARCH ... USING INDEX" does not
        scans += [(step, sql[:120]) for step in plan
                  if step.startswith("SCAN ") and step.split()[1] not in SMALL]
    assert scans == []


@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")
def test_a_database_whose_thread_has_stopped_says_so_instead_of_waiting_forever(tmp_path):
    """aiosqlite's thread ends for good when the event loop of a call closes before the answer
    arrives (a test's loop closing under a task still waiting on the database: how test_core hung
    in its teardown); every later call, close() included, would wait forever. They fail at once."""
    first = asyncio.new_event_loop()
    db = first.run_until_complete(Database(tmp_path / "x.db").open())
    release = threading.Event()
    waiting = first.create_task(db.run(lambda conn: release.wait(10), write=False))
    first.run_until_complete(asyncio.sleep(0.05))  # the call is running in the database thread
    waiting.cancel()
    first.run_until_complete(asyncio.gather(waiting, return_exceptions=True))
    first.close()
    release.set()  # its answer finds the loop closed
    thread = db.conn._thread
    thread.join(5)
    assert not thread.is_alive()
    second = asyncio.new_event_loop()
    try:
        with pytest.raises(StorageError, match="thread has stopped"):
            second.run_until_complete(asyncio.wait_for(db.fetchval("SELECT 1"), 5))
        with pytest.raises(StorageError, match="thread has stopped"):
            second.run_until_complete(asyncio.wait_for(db.close(), 5))
    finally:
        second.close()
