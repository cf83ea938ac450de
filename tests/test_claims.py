"""A message is answered at most once, whatever the entry point (issue 15).

Live handling, the retry loop, /resume and start-up recovery all go through
``ConversationCore.answer``, which claims the message with a compare-and-set in the database.
Each test counts reply rows, review items and deliveries: exactly one each."""

from __future__ import annotations

import asyncio
import time


from bot.inference.fixed import FixedBackend
from bot.platform import IncomingMessage
from bot.service import Service
from reviewers.models import Actor
from tests.recording_platform import RecordingPlatform

MODERATOR = Actor("local", "mod", "Mod", frozenset({"moderator"}))


def msg(text: str, user: str = "pat") -> IncomingMessage:
    return IncomingMessage("local", user, "console", user, text, display_name=user)


async def wait_for(predicate, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not await predicate():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.01)


async def counts(service: Service, message_id: int) -> tuple[int, int, int]:
    replies = await service.db.fetchval("SELECT COUNT(*) FROM replies WHERE message_id = ?", (message_id,))
    items = await service.db.fetchval(
        "SELECT COUNT(*) FROM review_items i JOIN replies r ON r.id = i.reply_id WHERE r.message_id = ?", (message_id,))
    conv = await service.db.fetchval("SELECT conversation_id FROM messages WHERE id = ?", (message_id,))
    deliveries = len(service.core.platforms["local"].replies_sent(conv))
    return replies, items, deliveries


async def test_two_concurrent_answer_calls_answer_once(svc):
    svc.backend.delay_s = 0.05
    _, message_id, _ = await svc.core._store_incoming(msg("Does iontophoresis help sweaty feet?"), "Does iontophoresis help sweaty feet?")
    first, second = await asyncio.gather(svc.core.answer(message_id), svc.core.answer(message_id))
    assert sorted([first.status, second.status]) == ["answered", "shown"]
    assert await counts(svc, message_id) == (1, 1, 1)
    assert len(svc.backend.calls) == 1


async def test_live_answer_and_retry_tick_racing(svc):
    """A retry tick picks the message as a candidate, then the live path answers it first."""
    text = "Does a clinical strength antiperspirant help?"
    _, message_id, _ = await svc.core._store_incoming(msg(text), text)
    await svc.db.execute("UPDATE messages SET created_at = created_at - 3600 WHERE id = ?", (message_id,))
    candidates_read, go_on = asyncio.Event(), asyncio.Event()
    real_is_paused = svc.core.is_paused

    async def is_paused_after_the_select() -> bool:  # retry_queued asks this between its SELECT and answer()
        candidates_read.set()
        await go_on.wait()
        return await real_is_paused()

    svc.core.is_paused = is_paused_after_the_select
    tick = asyncio.create_task(svc.core.retry_queued())
    await asyncio.wait_for(candidates_read.wait(), 5)
    live = await svc.core.answer(message_id)
    go_on.set()
    assert live.status == "shown" and await asyncio.wait_for(tick, 5) == 0
    assert await counts(svc, message_id) == (1, 1, 1)


async def test_retry_tick_leaves_a_slow_live_answer_alone(svc):
    """The model is slow: the claim looks stale, but this process is still answering it."""
    release = asyncio.Event()

    async def slow_generate(messages, **kwargs):
        await release.wait()
        return await FixedBackend().generate(messages)

    svc.backend.generate = slow_generate
    live = asyncio.create_task(svc.core.handle_message(msg("Which antiperspirant is strongest?")))

    async def claimed() -> bool:
        return await svc.db.fetchval("SELECT status FROM messages") == "answering"

    await wait_for(claimed)
    await svc.db.execute("UPDATE messages SET claimed_at = claimed_at - 3600")  # looks abandoned
    message_id = await svc.db.fetchval("SELECT id FROM messages")
    assert await asyncio.wait_for(svc.core.retry_queued(), 5) == 0
    assert (await asyncio.wait_for(svc.core.answer(message_id), 5)).status == "answering"
    release.set()
    assert (await live).status == "shown"
    assert await counts(svc, message_id) == (1, 1, 1)


async def test_resume_while_a_retry_tick_runs(svc):
    """3 paused messages, /resume and a retry tick at once: 3 replies (was 5)."""
    svc.backend.delay_s = 0.02
    await svc.commands.pause(MODERATOR)
    for i in range(3):
        result = await svc.core.handle_message(msg(f"paused question {i}", user=f"p{i}"))
        assert result.status == "paused"
    resumed, ticked = await asyncio.gather(svc.commands.resume(MODERATOR), svc.core.retry_queued())
    assert resumed.data["answered"] + ticked == 3
    again = await svc.commands.resume(MODERATOR)  # a second /resume, everything answered already
    assert again.data["answered"] == 0 and await svc.core.retry_queued() == 0
    ids = [row[0] for row in await svc.db.fetchall("SELECT id FROM messages ORDER BY id")]
    for message_id in ids:
        assert await counts(svc, message_id) == (1, 1, 1)
    assert len(svc.backend.calls) == 3


