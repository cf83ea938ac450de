"""Sessions and one-time sign-in links, stored as SHA-256 hashes of their tokens.

A token is 32 random bytes (``secrets.token_urlsafe``); only its hash is in the database, so
a copy of the database (a backup, a leaked file) signs nobody in. A session ends when it
expires, when its owner signs out, when the password changes, or when the account is
removed (``ON DELETE CASCADE``). A sign-in link works once: redeeming it is one conditional
UPDATE, so two clicks at the same moment cannot both succeed.
"""

from __future__ import annotations

import hashlib
import secrets

from bot.access.accounts import Account, get_by_id
from bot.storage import Database, now

TOKEN_BYTES = 32
MAX_TOKEN_CHARS = 128


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8", "replace")).hexdigest()


def new_token() -> str:
    return secrets.token_urlsafe(TOKEN_BYTES)


def _plausible(token: str | None) -> bool:
    return bool(token) and len(token) <= MAX_TOKEN_CHARS  # type: ignore[arg-type]


async def create(db: Database, account: Account, ttl_s: float) -> str:
    """A new session for ``account``; returns the token for the cookie (shown nowhere else)."""
    token = new_token()
    t = now()
    await db.execute("INSERT INTO sessions (token_hash, account_id, created_at, expires_at) VALUES (?, ?, ?, ?)",
                     (token_hash(token), account.id, t, t + ttl_s))
    if secrets.randbelow(50) == 0:  # now and then, drop expired rows
        await purge_expired(db)
    return token


async def account_for(db: Database, token: str | None) -> Account | None:
    """The signed-in account for a session token, with its role as stored now; None if none."""
    if not _plausible(token):
        return None
    row = await db.fetchone(
        "SELECT a.id, a.name, a.role, a.created_at FROM sessions s JOIN accounts a ON a.id = s.account_id"
        " WHERE s.token_hash = ? AND s.expires_at > ?",
        (token_hash(token), now()),  # type: ignore[arg-type]
    )
    if row is None:
        return None
    return Account(int(row["id"]), row["name"], row["role"], float(row["created_at"]))


async def end(db: Database, token: str | None) -> None:
    if _plausible(token):
        await db.execute("DELETE FROM sessions WHERE token_hash = ?", (token_hash(token),))  # type: ignore[arg-type]


async def purge_expired(db: Database) -> None:
    t = now()
    await db.execute("DELETE FROM sessions WHERE expires_at <= ?", (t,))
    await db.execute("DELETE FROM login_links WHERE expires_at <= ? OR used_at IS NOT NULL", (t,))


async def create_link(db: Database, account: Account, ttl_s: float) -> str:
    """A one-time sign-in token for ``account`` (for ``/login?token=…``)."""
    token = new_token()
    t = now()
    await db.execute("INSERT INTO login_links (token_hash, account_id, created_at, expires_at) VALUES (?, ?, ?, ?)",
                     (token_hash(token), account.id, t, t + ttl_s))
    return token


async def redeem_link(db: Database, token: str | None) -> Account | None:
    """The link's account if the link is unused and unexpired, marking it used; else None."""
    if not _plausible(token):
        return None
    t = now()
    async with db.transaction() as conn:
        cursor = await conn.execute(
            "UPDATE login_links SET used_at = ? WHERE token_hash = ? AND used_at IS NULL AND expires_at > ?"
            " RETURNING account_id",
            (t, token_hash(token), t),  # type: ignore[arg-type]
        )
        row = await cursor.fetchone()
    if row is None:
        return None
    return await get_by_id(db, int(row[0]))
