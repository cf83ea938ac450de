"""Fixtures for the core: settings, a database and a whole service in a temporary directory."""

from __future__ import annotations

import pytest

from bot.inference.fixed import FixedBackend
from bot.local.platform import LocalPlatform
from bot.settings import load_settings
from bot.storage import Database


@pytest.fixture
def settings(tmp_path, monkeypatch):
    for name in list(__import__("os").environ):
        if name.startswith("LLM4SWEAT_"):
            monkeypatch.delenv(name)
    return load_settings(data_dir=tmp_path)


@pytest.fixture
async def db(settings):
    database = await Database(settings.db_path).open()
    yield database
    await database.close()


@pytest.fixture
async def service(settings):
    """A whole service on a fixed-reply backend and the local platform."""
    from bot.service import Service

    svc = Service(settings, FixedBackend())
    svc.add_platform(LocalPlatform())
    await svc.start(retry_loop=False)
    yield svc
    await svc.stop()
