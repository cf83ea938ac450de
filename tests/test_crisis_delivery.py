"""Delivery of the crisis resources is confirmed (issue 14 item 5).

When the patient's conversation refuses the post (Discord 403 / 50013, closed DMs 50007; Slack
is_archived / not_in_channel / channel_not_found), the other routes are tried (thread → channel
→ direct message), and the moderators' urgent alert says what really happened: reached another
way, or "could NOT reach the patient". Through real discord.py and slack-bolt against the strict
fakes, and the core on the console's platform.
"""

from __future__ import annotations

import asyncio

import pytest

from bot.inference.fixed import FixedBackend
from bot.platform import IncomingMessage, ViewKind
from bot.settings import load_settings
from tests.discord_fake import CANNOT_MESSAGE_USER, FakeDiscord
from tests.recording_platform import RecordingPlatform
from tests.slack_fake import FakeSlack
from tests.test_slack import GROUP, MODERATOR, PATIENT, REVIEW, SUPPORT, SignedHTTP, message, running

pytestmark = pytest.mark.asyncio(loop_scope="session")

CRISIS = "I can't go on, I want to kill myself tonight"


# ---------------------------------------------------------------------- core (console platform)


async def test_an_undelivered_crisis_message_is_reported_honestly_then_confirmed(tmp_path):
    from bot.service import Service

    settings = load_settings(data_dir=tmp_path, outbox={"retry_base_s": 0.05, "retry_max_s": 0.1})
    service = Service(settings, FixedBackend())
    platform = RecordingPlatform()
    service.add_platform(platform)
    await service.start()  # with the outbox worker
    try:
        platform.fail_sends = True  # the patient cannot be reached at all
        result = await service.core.handle_message(IncomingMessage("local", "pat", "console", "pat", CRISIS))
        assert result.status == "crisis"
        alert = platform.alerts[-1]
        assert alert["urgent"] and "could NOT reach the patient" in alert["text"] and "send failed" in alert["text"]
        case = await service.db.fetchone("SELECT * FROM incidents WHERE kind = 'crisis'")
        assert case["delivery"] == "failed" and case["conversation_id"] == result.conversation_id

        platform.fail_sends = False  # the retry gets through: the moderators are told
        deadline = asyncio.get_running_loop().time() + 10
        while not any("have now reached the patient" in a["text"] for a in platform.alerts):
            assert asyncio.get_running_loop().time() < deadline, platform.alerts
            await asyncio.sleep(0.02)
        assert [v.kind for _, v, _ in platform.sent].count(ViewKind.CRISIS) == 1
        assert await service.db.fetchval("SELECT delivery FROM incidents WHERE id = ?", (case["id"],)) == "delivered"
    finally:
        await service.stop()


# ---------------------------------------------------------------------- Discord


@pytest.fixture
async def discord_fake():
    server = await FakeDiscord().start()
    server.patch_library()
    yield server
    await server.stop()


async def _discord(tmp_path, fake: FakeDiscord, **sections):
    from bot.discord_platform import start_discord
    from bot.service import Service

    settings = load_settings(data_dir=tmp_path, outbox={"retry_base_s": 30}, **sections, discord={
        "token": "discord-test-token", "guild_ids": [int(fake.guild_id)], "support_channel_ids": [int(fake.support_id)],
        "reviewer_channel_id": int(fake.reviewer_channel_id), "reviewer_role": "Reviewer",
        "moderator_role": "Moderator", "card_edit_interval_s": 0.01})
    service = Service(settings, FixedBackend())
    await service.start(retry_loop=False)
    runner = await start_discord(service, guild_ready_timeout=0.05, ready_timeout=15)
    return service, runner


def _alerts(fake: FakeDiscord) -> list[str]:
    return [m["content"] for m in fake.bot_messages(fake.reviewer_channel_id) if "Crisis case" in m["content"]]