async def test_resume_while_answering_does_not_answer_twice(svc):
    release = asyncio.Event()
    original = svc.backend.generate

    async def held_generate(messages, **kwargs):
        await release.wait()
        return await original(messages)

    svc.backend.generate = held_generate
    await svc.commands.pause(MODERATOR)
    await svc.core.handle_message(msg("a paused question"))
    message_id = await svc.db.fetchval("SELECT id FROM messages")
    first = asyncio.create_task(svc.commands.resume(MODERATOR))

    async def answering() -> bool:
        return await svc.db.fetchval("SELECT status FROM messages") == "answering"

    await wait_for(answering)
    second = await asyncio.wait_for(svc.commands.resume(MODERATOR), 5)  # a second /resume meanwhile
    direct = await asyncio.wait_for(svc.core.answer(message_id), 5)
    assert second.data["answered"] == 0 and direct.status == "answering"
    release.set()
    assert (await first).data["answered"] == 1
    assert await counts(svc, message_id) == (1, 1, 1)


async def test_restart_retakes_a_stale_claim_once(settings):
    """A process died while answering: the next one answers the message, exactly once."""
    first = Service(settings, FixedBackend())
    first.add_platform(RecordingPlatform())
    await first.start(retry_loop=False)
    text = "What is HDSS?"
    _, stale_id, _ = await first.core._store_incoming(msg(text, user="a"), text)
    _, fresh_id, _ = await first.core._store_incoming(msg(text, user="b"), text)
    await first.db.execute("UPDATE messages SET status = 'answering', claimed_at = ? WHERE id = ?",
                           (time.time() - first.core.claim_stale_s - 1, stale_id))
    await first.db.execute("UPDATE messages SET status = 'answering', claimed_at = ? WHERE id = ?",
                           (time.time(), fresh_id))
    await first.stop()

    second = Service(settings, FixedBackend())
    second.add_platform(RecordingPlatform())
    await second.start(retry_loop=False)
    try:
        answered = await asyncio.gather(second.core.retry_queued(), second.core.retry_queued())
        assert sum(answered) == 1
        assert await counts(second, stale_id) == (1, 1, 1)
        # a fresh claim belongs to someone still at work: not retaken
        assert await counts(second, fresh_id) == (0, 0, 0)
        assert await second.db.fetchval("SELECT status FROM messages WHERE id = ?", (fresh_id,)) == "answering"
    finally:
        await second.stop()


async def test_the_sole_service_answers_what_a_killed_run_left_at_once(settings):
    """`llm4sweat run` holds the data directory alone (sole_instance): a message the killed run
    had stored or claimed a moment ago is answered in the first round, once, not after the
    claim deadline."""
    first = Service(settings, FixedBackend())
    first.add_platform(RecordingPlatform())
    await first.start(retry_loop=False)
    text = "What is HDSS?"
    _, received_id, _ = await first.core._store_incoming(msg(text, user="a"), text)
    _, claimed_id, _ = await first.core._store_incoming(msg(text, user="b"), text)
    await first.db.execute("UPDATE messages SET status = 'answering', claimed_at = ? WHERE id = ?",
                           (time.time(), claimed_id))
    await first.stop()

    second = Service(settings, FixedBackend())
    second.sole_instance = True
    second.add_platform(RecordingPlatform())
    await second.start(retry_loop=False)
    try:
        answered = await asyncio.gather(second.core.retry_queued(), second.core.retry_queued())
        assert sum(answered) == 2
        assert await counts(second, received_id) == (1, 1, 1)
        assert await counts(second, claimed_id) == (1, 1, 1)
    finally:
        await second.stop()


async def test_many_messages_across_retry_ticks_one_reply_each(svc):
    svc.backend.delay_s = 0.01

    async def ticks():
        for _ in range(10):
            await svc.core.retry_queued()
            await asyncio.sleep(0.01)

    await asyncio.gather(ticks(), *(svc.core.handle_message(msg(f"question {i}", user=f"u{i}")) for i in range(40)))
    assert await svc.db.fetchval("SELECT COUNT(*) FROM replies") == 40
    assert await svc.db.fetchval("SELECT COUNT(DISTINCT message_id) FROM replies") == 40
    assert len(svc.core.platforms["local"].replies_sent()) == 40
