"""The conversation core end to end on a fixed-reply backend and the local platform."""

from __future__ import annotations

import asyncio
import json

import pytest

from bot.core import GATED_TEXT, LABEL_EDITED, LABEL_PENDING, NOTICE_UNAVAILABLE, WITHDRAWN_TEXT
from bot.platform import IncomingMessage, ViewKind
from pipeline.privacy import scrub
from reviewers.models import Action, Actor, PermissionDenied, ReviewError, Rubric

REVIEWER = Actor("local", "rev1", "Dr Rev", frozenset({"reviewer"}))
REVIEWER2 = Actor("local", "rev2", "Dr Two", frozenset({"reviewer"}))
MODERATOR = Actor("local", "mod", "Mod", frozenset({"moderator"}))
PATIENT_ACTOR = Actor("local", "pat", "Pat", frozenset())
SCORED = Rubric(4, 4, 4)  # approving or editing needs all three scores


def msg(text: str, user: str = "pat", thread: str | None = None, attachments: int = 0,
        region: str | None = None) -> IncomingMessage:
    return IncomingMessage("local", user, "console", thread or user, text, display_name=user, attachments=attachments,
                           region=region)


async def test_message_reply_review_item(service):
    result = await service.core.handle_message(msg("My palms sweat every day since I was 12. Is this normal?"))
    assert result.status == "shown"
    kinds = [v.kind for v in result.views]
    assert kinds[0] is ViewKind.CONSENT  # first contact: what is stored, where, for how long, and the question
    reply_view = result.views[-1]
    assert reply_view.kind is ViewKind.PENDING_REVIEW and reply_view.label == LABEL_PENDING
    assert reply_view.disclaimer == service.pack.disclaimer
    row = await service.db.fetchone("SELECT * FROM replies WHERE id = ?", (result.reply_id,))
    assert row["model"] == "fixed-model" and row["latency_ms"] >= 0
    prompt = json.loads(row["prompt"])
    assert prompt[0]["role"] == "system" and service.pack.guidance.strip()[:40] in prompt[0]["content"]
    assert prompt[-1] == {"role": "user", "content": "My palms sweat every day since I was 12. Is this normal?"}
    pending = await service.reviews.pending()
    assert [p["item_id"] for p in pending] == [result.item_id]


async def test_message_is_committed_before_the_model_runs(service):
    class Crash(RuntimeError):
        pass

    async def crashing(*args, **kwargs):
        raise Crash("process died mid-generation")

    original = service.backend.generate
    service.backend.generate = crashing
    with pytest.raises(Crash):
        await service.core.handle_message(msg("Does iontophoresis work for feet?"))
    rows = await service.db.fetchall("SELECT text, status, last_error FROM messages")
    # stored before the model ran; the interrupted claim is given back, queued for the retry loop
    assert [(r["text"], r["status"]) for r in rows] == [("Does iontophoresis work for feet?", "queued_retry")]
    assert rows[0]["last_error"] == "interrupted: Crash"
    service.backend.generate = original
    assert await service.core.retry_queued() == 1
    assert await service.db.fetchval("SELECT status FROM messages") == "answered"


async def test_model_unavailable_queues_and_retries(service):
    service.backend.fail_with = "connection refused"
    result = await service.core.handle_message(msg("What is HDSS?"))
    assert result.status == "queued_retry"
    assert result.views[-1].text == NOTICE_UNAVAILABLE
    assert await service.db.fetchval("SELECT status FROM messages") == "queued_retry"
    incident = await service.db.fetchone("SELECT kind, resolved_at FROM incidents")
    assert incident["kind"] == "model_unavailable" and incident["resolved_at"] is None
    local = service.core.platforms["local"]
    assert any("failing" in a["text"] for a in local.alerts)
    status = await service.commands.status(MODERATOR)
    assert "Messages waiting for the model: 1" in status.text and "FAILING" in status.text
    # still down: nothing answered, no second notice
    assert await service.core.retry_queued() == 0
    service.backend.fail_with = None
    assert await service.core.retry_queued() == 1
    assert await service.db.fetchval("SELECT resolved_at FROM incidents") is not None
    assert await service.db.fetchval("SELECT COUNT(*) FROM replies") == 1


