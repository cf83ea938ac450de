"""Prompts carry what the patient saw; expert examples keep the conversation as the model saw it.

Issue 15 ("conversation gaps") and issue 11 item 6 (core side): the crisis turn is in the next
prompt; in gated mode a held reply is not fed back to the model until a specialist approved it;
a rejected reply never is; an edited reply is fed back as edited. The dataset example made from
an approved reply is the stored prompt (system prompt, history, question) plus the final text."""

from __future__ import annotations

import json

from bot.core import GATED_TEXT
from bot.platform import IncomingMessage
from pipeline.privacy import scrub
from reviewers.models import Action, Actor, Rubric

REVIEWER = Actor("local", "rev1", "Dr Rev", frozenset({"reviewer"}))


def msg(text: str, user: str = "pat") -> IncomingMessage:
    return IncomingMessage("local", user, "console", user, text, display_name=user)


def turns(prompt: list[dict]) -> list[tuple[str, str]]:
    return [(m["role"], m["content"]) for m in prompt[1:]]  # without the system turn


async def reply_text(service, reply_id: int) -> str:
    return await service.db.fetchval("SELECT text FROM replies WHERE id = ?", (reply_id,))


async def test_immediate_mode_feeds_back_the_shown_reply(service):
    first = await service.core.handle_message(msg("Does iontophoresis help sweaty hands?"))
    await service.core.handle_message(msg("How often should I do it?"))
    assert turns(service.backend.calls[-1]) == [
        ("user", "Does iontophoresis help sweaty hands?"),
        ("assistant", await reply_text(service, first.reply_id)),
        ("user", "How often should I do it?"),
    ]


async def test_gated_mode_never_feeds_back_a_reply_the_patient_has_not_seen(service):
    service.settings.review.mode = "gated"
    first = await service.core.handle_message(msg("Does iontophoresis help sweaty hands?"))
    assert first.views[-1].text == GATED_TEXT
    await service.core.handle_message(msg("How often should I do it?"))
    held = await reply_text(service, first.reply_id)
    prompt = service.backend.calls[-1]
    assert held not in json.dumps(prompt)
    assert turns(prompt) == [("user", "Does iontophoresis help sweaty hands?"), ("user", "How often should I do it?")]
    # once approved, the patient sees it, and so does the model
    await service.core.decide(first.item_id, REVIEWER, Action.APPROVE, rubric=Rubric(4, 4, 4))
    await service.core.handle_message(msg("Does it hurt?"))
    assert ("assistant", held) in turns(service.backend.calls[-1])


async def test_a_rejected_reply_is_not_fed_back_and_an_edited_one_is_fed_back_as_edited(service):
    rejected = await service.core.handle_message(msg("Can I cure this forever?"))
    await service.core.decide(rejected.item_id, REVIEWER, Action.REJECT)
    edited = await service.core.handle_message(msg("What about botox?"))
    await service.core.decide(edited.item_id, REVIEWER, Action.EDIT, "Botulinum toxin helps for several months.", Rubric(4, 4, 4))
    await service.core.handle_message(msg("Thanks. Anything else?"))
    prompt = service.backend.calls[-1]
    assert turns(prompt) == [
        ("user", "Can I cure this forever?"),
        ("user", "What about botox?"),
        ("assistant", "Botulinum toxin helps for several months."),
        ("user", "Thanks. Anything else?"),
    ]
    assert await reply_text(service, rejected.reply_id) not in json.dumps(prompt)


async def test_the_crisis_turn_is_in_the_next_prompt(service):
    crisis = await service.core.handle_message(msg("I can't take this anymore, I want to kill myself"))
    assert crisis.status == "crisis" and service.backend.calls == []
    resources = crisis.views[-1].text
    follow = await service.core.handle_message(msg("ok. my hands sweat too"))
    assert follow.status == "held"  # a person looks first, but the model knows what happened
    assert turns(service.backend.calls[-1]) == [
        ("user", "I can't take this anymore, I want to kill myself"),
        ("assistant", resources),
        ("user", "ok. my hands sweat too"),
    ]


async def test_the_expert_example_is_the_prompt_the_model_saw_plus_the_final_text(service):
    await service.core.handle_message(msg("My name is Anna Berg and my palms drip at work. Do antiperspirants help with sweaty palms?"))
    second = await service.core.handle_message(msg("Would iontophoresis help with that?"))
    prompt = json.loads(await service.db.fetchval("SELECT prompt FROM replies WHERE id = ?", (second.reply_id,)))
    assert len(prompt) == 4  # system, first question, first reply, this question
    await service.core.decide(second.item_id, REVIEWER, Action.EDIT, "Yes, tap-water iontophoresis often helps.", Rubric(4, 4, 4))
    row = await service.db.fetchone("SELECT messages FROM dataset_examples WHERE review_item_id = ?", (second.item_id,))
    example = json.loads(row["messages"])
    assert [m["role"] for m in example] == ["system", "user", "assistant", "user", "assistant"]
    assert example[0] == prompt[0]  # the system prompt as sent, not rebuilt
    assert example[2]["content"] == scrub(prompt[2]["content"]) and example[3] == prompt[3]
    assert "Anna" not in example[1]["content"] and "[name]" in example[1]["content"]  # still scrubbed
    assert example[-1] == {"role": "assistant", "content": "Yes, tap-water iontophoresis often helps."}
