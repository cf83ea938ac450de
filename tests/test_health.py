"""``/healthz`` and ``/readyz`` of the running service, and the checks' place in ``/status``.

The service is the real one; Discord is the real discord.py client against the strict fake
(tests/discord_fake.py), the console is the real aiohttp server on 127.0.0.1, the model server
a fake vLLM (tests/vllm_fake.py).
"""

from __future__ import annotations

import asyncio
import socket
import time

import aiohttp
import pytest

from bot import health
from bot.discord_platform import start_discord
from bot.health_http import start_health_server
from bot.inference.fixed import FixedBackend
from bot.inference.openai_backend import OpenAIBackend
from bot.local.platform import LocalPlatform
from bot.core import NOTICE_UNAVAILABLE
from bot.local.web import start_console
from bot.platform import IncomingMessage, ViewKind
from bot.settings import load_settings
from reviewers.models import MODERATOR_ROLE, Actor
from tests.discord_fake import FakeDiscord
from tests.vllm_fake import FakeVLLM

pytestmark = pytest.mark.asyncio(loop_scope="session")

TOKEN = "discord-test-token-for-health"


async def get(url: str) -> tuple[int, dict]:
    async with aiohttp.ClientSession() as session:
        async with session.get(url) as resp:
            return resp.status, await resp.json()