async def test_edit_reaches_patient_and_dataset(service):
    result = await service.core.handle_message(msg("Should I try botox for my armpits? My name is Anna Berg."))
    outcome = await service.core.decide(result.item_id, REVIEWER, Action.EDIT, "Botulinum toxin is an option.",
                                        Rubric(4, 5, 3))
    assert outcome.closed_now and outcome.state.value == "edited"
    reply = await service.db.fetchone("SELECT * FROM replies WHERE id = ?", (result.reply_id,))
    view = service.core.view_for(reply["text"], reply["delivery"], "edited", outcome.final_text)
    assert view.text == "Botulinum toxin is an option." and view.label == LABEL_EDITED
    assert reply["shown_text"] == "Botulinum toxin is an option."
    rows = await service.db.fetchall("SELECT * FROM dataset_examples WHERE source = 'expert_edited'")
    assert len(rows) == 1
    messages = json.loads(rows[0]["messages"])
    assert messages[-1]["content"] == "Botulinum toxin is an option."
    assert "Anna" not in messages[1]["content"] and "[name]" in messages[1]["content"]
    provenance = json.loads(rows[0]["provenance"])
    assert provenance["original_reply"] == scrub(reply["text"]) and provenance["reviewers"] == ["local:rev1"]
    # the system prompt as sent, ending with the task line the model was given
    assert messages[0]["content"] == service.pack.system_message() + "\n\nTask: treatment" and rows[0]["task"] == "treatment"
    # deciding again, by the same or another reviewer, changes nothing and adds no example
    again = await service.core.decide(result.item_id, REVIEWER, Action.APPROVE)
    other = await service.core.decide(result.item_id, REVIEWER2, Action.REJECT)
    assert not again.recorded and not other.recorded
    assert await service.db.fetchval("SELECT COUNT(*) FROM dataset_examples WHERE review_item_id IS NOT NULL") == 1
    assert await service.db.fetchval("SELECT state FROM review_items WHERE id = ?", (result.item_id,)) == "edited"


async def test_non_reviewer_refused_and_logged(service):
    result = await service.core.handle_message(msg("Is sweating at night normal for me?"))
    with pytest.raises(PermissionDenied):
        await service.core.decide(result.item_id, PATIENT_ACTOR, Action.APPROVE)
    assert await service.db.fetchval("SELECT state FROM review_items") == "pending"
    assert await service.db.fetchval("SELECT COUNT(*) FROM review_decisions") == 0
    assert await service.db.fetchval("SELECT COUNT(*) FROM review_audit WHERE action = 'refused'") == 1


async def test_empty_edit_and_unknown_item(service):
    result = await service.core.handle_message(msg("What helps sweaty feet?"))
    with pytest.raises(ReviewError):
        await service.core.decide(result.item_id, REVIEWER, Action.EDIT, "   ")
    with pytest.raises(ReviewError):
        await service.core.decide(9999, REVIEWER, Action.APPROVE)
    with pytest.raises(ValueError):
        Rubric(accuracy=7)


async def test_reject_withdraws(service):
    result = await service.core.handle_message(msg("Can I cure this forever?"))
    outcome = await service.core.decide(result.item_id, REVIEWER, Action.REJECT)
    assert outcome.state.value == "rejected"
    reply = await service.db.fetchone("SELECT * FROM replies")
    assert reply["delivery"] == "withdrawn"
    assert service.core.view_for(reply["text"], reply["delivery"], "rejected", None).text == WITHDRAWN_TEXT
    assert await service.db.fetchval("SELECT COUNT(*) FROM dataset_examples WHERE source LIKE 'expert%'") == 0


async def test_gated_mode_holds_until_approved(service):
    service.settings.review.mode = "gated"
    result = await service.core.handle_message(msg("Do I need to see a doctor for sweaty hands?"))
    assert result.status == "held" and result.views[-1].text == GATED_TEXT
    outcome = await service.core.decide(result.item_id, REVIEWER, Action.APPROVE, rubric=Rubric(5, 5, 5))
    reply = await service.db.fetchone("SELECT * FROM replies")
    view = service.core.view_for(reply["text"], reply["delivery"], outcome.state.value, outcome.final_text)
    assert view.kind is ViewKind.REVIEWED and view.text == reply["text"]
    assert await service.db.fetchval("SELECT COUNT(*) FROM dataset_examples WHERE source = 'expert_approved'") == 1


async def test_quorum_two(service):
    service.reviews.quorum = 2
    result = await service.core.handle_message(msg("Is glycopyrronium safe?"))
    first = await service.core.decide(result.item_id, REVIEWER, Action.APPROVE, rubric=Rubric(4, 4, 4))
    assert first.recorded and not first.closed_now and first.state.value == "pending"
    second = await service.core.decide(result.item_id, REVIEWER2, Action.EDIT, "Better text.", Rubric(3, 4, 4))
    assert second.closed_now and second.state.value == "edited" and second.final_text == "Better text."


