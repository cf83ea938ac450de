"""A decision and its effects are one recoverable unit: the transactional outbox (issue 15).

The decision row and one outbox row per effect (dataset example, the patient's view, review
cards, alerts) are committed together; effects are applied at once and, when that fails or the
process dies, by the worker or on the next start. Every test ends with each effect applied
exactly once (the dataset example present once, one message per reply, edits in place)."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from bot.core import LABEL_APPROVED, WITHDRAWN_TEXT
from bot.inference.fixed import FixedBackend
from bot.platform import IncomingMessage, ViewKind
from bot.service import Service
from reviewers.models import Action, Actor, Rubric
from tests.recording_platform import RecordingPlatform

REVIEWER = Actor("local", "rev1", "Dr Rev", frozenset({"reviewer"}))
MODERATOR = Actor("local", "mod", "Mod", frozenset({"moderator"}))
ROOT = Path(__file__).resolve().parent.parent


def msg(text: str, user: str = "pat") -> IncomingMessage:
    return IncomingMessage("local", user, "console", user, text, display_name=user)


async def start(settings, platform: RecordingPlatform | None = None, **kwargs) -> Service:
    service = Service(settings, FixedBackend())
    service.add_platform(platform or RecordingPlatform())
    await service.start(**{"retry_loop": False, **kwargs})
    return service


@pytest.fixture
def fast_settings(settings):
    settings.outbox.retry_base_s = 0.02
    settings.outbox.retry_max_s = 0.1
    return settings


async def wait_for(predicate, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not await predicate():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.01)


async def examples_of(service: Service, item_id: int) -> int:
    return await service.db.fetchval("SELECT COUNT(*) FROM dataset_examples WHERE review_item_id = ?", (item_id,))


CRASH_AFTER_COMMIT = textwrap.dedent("""
    import asyncio, os, sys
    from bot.inference.fixed import FixedBackend
    from bot.platform import IncomingMessage
    from bot.service import Service
    from bot.settings import load_settings
    from reviewers.models import Action, Actor, Rubric
    from tests.recording_platform import RecordingPlatform

    async def main():
        service = Service(load_settings(data_dir=sys.argv[1]), FixedBackend())
        service.add_platform(RecordingPlatform())
        await service.start(retry_loop=False)
        result = await service.core.handle_message(
            IncomingMessage("local", "pat", "console", "pat", "Does iontophoresis help sweaty hands?"))
        print(result.item_id, flush=True)

        def die(claimed):  # the decision is committed; the process dies before any effect is applied
            os._exit(9)

        service.core.outbox.apply = die
        await service.core.decide(result.item_id, Actor("local", "rev1", "Dr Rev", frozenset({"reviewer"})),
                                  Action[sys.argv[2]], rubric=Rubric(4, 4, 4))

    asyncio.run(main())
