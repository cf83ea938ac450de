"""No lost alert (issue 16 item 3): with the Discord reviewer channel refusing the bot (403,
50013 Missing Permissions), the review card and the urgent crisis alert wait in the outbox,
shown as pending in /status, and are posted once the permission is restored — each once.

Through the real discord.py client against the strict fake (tests/discord_fake.py) and the
service started as ``llm4sweat run`` starts it (its outbox worker included).
"""

from __future__ import annotations

import asyncio

import pytest

from bot.discord_platform import start_discord
from bot.inference.fixed import FixedBackend
from bot.settings import load_settings
from reviewers.models import MODERATOR_ROLE, Actor
from tests.discord_fake import FakeDiscord

pytestmark = pytest.mark.asyncio(loop_scope="session")


@pytest.fixture
async def fake():
    server = await FakeDiscord().start()
    server.patch_library()
    yield server
    await server.stop()


async def test_a_403_on_the_reviewer_channel_ends_with_card_and_alert_posted(tmp_path, fake):
    from bot.service import Service

    settings = load_settings(data_dir=tmp_path, outbox={"retry_base_s": 0.05, "retry_max_s": 0.2}, discord={
        "token": "discord-test-token", "guild_ids": [int(fake.guild_id)], "support_channel_ids": [int(fake.support_id)],
        "reviewer_channel_id": int(fake.reviewer_channel_id), "reviewer_role": "Reviewer",
        "moderator_role": "Moderator", "card_edit_interval_s": 0.01})
    service = Service(settings, FixedBackend(reply="Strong antiperspirants are a usual first step."))
    await service.start()  # with the outbox worker, as in production
    runner = await start_discord(service, guild_ready_timeout=0.05, ready_timeout=15)
    moderator = Actor("local", "mod", "mod", frozenset({MODERATOR_ROLE}))
    try:
        reviewer_channel = fake.reviewer_channel_id
        fake.forbid(rf"/channels/{reviewer_channel}/messages")  # someone took the bot's Send Messages away
        patient = fake.add_member("patient")
        crisis = await fake.say(patient, fake.support_id, "I can't go on, I want to kill myself tonight")
        question = await fake.say(patient, fake.support_id, "Does iontophoresis help sweaty hands?")

        # Patients are answered regardless (crisis resources need no reviewer channel).
        await fake.wait_for(lambda: any("emergency" in m["content"] for m in fake.bot_messages(crisis["id"])),
                            what="crisis resources for the patient")
        await fake.wait_for(lambda: any("antiperspirants" in m["content"] for m in fake.bot_messages(question["id"])),
                            what="the answer for the patient")

        refused = f"/channels/{reviewer_channel}/messages"
        await fake.wait_for(lambda: len([c for c in fake.calls if c.path == refused and c.status == 403]) >= 4,
                            what="the card and the alert retried while refused")
        assert fake.bot_messages(reviewer_channel) == []
        status = await service.commands.status(moderator)
        assert status.data["effects"]["pending"] == 2 and status.data["effects"]["failing"] == 0
        assert "Effects waiting (deliveries, cards, dataset, alerts): 2" in status.text

        fake.allow()  # the permission is restored
        posted = await fake.wait_for(lambda: len(fake.bot_messages(reviewer_channel)) >= 2 and
                                     fake.bot_messages(reviewer_channel), what="the card and the alert")
        cards = [m for m in posted if m["embeds"]]
        alerts = [m for m in posted if not m["embeds"]]
        assert len(cards) == 1 and len(alerts) == 1
        assert "Urgent" in alerts[0]["content"] and f"<@&{fake.moderator_role}>" in alerts[0]["content"]

        async def settled() -> bool:
            return (await service.core.outbox.stats())["pending"] == 0

        deadline = asyncio.get_running_loop().time() + 10
        while not await settled():
            assert asyncio.get_running_loop().time() < deadline, "the outbox never emptied"
            await asyncio.sleep(0.02)
        ref = f"{reviewer_channel}/{cards[0]['id']}"
        assert await service.db.fetchval(
            "SELECT COUNT(*) FROM review_items WHERE json_extract(card_ref, '$.discord') = ?", (ref,)) == 1
        assert len(fake.bot_messages(reviewer_channel)) == 2  # each posted once
    finally:
        await runner.cleanup()
        await service.stop()