@pytest.mark.parametrize("text", ["", "   \n\t  "])
async def test_empty_messages_get_a_notice_and_store_nothing(service, text):
    result = await service.core.handle_message(msg(text))
    assert result.status == "empty" and "empty" in result.views[0].text.lower()
    assert await service.db.fetchval("SELECT COUNT(*) FROM messages") == 0


async def test_attachment_only_message(service):
    result = await service.core.handle_message(msg("", attachments=1))
    assert result.status == "unsupported" and "only read text" in result.views[-1].text
    assert await service.db.fetchval("SELECT attachments FROM messages") == 1
    assert service.backend.calls == []


async def test_twenty_thousand_characters(service):
    text = ("My hands sweat a lot and I worry about it. " * 500)[:20000]
    result = await service.core.handle_message(msg(text))
    assert result.status == "shown"
    assert any("very long" in v.text for v in result.views)
    assert await service.db.fetchval("SELECT LENGTH(text) FROM messages") == len(text.strip())
    sent = service.backend.calls[-1][-1]["content"]
    assert len(sent) <= service.settings.prompt.max_message_chars


async def test_history_within_token_budget(service):
    for i in range(6):
        await service.core.handle_message(msg(f"Question number {i} about sweating " + "x" * 300))
    last_prompt = service.backend.calls[-1]
    assert [m["role"] for m in last_prompt[1:3]] == ["user", "assistant"]
    assert last_prompt[-1]["content"].startswith("Question number 5")
    service.settings.prompt.token_budget = service.backend.count_tokens(last_prompt[0]["content"]) + 300
    await service.core.handle_message(msg("And one more question"))
    small = service.backend.calls[-1]
    assert small[0]["role"] == "system" and small[-1]["content"] == "And one more question"
    total = sum(service.backend.count_tokens(m["content"]) + 4 for m in small)
    assert total <= service.settings.prompt.token_budget + 8
    assert len(small) < len(last_prompt)


async def test_pause_and_resume(service):
    reply = await service.commands.pause(MODERATOR)
    assert "paused" in reply.text
    result = await service.core.handle_message(msg("Hello, are you there?"))
    assert result.status == "paused" and service.backend.calls == []
    resumed = await service.commands.resume(MODERATOR)
    assert resumed.data["answered"] == 1
    assert await service.db.fetchval("SELECT status FROM messages") == "answered"


async def test_crisis_never_reaches_the_model(service):
    result = await service.core.handle_message(msg("I can't take this anymore, I want to kill myself"))
    assert result.status == "crisis" and service.backend.calls == []
    assert result.views[-1].kind is ViewKind.CRISIS and "emergency number" in result.views[-1].text
    assert any(a["urgent"] for a in service.core.platforms["local"].alerts)
    assert await service.db.fetchval("SELECT status FROM conversations") == "crisis_hold"
    follow = await service.core.handle_message(msg("ok. my hands sweat too"))
    assert follow.status == "held"  # later messages gated until a human looked
    us = await service.core.handle_message(msg("i want to end my life", user="us-patient", region="US"))
    assert "988" in us.views[-1].text


async def test_red_flag_gated_with_doctor_advice(service):
    result = await service.core.handle_message(msg("I started soaking the sheets at night and lost weight without trying"))
    assert result.status == "held"
    item = await service.reviews.item(result.item_id)
    assert item["priority"] == "high" and "red_flag" in item["risk_flags"]
    system = service.backend.calls[-1][0]["content"]
    assert "see a doctor" in system


async def test_forget_patient_removes_everything(service):
    result = await service.core.handle_message(msg("What is iontophoresis?", user="forgetme"))
    await service.core.decide(result.item_id, REVIEWER, Action.APPROVE, rubric=Rubric(4, 4, 4))
    assert await service.db.fetchval("SELECT COUNT(*) FROM dataset_examples WHERE patient_id IS NOT NULL") == 1
    assert (await service.core.forget_patient("local", "forgetme")).removed == 1
    for table in ("patients", "conversations", "messages", "replies", "review_items"):
        assert await service.db.fetchval(f"SELECT COUNT(*) FROM {table}") == 0
    assert await service.db.fetchval("SELECT COUNT(*) FROM dataset_examples WHERE patient_id IS NOT NULL") == 0
    assert await service.db.fetchval("SELECT COUNT(*) FROM dataset_examples WHERE source = 'seed'") > 0


