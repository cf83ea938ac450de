"""``llm4sweat db backup`` and ``db restore``: copies of the database an operator can trust.

Backup uses SQLite's online backup API in one step, so the copy is one consistent snapshot
(one read transaction: in WAL mode the running service keeps writing meanwhile, and none of
its transactions is in the copy by halves). The copy is written beside the target under a
temporary name, owner-only (it holds patients' messages), switched out of WAL mode so it is one
self-contained file, checked with ``PRAGMA integrity_check``, and only then renamed into place.

Restore refuses while a service holds the data directory (bot/instance.py) and holds the lock
itself while it works, so none can start half-way. The backup is checked first — a SQLite
database, intact, with only migrations this install knows (older ones are brought up to date
on the copy) — then copied to a temporary file in the data directory; the current database
is kept beside it (``llm4sweat.db.before-restore-<time>``), its WAL is checkpointed away, and
one atomic rename puts the restored file in place. A failure at any step leaves the current
database as it was: never half a restore.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path

from bot.files import FILE_MODE
from bot.storage import Database, all_migrations

SIDE_FILES = ("-wal", "-shm", "-journal")


class BackupError(Exception):
    """The backup or restore was not done; the message says why in one line, and nothing was
    changed."""


@dataclass(frozen=True)
class Summary:
    """What a database holds, for the operator's one-line report."""

    size_bytes: int
    reviewed_examples: int
    messages: int

    def text(self) -> str:
        return (f"{self.size_bytes / 1e6:.1f} MB, {self.messages} patient messages, "
                f"{self.reviewed_examples} reviewed examples")


def _connect_ro(path: Path) -> sqlite3.Connection:
    return sqlite3.connect(f"file:{path}?mode=ro", uri=True)


def _summary(path: Path) -> Summary:
    with contextlib.closing(_connect_ro(path)) as conn:
        def count(sql: str) -> int:
            try:
                return int(conn.execute(sql).fetchone()[0])
            except sqlite3.Error:
                return 0

        return Summary(path.stat().st_size,
                       count("SELECT COUNT(*) FROM dataset_examples WHERE source IN ('expert_approved', 'expert_edited')"),
                       count("SELECT COUNT(*) FROM messages"))


def _integrity(conn: sqlite3.Connection, what: str) -> None:
    try:
        rows = conn.execute("PRAGMA integrity_check").fetchall()
    except sqlite3.DatabaseError as exc:
        raise BackupError(f"{what} is not a usable SQLite database ({exc})") from None
    problems = [r[0] for r in rows if r[0] != "ok"]
    if problems:
        raise BackupError(f"{what} failed SQLite's integrity check: {'; '.join(problems[:3])}")


