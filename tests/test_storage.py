import sqlite3

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