async def test_commands_require_moderator_and_one_retrain_job(service):
    with pytest.raises(PermissionDenied):
        await service.commands.run(PATIENT_ACTOR, "retrain")
    assert await service.db.fetchval("SELECT COUNT(*) FROM jobs") == 0
    first, second = await asyncio.gather(
        service.commands.run(MODERATOR, "retrain"), service.commands.run(MODERATOR, "retrain")
    )
    assert sorted([first.data["created"], second.data["created"]]) == [False, True]
    assert "already" in (first.text if not first.data["created"] else second.text)
    counts = await service.commands.run(MODERATOR, "dataset")
    assert counts.data["total"] == len(service.pack.seeds)
    unknown = await service.commands.run(MODERATOR, "explode")
    assert not unknown.ok


async def test_many_conversations_at_once(service):
    service.backend.delay_s = 0.01
    results = await asyncio.wait_for(  # fails instead of hanging if answering ever stalls
        # (not "question {i}": the safety model reads "question 38" as a fever, a red flag — a known false
        # alarm, tests/test_safety.py::test_known_false_alarms_of_the_learned_model)
        asyncio.gather(*(service.core.handle_message(msg(f"a question, take {i}", user=f"u{i}")) for i in range(60))), 60)
    assert all(r.status == "shown" for r in results)
    assert await service.db.fetchval("SELECT COUNT(*) FROM replies") == 60
    assert await service.db.fetchval("SELECT COUNT(*) FROM review_items WHERE state = 'pending'") == 60


async def test_agreement_report(service):
    from reviewers.agreement import agreement_report

    service.reviews.quorum = 2
    for i in range(4):
        r = await service.core.handle_message(msg(f"q{i}", user=f"a{i}"))
        await service.core.decide(r.item_id, REVIEWER, Action.APPROVE, rubric=Rubric(4, 4, 4 if i % 2 else 3))
        await service.core.decide(r.item_id, REVIEWER2, Action.APPROVE, rubric=Rubric(4, 4, 3))
    report = (await agreement_report(service.db))["reviewers"]
    assert report["action"]["items"] == report["action"]["n"] == 4 and report["action"]["exact"] == 1.0
    assert report["empathy"]["kappa"] is not None and report["empathy"]["exact"] == 0.5


@pytest.mark.parametrize("damage", ["missing", "corrupt_config", "empty_weights"])
async def test_bad_live_adapter_starts_on_base_model_loudly(settings, caplog, damage):
    from bot.inference.fixed import FixedBackend
    from bot.service import Service
    from bot.storage import Database
    from pipeline import registry

    path = settings.data_dir / "adapters" / "v1"
    if damage != "missing":
        path.mkdir(parents=True)
        (path / "adapter_config.json").write_text("{not json" if damage == "corrupt_config" else "{}")
        (path / "adapter_model.safetensors").write_bytes(b"" if damage == "empty_weights" else b"x")
    db = await Database(settings.db_path).open()
    await registry.register(db, "v1", path, "base", status="live")
    await db.close()
    svc = Service(settings, FixedBackend())
    with caplog.at_level("ERROR"):
        await svc.start(retry_loop=False)
    try:
        assert svc.backend.adapter_version is None
        assert "SERVING THE BASE MODEL" in caplog.text
        incident = await svc.db.fetchval("SELECT detail FROM incidents WHERE kind = 'adapter_load_failed'")
        assert "v1" in incident
        # ("still answering?" alone is a possible crisis for the safety model, p 0.19: a known false alarm)
        result = await svc.core.handle_message(msg("are you still answering?"))
        assert result.status == "shown"
    finally:
        await svc.stop()


async def test_promote_command_checks_role_and_names_a_version(service):
    with pytest.raises(PermissionDenied):
        await service.commands.run(PATIENT_ACTOR, "promote", "v1")
    missing = await service.commands.run(MODERATOR, "promote", "")
    assert not missing.ok and "Name the adapter version" in missing.text
    unknown = await service.commands.run(MODERATOR, "promote", "v404")
    assert not unknown.ok and "v404" in unknown.text


