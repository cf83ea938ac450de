"""A model deadline, and recovery at the model's capacity (issue 15).

A hanging model server used to keep a patient waiting 181 s before any message; after
``inference.deadline_s`` the patient now gets one holding notice, the call goes on in the
background and the reply is delivered when it arrives. A backlog (outage, pause, restart) is
answered ``inference.max_concurrency`` conversations at a time, each conversation in order."""

from __future__ import annotations

import asyncio
import time
from collections import Counter

import pytest

from bot.core import NOTICE_SLOW
from bot.inference.fixed import FixedBackend
from bot.platform import IncomingMessage, ViewKind
from bot.service import Service
from tests.recording_platform import RecordingPlatform


def msg(text: str, user: str = "pat") -> IncomingMessage:
    return IncomingMessage("local", user, "console", user, text, display_name=user)


async def wait_for(predicate, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not await predicate():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.01)


class HeldBackend(FixedBackend):
    """Answers only when released (a hanging model server), and counts calls in flight."""

    def __init__(self) -> None:
        super().__init__()
        self.release = asyncio.Event()
        self.release.set()
        self.in_flight: Counter[str] = Counter()
        self.peak = 0
        self.peak_per_conversation = 0

    async def generate(self, messages, **kwargs):
        who = messages[-1]["content"].split(":")[0]
        self.in_flight[who] += 1
        self.peak = max(self.peak, sum(self.in_flight.values()))
        self.peak_per_conversation = max(self.peak_per_conversation, self.in_flight[who])
        try:
            await self.release.wait()
            return await super().generate(messages, **kwargs)
        finally:
            self.in_flight[who] -= 1


@pytest.fixture
async def svc(settings):
    settings.inference.deadline_s = 0.2
    service = Service(settings, HeldBackend())
    service.add_platform(RecordingPlatform())
    await service.start(retry_loop=False)
    yield service
    await service.stop()


def notices(platform: RecordingPlatform) -> list[str]:
    return [view.text for _, view, _ in platform.sent if view.kind is ViewKind.NOTICE]


async def test_a_hanging_model_gets_the_patient_one_holding_notice_then_the_reply(svc):
    platform = svc.core.platforms["local"]
    svc.backend.release.clear()
    started = time.monotonic()
    result = await asyncio.wait_for(svc.core.handle_message(msg("pat: what is hyperhidrosis?")), 10)
    assert result.status == "delayed" and result.views[-1].text == NOTICE_SLOW
    assert time.monotonic() - started < 5  # the deadline (0.2 s), not the model's own timeouts
    assert notices(platform).count(NOTICE_SLOW) == 1 and platform.replies_sent() == []
    # the retry loop and a second look at the message find it being answered: nothing doubles
    assert await svc.core.retry_queued() == 0
    assert (await svc.core.answer(result.message_id)).status == "answering"
    svc.backend.release.set()

    async def delivered() -> bool:
        return len(platform.replies_sent()) == 1

    await wait_for(delivered)
    assert await svc.db.fetchval("SELECT COUNT(*) FROM replies") == 1
    assert await svc.db.fetchval("SELECT status FROM messages") == "answered"
    assert notices(platform).count(NOTICE_SLOW) == 1


async def test_a_fast_model_sends_no_holding_notice(svc):
    platform = svc.core.platforms["local"]
    result = await svc.core.handle_message(msg("pat: is sweating at night normal?"))
    assert result.status in ("shown", "held") and NOTICE_SLOW not in notices(platform)


async def test_stopping_while_an_answer_is_in_the_background_loses_nothing(settings):
    settings.inference.deadline_s = 0.2
    backend = HeldBackend()
    backend.release.clear()
    service = Service(settings, backend)
    service.add_platform(RecordingPlatform())
    await service.start(retry_loop=False)
    result = await asyncio.wait_for(service.core.handle_message(msg("pat: does aluminium chloride work?")), 10)
    assert result.status == "delayed"
    await service.stop()  # the background answer is cancelled and its claim given back
    assert result.message_id is not None

    again = Service(settings, FixedBackend())
    platform = RecordingPlatform()
    again.add_platform(platform)
    await again.start(retry_loop=False)
    try:
        assert await again.db.fetchval("SELECT status FROM messages") == "queued_retry"
        assert await again.core.retry_queued() == 1
        assert len(platform.replies_sent()) == 1
    finally:
        await again.stop()


async def test_a_backlog_is_answered_at_the_models_capacity_in_order(svc):
    svc.settings.inference.max_concurrency = 4
    svc.backend.fail_with = "connection refused"
    for i in range(10):
        for turn in range(2):
            result = await svc.core.handle_message(msg(f"c{i}: question {turn}", user=f"c{i}"))
            assert result.status == "queued_retry"
    svc.backend.fail_with = None
    svc.backend.delay_s = 0.05
    assert await svc.core.retry_queued() == 20
    assert svc.backend.peak == 4  # four conversations at once: the capacity, not one by one
    assert svc.backend.peak_per_conversation == 1  # a conversation's messages one at a time
    rows = await svc.db.fetchall(
        "SELECT m.conversation_id, m.id AS message_id, r.id AS reply_id FROM replies r"
        " JOIN messages m ON m.id = r.message_id ORDER BY m.conversation_id, m.id")
    by_conversation: dict[int, list[int]] = {}
    for row in rows:
        by_conversation.setdefault(row["conversation_id"], []).append(row["reply_id"])
    assert len(by_conversation) == 10
    assert all(replies == sorted(replies) for replies in by_conversation.values())  # oldest first
