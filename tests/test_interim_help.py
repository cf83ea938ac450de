"""Help at once while the model's reply waits for a person (issue 14 items 3 and 4).

A possible crisis (the safety check unsure) gets a soft check-in with the crisis resources at
once, the model's reply held for a person first (its card says why). A red flag gets
the pack's advice to see a doctor, with why and the source, at once, while the reply waits for
review. On the console's platform and through real slack-bolt against the strict fake."""

from __future__ import annotations

import functools

import pytest

from bot.inference.fixed import FixedBackend
from bot.platform import IncomingMessage, ViewKind
from bot.service import Service
from bot.settings import load_settings
from tests.recording_platform import RecordingPlatform

pytestmark = pytest.mark.asyncio(loop_scope="session")

UNSURE = "I'm so tired of everything lately, my sweating makes me want to disappear"
RED_FLAG = "I've had drenching night sweats and lost 8 kg without trying. What could it be?"


@functools.cache
def unsure_thresholds() -> dict[str, float]:
    """Settings that make the check unsure about UNSURE: its crisis probability under the shipped
    model lies between the two thresholds. Derived from the model's own score, not fixed numbers:
    the score moves whenever the corpus or the model changes (0.957 once T5–T12 were imported,
    above the 0.95 this test once hard-coded)."""
    from bot.safety.detector import signals
    from pipeline.packs import PACKS_DIR, load_pack

    sig = signals(UNSURE, load_pack(PACKS_DIR / "hyperhidrosis"))
    p = sig.probs["crisis"]
    assert not sig.rule_hits and 0.02 < p < 0.998, (sig.rule_hits, p)  # else UNSURE cannot be made unsure
    return {"crisis_threshold": round((1 + p) / 2, 4), "possible_crisis_threshold": round(p / 2, 4)}


def msg(text: str, user: str = "pat") -> IncomingMessage:
    return IncomingMessage("local", user, "console", user, text, display_name=user)


@pytest.fixture
async def svc(tmp_path):
    service = Service(load_settings(data_dir=tmp_path, safety=unsure_thresholds()), FixedBackend(reply="Many things help."))
    service.add_platform(RecordingPlatform())
    await service.start(retry_loop=False)
    yield service
    await service.stop()


async def test_a_possible_crisis_gets_a_check_in_with_resources_and_the_reply_is_held(svc):
    verdict = svc.core.safety.triage(UNSURE)
    assert verdict.possible_crisis and not verdict.crisis  # the precondition: the check is unsure
    platform = svc.core.platforms["local"]
    result = await svc.core.handle_message(msg(UNSURE))
    assert result.status == "held"
    check_in = [v for _, v, _ in platform.sent if v.kind is ViewKind.CRISIS]
    assert len(check_in) == 1 and "check in" in check_in[0].text
    assert svc.pack.crisis.resources(None).splitlines()[0] in check_in[0].text  # the resources themselves
    assert await svc.db.fetchval("SELECT delivery FROM replies WHERE id = ?", (result.reply_id,)) == "held"
    card = await svc.core.review_card(result.item_id)
    assert card.priority == "high" and "possible crisis" in card.hold_reason


async def test_a_red_flag_gets_the_doctor_advice_at_once_while_the_reply_waits(svc):
    verdict = svc.core.safety.triage(RED_FLAG)
    assert "rf-night-sweats" in verdict.red_flags
    platform = svc.core.platforms["local"]
    result = await svc.core.handle_message(msg(RED_FLAG))
    assert result.status == "held"
    advice = [v.text for _, v, _ in platform.sent if v.kind is ViewKind.NOTICE and "should not wait" in v.text]
    night = next(f for f in svc.pack.red_flags if f.id == "rf-night-sweats")
    assert len(advice) == 1 and night.advice in advice[0] and night.source in advice[0]
    assert "see a doctor" in advice[0]
    # the reply itself is not shown before review
    assert await svc.db.fetchval("SELECT delivery FROM replies WHERE id = ?", (result.reply_id,)) == "held"
    assert not any(v.kind is ViewKind.CRISIS for _, v, _ in platform.sent)


async def test_slack_a_red_flag_gets_interim_advice_in_the_thread(tmp_path):
    from tests.slack_fake import FakeSlack
    from tests.test_slack import GROUP, SUPPORT, SignedHTTP, message, running

    fake = await FakeSlack().start()
    fake.usergroups[GROUP] = []
    try:
        async with running(tmp_path, fake, "http") as (service, runner):
            http = SignedHTTP(fake, runner.url)
            try:
                event = message(RED_FLAG)
                await http.event(event)
                shown = await fake.wait_for(lambda: [m for m in fake.thread(SUPPORT, event["ts"])
                                                     if "should not wait" in m["text"]])
                assert "doctor" in shown[0]["text"]
                assert not any("Many things help" in m["text"] for m in fake.thread(SUPPORT, event["ts"]))
            finally:
                await http.close()
    finally:
        await fake.stop()


async def test_discord_a_possible_crisis_gets_a_check_in_and_a_red_flag_the_advice(tmp_path):
    from tests.discord_fake import FakeDiscord
    from tests.test_crisis_delivery import _discord

    fake = await FakeDiscord().start()
    fake.patch_library()
    service, runner = await _discord(tmp_path, fake, safety=unsure_thresholds())
    try:
        patient = fake.add_member("sam")
        unsure = await fake.say(patient, fake.support_id, UNSURE)
        flagged = await fake.say(patient, fake.support_id, RED_FLAG)
        check_in = await fake.wait_for(lambda: [m["content"] for m in fake.bot_messages(unsure["id"])
                                                if "check in" in m["content"]], what="the check-in")
        assert service.pack.crisis.resources(None).splitlines()[0] in check_in[0]
        advice = await fake.wait_for(lambda: [m["content"] for m in fake.bot_messages(flagged["id"])
                                              if "should not wait" in m["content"]], what="the red-flag advice")
        assert "doctor" in advice[0]
        from bot.core import GATED_TEXT

        for thread in (unsure["id"], flagged["id"]):  # the model's replies wait for a person
            await fake.wait_for(lambda: any(GATED_TEXT[:40] in m["content"] for m in fake.bot_messages(thread)),
                                what="the holding message")
            assert not any("Thank you for your question about" in m["content"] for m in fake.bot_messages(thread))
    finally:
        await runner.cleanup()
        await service.stop()
        await fake.stop()


async def test_help_comes_at_once_even_while_answering_is_paused_and_only_once(svc):
    from reviewers.models import Actor

    moderator = Actor("local", "mod", "Mod", frozenset({"moderator"}))
    platform = svc.core.platforms["local"]
    await svc.commands.pause(moderator)
    paused = await svc.core.handle_message(msg(RED_FLAG))
    assert paused.status == "paused"
    assert [v.kind for v in paused.views].count(ViewKind.NOTICE) >= 2  # the advice and the paused notice
    assert any("should not wait" in v.text for _, v, _ in platform.sent)
    await svc.commands.resume(moderator)  # answered now: the advice is not sent again
    assert len([v for _, v, _ in platform.sent if "should not wait" in v.text]) == 1