async def until(predicate, timeout: float = 10.0, what: str = "condition"):
    """Poll an async predicate until it returns something truthy, or fail after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        value = await predicate()
        if value:
            return value
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.02)


@pytest.fixture
async def fake():
    server = await FakeDiscord().start()
    server.patch_library()
    yield server
    await server.stop()


@pytest.fixture
async def running(tmp_path, fake):
    """Service + Discord + console; yields (service, console URL)."""
    from bot.service import Service

    settings = load_settings(data_dir=tmp_path, discord={
        "token": TOKEN, "guild_ids": [int(fake.guild_id)], "support_channel_ids": [int(fake.support_id)],
        "reviewer_channel_id": int(fake.reviewer_channel_id), "reviewer_role": "Reviewer",
        "moderator_role": "Moderator"})
    service = Service(settings, FixedBackend())
    service.add_platform(LocalPlatform())
    await service.start(retry_loop=False)
    discord_runner = await start_discord(service, guild_ready_timeout=0.05, ready_timeout=15)
    console, url = await start_console(service, "127.0.0.1", 0)
    yield service, url.rstrip("/")
    await console.cleanup()
    await discord_runner.cleanup()
    await service.stop()


async def test_readyz_turns_not_ready_when_discord_closes_with_4004(running, fake):
    service, url = running
    assert await get(url + "/healthz") == (200, {"status": "ok"})
    status, body = await get(url + "/readyz")
    assert (status, body) == (200, {"status": "ready"})

    await fake.reset_token()  # the owner resets the token in the Developer Portal: close 4004

    async def not_ready():
        status, body = await get(url + "/readyz")
        return status == 503 and body

    body = await until(not_ready, what="/readyz to answer 503")
    assert body["status"] == "not ready"
    assert len(body["reasons"]) == 1 and body["reasons"][0].startswith("discord: failed")
    assert "4004" in body["reasons"][0] and TOKEN not in str(body)
    assert set(body) == {"status", "reasons"}  # unauthenticated: nothing more than ready or not, and why
    assert await get(url + "/healthz") == (200, {"status": "ok"})  # the process itself is fine

    # /status tells moderators the same.
    reply = await service.commands.status(Actor("local", "m", "m", frozenset({MODERATOR_ROLE})))
    assert "discord failed" in reply.text and reply.data["platforms"]["discord"].startswith("failed")


async def test_readyz_names_a_database_that_takes_no_write(running, monkeypatch):
    import sqlite3

    service, url = running
    monkeypatch.setattr(health, "DB_PROBE_TIMEOUT_S", 0.3)
    holder = sqlite3.connect(service.settings.db_path, isolation_level=None, timeout=0)
    holder.execute("BEGIN IMMEDIATE")  # another process holds the write lock
    try:
        status, body = await get(url + "/readyz")
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    assert status == 503 and body["reasons"] == ["database: a write did not finish within 0.3 s"], body

    async def ready_again():
        return (await get(url + "/readyz"))[0] == 200

    await until(ready_again, what="/readyz to recover once the lock is released")


async def test_the_bot_starts_before_the_model_server_and_runs_degraded(tmp_path):
    """Compose starts the bot without waiting for vLLM: with no model server answering yet the
    service starts, patients get the outage notice (their message kept) and crisis resources,
    and /readyz is ready with the degradation named; when the server comes up, it is used."""
    from bot.service import Service

    with socket.socket() as probe:  # a port where nothing listens yet
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    settings = load_settings(data_dir=tmp_path, inference={
        "backend": "openai", "openai_base_url": f"http://127.0.0.1:{port}/v1", "base_model": "base",
        "openai_health_interval_s": 0, "max_retries": 0, "timeout_s": 5})
    service = Service(settings, OpenAIBackend(settings.inference, "base"))
    service.add_platform(LocalPlatform())
    await service.start(retry_loop=False)
    vllm = FakeVLLM(base_model="base", port=port)
    try:
        state = await health.readiness(service)
        assert state.ready and state.degraded == [
            "model: no model server answers; patients get the outage notice and crisis resources"]
        asked = await service.core.handle_message(patient("Does iontophoresis help sweaty feet?"))
        assert asked.status == "queued_retry" and asked.views[-1].text == NOTICE_UNAVAILABLE
        crisis = await service.core.handle_message(patient("I want to kill myself tonight", user="p2"))
        assert crisis.status == "crisis" and crisis.views[-1].kind is ViewKind.CRISIS
        assert "emergency number" in crisis.views[-1].text

        await vllm.start()  # the model download finished
        await service.backend.check_health()
        state = await health.readiness(service)
        assert state.ready and not state.degraded
        assert await service.core.retry_queued() == 1
        assert vllm.chats["base"] == 1
    finally:
        await service.stop()
        await vllm.stop()


def patient(text: str, user: str = "p1") -> IncomingMessage:
    return IncomingMessage("local", user, "console", user, text, display_name=user)


async def test_health_without_the_console(service):
    """``run --no-console`` still serves /healthz and /readyz, and nothing else."""
    runner, url = await start_health_server(service, "127.0.0.1", 0)
    try:
        assert await get(url + "/healthz") == (200, {"status": "ok"})
        assert await get(url + "/readyz") == (200, {"status": "ready"})
        async with aiohttp.ClientSession() as session:
            async with session.get(url + "/api/info") as resp:
                assert resp.status == 404
    finally:
        await runner.cleanup()


async def test_start_up_checks_are_in_status(tmp_path):
    from bot.doctor import startup_checks
    from bot.service import Service

    service = Service(load_settings(data_dir=tmp_path, inference={"backend": "fixed"}), FixedBackend())
    service.add_platform(LocalPlatform())
    await service.start(retry_loop=False)
    try:
        await _checks_in_status(service, startup_checks)
    finally:
        await service.stop()


async def _checks_in_status(service, startup_checks) -> None:
    moderator = Actor("local", "m", "m", frozenset({MODERATOR_ROLE}))
    before = await service.commands.status(moderator)
    assert "Checks (llm4sweat doctor): not run yet" in before.text
    for path in service.settings.data_dir.glob("llm4sweat.db*"):
        path.chmod(0o600)
    assert (await startup_checks(service)).passed
    service.settings.db_path.chmod(0o644)  # a mistake the checks catch
    report = await startup_checks(service)
    assert [c.name for c in report.failed] == ["database.permissions"], report.text()
    reply = await service.commands.status(moderator)
    assert "Checks at start-up (" in reply.text and report.summary() in reply.text
    assert "✗ database.permissions: readable by others" in reply.text and "fix: chmod 600" in reply.text
    assert reply.data["doctor"]["passed"] is False
