"""Consent that is real and truthful (issue 12 item 5), in the core: nothing of a patient enters
training before they agree; a clear no keeps the service; the notice says where the
conversation is seen, who reviews it on which platforms, and how long it is kept, and each of
those is what the service does. The platforms' buttons: test_discord, test_slack, test_console_api."""

from __future__ import annotations

import time

from bot import consent
from bot.inference.fixed import FixedBackend
from bot.platform import IncomingMessage, ViewKind
from bot.settings import load_settings
from pipeline import dataset
from reviewers.models import Action, Actor, Rubric
from tests.recording_platform import RecordingPlatform

REVIEWER = Actor("local", "rev1", "Dr Rev", frozenset({"reviewer"}))


def msg(text: str, user: str = "pat") -> IncomingMessage:
    return IncomingMessage("local", user, "console", user, text, display_name=user)


async def patient(service, user: str = "pat"):
    return await service.db.fetchone("SELECT * FROM patients WHERE platform = 'local' AND platform_user_id = ?", (user,))


async def approve(service, item_id: int) -> None:
    await service.core.decide(item_id, REVIEWER, Action.APPROVE, rubric=Rubric(4, 4, 4))


async def trained_on(service) -> list[str]:
    """The question of every expert example an export would train on (the dataset's one way out)."""
    return [[m["content"] for m in e["messages"] if m["role"] == "user"][-1]
            for e in await dataset.examples(service.db) if e["source"].startswith("expert")]


def test_the_words_that_answer_the_question():
    for text in ("I agree", "i agree.", "Yes, I agree!", "“I agree”", "/agree"):
        assert consent.choice_of(text) is True, text
    for text in ("I do not agree", "I don't agree", "No, I don’t agree.", "/decline"):
        assert consent.choice_of(text) is False, text
    for text in ("I agree that my feet sweat a lot", "no", "agree?", "Do you agree?", ""):
        assert consent.choice_of(text) is None, text


async def test_nothing_enters_training_before_the_patient_agrees(service):
    first = await service.core.handle_message(msg("My palms drip in exams. What helps?"))
    assert first.views[0].kind is ViewKind.CONSENT and first.status == "shown"  # answered all the same
    row = await patient(service)
    assert (row["consent"], row["consent_at"]) == (0, None) and row["consent_asked_at"] is not None
    await approve(service, first.item_id)
    assert await trained_on(service) == []  # kept aside, not in any export

    agreed = await service.core.handle_message(msg("I agree"))
    assert agreed.status == "consent" and agreed.views[-1].text == consent.CONFIRM_AGREE
    assert agreed.message_id is None  # the answer is not stored as a question, nor answered by the model
    assert await service.db.fetchval("SELECT COUNT(*) FROM messages") == 1
    assert (await patient(service))["consent"] == 1
    assert await trained_on(service) == ["My palms drip in exams. What helps?"]

    second = await service.core.handle_message(msg("Does iontophoresis hurt?"))
    assert all(v.kind is not ViewKind.CONSENT for v in second.views)  # asked once
    await approve(service, second.item_id)
    assert len(await trained_on(service)) == 2


async def test_a_clear_no_keeps_the_service_and_keeps_out_of_training(service):
    first = await service.core.handle_message(msg("Is botox safe for armpits?"))
    declined = await service.core.handle_message(msg("I do not agree"))
    assert declined.status == "declined" and declined.views[-1].text == consent.CONFIRM_DECLINE
    row = await patient(service)
    assert row["consent"] == 0 and row["consent_at"] is not None and consent.state(row) == "declined"
    await approve(service, first.item_id)
    later = await service.core.handle_message(msg("And for hands?"))
    assert later.status == "shown" and later.reply_id is not None  # still answered
    await approve(service, later.item_id)
    assert await trained_on(service) == []
    assert await service.db.fetchval("SELECT COUNT(*) FROM dataset_examples WHERE patient_id IS NOT NULL") == 0
    # and a change of mind counts from then on
    await service.core.handle_message(msg("I agree"))
    again = await service.core.handle_message(msg("What about feet?"))
    await approve(service, again.item_id)
    assert await trained_on(service) == ["What about feet?"]


async def test_agreeing_before_asking_shows_the_notice_first(service):
    result = await service.core.handle_message(msg("I agree", user="early"))
    assert [v.kind for v in result.views] == [ViewKind.CONSENT, ViewKind.NOTICE]
    assert (await patient(service, "early"))["consent"] == 1