def _private_temp(target: Path) -> Path:
    """An owner-only empty file beside ``target`` (same filesystem, so the final rename is atomic)."""
    tmp = target.with_name(f".{target.name}.{os.getpid()}.{time.time_ns()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, FILE_MODE)
    os.close(fd)
    return tmp


def _remove(path: Path) -> None:
    for p in (path, *(path.with_name(path.name + s) for s in SIDE_FILES)):
        with contextlib.suppress(FileNotFoundError):
            p.unlink()


def _copy(source: sqlite3.Connection, tmp: Path) -> None:
    """One-step online backup of ``source`` into ``tmp``, then a self-contained file (no WAL)."""
    with contextlib.closing(sqlite3.connect(tmp)) as dest:
        source.backup(dest, pages=-1)  # one step: one consistent snapshot of the source
        dest.execute("PRAGMA journal_mode=DELETE")
        _integrity(dest, "the copy")
    os.chmod(tmp, FILE_MODE)
    fd = os.open(tmp, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def backup(db_path: Path, target: Path, overwrite: bool = False) -> Summary:
    """Copy the database at ``db_path`` to ``target`` (owner-only), consistent while the service
    writes. Refuses an existing ``target`` unless ``overwrite``."""
    db_path, target = Path(db_path), Path(target)
    if not db_path.is_file():
        raise BackupError(f"there is no database at {db_path} (check LLM4SWEAT_DATA_DIR)")
    if target.exists() and not overwrite:
        raise BackupError(f"{target} exists already: choose a new name (or --force to replace it)")
    if not target.parent.is_dir():
        raise BackupError(f"the folder {target.parent} does not exist")
    if target.resolve() == db_path.resolve():
        raise BackupError("the backup cannot be the database itself")
    tmp = _private_temp(target)
    try:
        # Not read-only: a WAL database's reader may need to create the -shm file. Busy timeout:
        # the snapshot waits for a writer's checkpoint instead of failing.
        with contextlib.closing(sqlite3.connect(db_path, timeout=30)) as source:
            _copy(source, tmp)
        os.replace(tmp, target)
    except sqlite3.Error as exc:
        _remove(tmp)
        raise BackupError(f"backup of {db_path} failed: {exc}") from None
    except BaseException:
        _remove(tmp)
        raise
    return _summary(target)


def check_backup(path: Path) -> None:
    """A usable backup: SQLite, intact, and no migration this install does not know."""
    path = Path(path)
    if not path.is_file():
        raise BackupError(f"there is no file at {path}")
    try:
        with contextlib.closing(_connect_ro(path)) as conn:
            _integrity(conn, str(path))
            try:
                applied = {(r[0], int(r[1])) for r in conn.execute("SELECT package, version FROM schema_migrations")}
            except sqlite3.Error:
                raise BackupError(f"{path} is not an llm4sweat database (it has no schema_migrations table)") from None
    except sqlite3.Error as exc:
        raise BackupError(f"{path} is not a usable SQLite database ({exc})") from None
    known = {(m.package, m.version) for m in all_migrations()}
    newer = sorted(applied - known)
    if newer:
        raise BackupError(f"{path} was made by a newer llm4sweat (migrations {', '.join(f'{p}/{v:03d}' for p, v in newer)} "
                          "are unknown here): restore it with that version")
    if not applied:
        raise BackupError(f"{path} is not an llm4sweat database (no migration was ever applied to it)")


def restore(source: Path, db_path: Path) -> tuple[Summary, Path | None]:
    """Put the backup ``source`` in place of the database at ``db_path``. The caller holds the
    data directory's lock (no service runs). Returns the restored database's summary and where
    the previous database was kept (None when there was none)."""
    source, db_path = Path(source), Path(db_path)
    check_backup(source)
    if source.resolve() == db_path.resolve():
        raise BackupError("the backup is the database itself")
    db_path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    tmp = _private_temp(db_path)
    kept: Path | None = None
    try:
        with contextlib.closing(sqlite3.connect(f"file:{source}?mode=ro", uri=True)) as src:
            _copy(src, tmp)
        asyncio.run(_upgrade(tmp))  # an older backup is brought up to this install's schema, on the copy
        with contextlib.closing(sqlite3.connect(tmp)) as conn:
            conn.execute("PRAGMA journal_mode=DELETE")
            _integrity(conn, "the restored copy")
        if db_path.exists():
            kept = db_path.with_name(f"{db_path.name}.before-restore-{time.strftime('%Y%m%d-%H%M%S')}")
            with contextlib.closing(sqlite3.connect(db_path, timeout=30)) as current:
                kept_tmp = _private_temp(kept)
                try:
                    _copy(current, kept_tmp)
                    os.replace(kept_tmp, kept)
                except BaseException:
                    _remove(kept_tmp)
                    raise
                # Fold the WAL into the file and end WAL mode, so no -wal of the old database
                # is left to be replayed onto the restored one.
                current.execute("PRAGMA wal_checkpoint(TRUNCATE)")
                current.execute("PRAGMA journal_mode=DELETE")
            leftovers = [s for s in SIDE_FILES if db_path.with_name(db_path.name + s).exists()]
            if leftovers:
                raise BackupError(f"{db_path} is still in use ({', '.join(leftovers)} present): stop whatever "
                                  "has it open, then restore again")
        os.replace(tmp, db_path)
    except sqlite3.Error as exc:
        _remove(tmp)
        raise BackupError(f"restore failed, the current database is unchanged: {exc}") from None
    except BaseException:
        _remove(tmp)
        raise
    return _summary(db_path), kept


async def _upgrade(path: Path) -> None:
    db = Database(path)
    await db.open(migrate=True)
    await db.close()
