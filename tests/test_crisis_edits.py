"""Edited messages are triaged again (issue 14 item 2): a message edited into a crisis gets the
crisis resources and an urgent alert, once — not again for the same edit seen twice, nor for a
second edit. Slack ``message_changed`` through real slack-bolt, Discord MESSAGE_UPDATE through
real discord.py, against the strict fakes; and the core on the console's platform."""

from __future__ import annotations


import pytest

from bot.inference.fixed import FixedBackend
from bot.platform import IncomingMessage, ViewKind
from bot.service import Service
from bot.settings import load_settings
from tests.discord_fake import FakeDiscord
from tests.recording_platform import RecordingPlatform
from tests.slack_fake import TEAM, FakeSlack

pytestmark = pytest.mark.asyncio(loop_scope="session")

FIRST = "Does iontophoresis help with sweaty hands?"
CRISIS = "Forget it. I can't go on, I want to kill myself tonight"


async def test_the_core_triages_an_edit_and_helps_once(tmp_path):
    service = Service(load_settings(data_dir=tmp_path), FixedBackend())
    platform = RecordingPlatform()
    service.add_platform(platform)
    await service.start(retry_loop=False)
    try:
        first = await service.core.handle_message(IncomingMessage("local", "pat", "console", "pat", FIRST,
                                                                  platform_message_id="m1"))
        assert first.status == "shown"
        calm = await service.core.handle_edit(IncomingMessage("local", "pat", "console", "", FIRST + " (palms)",
                                                              platform_message_id="m1"))
        assert calm.status == "edit_triaged" and not platform.alerts
        for _ in range(2):  # the same edit delivered twice
            await service.core.handle_edit(IncomingMessage("local", "pat", "console", "", CRISIS, platform_message_id="m1"))
        assert [v.kind for _, v, _ in platform.sent].count(ViewKind.CRISIS) == 1
        assert [a["urgent"] for a in platform.alerts] == [True]
        assert await service.db.fetchval("SELECT COUNT(*) FROM incidents WHERE kind = 'crisis'") == 1
    finally:
        await service.stop()


def edits_seen(caplog) -> int:
    """How many crisis edits the core has handled (its log line): the test waits for both."""
    return len([r for r in caplog.records if "was edited into a crisis message" in r.getMessage()])


async def test_discord_an_edit_into_a_crisis_gets_resources_and_an_alert_once(tmp_path, caplog):
    from tests.test_crisis_delivery import _discord

    fake = await FakeDiscord().start()
    fake.patch_library()
    service, runner = await _discord(tmp_path, fake)
    try:
        patient = fake.add_member("sam")
        said = await fake.say(patient, fake.support_id, FIRST)
        thread = said["id"]
        await fake.wait_for(lambda: len(fake.bot_messages(thread)) >= 2, what="the answer")
        await fake.edit_as_user(said["id"], CRISIS)
        await fake.edit_as_user(said["id"], CRISIS + " ")  # edited again: no second case
        await fake.wait_for(lambda: edits_seen(caplog) == 2, what="both edits handled")
        await fake.wait_for(lambda: any("emergency" in m["content"] for m in fake.bot_messages(thread)), what="resources")
        alerts = await fake.wait_for(lambda: [m for m in fake.bot_messages(fake.reviewer_channel_id)
                                              if "Crisis case" in m["content"]], what="the alert")
        assert await service.db.fetchval("SELECT COUNT(*) FROM incidents WHERE kind = 'crisis'") == 1
        assert len([m for m in fake.bot_messages(thread) if "emergency" in m["content"]]) == 1
        assert len(alerts) == 1
    finally:
        await runner.cleanup()
        await service.stop()
        await fake.stop()


async def test_slack_message_changed_into_a_crisis_gets_resources_and_an_alert_once(tmp_path, caplog):
    from tests.test_slack import GROUP, PATIENT, REVIEW, SUPPORT, SignedHTTP, message, running

    fake = await FakeSlack().start()
    fake.usergroups[GROUP] = []
    try:
        async with running(tmp_path, fake, "http") as (service, runner):
            http = SignedHTTP(fake, runner.url)
            try:
                original = message(FIRST)
                await http.event(original)
                await fake.wait_for(lambda: len(fake.thread(SUPPORT, original["ts"])) >= 2)
                changed = {"type": "message", "subtype": "message_changed", "channel": SUPPORT, "hidden": True,
                           "ts": f"{float(original['ts']) + 5:.6f}", "channel_type": "channel", "team": TEAM,
                           "message": {"type": "message", "user": PATIENT, "text": CRISIS, "ts": original["ts"],
                                       "edited": {"user": PATIENT, "ts": "1"}},
                           "previous_message": {"type": "message", "user": PATIENT, "text": FIRST, "ts": original["ts"]}}
                await http.event(changed)
                await http.event(dict(changed))  # the same edit again, under a new event id
                await fake.wait_for(lambda: edits_seen(caplog) == 2)
                await fake.wait_for(lambda: [m for m in fake.thread(SUPPORT, original["ts"]) if "emergency" in m["text"]])
                alerts = await fake.wait_for(lambda: [m for m in fake.channel_messages(REVIEW) if "Crisis case" in m["text"]])
                assert len(alerts) == 1
                assert len([m for m in fake.thread(SUPPORT, original["ts"]) if "emergency" in m["text"]]) == 1
                assert await service.db.fetchval("SELECT COUNT(*) FROM incidents WHERE kind = 'crisis'") == 1
            finally:
                await http.close()
    finally:
        await fake.stop()