async def test_a_button_counts_only_for_someone_who_wrote_here(service):
    assert await service.core.consent_from_button("local", "stranger", True) == consent.NOT_THE_PATIENT
    assert await patient(service, "stranger") is None
    await service.core.handle_message(msg("Hello, my feet sweat.", user="p2"))
    assert await service.core.consent_from_button("local", "p2", True) == consent.CONFIRM_AGREE
    assert consent.state(await patient(service, "p2")) == "agreed"


async def test_the_notice_tells_where_who_and_how_long_as_configured(tmp_path):
    from bot.service import Service

    settings = load_settings(data_dir=tmp_path, review={"platforms": ["discord"]}, privacy={"retention_days": 30})
    svc = Service(settings, FixedBackend())
    discord, slack = RecordingPlatform("discord"), RecordingPlatform("slack")
    for platform in (discord, slack):
        svc.add_platform(platform)
    await svc.start(retry_loop=False)
    try:
        result = await svc.core.handle_message(IncomingMessage("slack", "U1", "C1", "111.1", "Do sweaty hands run in families?"))
        text = result.views[0].text
        assert "in the reviewers' channel on Discord" in text and "Slack" not in text.split("Training")[0].split("Who can")[1].split("•")[1]
        assert "deleted automatically 30 days after the conversation's last message" in text
        # review.platforms: the Slack patient's words go to the Discord reviewers only
        await svc.core.outbox.run_due()
        assert [c.item_id for c in discord.cards_posted] == [result.item_id]
        assert slack.cards_posted == []

        # retention: a conversation quiet for longer is deleted, with its review item; the answer to
        # the consent question stays
        await svc.db.execute("UPDATE conversations SET updated_at = ?", (time.time() - 31 * 86400,))
        assert await svc.core.purge_expired_conversations() == 1
        for table in ("conversations", "messages", "replies", "review_items"):
            assert await svc.db.fetchval(f"SELECT COUNT(*) FROM {table}") == 0, table
        assert await svc.db.fetchval("SELECT COUNT(*) FROM patients") == 1
    finally:
        await svc.stop()


async def test_unset_retention_and_platforms_say_so(service):
    result = await service.core.handle_message(msg("Why do I sweat at night?"))
    text = result.views[0].text
    assert "stored until you delete them with /forget-me" in text
    assert "only this browser" in text and "web console" in text
    assert await service.core.purge_expired_conversations() == 0


async def test_consent_recorded_before_the_notice_by_older_versions_is_reset(tmp_path):
    """Migration bot 7: earlier versions wrote consent = 1 with the first message, before any
    notice; that was never consent, so it is reset and the patient is asked again."""
    import sqlite3

    from bot.storage import Database

    path = tmp_path / "old.db"
    database = await Database(path).open()
    await database.close()
    raw = sqlite3.connect(path)  # the database as the previous version left it
    raw.execute("ALTER TABLE patients DROP COLUMN consent_asked_at")
    raw.execute("DELETE FROM schema_migrations WHERE package = 'bot' AND name = 'consent_asked'")
    raw.execute("INSERT INTO patients (platform, platform_user_id, consent, consent_at, created_at)"
                " VALUES ('discord', '42', 1, 1.0, 1.0)")
    raw.commit()
    raw.close()
    database = await Database(path).open()
    try:
        row = await database.fetchone("SELECT consent, consent_at, consent_asked_at FROM patients")
        assert tuple(row) == (0, None, None) and consent.state(row) == "not_asked"
    finally:
        await database.close()


def test_the_notice_names_every_outside_service_that_reads_the_messages(tmp_path, monkeypatch):
    """The model server, an LLM judge and the remote safety checks each receive the patient's
    words: the notice names those outside the deployment (and only those)."""
    from bot.platform import ConversationRef
    from bot.service import Service

    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-not-a-key")  # turns OpenAI moderation on
    settings = load_settings(data_dir=tmp_path, judge={"enabled": True, "base_url": "https://judge.example.org/v1"},
                             inference={"backend": "openai", "openai_base_url": "http://vllm:8000/v1"})
    core = Service(settings, FixedBackend()).core
    text = core.consent_view(ConversationRef(1, "local", "console", "p", "p")).text
    assert ("Your messages are also sent to api.openai.com (an automatic safety check) and judge.example.org "
            "(an AI that pre-scores answers for the specialists).") in text or (
        "Your messages are also sent to judge.example.org (an AI that pre-scores answers for the specialists) and "
        "api.openai.com (an automatic safety check).") in text
    assert "vllm" not in text  # the deployment's own model server
    monkeypatch.delenv("OPENAI_API_KEY")
    quiet = Service(load_settings(data_dir=tmp_path), FixedBackend()).core
    assert "also sent to" not in quiet.consent_view(ConversationRef(1, "local", "console", "p", "p")).text
