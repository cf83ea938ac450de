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
import threading
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

# The loop's own connection (``Database.run(..., here=True)``) never checkpoints the WAL itself
# (a checkpoint copies pages into the database file: disk work the event loop must not wait on);
# after this many of its commits, a PASSIVE checkpoint is run in the database thread instead.
CHECKPOINT_EVERY_COMMITS = 200


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
        # A second connection used on the event loop's own thread for short indexed units of the
        # hot path (``run(..., here=True)``); None for ``:memory:`` (a second connection would
        # open another, empty database) and until ``open``.
        self._here: sqlite3.Connection | None = None
        self._here_thread: int | None = None
        self._commits_here = 0
        self._checkpoint: asyncio.Future[Any] | None = None
        self.here_busy = 0  # units the loop's connection found locked and handed to the thread instead

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
        if str(self.path) != ":memory:":
            try:
                self._open_here()
            except BaseException:
                self._conn = None  # not left open behind a failed open (its thread would keep the process alive)
                with contextlib.suppress(Exception):
                    await conn.close()
                raise
        return self

    def _open_here(self) -> None:
        """The event loop's own connection: same file and settings as the shared one, but it never
        waits for a lock (``busy_timeout=0``: a unit that finds the database locked goes to the
        database thread, which waits as usual) and never checkpoints (``wal_autocheckpoint=0``:
        :meth:`_after_commit_here` has the database thread do it)."""
        try:
            here = sqlite3.connect(str(self.path), isolation_level=None, check_same_thread=False)
        except sqlite3.Error as exc:
            raise StorageError(f"database {self.path}: {exc}") from None
        try:
            here.row_factory = sqlite3.Row
            here.execute("PRAGMA foreign_keys=ON")
            here.execute("PRAGMA synchronous=NORMAL")
            here.execute("PRAGMA busy_timeout=0")
            here.execute("PRAGMA wal_autocheckpoint=0")
            wal = str(here.execute("PRAGMA journal_mode").fetchone()[0]).lower() == "wal"
        except sqlite3.Error as exc:
            here.close()
            raise StorageError(f"database {self.path}: {exc}") from None
        if not wal:  # without WAL a COMMIT needs readers gone, and busy_timeout 0 would fail it: thread only
            here.close()
            log.warning("database %s is not in WAL mode: every unit goes through the database thread", self.path)
            return
        self._here = here
        self._here_thread = threading.get_ident()

    async def close(self) -> None:
        here, self._here = self._here, None
        checkpoint, self._checkpoint = self._checkpoint, None
        if checkpoint is not None and not checkpoint.done():
            with contextlib.suppress(Exception):
                await checkpoint
        if here is not None:
            here.close()  # first: the shared connection, closed last, checkpoints the WAL in its thread
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

    async def run(self, fn: Callable[[sqlite3.Connection], T], write: bool = True, *, here: bool = False) -> T:
        """Run ``fn(connection)`` in the connection's own thread, as one transaction if ``write``.

        One hop to the database thread for a whole unit of work instead of one per statement:
        on a busy 2-core machine each hop costs a thread switch, and the hot path (storing a
        message, storing a reply with its review item) would otherwise pay it a dozen times.
        Uses aiosqlite's own work queue, so it stays ordered with every other statement.

        Units are queued without waiting for each other: each is a whole transaction, and the
        database thread runs them one after another, so under load it goes from one to the next
        without a round trip through the event loop in between (no lock convoy). Only while a
        :meth:`transaction` is open on the shared connection do units wait, so that none runs
        inside it.

        ``here``: run the unit on the event loop's own thread and connection, without the hop
        (for short units on indexed rows: the hot path of a message). A WAL commit costs ~15 µs,
        a hop to the database thread under load several times that in waiting for the thread
        and the GIL. The unit is the same transaction (``BEGIN IMMEDIATE`` … ``COMMIT``, nothing
        held across an await, since nothing is awaited); if the database is locked (another
        connection or process is writing, or a :meth:`transaction` is open) it goes to the
        database thread as above, which waits for the lock. A read unit that finds the database
        locked is run again there, so read units given ``here`` must have no other effect.
        Statements that change a connection (PRAGMA) must not be run ``here``."""
        if here and self._here is not None and not self._lock.locked() and threading.get_ident() == self._here_thread:
            ran, result = self._run_here(fn, write)
            if ran:
                return result  # type: ignore[return-value]
            self.here_busy += 1

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

    def _run_here(self, fn: Callable[[sqlite3.Connection], T], write: bool) -> tuple[bool, T | None]:
        """(True, result) when the unit ran on the loop's connection; (False, None) when the
        database was locked before the unit did anything (the caller hands it to the thread)."""
        conn = self._here
        assert conn is not None
        if conn.in_transaction:  # left open by an interrupted unit: never carry the lock into the next one
            conn.execute("ROLLBACK")
        # A read unit is one snapshot too (BEGIN): the database thread may commit between its
        # statements, which it could not while every statement of this process went through it.
        try:
            conn.execute("BEGIN IMMEDIATE" if write else "BEGIN")
        except sqlite3.OperationalError as exc:
            if _locked(exc):
                return False, None  # locked before the unit did anything: the thread runs it
            raise
        try:
            result = fn(conn)
            conn.execute("COMMIT")
        except BaseException as exc:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            if not write and isinstance(exc, sqlite3.OperationalError) and _locked(exc):
                return False, None  # a read has no effect: run again in the thread, which waits
            raise
        if write:
            self._after_commit_here()
        return True, result

    def _after_commit_here(self) -> None:
        """Every :data:`CHECKPOINT_EVERY_COMMITS` commits of the loop's connection, a PASSIVE WAL
        checkpoint in the database thread (it waits for no reader or writer), one at a time."""
        self._commits_here += 1
        if self._commits_here < CHECKPOINT_EVERY_COMMITS or (self._checkpoint is not None and not self._checkpoint.done()):
            return
        self._commits_here = 0
        conn = self._conn
        if conn is None or not _thread_alive(conn):
            return
        # Through run(), so it queues behind an open transaction() instead of landing inside it.
        self._checkpoint = asyncio.ensure_future(
            self.run(lambda raw: raw.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone(), write=False))
        self._checkpoint.add_done_callback(_checkpoint_done)

    async def each_connection(self, fn: Callable[[sqlite3.Connection], Any]) -> None:
        """``fn(connection)`` on the shared connection (in its thread) and on the loop's own one:
        for settings of a connection (a trace callback), which ``run`` would apply to one only."""
        await self.run(fn, write=False)
        if self._here is not None and threading.get_ident() == self._here_thread:
            fn(self._here)

    async def execute(self, sql: str, params: Iterable[Any] = (), *, here: bool = False) -> int:
        """One statement in its own transaction; returns lastrowid."""
        return await self.run(lambda conn: conn.execute(sql, tuple(params)).lastrowid or 0, here=here)

    async def fetchone(self, sql: str, params: Iterable[Any] = (), *, here: bool = False) -> sqlite3.Row | None:
        return await self.run(lambda conn: conn.execute(sql, tuple(params)).fetchone(), write=False, here=here)

    async def fetchall(self, sql: str, params: Iterable[Any] = (), *, here: bool = False) -> list[sqlite3.Row]:
        return await self.run(lambda conn: conn.execute(sql, tuple(params)).fetchall(), write=False, here=here)

    async def fetchval(self, sql: str, params: Iterable[Any] = (), *, here: bool = False) -> Any:
        row = await self.fetchone(sql, params, here=here)
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


def _locked(exc: sqlite3.OperationalError) -> bool:
    """SQLITE_BUSY or SQLITE_LOCKED (any extended code): another connection holds the lock."""
    code = getattr(exc, "sqlite_errorcode", None)
    if code is not None:
        return code & 0xFF in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED)
    return "locked" in str(exc) or "busy" in str(exc)


def _checkpoint_done(task: "asyncio.Future[Any]") -> None:
    if not task.cancelled() and task.exception() is not None:
        log.warning("WAL checkpoint failed: %s", task.exception())


def _split_sql(sql: str) -> list[str]:
    return [part.strip() for part in sql.split(";") if part.strip()]
