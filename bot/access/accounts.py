"""Console accounts: a name, one role and an argon2 password hash.

Roles are read from this table on every request (never from the request itself). A
moderator may also review, so the moderator role carries both roles to the core.
Passwords are hashed with argon2id (argon2-cffi's defaults, RFC 9106 low-memory profile);
hashing and checking run in a worker thread so a sign-in never stalls the event loop.
"""

from __future__ import annotations

import asyncio
import re
import secrets
import sqlite3
from dataclasses import dataclass

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

from bot.storage import Database, now
from reviewers.models import MODERATOR_ROLE, REVIEWER_ROLE

ROLES = (REVIEWER_ROLE, MODERATOR_ROLE)
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
MIN_PASSWORD_CHARS = 10
MAX_PASSWORD_CHARS = 1024  # argon2 takes any length; a cap keeps one request from costing much
DEMO_ACCOUNTS = {"demo-reviewer": REVIEWER_ROLE, "demo-moderator": MODERATOR_ROLE}

_hasher = PasswordHasher()
_dummy_hashes: dict[int, str] = {}


def _dummy_hash() -> str:
    """Checked against when the name is unknown, so a wrong name costs as long as a wrong
    password (made on first use, with the hasher's own parameters)."""
    key = id(_hasher)
    if key not in _dummy_hashes:
        _dummy_hashes[key] = _hasher.hash(secrets.token_urlsafe(16))
    return _dummy_hashes[key]


class AccountError(Exception):
    """A request about accounts that cannot be done; the message is for the operator."""


@dataclass(frozen=True)
class Account:
    id: int
    name: str
    role: str
    created_at: float = 0.0

    @property
    def roles(self) -> frozenset[str]:
        """What the core checks: a moderator holds the reviewer role too."""
        return frozenset(ROLES) if self.role == MODERATOR_ROLE else frozenset({self.role})


def check_name(name: str) -> str:
    name = (name or "").strip()
    if not NAME_RE.match(name):
        raise AccountError(
            f"account name {name!r} is not valid: 1 to 64 letters, digits, '.', '_' or '-', starting with a letter or digit"
        )
    return name


def check_role(role: str) -> str:
    role = (role or "").strip().lower()
    if role not in ROLES:
        raise AccountError(f"role {role!r} is not valid: use {' or '.join(ROLES)}")
    return role


def check_password(password: str) -> str:
    if len(password) < MIN_PASSWORD_CHARS:
        raise AccountError(f"the password is too short: at least {MIN_PASSWORD_CHARS} characters")
    if len(password) > MAX_PASSWORD_CHARS:
        raise AccountError(f"the password is too long: at most {MAX_PASSWORD_CHARS} characters")
    return password


def _account(row: sqlite3.Row | None) -> Account | None:
    if row is None:
        return None
    return Account(int(row["id"]), row["name"], row["role"], float(row["created_at"]))


async def add(db: Database, name: str, role: str, password: str) -> Account:
    name, role, password = check_name(name), check_role(role), check_password(password)
    hashed = await asyncio.to_thread(_hasher.hash, password)
    t = now()
    try:
        account_id = await db.execute(
            "INSERT INTO accounts (name, role, password_hash, created_at, updated_at) VALUES (?, ?, ?, ?, ?)",
            (name, role, hashed, t, t),
        )
    except sqlite3.IntegrityError:
        raise AccountError(f"an account named {name!r} already exists") from None
    return Account(account_id, name, role, t)


async def remove(db: Database, name: str) -> bool:
    """Delete the account; its sessions and sign-in links go with it (ON DELETE CASCADE)."""
    async with db.transaction() as conn:
        cursor = await conn.execute("DELETE FROM accounts WHERE name = ?", (name.strip(),))
        return cursor.rowcount > 0


async def set_password(db: Database, name: str, password: str) -> bool:
    """Change the password and end every session of the account (a reset locks others out)."""
    hashed = await asyncio.to_thread(_hasher.hash, check_password(password))
    async with db.transaction() as conn:
        cursor = await conn.execute("UPDATE accounts SET password_hash = ?, updated_at = ? WHERE name = ?",
                                    (hashed, now(), name.strip()))
        if cursor.rowcount == 0:
            return False
        await conn.execute("DELETE FROM sessions WHERE account_id = (SELECT id FROM accounts WHERE name = ?)",
                           (name.strip(),))
    return True


async def get(db: Database, name: str) -> Account | None:
    return _account(await db.fetchone("SELECT * FROM accounts WHERE name = ?", (name.strip(),)))


async def get_by_id(db: Database, account_id: int) -> Account | None:
    return _account(await db.fetchone("SELECT * FROM accounts WHERE id = ?", (account_id,)))


async def all_accounts(db: Database) -> list[Account]:
    return [a for a in map(_account, await db.fetchall("SELECT * FROM accounts ORDER BY name")) if a]


async def count(db: Database, role: str | None = None) -> int:
    if role is None:
        return int(await db.fetchval("SELECT COUNT(*) FROM accounts"))
    return int(await db.fetchval("SELECT COUNT(*) FROM accounts WHERE role = ?", (role,)))


async def verify(db: Database, name: str, password: str) -> Account | None:
    """The account if ``password`` is its password; None otherwise (unknown name or wrong password)."""
    row = await db.fetchone("SELECT * FROM accounts WHERE name = ?", ((name or "").strip(),))
    stored = row["password_hash"] if row is not None else await asyncio.to_thread(_dummy_hash)
    if len(password) > MAX_PASSWORD_CHARS:
        return None
    try:
        await asyncio.to_thread(_hasher.verify, stored, password)
    except (VerifyMismatchError, VerificationError, InvalidHashError):
        return None
    if row is None:
        return None
    if _hasher.check_needs_rehash(stored):  # parameters raised since it was stored
        await db.execute("UPDATE accounts SET password_hash = ? WHERE id = ?",
                         (await asyncio.to_thread(_hasher.hash, password), row["id"]))
    return _account(row)


async def ensure_demo_accounts(db: Database) -> list[Account]:
    """The demo's reviewer and moderator, created once with random passwords nobody knows
    (they sign in with one-time links; ``llm4sweat users passwd`` sets a password)."""
    made = []
    for name, role in DEMO_ACCOUNTS.items():
        account = await get(db, name)
        if account is None:
            try:
                account = await add(db, name, role, secrets.token_urlsafe(24))
            except AccountError:  # created at the same moment by another process
                account = await get(db, name)
        if account is not None:
            made.append(account)
    return made
