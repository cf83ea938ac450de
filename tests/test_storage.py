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
    await service.db.each_connection(lambda conn: conn.set_trace_callback(statements.append))
    await service.core.handle_message(msg("My palms sweat when I write, what helps?"))
    second = await service.core.handle_message(msg("And what about my feet at night?"))
    await service.core.decide(second.item_id, REVIEWER, Action.APPROVE, rubric=SCORED)
    crisis = await service.core.handle_message(msg("I want to kill myself tonight"))
    await service.core.handle_message(msg("/forget-me"))
    await service.db.each_connection(lambda conn: conn.set_trace_callback(None))
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


async def test_hot_path_units_run_on_the_loop_thread_as_their_own_transactions(tmp_path):
    """``run(..., here=True)``: no hop to the database thread; each write unit is one transaction
    (committed for the shared connection to see, rolled back whole on an error)."""
    db = await Database(tmp_path / "x.db").open()
    try:
        loop_thread = threading.get_ident()
        seen: list[int] = []

        def insert(conn):
            seen.append(threading.get_ident())
            conn.execute("INSERT INTO patients (platform, platform_user_id, created_at) VALUES ('local', 'a', 0)")
            return conn.in_transaction

        assert await db.run(insert, here=True) is True
        assert seen == [loop_thread]
        assert await db.fetchval("SELECT COUNT(*) FROM patients") == 1  # the shared connection sees it

        def half(conn):
            conn.execute("INSERT INTO patients (platform, platform_user_id, created_at) VALUES ('local', 'b', 0)")
            raise RuntimeError("boom")

        with pytest.raises(RuntimeError):
            await db.run(half, here=True)
        assert await db.fetchval("SELECT COUNT(*) FROM patients") == 1
        assert await db.fetchval("SELECT COUNT(*) FROM patients", here=True) == 1
        await db.run(lambda conn: seen.append(threading.get_ident()), write=False)
        assert seen[-1] != loop_thread  # without here: the database thread, as before
    finally:
        await db.close()


async def test_the_loop_never_waits_for_a_lock_and_a_locked_unit_goes_to_the_database_thread(tmp_path):
    """Another process (here: another connection) holds the write lock: a unit ``here`` does not
    block the event loop on it (busy_timeout 0) but goes to the database thread, which waits for
    the lock as before; a unit while a transaction() is open waits behind it, as before."""
    db = await Database(tmp_path / "x.db").open()
    other = sqlite3.connect(tmp_path / "x.db", isolation_level=None)
    try:
        other.execute("BEGIN IMMEDIATE")
        other.execute("INSERT INTO patients (platform, platform_user_id, created_at) VALUES ('local', 'a', 0)")
        ticks = 0

        async def ticking():
            nonlocal ticks
            while True:
                await asyncio.sleep(0.01)
                ticks += 1

        ticker = asyncio.create_task(ticking())
        write = asyncio.create_task(db.execute(
            "INSERT INTO patients (platform, platform_user_id, created_at) VALUES ('local', 'b', 0)", here=True))
        await asyncio.sleep(0.3)
        assert not write.done() and ticks >= 10  # waiting in the database thread; the loop runs on
        other.execute("COMMIT")
        await asyncio.wait_for(write, 5)
        ticker.cancel()
        assert db.here_busy == 1
        assert await db.fetchval("SELECT COUNT(*) FROM patients", here=True) == 2

        async with db.transaction() as conn:  # the shared connection writes across awaits
            await conn.execute("INSERT INTO patients (platform, platform_user_id, created_at) VALUES ('local', 'c', 0)")
            queued = asyncio.create_task(db.fetchval("SELECT COUNT(*) FROM patients", here=True))
            await asyncio.sleep(0.05)
            assert not queued.done()  # not a read beside the open transaction: behind it, as before
        assert await queued == 3
    finally:
        other.close()
        await db.close()


async def test_the_loop_connection_leaves_wal_checkpoints_to_the_database_thread(tmp_path, monkeypatch):
    from bot import storage

    monkeypatch.setattr(storage, "CHECKPOINT_EVERY_COMMITS", 20)
    db = await Database(tmp_path / "x.db").open()
    try:
        assert db._here.execute("PRAGMA wal_autocheckpoint").fetchone()[0] == 0
        assert db._here.execute("PRAGMA busy_timeout").fetchone()[0] == 0
        assert db._here.execute("PRAGMA foreign_keys").fetchone()[0] == 1
        assert db._here.execute("PRAGMA synchronous").fetchone()[0] == 1  # NORMAL
        checkpoints: list[int] = []
        await db.run(lambda conn: conn.set_trace_callback(
            lambda sql: checkpoints.append(threading.get_ident()) if "wal_checkpoint" in sql else None), write=False)
        for i in range(45):
            await db.execute("INSERT INTO patients (platform, platform_user_id, created_at) VALUES ('local', ?, 0)",
                             (str(i),), here=True)
            if i % 20 == 19:
                await asyncio.sleep(0.1)  # (the loop runs the checkpoint's hand-over when it next waits)
        assert len(checkpoints) == 2 and threading.get_ident() not in checkpoints
    finally:
        await db.close()