""")


@pytest.mark.slow
@pytest.mark.parametrize("action", ["APPROVE", "REJECT"])
async def test_a_process_killed_right_after_the_decision_commit_loses_no_effect(settings, action):
    child = subprocess.run([sys.executable, "-c", CRASH_AFTER_COMMIT, str(settings.data_dir), action],
                           cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)}, capture_output=True, text=True,
                           timeout=120)
    assert child.returncode == 9, child.stderr[-2000:]
    item_id = int(child.stdout.split()[0])

    platform = RecordingPlatform()
    service = await start(settings, platform)
    try:
        state = await service.db.fetchval("SELECT state FROM review_items WHERE id = ?", (item_id,))
        assert state == ("approved" if action == "APPROVE" else "rejected")
        reply = await service.db.fetchone("SELECT * FROM replies")
        # the patient's message (posted as m1 by the dead process) is edited in place, once
        assert [(ids, view.kind) for _, ids, view in platform.edited] == [
            (json.loads(reply["platform_message_ids"]), ViewKind.REVIEWED if action == "APPROVE" else ViewKind.WITHDRAWN)]
        assert platform.sent == []
        if action == "APPROVE":
            assert LABEL_APPROVED in platform.edited[0][2].label
        else:
            assert platform.edited[0][2].text == WITHDRAWN_TEXT
        assert await examples_of(service, item_id) == (1 if action == "APPROVE" else 0)
        assert (await service.core.outbox.stats())["pending"] == 0
    finally:
        await service.stop()
    # a further restart applies nothing again
    again = RecordingPlatform()
    service = await start(settings, again)
    try:
        assert again.edited == [] and again.sent == []
        assert await examples_of(service, item_id) == (1 if action == "APPROVE" else 0)
    finally:
        await service.stop()


async def test_failed_effects_wait_in_status_and_the_worker_applies_them(fast_settings):
    platform = RecordingPlatform()
    service = await start(fast_settings, platform)
    try:
        result = await service.core.handle_message(msg("Is iontophoresis painful?"))
        platform.fail_edits = platform.fail_cards = True
        outcome = await service.core.decide(result.item_id, REVIEWER, Action.APPROVE, rubric=Rubric(4, 4, 4))
        assert outcome.closed_now
        assert await examples_of(service, result.item_id) == 1  # the database effect went through
        stats = await service.core.outbox.stats()
        assert stats["pending"] == 2 and stats["oldest_pending_s"] is not None  # the view and the card
        status = await service.commands.status(MODERATOR)
        assert "Effects waiting (deliveries, cards, dataset, alerts): 2" in status.text
        assert platform.edited == []

        platform.fail_edits = platform.fail_cards = False
        worker = asyncio.create_task(service.core.outbox.work_forever(idle_s=0.05))
        try:
            async def drained() -> bool:
                return (await service.core.outbox.stats())["pending"] == 0

            await wait_for(drained)
        finally:
            worker.cancel()
        assert [view.kind for _, _, view in platform.edited] == [ViewKind.REVIEWED]
        assert [card.state for card in platform.cards_updated] == ["approved"]
        assert await examples_of(service, result.item_id) == 1
        assert "Effects waiting (deliveries, cards, dataset, alerts): 0" in (await service.commands.status(MODERATOR)).text
    finally:
        await service.stop()


async def test_stopped_before_the_effects_then_restarted_with_the_platform_back(settings):
    platform = RecordingPlatform()
    service = await start(settings, platform)
    result = await service.core.handle_message(msg("Can I use antiperspirant on my hands?"))
    platform.fail_edits = True
    await service.core.decide(result.item_id, REVIEWER, Action.EDIT, "Yes: apply it at night to dry skin.", Rubric(4, 4, 4))
    assert platform.edited == []
    await service.stop()

    posted = platform.sent[-1][2]  # the reply's message ids on the platform
    healthy = RecordingPlatform()
    service = await start(settings, healthy)
    try:
        assert [(ids, view.text) for _, ids, view in healthy.edited] == [
            (posted, "Yes: apply it at night to dry skin.")]
        assert healthy.sent == []
        assert await examples_of(service, result.item_id) == 1
    finally:
        await service.stop()


async def test_applying_every_effect_again_changes_nothing(service):
    platform = RecordingPlatform()
    service.add_platform(platform)
    result = await service.core.handle_message(msg("Do cotton socks help?"))
    await service.core.decide(result.item_id, REVIEWER, Action.APPROVE, rubric=Rubric(4, 4, 4))
    sent, edited = len(platform.sent), len(platform.edited)
    posted = len(platform.cards_posted)
    await service.db.execute("UPDATE outbox SET status = 'pending', next_attempt_at = 0")
    assert await service.core.outbox.run_due() > 0
    assert await examples_of(service, result.item_id) == 1  # keyed by the review item
    assert len(platform.sent) == sent and len(platform.cards_posted) == posted  # no second message or card
    posted = platform.sent[-1][2]
    assert len(platform.edited) > edited and all(ids == posted for _, ids, _ in platform.edited)  # edits in place


async def test_the_worker_never_applies_what_the_inline_path_is_applying(service):
    """An inline apply that is slow (its claim looks stale) is not taken by the worker too."""
    platform = RecordingPlatform()
    service.add_platform(platform)
    release = asyncio.Event()
    real_send = platform.send_to_patient

    async def slow_send(conv, view):
        if view.kind is not ViewKind.CONSENT:  # the consent notice goes out at once; the reply is slow
            await release.wait()
        return await real_send(conv, view)

    platform.send_to_patient = slow_send
    live = asyncio.create_task(service.core.handle_message(msg("Does botox wear off?")))

    async def applying() -> bool:
        return await service.db.fetchval("SELECT COUNT(*) FROM outbox WHERE status = 'applying'") > 0

    await wait_for(applying)
    await service.db.execute("UPDATE outbox SET claimed_at = 0 WHERE status = 'applying'")
    assert await asyncio.wait_for(service.core.outbox.run_due(), 5) == 0
    release.set()
    await live
    assert len(platform.replies_sent()) == 1


async def test_an_effect_that_keeps_failing_is_shown_and_never_given_up(fast_settings):
    """No lost alert: after max_attempts failures the card is counted as failing in /status and
    still retried, so it is posted once the platform takes it again."""
    fast_settings.outbox.max_attempts = 2
    fast_settings.outbox.retry_max_s = 0.05
    platform = RecordingPlatform()
    platform.fail_cards = True
    service = await start(fast_settings, platform)
    try:
        await service.core.handle_message(msg("Is hyperhidrosis inherited?"))

        async def failing() -> bool:
            await service.core.outbox.run_due()
            return (await service.core.outbox.stats())["failing"] == 1

        await wait_for(failing)
        text = (await service.commands.status(MODERATOR)).text
        assert "FAILING: 1, still retried" in text
        row = await service.db.fetchone("SELECT status, attempts, last_error FROM outbox WHERE attempts >= 2")
        assert row["status"] == "pending" and "card post failed" in row["last_error"]

        platform.fail_cards = False  # the permission is restored

        async def posted() -> bool:
            await service.core.outbox.run_due()
            return (await service.core.outbox.stats())["pending"] == 0

        await wait_for(posted)
        assert len(platform.cards_posted) == 1
        assert (await service.core.outbox.stats())["failing"] == 0
    finally:
        await service.stop()


async def test_effects_wait_for_a_platform_that_connects_later(settings):
    """Answered at start-up before Discord/Slack connected: delivered when the platform joins."""
    service = Service(settings, FixedBackend())
    await service.start(retry_loop=False)
    try:
        result = await service.core.handle_message(msg("Why do my feet sweat?"))
        assert result.status == "shown"
        assert (await service.core.outbox.stats())["pending"] == 1  # the reply, waiting for its platform
        platform = RecordingPlatform()
        service.add_platform(platform)
        assert await service.core.outbox.run_due() == 1
        assert len(platform.replies_sent()) == 1
    finally:
        await service.stop()


async def test_a_crisis_alert_that_fails_is_retried(fast_settings):
    platform = RecordingPlatform()
    platform.fail_alerts = True
    service = await start(fast_settings, platform)
    try:
        result = await service.core.handle_message(msg("I want to kill myself tonight"))
        assert result.status == "crisis"
        assert [view.kind for _, view, _ in platform.sent][-1] is ViewKind.CRISIS  # the patient has the resources
        assert not platform.alerts
        platform.fail_alerts = False

        async def alerted() -> bool:
            await service.core.outbox.run_due()
            return bool(platform.alerts)

        await wait_for(alerted)
        assert [a["urgent"] for a in platform.alerts] == [True]
    finally:
        await service.stop()


async def test_effects_on_one_target_run_one_at_a_time_and_leave_no_lock_behind(tmp_path):
    """Two effects on one target never overlap (a card edited by two decisions at once would end
    in either state); once applied, no per-target lock is kept (a long-running service touches
    one target per card and reply it ever posted)."""
    from bot.outbox import Effect, Outbox
    from bot.storage import Database

    db = await Database(tmp_path / "x.db").open()
    running: dict[str, int] = {}
    overlaps: list[str] = []
    gate = asyncio.Event()

    async def apply(effect: Effect) -> None:
        running[effect.target] = running.get(effect.target, 0) + 1
        if running[effect.target] > 1:
            overlaps.append(effect.key)
        await gate.wait()
        running[effect.target] -= 1

    outbox = Outbox(db, apply)
    try:
        effects = [Effect("review_card", f"k{i}", {}, "local", f"card-{i % 3}") for i in range(9)]
        tasks = [asyncio.create_task(outbox._apply_one(e)) for e in effects]
        await asyncio.sleep(0)
        assert sorted(k for k, n in running.items() if n) == ["card-0", "card-1", "card-2"]  # one per target
        gate.set()
        assert await asyncio.gather(*tasks) == [None] * 9
        assert overlaps == []
        assert outbox._target_locks == {} and not outbox._target_users
    finally:
        await db.close()
