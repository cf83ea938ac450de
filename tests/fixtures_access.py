"""Fixtures for console access (owned by the access work)."""

from __future__ import annotations

import pytest
from argon2 import PasswordHasher, profiles


@pytest.fixture(autouse=True)
def cheap_password_hashing(monkeypatch):
    """argon2id with the library's CHEAPEST profile, meant for tests (argon2-cffi docs): the
    production parameters cost ~0.1–0.7 s per hash on these shared cores, and the console
    tests sign in hundreds of times. The algorithm and code paths are the same; the command-line
    test (test_cli.py, a subprocess) checks the production parameters of a stored hash."""
    from bot.access import accounts

    monkeypatch.setattr(accounts, "_hasher", PasswordHasher.from_parameters(profiles.CHEAPEST))