async def test_rollback_returns_to_previous_then_base(service, tmp_path):
    from pipeline import registry

    nothing = await service.commands.run(MODERATOR, "rollback")
    assert not nothing.ok and "nothing to roll back" in nothing.text
    for version in ("v1", "v2"):
        path = tmp_path / version
        path.mkdir()
        (path / "adapter_config.json").write_text("{}")
        (path / "adapter_model.safetensors").write_bytes(b"weights")
        await registry.register(service.db, version, path, "base")
        await registry.mark_gate_passed(service.db, version)  # rollback targets must have passed the gate
    await service.activate_adapter("v1")
    await service.activate_adapter("v2")
    first = await service.commands.run(MODERATOR, "rollback")
    assert first.ok and "v1 is live" in first.text and service.backend.adapter_version == "v1"
    second = await service.commands.run(MODERATOR, "rollback", "v2")
    assert second.ok and service.backend.adapter_version == "v2"
    await registry.mark_live(service.db, "v1")
    await registry.set_status(service.db, "v2", "candidate")
    await registry.set_status(service.db, "v1", "live")
    await service.db.execute("UPDATE adapters SET promoted_at = NULL WHERE version = 'v2'")
    to_base = await service.commands.run(MODERATOR, "rollback")
    assert to_base.ok and "the base model is live" in to_base.text and service.backend.adapter_version is None
    assert (await registry.live(service.db)) is None


@pytest.mark.parametrize("first, second", [(Action.APPROVE, Action.REJECT), (Action.REJECT, Action.APPROVE),
                                           (Action.EDIT, Action.REJECT)])
async def test_quorum_tie_asks_one_more_reviewer(service, first, second):
    """Quorum 2, one accept and one reject: not approved, not rejected; a third reviewer decides."""
    service.reviews.quorum = 2
    result = await service.core.handle_message(msg("Is glycopyrronium safe for teenagers?"))
    await service.core.decide(result.item_id, REVIEWER, first, "Edited text." if first is Action.EDIT else None, SCORED)
    tie = await service.core.decide(result.item_id, REVIEWER2, second, rubric=SCORED)
    assert tie.recorded and not tie.closed_now and tie.tie and tie.state.value == "pending"
    assert "one more review" in tie.message
    assert await service.db.fetchval("SELECT state FROM review_items") == "pending"
    assert await service.db.fetchval("SELECT COUNT(*) FROM dataset_examples WHERE review_item_id IS NOT NULL") == 0
    card = await service.core.review_card(result.item_id)
    assert card.state == "pending" and card.decided_by[-1] == "Tie: one more review needed"
    third = Actor("local", "rev3", "Dr Three", frozenset({"reviewer"}))
    final = await service.core.decide(result.item_id, third, Action.REJECT)
    assert final.closed_now and final.state.value == "rejected"
    assert await service.db.fetchval("SELECT COUNT(*) FROM dataset_examples WHERE review_item_id IS NOT NULL") == 0


async def test_quorum_majority_of_accepts_closes_with_the_latest_edit(service):
    service.reviews.quorum = 3
    result = await service.core.handle_message(msg("Can iontophoresis be done at home?"))
    await service.core.decide(result.item_id, REVIEWER, Action.EDIT, "First edit.", SCORED)
    await service.core.decide(result.item_id, REVIEWER2, Action.REJECT)
    third = Actor("local", "rev3", "Dr Three", frozenset({"reviewer"}))
    closing = await service.core.decide(result.item_id, third, Action.APPROVE, rubric=SCORED)
    assert closing.closed_now and closing.state.value == "edited" and closing.final_text == "First edit."


async def test_approving_or_editing_without_rubric_scores_is_refused(service):
    """(issue 11 item 5) Nothing is recorded; the reviewer is told which scores are missing."""
    result = await service.core.handle_message(IncomingMessage("local", "p1", "console", "p1", "Does botox help?"))
    with pytest.raises(ReviewError, match="missing: accuracy, appropriateness, empathy"):
        await service.core.decide(result.item_id, REVIEWER, Action.APPROVE)
    with pytest.raises(ReviewError, match="missing: empathy"):
        await service.core.decide(result.item_id, REVIEWER, Action.EDIT, "Better.", Rubric(4, 4))
    assert await service.db.fetchval("SELECT COUNT(*) FROM review_decisions") == 0
    assert await service.db.fetchval("SELECT state FROM review_items") == "pending"
    rejected = await service.core.decide(result.item_id, REVIEWER, Action.REJECT)  # a reject may go unscored
    assert rejected.state.value == "rejected"
    assert await service.db.fetchval("SELECT COUNT(*) FROM dataset_examples WHERE patient_id IS NOT NULL") == 0
