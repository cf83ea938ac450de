"""The one SQLite database: connection, transactions and versioned migrations.

Each package owns its tables and lists its migrations in its own ``schema`` module; this
module only applies them in order and records what was applied, so an upgrade is
``llm4sweat db upgrade`` (or simply starting the service).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
import sqlite3
from typing import Any, AsyncIterator, Callable, Iterable, TypeVar

import aiosqlite

from bot.files import private_file

log = logging.getLogger(__name__)

T = TypeVar("T")


@dataclass(frozen=True)
class Migration:
    package: str
    version: int
    name: str
    sql: str


def all_migrations() -> list[Migration]:
    """Migrations of every package, in the order they must be applied."""
    from bot import schema as bot_schema
    from bot.access import schema as access_schema
    from pipeline import schema as pipeline_schema
    from reviewers import schema as reviewers_schema

    # bot first (patients, conversations), then reviewers and pipeline that reference them;
    # console accounts stand alone.
    return [*bot_schema.MIGRATIONS, *reviewers_schema.MIGRATIONS, *pipeline_schema.MIGRATIONS,
            *access_schema.MIGRATIONS]


class StorageError(Exception):
    """The database cannot be opened or upgraded; the message says why in one line."""


def now() -> float:
    return time.time()


def dumps(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, sort_keys=True)


class Database:
    """One aiosqlite connection shared by the whole service.

    Writes go through ``transaction()``, which holds an asyncio lock so that two coroutines
    never interleave statements inside one transaction on the shared connection.
    """

    def __init__(self, path: Path | str):
        self.path = Path(path)
        self._conn: aiosqlite.Connection | None = None
        self._lock = asyncio.Lock()

    async def open(self, migrate: bool = True) -> "Database":
        if str(self.path) != ":memory:":
            try:
                self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
                # Owner-only before SQLite opens it: the -wal and -shm files get the same mode.
                for path in (self.path, *(self.path.with_name(self.path.name + s) for s in ("-wal", "-shm"))):
                    if path == self.path or path.exists():
                        private_file(path)
            except OSError as exc:
                raise StorageError(f"database {self.path}: {exc.strerror}") from None
        conn = aiosqlite.connect(str(self.path), isolation_level=None)
        try:
            await conn
            conn.row_factory = aiosqlite.Row
            await conn.execute("PRAGMA journal_mode=WAL")
            await conn.execute("PRAGMA foreign_keys=ON")
            await conn.execute("PRAGMA synchronous=NORMAL")
            await conn.execute("PRAGMA busy_timeout=5000")
        except BaseException as exc:
            # Cancelled or failed half-way: close the connection's thread now, or it finishes its
            # work after the event loop has gone and prints a traceback at exit.
            with contextlib.suppress(Exception):
                await conn.close()
            if isinstance(exc, (sqlite3.Error, OSError, ValueError)):
                raise StorageError(f"database {self.path}: {exc}") from None
            raise
        self._conn = conn
        if migrate:
            await self.upgrade()
        return self

    async def close(self) -> None:
        if self._conn is not None:
            conn, self._conn = self._conn, None
            if not _thread_alive(conn):  # closing would wait forever for a thread that is gone
                raise StorageError(f"database {self.path}: {THREAD_GONE}")
            await conn.close()

    async def __aenter__(self) -> "Database":
        if self._conn is None:
            await self.open()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    @property
    def conn(self) -> aiosqlite.Connection:
        if self._conn is None:
            raise StorageError("database is not open")
        return self._conn

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[aiosqlite.Connection]:
        """BEGIN IMMEDIATE … COMMIT, rolled back on any error."""
        async with self._lock:
            await self.conn.execute("BEGIN IMMEDIATE")
            try:
                yield self.conn
            except BaseException:
                await self.conn.execute("ROLLBACK")
                raise
            else:
                await self.conn.execute("COMMIT")

    async def run(self, fn: Callable[[sqlite3.Connection], T], write: bool = True) -> T:
        """Run ``fn(connection)`` in the connection's own thread, as one transaction if ``write``.

        One hop to the database thread for a whole unit of work instead of one per statement:
        on a busy 2-core machine each hop costs a thread switch, and the hot path (storing a
        message, storing a reply with its review item) would otherwise pay it a dozen times.
        Uses aiosqlite's own work queue, so it stays ordered with every other statement.

        Units are queued without waiting for each other: each is a whole transaction, and the
        database thread runs them one after another, so under load it goes from one to the next
        without a round trip through the event loop in between (no lock convoy). Only while a
        :meth:`transaction` is open on the shared connection do units wait, so that none runs
        inside it."""

        def unit() -> T:
            raw = self.conn._conn  # aiosqlite's sqlite3 connection, used only inside its thread
            if not write:
                return fn(raw)
            raw.execute("BEGIN IMMEDIATE")
            try:
                result = fn(raw)
            except BaseException:
                raw.execute("ROLLBACK")
                raise
            raw.execute("COMMIT")
            return result

        if not _thread_alive(self.conn):  # an answer would never come: say so instead of waiting forever
            raise StorageError(f"database {self.path}: {THREAD_GONE}")
        if self._lock.locked():  # a transaction() holds the connection (or waits for it): queue behind it
            async with self._lock:
                return await self.conn._execute(unit)
        return await self.conn._execute(unit)  # queued at once, before this coroutine first yields

    async def execute(self, sql: str, params: Iterable[Any] = ()) -> int:
        """One statement in its own transaction; returns lastrowid."""
        return await self.run(lambda conn: conn.execute(sql, tuple(params)).lastrowid or 0)

    async def fetchone(self, sql: str, params: Iterable[Any] = ()) -> sqlite3.Row | None:
        return await self.run(lambda conn: conn.execute(sql, tuple(params)).fetchone(), write=False)

    async def fetchall(self, sql: str, params: Iterable[Any] = ()) -> list[sqlite3.Row]:
        return await self.run(lambda conn: conn.execute(sql, tuple(params)).fetchall(), write=False)

    async def fetchval(self, sql: str, params: Iterable[Any] = ()) -> Any:
        row = await self.fetchone(sql, params)
        return None if row is None else row[0]

    async def applied_migrations(self) -> set[tuple[str, int]]:
        await self.conn.execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations ("
            " package TEXT NOT NULL, version INTEGER NOT NULL, name TEXT NOT NULL,"
            " applied_at REAL NOT NULL, PRIMARY KEY (package, version))"
        )
        cursor = await self.conn.execute("SELECT package, version FROM schema_migrations")
        return {(row[0], row[1]) for row in await cursor.fetchall()}

    async def upgrade(self) -> list[Migration]:
        """Apply every migration not yet applied, each in its own transaction."""
        done = await self.applied_migrations()
        applied: list[Migration] = []
        for migration in all_migrations():
            if (migration.package, migration.version) in done:
                continue
            async with self.transaction() as conn:
                for statement in _split_sql(migration.sql):
                    await conn.execute(statement)
                await conn.execute(
                    "INSERT INTO schema_migrations (package, version, name, applied_at) VALUES (?, ?, ?, ?)",
                    (migration.package, migration.version, migration.name, now()),
                )
            log.info("applied migration %s/%03d %s", migration.package, migration.version, migration.name)
            applied.append(migration)
        return applied


THREAD_GONE = ("its connection thread has stopped (an event loop closed while a call was still waiting "
               "for the database), so nothing more can be read or written")


def _thread_alive(conn: aiosqlite.Connection) -> bool:
    """Whether aiosqlite's thread still runs calls. It ends for good when it cannot hand an answer
    back (the calling event loop was closed first); every later call would then wait forever."""
    thread = getattr(conn, "_thread", None)
    return thread is None or thread.ident is None or thread.is_alive()


def _split_sql(sql: str) -> list[str]:
    return [part.strip() for part in sql.split(";") if part.strip()]
