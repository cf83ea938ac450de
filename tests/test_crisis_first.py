"""Crisis triage runs before every other branch of the core (issue 14 item 2, core side).

Paused, rate limited, in a language the bot does not answer in, or while an earlier message
of the same conversation is still with the model: a crisis message gets the crisis resources
and an urgent alert to moderators at once, and never reaches the model."""

from __future__ import annotations

import asyncio

import pytest

from bot.platform import IncomingMessage, ViewKind
from bot.service import Service
from reviewers.models import Actor

MODERATOR = Actor("local", "mod", "Mod", frozenset({"moderator"}))
CRISIS = "I can't go on, I want to kill myself tonight"


def msg(text: str, user: str = "pat") -> IncomingMessage:
    return IncomingMessage("local", user, "console", user, text, display_name=user)


def assert_crisis_handled(service: Service, result) -> None:
    platform = service.core.platforms["local"]
    assert result.status == "crisis"
    assert result.views[-1].kind is ViewKind.CRISIS and "emergency" in result.views[-1].text
    assert platform.sent[-1][1].kind is ViewKind.CRISIS  # delivered to the patient
    assert [a["urgent"] for a in platform.alerts] == [True]
    assert service.backend.calls == []


async def test_a_crisis_during_pause_gets_resources_and_an_alert(svc):
    await svc.commands.pause(MODERATOR)
    result = await svc.core.handle_message(msg(CRISIS))
    assert_crisis_handled(svc, result)
    assert await svc.db.fetchval("SELECT status FROM messages WHERE id = ?", (result.message_id,)) == "crisis"
    other = await svc.core.handle_message(msg("what helps sweaty hands?", user="other"))
    assert other.status == "paused"  # everything else still waits for /resume
    await svc.commands.resume(MODERATOR)
    assert len(svc.backend.calls) == 1  # only the paused question; the crisis is not answered by the model


async def test_a_crisis_from_a_rate_limited_patient_gets_help(svc):
    svc.core.safety.limiter.max_messages = 2
    for i in range(2):
        assert (await svc.core.handle_message(msg(f"question {i} about sweating"))).status == "shown"
    svc.backend.calls.clear()
    result = await svc.core.handle_message(msg(CRISIS))
    assert_crisis_handled(svc, result)
    assert (await svc.core.handle_message(msg("Which antiperspirant is best for hands?"))).status == "rate_limited"


@pytest.mark.parametrize("text, language", [
    ("Kendimi öldürmek istiyorum, bu gece her şeyi bitireceğim", "tr"),
    ("Ik wil zelfmoord plegen vannacht", "nl"),
])
async def test_a_crisis_in_an_unsupported_language_gets_resources_not_a_language_notice(svc, text, language):
    verdict = svc.core.safety.triage(text)
    assert verdict.crisis and not verdict.language_supported and verdict.language == language
    result = await svc.core.handle_message(msg(text))
    assert_crisis_handled(svc, result)
    assert not any(v.kind is ViewKind.NOTICE and "language" in v.text.lower() for v in result.views)


async def test_a_crisis_does_not_wait_behind_a_slow_answer_in_the_same_conversation(svc):
    release = asyncio.Event()
    real_generate = svc.backend.generate

    in_model = asyncio.Event()

    async def stuck_generate(messages, **kwargs):
        in_model.set()
        await release.wait()
        return await real_generate(messages)

    svc.backend.generate = stuck_generate
    first = asyncio.create_task(svc.core.handle_message(msg("Does miraDry work?")))
    await asyncio.wait_for(in_model.wait(), 5)  # the first question is with the model
    result = await asyncio.wait_for(svc.core.handle_message(msg(CRISIS)), 5)
    assert result.status == "crisis" and result.views[-1].kind is ViewKind.CRISIS
    release.set()
    earlier = await first
    # the earlier question's answer arrives after the crisis: held for a person, not shown
    assert earlier.status == "held"
    assert await svc.db.fetchval("SELECT delivery FROM replies WHERE id = ?", (earlier.reply_id,)) == "held"
