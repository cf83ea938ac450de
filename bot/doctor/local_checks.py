"""Checks of this machine: settings, the database file, disk space, the condition pack.

The doctor only reads: it opens the database without migrating it, and its one write (the
writability probe) is a row of ``service_state`` the service itself rewrites on every
``/readyz``.
"""

from __future__ import annotations

import os
import shutil
import sqlite3
import stat
from pathlib import Path
from typing import Any

from bot.doctor.report import Check, fail, ok
from bot.settings import Settings, SettingsError, load_settings
from bot.storage import Database, StorageError, all_migrations, now

# Free space below this in the data directory is a failure: the database, its WAL and one
# adapter folder per retraining (tens to hundreds of MB for a 1B model) live there.
MIN_FREE_BYTES = 2 * 1024**3
LOCK_WAIT_MS = 1000


def check_settings(config_file: str | Path | None) -> tuple[Settings | None, Check]:
    """Load the settings as ``llm4sweat run`` would."""
    try:
        settings = load_settings(config_file)
    except SettingsError as exc:
        return None, fail("settings", str(exc), "correct the setting named above (llm4sweat settings shows the "
                          "effective values; secrets go in the environment only)")
    source = str(config_file) if config_file else os.environ.get("LLM4SWEAT_CONFIG") or "environment and defaults"
    return settings, ok("settings", f"loaded ({source})")


async def check_database(settings: Settings) -> list[Check]:
    """The database opens, its migrations are current, it takes a write, and only its owner
    can read it (patient messages are health data)."""
    path = settings.db_path
    if not path.exists():
        parent = _existing_parent(path.parent)
        if os.access(parent, os.W_OK):
            return [ok("database.open", f"{path} does not exist yet; it is created at the first start")]
        return [fail("database.open", f"{path} does not exist and {parent} is not writable",
                     f"make {parent} writable for the user the service runs as, or set LLM4SWEAT_DATA_DIR")]
    checks: list[Check] = []
    modes = _owner_only(path)  # before opening: opening tightens the database file itself
    db = Database(path)
    try:
        await db.open(migrate=False)
    except StorageError as exc:
        return [fail("database.open", str(exc), "check the file is a SQLite database readable by this user "
                     "(restore it from a backup if it is damaged)")]
    try:
        # The doctor waits less than the service for a lock: a write held elsewhere is worth reporting.
        await db.conn.execute(f"PRAGMA busy_timeout={LOCK_WAIT_MS}")
        checks.append(ok("database.open", str(path)))
        checks.append(await _migrations(db))
        checks.append(await _writable(db))
    finally:
        await db.close()
    checks.append(modes)
    return checks


async def _migrations(db: Database) -> Check:
    try:
        applied = await db.fetchall("SELECT package, version FROM schema_migrations")
    except sqlite3.Error:
        applied = []
    done = {(row[0], row[1]) for row in applied}
    known = {(m.package, m.version) for m in all_migrations()}
    pending = [f"{m.package}/{m.version:03d} {m.name}" for m in all_migrations() if (m.package, m.version) not in done]
    newer = sorted(done - known)
    if newer:
        return fail("database.migrations",
                    f"the database has migrations this install does not know ({', '.join(f'{p}/{v:03d}' for p, v in newer)})",
                    "it was upgraded by a newer llm4sweat: run that version (or restore a backup taken before the upgrade)")
    if pending:
        return fail("database.migrations", f"{len(pending)} migration(s) not applied: {', '.join(pending[:5])}",
                    "run `llm4sweat db upgrade` (after a backup: `llm4sweat db backup FILE`); the service also applies them at start")
    return ok("database.migrations", f"current ({len(done)} applied)")


