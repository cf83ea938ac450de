"""Expiry tells the patient and closes the cards (issue 15).

After ``review.expire_after_hours`` an undecided item expires. In gated mode the patient's
"a specialist is reviewing" message is replaced by an honest notice (the unchecked answer is
never shown); in immediate mode the shown answer is relabelled as not reviewed; every card
is updated to 'expired' without buttons. Both go through the outbox like a decision."""

from __future__ import annotations


from bot.core import EXPIRED_HELD_TEXT, GATED_TEXT, LABEL_NOT_REVIEWED
from bot.inference.fixed import FixedBackend
from bot.platform import IncomingMessage, ViewKind
from bot.service import Service
from reviewers.models import Action, Actor, Rubric
from tests.recording_platform import RecordingPlatform

REVIEWER = Actor("local", "rev1", "Dr Rev", frozenset({"reviewer"}))
MODERATOR = Actor("local", "mod", "Mod", frozenset({"moderator"}))


def msg(text: str, user: str = "pat") -> IncomingMessage:
    return IncomingMessage("local", user, "console", user, text, display_name=user)


async def age_items(service: Service, hours: float) -> None:
    await service.db.execute("UPDATE review_items SET created_at = created_at - ?", (hours * 3600,))


async def test_gated_patient_gets_an_honest_notice_and_the_card_closes(svc):
    svc.settings.review.mode = "gated"
    platform = svc.core.platforms["local"]
    result = await svc.core.handle_message(msg("Which doctor treats hyperhidrosis?"))
    assert result.views[-1].text == GATED_TEXT
    posted = platform.sent[-1][2]
    await age_items(svc, svc.settings.review.expire_after_hours - 1)
    assert await svc.core.expire_reviews() == 0  # not yet
    await age_items(svc, 2)
    assert await svc.core.expire_reviews() == 1
    [(_, ids, view)] = platform.edited
    assert ids == posted and view.kind is ViewKind.WITHDRAWN and view.text == EXPIRED_HELD_TEXT
    reply = await svc.db.fetchval("SELECT text FROM replies WHERE id = ?", (result.reply_id,))
    assert reply not in view.text
    assert [c.state for c in platform.cards_updated] == ["expired"]
    # a late click changes nothing; the next prompt does not carry the never-shown answer
    late = await svc.core.decide(result.item_id, REVIEWER, Action.APPROVE, rubric=Rubric(4, 4, 4))
    assert not late.recorded and "expired" in late.message
    await svc.core.handle_message(msg("Hello again"))
    assert reply not in str(svc.backend.calls[-1])
    assert await svc.db.fetchval("SELECT COUNT(*) FROM dataset_examples WHERE review_item_id IS NOT NULL") == 0


async def test_immediate_mode_relabels_the_answer_as_not_reviewed(svc):
    platform = svc.core.platforms["local"]
    result = await svc.core.handle_message(msg("Does sage tea help with sweating?"))
    await age_items(svc, svc.settings.review.expire_after_hours + 1)
    assert await svc.core.expire_reviews() == 1
    [(_, _, view)] = platform.edited
    reply = await svc.db.fetchval("SELECT text FROM replies WHERE id = ?", (result.reply_id,))
    assert view.text == reply and LABEL_NOT_REVIEWED in view.label
    assert [c.state for c in platform.cards_updated] == ["expired"]


async def test_expiry_effects_survive_a_failing_platform_and_a_restart(settings):
    settings.review.mode = "gated"
    platform = RecordingPlatform()
    service = Service(settings, FixedBackend())
    service.add_platform(platform)
    await service.start(retry_loop=False)
    await service.core.handle_message(msg("Is it normal to sweat when cold?"))
    platform.fail_edits = platform.fail_cards = True
    await age_items(service, settings.review.expire_after_hours + 1)
    assert await service.core.expire_reviews() == 1
    assert platform.edited == [] and (await service.core.outbox.stats())["pending"] == 2
    await service.stop()

    back = RecordingPlatform()
    service = Service(settings, FixedBackend())
    service.add_platform(back)
    await service.start(retry_loop=False)
    try:
        assert [view.text for _, _, view in back.edited] == [EXPIRED_HELD_TEXT]
        assert [c.state for c in back.cards_updated] == ["expired"]
    finally:
        await service.stop()
