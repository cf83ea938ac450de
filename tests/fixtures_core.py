"""Fixtures for the core: settings, a database and a whole service in a temporary directory."""

from __future__ import annotations

import asyncio
import os

import pytest

from bot.inference.fixed import FixedBackend
from bot.local.platform import LocalPlatform
from bot.settings import load_settings
from bot.storage import Database


@pytest.fixture(autouse=True)
def isolated_environment(monkeypatch):
    """No test sees the operator's LLM4SWEAT_* or SLACK_* variables (real tokens, real paths)."""
    for name in list(os.environ):
        if name.startswith(("LLM4SWEAT_", "SLACK_")):
            monkeypatch.delenv(name)
    # Services in tests triage in their own process: a triage process per service would cost each
    # test a second interpreter (tests/test_triage_worker.py runs it, and the soak bench does).
    monkeypatch.setenv("LLM4SWEAT_SAFETY__TRIAGE_PROCESS", "false")


@pytest.fixture
def settings(tmp_path):
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
    await asyncio.wait_for(svc.stop(), 60)  # a stop that cannot finish fails the test instead of hanging the run


@pytest.fixture
async def svc(settings):
    """A whole service on a fixed-reply backend and a platform that records what it was asked to
    send (tests/recording_platform.py), for tests that read what patients and reviewers got."""
    from bot.service import Service
    from tests.recording_platform import RecordingPlatform

    service = Service(settings, FixedBackend())
    service.add_platform(RecordingPlatform())
    await service.start(retry_loop=False)
    yield service
    await service.stop()