async def test_a_checkpoint_due_while_a_transaction_is_open_waits_behind_it(tmp_path, monkeypatch, caplog):
    """The loop's connection hands its checkpoint to the database thread; one due just as a
    transaction() opens must queue behind it (not run inside it, fail 'table is locked' and be
    lost until 200 commits later)."""
    from bot import storage

    monkeypatch.setattr(storage, "CHECKPOINT_EVERY_COMMITS", 1)
    db = await Database(tmp_path / "x.db").open()
    try:
        await db.execute("INSERT INTO patients (platform, platform_user_id, created_at) VALUES ('local', 'a', 0)",
                         here=True)
        async with db.transaction() as conn:
            await conn.execute("INSERT INTO patients (platform, platform_user_id, created_at) VALUES ('local', 'b', 0)")
        result = await asyncio.wait_for(db._checkpoint, 5)
        assert result[0] == 0  # PASSIVE checkpoint ran: not busy
        assert "checkpoint failed" not in caplog.text
        assert await db.fetchval("SELECT COUNT(*) FROM patients") == 2
    finally:
        await db.close()


async def test_a_read_unit_on_the_loop_connection_is_one_snapshot(tmp_path):
    """A commit by another connection between two statements of one read unit is not seen half:
    a card must not show a decision with a state from before it."""
    db = await Database(tmp_path / "x.db").open()
    other = sqlite3.connect(tmp_path / "x.db", isolation_level=None)
    try:
        def two_counts(conn):
            first = conn.execute("SELECT COUNT(*) FROM patients").fetchone()[0]
            other.execute("INSERT INTO patients (platform, platform_user_id, created_at) VALUES ('local', 'x', 0)")
            return first, conn.execute("SELECT COUNT(*) FROM patients").fetchone()[0]

        assert await db.run(two_counts, write=False, here=True) == (0, 0)
        assert await db.fetchval("SELECT COUNT(*) FROM patients", here=True) == 1
    finally:
        other.close()
        await db.close()


async def test_a_transaction_left_open_on_the_loop_connection_does_not_hold_the_lock(tmp_path):
    """Interrupted between BEGIN and COMMIT (e.g. a failed ROLLBACK): the next unit rolls it back
    first instead of failing every write from then on with 'cannot start a transaction'."""
    db = await Database(tmp_path / "x.db").open()
    try:
        db._here.execute("BEGIN IMMEDIATE")
        db._here.execute("INSERT INTO patients (platform, platform_user_id, created_at) VALUES ('local', 'lost', 0)")
        await db.execute("INSERT INTO patients (platform, platform_user_id, created_at) VALUES ('local', 'a', 0)",
                         here=True)
        rows = await db.fetchall("SELECT platform_user_id FROM patients")
        assert [r[0] for r in rows] == ["a"]
    finally:
        await db.close()


async def test_without_wal_every_unit_goes_through_the_database_thread(tmp_path, monkeypatch):
    """busy_timeout 0 is safe only in WAL mode (a rollback-journal COMMIT waits for readers)."""
    import aiosqlite

    real_execute = aiosqlite.Connection.execute

    def no_wal(self, sql, *args, **kwargs):
        return real_execute(self, "PRAGMA journal_mode=DELETE" if sql == "PRAGMA journal_mode=WAL" else sql,
                            *args, **kwargs)

    monkeypatch.setattr(aiosqlite.Connection, "execute", no_wal)
    db = await Database(tmp_path / "x.db").open()
    try:
        assert db._here is None
        await db.execute("INSERT INTO patients (platform, platform_user_id, created_at) VALUES ('local', 'a', 0)",
                         here=True)
        assert await db.fetchval("SELECT COUNT(*) FROM patients", here=True) == 1
    finally:
        await db.close()


async def test_a_failed_second_connection_closes_the_first(tmp_path, monkeypatch):
    real_connect = sqlite3.connect

    def refuse(*args, **kwargs):
        if kwargs.get("check_same_thread") is False:
            raise sqlite3.OperationalError("unable to open database file")
        return real_connect(*args, **kwargs)

    monkeypatch.setattr(sqlite3, "connect", refuse)
    db = Database(tmp_path / "x.db")
    before = {t.ident for t in threading.enumerate()}
    with pytest.raises(StorageError):
        await db.open()
    assert db._conn is None
    await asyncio.sleep(0.05)
    assert not [t for t in threading.enumerate() if t.ident not in before and t.is_alive()]


async def test_forget_me_turns_secure_delete_on_for_the_loop_connection_too(service):
    """The hot path updates rows (messages.status, replies) on the loop's connection: after a
    forget-me, its freed cells must be zeroed as well, not only the shared connection's."""
    db = service.core.db
    db._here.execute("PRAGMA secure_delete = OFF")
    await service.core.forget_patient("local", "nobody")
    assert db._here.execute("PRAGMA secure_delete").fetchone()[0] == 1
    assert await db.fetchval("PRAGMA secure_delete") == 1


async def test_an_in_memory_database_has_one_connection(tmp_path):
    db = await Database(":memory:").open()
    try:
        await db.execute("INSERT INTO patients (platform, platform_user_id, created_at) VALUES ('local', 'a', 0)",
                         here=True)
        assert await db.fetchval("SELECT COUNT(*) FROM patients", here=True) == 1
    finally:
        await db.close()


async def test_a_running_service_keeps_what_start_up_built_out_of_the_collectors_passes(settings):
    """After start, the objects start-up built are frozen (a full collection would walk them all
    again, pausing the event loop: 105 ms once under load); stop gives them back."""
    import gc

    from bot.inference.fixed import FixedBackend
    from bot.local.platform import LocalPlatform
    from bot.service import Service

    svc = Service(settings, FixedBackend())
    svc.add_platform(LocalPlatform())
    await svc.start(retry_loop=False)
    try:
        assert gc.get_freeze_count() > 1000
    finally:
        await asyncio.wait_for(svc.stop(), 60)
    assert gc.get_freeze_count() == 0