async def _writable(db: Database) -> Check:
    def probe(conn: sqlite3.Connection) -> None:
        conn.execute(
            "INSERT INTO service_state (key, value, updated_at) VALUES ('ready_probe', '', ?)"
            " ON CONFLICT(key) DO UPDATE SET updated_at = excluded.updated_at",
            (now(),),
        )

    try:
        await db.run(probe)
    except sqlite3.OperationalError as exc:
        if "no such table" in str(exc):
            return fail("database.writable", "the database has no tables yet",
                        "run `llm4sweat db upgrade` or start the service once")
        if "locked" in str(exc):
            return fail("database.writable", f"another connection has held the write lock for over {LOCK_WAIT_MS} ms",
                        "look for a stuck process using the file (a second service, a restore, an open sqlite3 shell) "
                        "and stop it; the service itself never holds the lock that long")
        return fail("database.writable", f"a write failed: {exc}",
                    "give the service's user write access to the database file, its folder and its -wal/-shm files, "
                    "and free disk space")
    except sqlite3.Error as exc:
        return fail("database.writable", f"a write failed: {exc}",
                    "give the service's user write access to the database file, its folder and its -wal/-shm files")
    return ok("database.writable", "a write committed")


def _owner_only(path: Path) -> Check:
    loose = []
    for candidate in (path, path.with_name(path.name + "-wal"), path.with_name(path.name + "-shm")):
        try:
            mode = stat.S_IMODE(candidate.stat().st_mode)
        except FileNotFoundError:
            continue
        if mode & 0o077:
            loose.append(f"{candidate.name} {mode:04o}")
    if loose:
        return fail("database.permissions", f"readable by others: {', '.join(loose)}",
                    f"chmod 600 {path}* (it holds patients' messages), and find what loosened it (a copy, a restore, "
                    "a umask); the service tightens the main file when it opens it")
    return ok("database.permissions", "owner-only (0600)")


def check_disk(settings: Settings, min_free_bytes: int = MIN_FREE_BYTES) -> Check:
    where = _existing_parent(settings.data_dir)
    usage = shutil.disk_usage(where)
    free = _gib(usage.free)
    if usage.free < min_free_bytes:
        return fail("disk.space", f"{free} free in {where} (at least {_gib(min_free_bytes)} needed)",
                    "free space there (old adapter folders can go after a backup) or move LLM4SWEAT_DATA_DIR")
    return ok("disk.space", f"{free} free in {where}")


def check_pack(settings: Settings, pack: Any = None) -> list[Check]:
    """The pack loads, and it has crisis resources for every region the service serves
    (``safety.regions``) besides the default list every other patient gets."""
    from pipeline.packs import PackError, load_pack

    if pack is None:
        try:
            pack = load_pack(settings.pack_path)
        except (PackError, OSError) as exc:
            return [fail("pack.crisis_resources", f"the pack {settings.pack} does not load: {exc}",
                         f"run `llm4sweat pack check {settings.pack_path}` and fix what it names")]
    crisis = pack.crisis
    if "default" not in crisis.regions:
        return [fail("pack.crisis_resources", "no [regions.default] in crisis_resources.toml: patients whose region "
                     "is unknown would get no resources", "add [regions.default] with international resources")]
    missing = []
    for code in settings.safety.regions:
        key, region = crisis.region(code)
        if key == "default" and code.casefold() not in ("default", *(a.casefold() for a in region.aliases)):
            missing.append(code)
    if missing:
        return [fail("pack.crisis_resources",
                     f"no crisis resources for {', '.join(missing)} (patients there get only the international list)",
                     f"add [regions.<code>] with local resources and their sources to {settings.pack_path}/"
                     "crisis_resources.toml, or remove the code from safety.regions")]
    served = ", ".join(settings.safety.regions) or "no region set (safety.regions)"
    return [ok("pack.crisis_resources", f"{pack.name}: default list and {served}")]


def _existing_parent(path: Path) -> Path:
    path = Path(path).absolute()
    while not path.exists() and path.parent != path:
        path = path.parent
    return path


def _gib(n: int) -> str:
    return f"{n / 1024**3:.1f} GiB"
