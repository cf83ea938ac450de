"""The adapter registry: every trained version with its status, manifest and evaluation.

Statuses: candidate (trained, not serving), live (serving; at most one), retired (served
before), failed (could not be loaded or evaluated). ``gate_passed_at`` records that a version
once passed the promotion gate: only such a version (or the base model) is a rollback target,
so a rollback can never put an unevaluated or force-promoted candidate live."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from bot.storage import Database, dumps, now


class RegistryError(Exception):
    """A registry operation that cannot be done; the message is for the moderator."""


def adapter_problem(path: Path) -> str | None:
    """Why ``path`` is not a loadable PEFT adapter directory, or None if it looks sound."""
    if not path.is_dir():
        return f"adapter directory {path} does not exist"
    config = path / "adapter_config.json"
    try:
        json.loads(config.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return f"{config} is missing"
    except (ValueError, UnicodeDecodeError, OSError) as exc:
        return f"{config} is not valid JSON ({exc})"
    weights = [p for p in ("adapter_model.safetensors", "adapter_model.bin") if (path / p).is_file()]
    if not weights:
        return f"no adapter weights in {path}"
    if (path / weights[0]).stat().st_size == 0:
        return f"{path / weights[0]} is empty"
    return None


async def register(
    db: Database, version: str, path: Path, base_model: str, manifest: dict[str, Any] | None = None,
    status: str = "candidate",
) -> None:
    await db.execute(
        "INSERT INTO adapters (version, path, status, base_model, manifest, created_at) VALUES (?, ?, ?, ?, ?, ?)",
        (version, str(path), status, base_model, dumps(manifest or {}), now()),
    )


async def get(db: Database, version: str) -> dict[str, Any] | None:
    row = await db.fetchone("SELECT * FROM adapters WHERE version = ?", (version,))
    return _row(row)


async def live(db: Database) -> dict[str, Any] | None:
    return _row(await db.fetchone("SELECT * FROM adapters WHERE status = 'live'"))


async def all_versions(db: Database) -> list[dict[str, Any]]:
    return [_row(r) for r in await db.fetchall("SELECT * FROM adapters ORDER BY id DESC")]


async def set_evaluation(db: Database, version: str, evaluation: dict[str, Any]) -> None:
    await db.execute("UPDATE adapters SET evaluation = ? WHERE version = ?", (dumps(evaluation), version))


async def set_status(db: Database, version: str, status: str, note: str | None = None) -> None:
    await db.execute("UPDATE adapters SET status = ?, note = COALESCE(?, note) WHERE version = ?", (status, note, version))


async def mark_live(db: Database, version: str | None) -> None:
    """Make ``version`` the one live adapter (None: the base model serves); the old one retires."""
    async with db.transaction() as conn:
        await conn.execute("UPDATE adapters SET status = 'retired' WHERE status = 'live'")
        if version is not None:
            cursor = await conn.execute(
                "UPDATE adapters SET status = 'live', promoted_at = ? WHERE version = ?", (now(), version)
            )
            if cursor.rowcount == 0:
                raise RegistryError(f"no adapter version {version!r}")


async def mark_gate_passed(db: Database, version: str) -> None:
    """Record that ``version`` passed the promotion gate (it becomes a valid rollback target)."""
    await db.execute("UPDATE adapters SET gate_passed_at = COALESCE(gate_passed_at, ?) WHERE version = ?",
                     (now(), version))


async def rollback_target(db: Database, version: str | None = None) -> dict[str, Any] | None:
    """The version a rollback returns to: the one named (it must once have passed the gate),
    or else the newest version *older than the live one* that served before and passed the
    gate; None: the base model.

    Older, not "most recently retired": after v1 → v2 → rollback (v1 live, v2 retired) a second
    rollback must go further back (to the base model), never forward to v2 again."""
    if version is not None:
        row = await get(db, version)
        if row is None:
            raise RegistryError(f"no adapter version {version!r}")
        if row["status"] == "failed":
            raise RegistryError(f"adapter {version} failed before and cannot be made live")
        if row["status"] == "live":
            raise RegistryError(f"{version} is already live.")
        if not row.get("gate_passed_at"):
            raise RegistryError(
                f"{version} never passed the promotion gate, so it is not a rollback target; "
                f"promote it through the gate instead (promote {version})"
            )
        return row
    current = await live(db)
    return _row(await db.fetchone(
        "SELECT * FROM adapters WHERE status = 'retired' AND promoted_at IS NOT NULL AND gate_passed_at IS NOT NULL"
        " AND id < ? ORDER BY id DESC LIMIT 1", (current["id"] if current else -1,)
    ))


def _row(row: Any) -> dict[str, Any] | None:
    if row is None:
        return None
    data = dict(row)
    data["manifest"] = json.loads(data["manifest"] or "{}")
    data["evaluation"] = json.loads(data["evaluation"]) if data.get("evaluation") else None
    return data


async def resolve_rollback(db: Database, version: str | None = None) -> str | None:
    """The version a rollback makes live: the one named, else the most recently retired one that
    passed the gate, else the base model (None). Raises RegistryError when there is nothing to
    roll back or the named version is not a valid target."""
    target = await rollback_target(db, version)
    if target is not None:
        return target["version"]
    if await live(db) is None:
        raise RegistryError("The base model is already serving; there is nothing to roll back.")
    return None