async def test_discord_no_permission_in_the_channel_reaches_the_patient_by_dm(tmp_path, discord_fake):
    fake = discord_fake
    service, runner = await _discord(tmp_path, fake)
    try:
        patient = fake.add_member("patient")
        said = await fake.say(patient, fake.support_id, CRISIS, deliver=False)
        # Send Messages taken away in the support channel: its threads refuse too (403, 50013).
        fake.forbid(rf"/channels/({fake.support_id}|{said['id']})/messages", method="POST")
        await fake.dispatch("MESSAGE_CREATE", said)
        dm = fake.dm_channel(patient)
        await fake.wait_for(lambda: any("emergency" in m["content"] for m in fake.bot_messages(dm)), what="resources by DM")
        alerts = await fake.wait_for(lambda: _alerts(fake), what="the crisis alert")
        assert "by direct message" in alerts[0] and "50013" in alerts[0]
        assert f"https://discord.com/channels/{fake.guild_id}/{said['id']}" in alerts[0]  # the thread's jump URL
        assert f"<@&{fake.moderator_role}>" in alerts[0]
        tried = [c.path for c in fake.calls if c.method == "POST" and c.status == 403]
        assert f"/channels/{said['id']}/messages" in tried and f"/channels/{fake.support_id}/messages" in tried
    finally:
        await runner.cleanup()
        await service.stop()


async def test_discord_closed_dms_too_the_alert_says_the_patient_was_not_reached(tmp_path, discord_fake):
    fake = discord_fake
    service, runner = await _discord(tmp_path, fake)
    try:
        patient = fake.add_member("patient")
        said = await fake.say(patient, fake.support_id, CRISIS, deliver=False)
        fake.forbid(rf"/channels/({fake.support_id}|{said['id']})/messages", method="POST")
        fake.forbid(rf"/channels/{fake.dm_channel(patient)}/messages", code=CANNOT_MESSAGE_USER)
        await fake.dispatch("MESSAGE_CREATE", said)
        alerts = await fake.wait_for(lambda: _alerts(fake), what="the crisis alert")
        assert "could NOT reach the patient" in alerts[0] and "50007" in alerts[0]
        assert alerts[0].startswith(f"<@&{fake.moderator_role}> ")  # urgent, with the moderators' mention
        assert not any("emergency" in m["content"] for m in fake.messages.values() if m["author"]["id"] == fake.bot_id
                       and m["channel_id"] != fake.reviewer_channel_id)
    finally:
        await runner.cleanup()
        await service.stop()


# ---------------------------------------------------------------------- Slack


@pytest.fixture
async def slack_fake():
    slack = await FakeSlack().start()
    slack.usergroups[GROUP] = []
    yield slack
    await slack.stop()


async def _slack_crisis(tmp_path, fake: FakeSlack) -> tuple[list[dict], dict]:
    async with running(tmp_path, fake, "http") as (service, runner):
        http = SignedHTTP(fake, runner.url)
        try:
            event = message(CRISIS)
            await http.event(event)
            alerts = await fake.wait_for(lambda: [m for m in fake.channel_messages(REVIEW) if "Crisis case" in m["text"]])
            return alerts, event
        finally:
            await http.close()


async def test_slack_archived_channel_reaches_the_patient_by_dm(tmp_path, slack_fake):
    fake = slack_fake
    fake.refuse(SUPPORT, "is_archived")  # the thread and the channel refuse
    alerts, event = await _slack_crisis(tmp_path, fake)
    dm = fake.channel_messages(fake.dm_of(PATIENT))
    assert any("emergency" in m["text"] for m in dm)
    text = alerts[0]["text"]
    assert "is_archived" in text and "by direct message" in text
    assert f"https://llm4sweat-test.slack.com/archives/{SUPPORT}/p{event['ts'].replace('.', '')}" in text
    assert text.startswith(f":rotating_light: <@{MODERATOR}>")
    channels = [c.args.get("channel") for c in fake.attempts("chat.postMessage") if c.response.get("error")]
    assert channels.count(SUPPORT) >= 2  # the thread, then the channel itself, were tried first


async def test_slack_nowhere_to_post_the_alert_says_the_patient_was_not_reached(tmp_path, slack_fake):
    fake = slack_fake
    fake.refuse(SUPPORT, "not_in_channel")
    fake.refuse(PATIENT, "channel_not_found")
    alerts, _ = await _slack_crisis(tmp_path, fake)
    text = alerts[0]["text"]
    assert "could NOT reach the patient" in text and "not_in_channel" in text and "channel_not_found" in text
    assert text.startswith(f":rotating_light: <@{MODERATOR}>")
