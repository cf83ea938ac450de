"""The Discord platform, tested through the real discord.py against a local fake of Discord.

The bot is a real ``discord.Client`` (gateway WebSocket, REST, interactions, views, modals,
app commands) talking to ``tests.discord_fake.FakeDiscord`` on 127.0.0.1; the service behind
it is the real core, review workflow and database, with a fixed-reply model backend.
"""

from __future__ import annotations

import asyncio
import copy
import json
import logging
import re

import pytest

from bot.core import GATED_TEXT, LABEL_APPROVED, LABEL_EDITED, LABEL_PENDING, NOTICE_PAUSED, WITHDRAWN_TEXT
from bot.discord_platform import DiscordStartError, start_discord
from bot.discord_platform import render
from bot.inference.fixed import FixedBackend
from bot.platform import PatientView, ViewKind
from bot.settings import load_settings
from pipeline import jobs
from tests.discord_fake import EPHEMERAL, FakeDiscord

# Fixtures are async in the session loop (pyproject); the tests must share it with the fake server.
pytestmark = pytest.mark.asyncio(loop_scope="session")

REPLY = "Primary focal hyperhidrosis is common and treatable. Strong antiperspirants are a usual first step."


class Bot:
    """A running service with the Discord platform connected to the fake."""

    def __init__(self, tmp_path, fake: FakeDiscord, reply: str = REPLY, **settings_overrides):
        self.tmp_path = tmp_path
        self.fake = fake
        self.reply = reply
        self.overrides = settings_overrides
        self.service = None
        self.runner = None

    def settings(self):
        fake = self.fake
        discord_cfg = {
            "token": "test-token-not-a-secret",
            "guild_ids": [int(fake.guild_id)],
            "support_channel_ids": [int(fake.support_id)],
            "support_category_ids": [],
            "reviewer_channel_id": int(fake.reviewer_channel_id),
            "reviewer_role": "Reviewer",
            "moderator_role": "Moderator",
            "allow_dms": True,
            "card_edit_interval_s": 0.01,
            "progress_interval_s": 0.02,
        }
        discord_cfg.update(self.overrides.pop("discord", {}))
        return load_settings(data_dir=self.tmp_path, discord=discord_cfg, **self.overrides)

    async def start(self) -> "Bot":
        from bot.service import Service

        self.backend = FixedBackend(reply=self.reply)
        self.service = Service(self.settings(), self.backend)
        await self.service.start(retry_loop=False)
        self.runner = await start_discord(self.service, guild_ready_timeout=0.05, ready_timeout=15)
        self.platform = self.runner.platform
        return self

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()
            self.runner = None
        if self.service is not None:
            await self.service.stop()
            self.service = None

    # -- helpers

    async def ask(self, user_id: str, text: str, channel_id: str | None = None, **kwargs) -> dict:
        """A patient posts in a support channel; returns the thread the bot opened for it, once the
        answer is there and the review card is posted and recorded."""
        cards_before = len(self.fake.bot_messages(self.fake.reviewer_channel_id))
        message = await self.fake.say(user_id, channel_id or self.fake.support_id, text, **kwargs)
        await self.fake.wait_for(lambda: message["id"] in self.fake.threads, what="a thread for the question")
        cards = await self.fake.wait_for(
            lambda: self.fake.bot_messages(self.fake.reviewer_channel_id)[cards_before:], what="a review card")
        await self.item_for_card(cards[0])
        return self.fake.threads[message["id"]]

    async def item_for_card(self, card: dict, timeout: float = 10.0) -> int:
        """The review item a card shows (waits until the core has recorded the card)."""
        ref = f"{self.fake.reviewer_channel_id}/{card['id']}"
        deadline = asyncio.get_running_loop().time() + timeout
        while True:
            item = await self.service.db.fetchval(
                "SELECT id FROM review_items WHERE json_extract(card_ref, '$.discord') = ?", (ref,))
            if item is not None:
                return item
            assert asyncio.get_running_loop().time() < deadline, f"card {card['id']} never recorded"
            await asyncio.sleep(0.01)

    async def settle(self) -> None:
        await self.platform.cards.flush()

    async def rate(self, user_id: str, card: dict, item: int, scores: tuple[int, int, int] = (4, 4, 4)) -> None:
        """The reviewer chooses the three rubric scores on the card (needed to approve or edit)."""
        for criterion, score in zip(("accuracy", "appropriateness", "empathy"), scores):
            rated = await self.fake.select(user_id, card["id"], f"l4s:rate:{criterion}:{item}", [str(score)])
            await self.fake.wait_for(lambda: rated.responses, what=f"{criterion} rating acknowledged")


@pytest.fixture
async def fake():
    server = await FakeDiscord().start()
    server.patch_library()
    yield server
    await server.stop()
    assert not server.late_interactions, "interactions answered after Discord's 3-second deadline"



@pytest.fixture
async def bot(tmp_path, fake):
    harness = await Bot(tmp_path, fake).start()
    yield harness
    await harness.stop()


@pytest.fixture
def people(fake):
    return {
        "patient": fake.add_member("sam"),
        "other": fake.add_member("alex"),
        "reviewer": fake.add_member("dr_lee", roles=("reviewer",)),
        "reviewer2": fake.add_member("dr_kim", roles=("reviewer",)),
        "moderator": fake.add_member("mod_jo", roles=("moderator",)),
    }


def thread_texts(fake: FakeDiscord, thread_id: str) -> list[str]:
    return [m["content"] for m in fake.bot_messages(thread_id)]


def reply_message(fake: FakeDiscord, thread_id: str) -> dict:
    """The bot's answer in a thread (the message carrying a review label)."""
    return next(m for m in fake.bot_messages(thread_id) if "specialist" in m["content"] and "-#" in m["content"])


def custom_ids(message: dict) -> list[str]:
    return [c["custom_id"] for row in message["components"] for c in row["components"]]


# ---------------------------------------------------------------------- start-up


async def test_start_identifies_with_intents_and_syncs_commands_to_guild(bot, fake):
    assert fake.identifies == 1
    import discord

    intents = discord.Intents._from_value(fake.intents)
    assert intents.message_content and intents.guild_messages and intents.dm_messages and intents.guild_reactions
    assert not intents.members and not intents.presences  # no privileged intents beyond message content
    sync = fake.calls_to("PUT", rf"/applications/{fake.app_id}/guilds/{fake.guild_id}/commands")
    assert len(sync) == 1
    names = {c["name"]: c for c in sync[0].body}
    assert set(names) == {"status", "retrain", "promote", "rollback", "eval", "dataset", "pause", "resume", "case",
                          "forget-me"}
    for name in ("status", "retrain", "promote", "rollback", "eval", "dataset", "pause", "resume"):
        assert int(names[name]["default_member_permissions"]) == discord.Permissions(manage_guild=True).value
    assert names["forget-me"]["default_member_permissions"] is None
    assert names["case"]["default_member_permissions"] is None  # reviewers too: the command layer checks roles
    assert [o["name"] for o in names["rollback"]["options"]] == ["version"]
    assert [(o["name"], o["type"], o.get("required", False)) for o in names["retrain"]["options"]] == [("force", 5, False)]
    assert not fake.calls_to("PUT", rf"/applications/{fake.app_id}/commands")  # nothing global


async def test_bad_token_fails_start_with_one_clear_line(tmp_path, fake):
    harness = Bot(tmp_path, fake)
    from bot.service import Service

    service = Service(harness.settings(), FixedBackend())
    await service.start(retry_loop=False)
    original = fake._get_me

    async def unauthorized(call):
        from tests.discord_fake import _json

        return _json({"message": "401: Unauthorized", "code": 0}, 401)

    fake._get_me = unauthorized
    try:
        with pytest.raises(DiscordStartError, match="refused the bot token"):
            await start_discord(service, guild_ready_timeout=0.05, ready_timeout=10)
        assert "discord" not in service.core.platforms
    finally:
        fake._get_me = original
        await service.stop()


async def test_missing_message_content_intent_is_explained(tmp_path, fake):
    from bot.service import Service

    harness = Bot(tmp_path, fake)
    service = Service(harness.settings(), FixedBackend())
    await service.start(retry_loop=False)
    fake.refuse_identify_with = 4014  # what Discord does when a privileged intent is not enabled
    try:
        with pytest.raises(DiscordStartError, match="Message Content intent"):
            await start_discord(service, guild_ready_timeout=0.05, ready_timeout=10)
    finally:
        await service.stop()


# ---------------------------------------------------------------------- patients


async def test_patient_question_gets_thread_typing_reply_and_review_card(bot, fake, people):
    question = await fake.say(people["patient"], fake.support_id, "My hands drip with sweat all day. What is this?")
    await fake.wait_for(lambda: fake.bot_messages(fake.reviewer_channel_id), what="review card")
    thread_id = question["id"]

    # a thread was created from the patient's message, the bot typed there, then answered there
    create = fake.calls_to("POST", rf"/channels/{fake.support_id}/messages/{question['id']}/threads")
    assert len(create) == 1 and create[0].body["name"] == "Question from sam"
    assert fake.threads[thread_id]["parent_id"] == fake.support_id
    paths = [c.path for c in fake.calls if c.method == "POST"]
    typing_at = paths.index(f"/channels/{thread_id}/typing")
    answer_at = max(i for i, p in enumerate(paths) if p == f"/channels/{thread_id}/messages")
    assert typing_at < answer_at
    texts = thread_texts(fake, thread_id)
    assert len(texts) == 2  # first contact: consent notice, then the answer
    assert "stored" in texts[0] and "/forget-me" in texts[0]
    # (issue 12 item 5) the notice says the thread is readable by the channel's members, and asks
    notice = fake.bot_messages(thread_id)[0]
    assert "every member who can see the channel can read it" in notice["content"]
    assert "in the reviewers' channel on Discord" in notice["content"]
    assert custom_ids(notice) == ["l4s:consent:agree", "l4s:consent:decline"]
    assert "also stays on Discord under its own rules" in notice["content"]
    answer = reply_message(fake, thread_id)
    assert answer["content"].startswith(REPLY)
    assert LABEL_PENDING in answer["content"] and bot.service.pack.disclaimer.split(".")[0] in answer["content"]
    assert answer["content"].count("\n-# ") == 1  # label and disclaimer in one small line
    assert not fake.bot_messages(fake.support_id)  # nothing posted in the channel itself

    card = fake.bot_messages(fake.reviewer_channel_id)[0]
    item_id = await bot.item_for_card(card)
    embed = card["embeds"][0]
    assert embed["title"].startswith(f"Review #{item_id}")
    assert REPLY in embed["description"]
    fields = {f["name"]: f["value"] for f in embed["fields"]}
    assert fields["Patient asked"] == "My hands drip with sweat all day. What is this?"
    assert fields["Adapter"] == "base model" and fields["Risk flags"] == "none" and "Task" in fields
    assert custom_ids(card) == [f"l4s:approve:{item_id}", f"l4s:edit:{item_id}", f"l4s:reject:{item_id}",
                                f"l4s:rate:accuracy:{item_id}", f"l4s:rate:appropriateness:{item_id}",
                                f"l4s:rate:empathy:{item_id}"]
    stored = await bot.service.db.fetchone("SELECT platform, channel_id, thread_id FROM conversations")
    assert tuple(stored) == ("discord", fake.support_id, thread_id)


async def test_follow_up_in_thread_continues_the_conversation(bot, fake, people):
    thread = await bot.ask(people["patient"], "Why do my palms sweat so much?")
    await fake.say(people["patient"], thread["id"], "And does it get better with age?")
    await fake.wait_for(lambda: len(fake.bot_messages(fake.reviewer_channel_id)) == 2, what="second card")
    assert len(fake.threads) == 1  # no second thread
    assert len(thread_texts(fake, thread["id"])) == 3  # consent, answer, answer
    assert await bot.service.db.fetchval("SELECT COUNT(*) FROM conversations") == 1
    prompt = bot.backend.calls[-1]
    assert any(m["role"] == "user" and "palms" in m["content"] for m in prompt[:-1])  # history kept

    # someone else writing in the patient's thread is not answered as the patient
    await fake.say(people["other"], thread["id"], "I have the same sweaty palms.")
    await fake.say(people["patient"], thread["id"], "And on the feet?")  # handled after it
    await fake.wait_for(lambda: len(bot.backend.calls) == 3, what="the patient's next follow-up answered")
    assert bot.backend.calls[-1][-1]["content"] == "And on the feet?"
    assert not any("same sweaty palms" in m["content"] for call in bot.backend.calls for m in call)
    assert await bot.service.db.fetchval("SELECT COUNT(*) FROM messages") == 3


async def test_follow_up_in_thread_after_restart_finds_the_patient(tmp_path, fake, people):
    first = await Bot(tmp_path, fake).start()
    try:
        thread = await first.ask(people["patient"], "Do antiperspirants help with sweaty palms?")
    finally:
        await first.stop()
    # the thread went quiet and was archived: it is not in GUILD_CREATE; the patient's message
    # unarchives it (THREAD_UPDATE), and the bot must look up who started it
    await fake.archive_thread(thread["id"])
    second = await Bot(tmp_path, fake).start()
    try:
        assert second.platform.client.get_channel(int(thread["id"])) is None
        await fake.say(people["patient"], thread["id"], "Mostly my palms, actually. What helps for those?")
        await fake.wait_for(lambda: len(fake.bot_messages(fake.reviewer_channel_id)) == 2, what="second card")
        assert await second.service.db.fetchval("SELECT COUNT(*) FROM conversations") == 1
        assert fake.calls_to("GET", rf"/channels/{fake.support_id}/messages/{thread['id']}")  # who started it
        assert len(thread_texts(fake, thread["id"])) == 3
    finally:
        await second.stop()


async def test_no_thread_possible_answers_in_place_as_a_reply(bot, fake, people):
    fake.deny_threads = True
    question = await fake.say(people["patient"], fake.support_id, "Can I use antiperspirant on my hands?")
    await fake.wait_for(lambda: fake.bot_messages(fake.reviewer_channel_id), what="review card")
    replies = fake.bot_messages(fake.support_id)
    assert replies and all(m["message_reference"]["message_id"] == question["id"]
                           for m in replies[:1])
    posted = fake.calls_to("POST", rf"/channels/{fake.support_id}/messages")
    assert posted[0].body["allowed_mentions"] == {"parse": [], "replied_user": True}
    assert any(REPLY in m["content"] for m in replies)


async def test_mention_in_a_threadless_channel_is_answered_and_chatter_is_not(bot, fake, people):
    bot.platform.cfg.support_category_ids.append(int(fake.category_id))
    await fake.say(people["patient"], fake.voice_id, "just chatting in voice text")
    mention = await fake.say(people["patient"], fake.voice_id, "does botox help?", mention_bot=True)
    await fake.wait_for(lambda: any(REPLY in m["content"] for m in fake.bot_messages(fake.voice_id)),
                        what="an answer in the voice channel's chat")
    assert len(bot.backend.calls) == 1  # the chatter before the mention was passed over
    assert bot.backend.calls[-1][-1]["content"] == "does botox help?"  # our mention is not sent to the model
    assert fake.bot_messages(fake.voice_id)[0]["message_reference"]["message_id"] == mention["id"]

    # a reply to the bot's message counts as addressing it
    answer = next(m for m in fake.bot_messages(fake.voice_id) if REPLY in m["content"])
    await fake.say(people["patient"], fake.voice_id, "thanks, and for feet?", reply_to=answer["id"])
    await fake.wait_for(lambda: len(bot.backend.calls) == 2, what="second answer")


async def test_category_channels_are_support_channels(tmp_path, fake, people):
    harness = await Bot(tmp_path, fake, discord={"support_channel_ids": [],
                                                "support_category_ids": [int(fake.category_id)]}).start()
    try:
        thread = await harness.ask(people["patient"], "Is excessive sweating of the palms hereditary?", channel_id=fake.category_channel_id)
        assert thread["parent_id"] == fake.category_channel_id
        await fake.say(people["patient"], fake.mods_channel_id, "not a support channel")
        await harness.ask(people["other"], "Does botox help sweaty feet?", channel_id=fake.category_channel_id)
        assert len(harness.backend.calls) == 2  # the message before it, outside support, was passed over
    finally:
        await harness.stop()


async def test_direct_messages_when_allowed(bot, fake, people):
    dm = fake.dm_channel(people["patient"])
    await fake.say(people["patient"], dm, "Private question: is iontophoresis safe?")
    await fake.wait_for(lambda: any(REPLY in m["content"] for m in fake.bot_messages(dm)), what="DM answer")
    conv = await bot.service.db.fetchone("SELECT channel_id, thread_id FROM conversations")
    assert tuple(conv) == (dm, dm)
    notice = fake.bot_messages(dm)[0]["content"]  # a DM is said to be private, not a public thread
    assert "only you and this bot: this is a direct message" in notice and "every member" not in notice


async def test_dm_is_one_conversation_and_new_conversation_starts_afresh(bot, fake, people):
    dm = fake.dm_channel(people["patient"])
    await fake.say(people["patient"], dm, "My palms sweat a lot, what can I do?")
    await fake.wait_for(lambda: any(REPLY in m["content"] for m in fake.bot_messages(dm)), what="the first answer")
    assert "new conversation" in fake.bot_messages(dm)[0]["content"]  # told in the first-contact notice
    await fake.say(people["patient"], dm, "And is iontophoresis safe?")
    await fake.wait_for(lambda: len(bot.backend.calls) == 2, what="the second answer")
    assert any("palms sweat" in m["content"] for m in bot.backend.calls[-1] if m["role"] == "user")
    await fake.say(people["patient"], dm, "new conversation")
    await fake.wait_for(lambda: any("new conversation starts" in m["content"] for m in fake.bot_messages(dm)),
                        what="the fresh start confirmed")
    await fake.say(people["patient"], dm, "Does botox help for feet?")
    await fake.wait_for(lambda: len(bot.backend.calls) == 3, what="the third answer")
    assert not any("palms sweat" in m["content"] for m in bot.backend.calls[-1] if m["role"] == "user")
    rows = await bot.service.db.fetchall("SELECT channel_id, thread_id FROM conversations ORDER BY id")
    assert [r["channel_id"] for r in rows] == [dm, dm] and rows[0]["thread_id"] == dm
    assert rows[1]["thread_id"].startswith("dm:")
    assert all(m["channel_id"] == dm for m in fake.bot_messages(dm)) and not fake.threads


async def test_bot_ignores_bots_and_the_reviewer_channel(tmp_path, fake, people):
    """Another app's bot posting in a support channel, and reviewers talking in their channel —
    even when it sits in a support category — get no answer; a patient's question posted after
    them is the only one answered (the events are handled in order, so once it is answered the
    earlier ones have been passed over)."""
    fake.channels[fake.reviewer_channel_id]["parent_id"] = fake.category_id  # reviewers inside "Support"
    harness = await Bot(tmp_path, fake, discord={"support_category_ids": [int(fake.category_id)]}).start()
    try:
        other_bot = fake.add_member("helper-bot", bot=True)
        await fake.say(other_bot, fake.support_id, "Daily reminder: drink water!")
        await fake.say(people["reviewer"], fake.reviewer_channel_id, "hello team, does anyone know about botox?")
        thread = await harness.ask(people["patient"], "Does botox help sweaty underarms?")
        assert len(harness.backend.calls) == 1
        assert [t["id"] for t in fake.threads.values()] == [thread["id"]]
        assert await harness.service.db.fetchval("SELECT COUNT(*) FROM messages") == 1
    finally:
        await harness.stop()


async def test_longest_message_a_member_can_send(tmp_path, fake, people):
    """Discord lets a member (with Nitro) send 4,000 characters; with a prompt limit below that the
    patient is told only the first part was read, and everything is stored."""
    words = ("sweat " * 700).strip()[:4000]
    assert len(words) == 4000
    harness = await Bot(tmp_path, fake, prompt={"max_message_chars": 1000}).start()
    try:
        thread = await harness.ask(people["patient"], words)
        texts = thread_texts(fake, thread["id"])
        assert any("very long" in t for t in texts)  # told that only the first part was read
        assert all(len(t) <= 2000 for t in texts)
        stored = await harness.service.db.fetchval("SELECT length(text) FROM messages")
        assert stored == len(words)  # everything they wrote is kept
        card = fake.bot_messages(fake.reviewer_channel_id)[0]["embeds"][0]
        assert sum(len(f["value"]) for f in card["fields"]) + len(card["description"]) <= 6000
    finally:
        await harness.stop()


async def test_reply_of_20000_characters_is_split_cleanly_and_updated_in_place(tmp_path, fake, people):
    paragraphs = [f"Paragraph {i}: " + " ".join(f"word{i}x{j}" for j in range(120)) for i in range(25)]
    long_reply = "\n\n".join(paragraphs) + "\n\n```text\n" + "code line\n" * 300 + "```"
    assert len(long_reply) > 20_000
    harness = await Bot(tmp_path, fake, reply=long_reply).start()
    try:
        thread = await harness.ask(people["patient"], "What treatments are there for sweaty hands?")
        parts = fake.bot_messages(thread["id"])[1:]  # after the consent notice
        assert len(parts) >= 11
        assert all(len(p["content"]) <= 2000 for p in parts)
        assert all("-#" not in p["content"] for p in parts[:-1]) and LABEL_PENDING in parts[-1]["content"]
        assert all(p["content"].count("```") % 2 == 0 for p in parts)  # fences closed in every part
        body = " ".join(p["content"].split("\n\n-# ")[0] for p in parts)
        original_words = [w for w in long_reply.split() if w != "```" and not w.startswith("```")]
        rebuilt_words = [w for w in body.split() if w != "```" and not w.startswith("```")]
        assert rebuilt_words == original_words  # nothing lost, no word cut in two

        card = fake.bot_messages(fake.reviewer_channel_id)[0]
        assert len(card["embeds"][0]["description"]) <= 4096
        item = await harness.item_for_card(card)
        await harness.rate(people["reviewer"], card, item)
        await fake.click(people["reviewer"], card["id"], f"l4s:approve:{item}")
        await fake.wait_for(lambda: LABEL_APPROVED in fake.messages[parts[-1]["id"]]["content"],
                            what="the last part relabelled")
        assert all(p["id"] in fake.messages for p in parts)  # edited in place, none deleted
    finally:
        await harness.stop()


async def test_crisis_message_gets_resources_and_an_urgent_alert(bot, fake, people):
    question = await fake.say(people["patient"], fake.support_id, "I want to die, I can't take this sweating anymore")
    await fake.wait_for(lambda: any("Urgent" in m["content"] for m in fake.bot_messages(fake.reviewer_channel_id)),
                        what="urgent alert")
    assert not bot.backend.calls  # the model is not asked
    crisis = fake.bot_messages(question["id"])[-1]["content"]
    assert crisis == bot.service.pack.crisis_message(None)[:2000] or crisis.startswith(bot.service.pack.crisis_message(None)[:50])
    alert = next(m for m in fake.bot_messages(fake.reviewer_channel_id) if "Urgent" in m["content"])
    assert alert["content"].startswith(f"<@&{fake.moderator_role}>")
    body = next(c.body for c in fake.calls_to("POST", rf"/channels/{fake.reviewer_channel_id}/messages")
                if "Urgent" in (c.body or {}).get("content", ""))
    assert body["allowed_mentions"] == {"parse": [], "roles": [int(fake.moderator_role)]}


# ---------------------------------------------------------------------- consent (issue 12 item 5)


async def consent_state(bot, user_id: str) -> str:
    from bot.consent import state

    row = await bot.service.db.fetchone(
        "SELECT consent, consent_at, consent_asked_at FROM patients WHERE platform = 'discord' AND platform_user_id = ?",
        (user_id,))
    return state(row)


async def test_consent_by_button_and_by_words_in_the_thread(bot, fake, people):
    from bot.consent import CONFIRM_AGREE, CONFIRM_DECLINE, NOT_THE_PATIENT
    from pipeline import dataset

    thread = await bot.ask(people["patient"], "Is sweating at night normal?")
    notice = fake.bot_messages(thread["id"])[0]
    assert await consent_state(bot, people["patient"]) == "asked"
    # another member of the public thread presses "I agree": it counts for nobody
    other = await fake.click(people["other"], notice["id"], "l4s:consent:agree")
    await fake.wait_for(lambda: other.responses, what="the answer to the other member")
    assert other.responses[0]["data"]["flags"] == EPHEMERAL and other.text == NOT_THE_PATIENT
    assert await consent_state(bot, people["other"]) == "not_asked"
    # the patient presses "I agree": told privately; the reviewed answer now trains
    agree = await fake.click(people["patient"], notice["id"], "l4s:consent:agree")
    await fake.wait_for(lambda: agree.responses, what="the confirmation")
    assert agree.responses[0]["data"]["flags"] == EPHEMERAL and agree.text == CONFIRM_AGREE
    assert await consent_state(bot, people["patient"]) == "agreed"
    card = fake.bot_messages(fake.reviewer_channel_id)[0]
    item = await bot.item_for_card(card)
    await bot.rate(people["reviewer"], card, item)
    await fake.click(people["reviewer"], card["id"], f"l4s:approve:{item}")
    await fake.wait_for(lambda: LABEL_APPROVED in reply_message(fake, thread["id"])["content"], what="approval")
    expert = [e for e in await dataset.examples(bot.service.db) if e["source"] == "expert_approved"]
    assert len(expert) == 1
    # then says no in words, in the thread: confirmed there, out of training, still answered
    await fake.say(people["patient"], thread["id"], "I do not agree")
    await fake.wait_for(lambda: CONFIRM_DECLINE in thread_texts(fake, thread["id"]), what="the decline confirmed")
    assert await consent_state(bot, people["patient"]) == "declined"
    assert [e for e in await dataset.examples(bot.service.db) if e["source"] == "expert_approved"] == []
    assert len(bot.backend.calls) == 1  # the words were not a question for the model
    await fake.say(people["patient"], thread["id"], "Does it get better in winter?")
    await fake.wait_for(lambda: len(bot.backend.calls) == 2, what="still answered after saying no")


# ---------------------------------------------------------------------- reviewers


async def test_approve_with_rubric_reaches_the_patient(bot, fake, people):
    thread = await bot.ask(people["patient"], "Is hyperhidrosis dangerous?")
    card = fake.bot_messages(fake.reviewer_channel_id)[0]
    item = await bot.item_for_card(card)

    rated = await fake.select(people["reviewer"], card["id"], f"l4s:rate:accuracy:{item}", ["5"])
    await fake.wait_for(lambda: rated.responses, what="rating acknowledged")
    assert rated.responses[0]["data"]["flags"] == EPHEMERAL and "Accuracy: 5" in rated.text
    rated = await fake.select(people["reviewer"], card["id"], f"l4s:rate:empathy:{item}", ["4"])
    await fake.wait_for(lambda: rated.responses, what="rating acknowledged")

    # (issue 11 item 5) one score missing: refused, privately, saying which; nothing recorded
    refused = await fake.click(people["reviewer"], card["id"], f"l4s:approve:{item}")
    await fake.wait_for(lambda: refused.followups, what="refusal")
    assert refused.followups[0]["flags"] == EPHEMERAL and "missing: appropriateness" in refused.text
    assert await bot.service.db.fetchval("SELECT COUNT(*) FROM review_decisions") == 0
    assert LABEL_PENDING in reply_message(fake, thread["id"])["content"]
    rated = await fake.select(people["reviewer"], card["id"], f"l4s:rate:appropriateness:{item}", ["3"])
    await fake.wait_for(lambda: rated.responses, what="rating acknowledged")

    click = await fake.click(people["reviewer"], card["id"], f"l4s:approve:{item}")
    await fake.wait_for(lambda: click.followups, what="confirmation")
    assert click.responses[0]["type"] == 5 and click.responses[0]["data"]["flags"] == EPHEMERAL  # deferred
    assert click.followups[0]["flags"] == EPHEMERAL and "approved" in click.text

    answer = reply_message(fake, thread["id"])
    assert LABEL_APPROVED in answer["content"] and answer["content"].startswith(REPLY)
    assert answer["edited_timestamp"] is not None  # edited in place, not reposted
    await bot.settle()
    card_now = fake.messages[card["id"]]
    assert card_now["embeds"][0]["fields"][-1]["name"] == "State: approved"
    assert "dr_lee: approve" in card_now["embeds"][0]["fields"][-1]["value"]
    assert card_now["components"] == []  # a closed card has no buttons
    decision = await bot.service.db.fetchone("SELECT reviewer_id, accuracy, empathy, appropriateness FROM review_decisions")
    assert tuple(decision) == (people["reviewer"], 5, 4, 3)
    example = await bot.service.db.fetchone("SELECT source FROM dataset_examples WHERE review_item_id = ?", (item,))
    assert example["source"] == "expert_approved"


async def test_edit_opens_prefilled_modal_and_publishes_the_edit(bot, fake, people):
    thread = await bot.ask(people["patient"], "Can I stop sweating forever?")
    card = fake.bot_messages(fake.reviewer_channel_id)[0]
    item = await bot.item_for_card(card)

    # (issue 11 item 5) no scores yet: the form does not open (nothing typed is lost), the reviewer is told
    early = await fake.click(people["reviewer"], card["id"], f"l4s:edit:{item}")
    await fake.wait_for(lambda: early.responses, what="refusal")
    assert early.modal is None and "An edit needs all three rubric scores" in early.text
    await bot.rate(people["reviewer"], card, item, (2, 4, 5))
    opened = await fake.click(people["reviewer"], card["id"], f"l4s:edit:{item}")
    await fake.wait_for(lambda: opened.responses, what="modal")
    modal = opened.modal
    assert modal is not None and modal["custom_id"] == f"l4s:editform:{item}/245"  # the scores travel with the form
    text_input = modal["components"][0]["component"]
    assert text_input["style"] == 2 and text_input["max_length"] == 4000  # paragraph, up to 4,000 characters
    assert text_input["value"] == REPLY  # prefilled with the reply

    edited = "There is no permanent cure, but treatments work well. Please talk to a dermatologist."
    submitted = await fake.submit_modal(people["reviewer"], opened, {render.EDIT_TEXT_ID: edited})
    await fake.wait_for(lambda: submitted.followups, what="confirmation")
    assert submitted.responses[0]["type"] == 5 and submitted.followups[0]["flags"] == EPHEMERAL
    assert "edited" in submitted.text

    answer = fake.messages[reply_message(fake, thread["id"])["id"]]
    assert answer["content"].startswith(edited) and LABEL_EDITED in answer["content"]
    await bot.settle()
    assert "State: edited" in json.dumps(fake.messages[card["id"]]["embeds"])
    example = await bot.service.db.fetchone("SELECT source, messages FROM dataset_examples WHERE review_item_id = ?",
                                            (item,))
    assert example["source"] == "expert_edited" and edited in example["messages"]


async def test_modal_opened_before_a_restart_still_submits(tmp_path, fake, people):
    first = await Bot(tmp_path, fake).start()
    try:
        thread = await first.ask(people["patient"], "Does sweating cause smell?")
        card = fake.bot_messages(fake.reviewer_channel_id)[0]
        item = await first.item_for_card(card)
        await first.rate(people["reviewer"], card, item)
        opened = await fake.click(people["reviewer"], card["id"], f"l4s:edit:{item}")
        await fake.wait_for(lambda: opened.responses, what="modal")
    finally:
        await first.stop()
    second = await Bot(tmp_path, fake).start()
    try:
        submitted = await fake.submit_modal(people["reviewer"], opened, {render.EDIT_TEXT_ID: "Edited after restart."})
        await fake.wait_for(lambda: submitted.followups, what="confirmation")
        answer = fake.messages[reply_message(fake, thread["id"])["id"]]
        assert answer["content"].startswith("Edited after restart.")
    finally:
        await second.stop()


async def test_reject_replaces_the_reply_with_a_holding_message(bot, fake, people):
    thread = await bot.ask(people["patient"], "Should I take pills for sweating?")
    card = fake.bot_messages(fake.reviewer_channel_id)[0]
    item = await bot.item_for_card(card)
    answer_id = reply_message(fake, thread["id"])["id"]
    click = await fake.click(people["reviewer"], card["id"], f"l4s:reject:{item}")
    await fake.wait_for(lambda: click.followups, what="confirmation")
    assert "rejected" in click.text and click.followups[0]["flags"] == EPHEMERAL
    assert fake.messages[answer_id]["content"] == WITHDRAWN_TEXT
    assert REPLY not in " ".join(thread_texts(fake, thread["id"]))
    assert await bot.service.db.fetchval("SELECT COUNT(*) FROM dataset_examples WHERE review_item_id = ?", (item,)) == 0


async def test_reactions_on_the_card_approve_and_reject(bot, fake, people):
    first = await bot.ask(people["patient"], "What is primary hyperhidrosis?")
    second = await bot.ask(people["other"], "What is secondary hyperhidrosis?")
    card1, card2 = fake.bot_messages(fake.reviewer_channel_id)
    item1 = await bot.item_for_card(card1)
    # (issue 11 item 5) ✅ without scores: taken off, and the reviewer is told why in a DM
    await fake.react(people["reviewer"], fake.reviewer_channel_id, card1["id"], render.APPROVE_EMOJI)
    await fake.wait_for(lambda: any(r[0] == "remove" for r in fake.reactions), what="reaction removed")
    dm = await fake.wait_for(lambda: fake.bot_messages(fake.dm_channel(people["reviewer"])), what="a DM to the reviewer")
    assert f"Review item {item1}" in dm[0]["content"] and "rubric scores" in dm[0]["content"]
    assert (await bot.service.reviews.item(item1))["state"] == "pending"
    await bot.rate(people["reviewer"], card1, item1)
    await fake.react(people["reviewer"], fake.reviewer_channel_id, card1["id"], render.APPROVE_EMOJI)
    await fake.react(people["reviewer"], fake.reviewer_channel_id, card2["id"], render.REJECT_EMOJI)
    await fake.wait_for(lambda: LABEL_APPROVED in reply_message(fake, first["id"])["content"], what="approval")
    await fake.wait_for(lambda: WITHDRAWN_TEXT in thread_texts(fake, second["id"]), what="rejection")


async def test_non_reviewer_is_refused_everywhere(bot, fake, people, caplog):
    caplog.set_level(logging.WARNING)
    thread = await bot.ask(people["patient"], "Is it bad to sweat a lot?")
    card = fake.bot_messages(fake.reviewer_channel_id)[0]
    item = await bot.item_for_card(card)
    before = len(fake.calls_to("PATCH", r"/channels/\d+/messages/\d+"))

    click = await fake.click(people["patient"], card["id"], f"l4s:approve:{item}")
    await fake.wait_for(lambda: click.followups, what="refusal")
    assert "reviewer role" in click.text and click.followups[0]["flags"] == EPHEMERAL

    edit = await fake.click(people["moderator"], card["id"], f"l4s:edit:{item}")
    await fake.wait_for(lambda: edit.responses, what="refusal")
    assert edit.modal is None and "reviewer role" in edit.text and edit.responses[0]["data"]["flags"] == EPHEMERAL

    rate = await fake.select(people["other"], card["id"], f"l4s:rate:accuracy:{item}", ["1"])
    await fake.wait_for(lambda: rate.responses, what="refusal")
    assert "reviewer role" in rate.text

    await fake.react(people["other"], fake.reviewer_channel_id, card["id"], render.APPROVE_EMOJI)
    await fake.wait_for(lambda: any(r[0] == "remove" for r in fake.reactions), what="reaction removed")
    assert ("remove", card["id"], render.APPROVE_EMOJI, people["other"]) in [
        (op, mid, __import__("urllib.parse").parse.unquote(e), u) for op, mid, e, u in fake.reactions]

    assert (await bot.service.reviews.item(item))["state"] == "pending"
    assert LABEL_PENDING in reply_message(fake, thread["id"])["content"]
    assert len(fake.calls_to("PATCH", r"/channels/\d+/messages/\d+")) == before  # nothing edited
    refused = await bot.service.db.fetchval("SELECT COUNT(*) FROM review_audit WHERE action = 'refused'")
    assert refused == 4
    assert any("refused" in r.getMessage() for r in caplog.records)


async def test_second_decision_on_a_closed_item_changes_nothing(bot, fake, people):
    await bot.ask(people["patient"], "Do I need to see a doctor?")
    card = fake.bot_messages(fake.reviewer_channel_id)[0]
    item = await bot.item_for_card(card)
    card_before = copy.deepcopy(card)
    await bot.rate(people["reviewer"], card, item)
    first = await fake.click(people["reviewer"], card["id"], f"l4s:approve:{item}")
    await fake.wait_for(lambda: first.followups, what="first")
    await bot.settle()
    assert fake.messages[card["id"]]["components"] == []
    # a second reviewer still has the old card (with buttons) on screen and clicks Reject
    fake.messages[card["id"]] = card_before
    second = await fake.click(people["reviewer2"], card["id"], f"l4s:reject:{item}")
    await fake.wait_for(lambda: second.followups, what="second")
    assert "already approved" in second.text
    assert (await bot.service.reviews.item(item))["state"] == "approved"


async def test_an_internal_error_still_answers_the_reviewer(bot, fake, people, monkeypatch, caplog):
    await bot.ask(people["patient"], "Can sweaty palms be cured?")
    card = fake.bot_messages(fake.reviewer_channel_id)[0]
    item = await bot.item_for_card(card)

    async def broken(*args, **kwargs):
        raise RuntimeError("database is on fire")

    monkeypatch.setattr(bot.service.core, "decide", broken)
    await bot.rate(people["reviewer"], card, item)
    click = await fake.click(people["reviewer"], card["id"], f"l4s:approve:{item}")
    await fake.wait_for(lambda: click.followups, what="an answer despite the error")
    assert "error on our side" in click.text and click.followups[0]["flags"] == EPHEMERAL
    assert "database is on fire" not in click.text
    assert any("failed" in r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR)


async def test_quorum_of_two_keeps_the_card_open_until_the_second_reviewer(tmp_path, fake, people):
    harness = await Bot(tmp_path, fake, review={"quorum": 2}).start()
    try:
        thread = await harness.ask(people["patient"], "Are sweaty feet part of the same condition?")
        card = fake.bot_messages(fake.reviewer_channel_id)[0]
        item = await harness.item_for_card(card)
        await harness.rate(people["reviewer"], card, item)
        first = await fake.click(people["reviewer"], card["id"], f"l4s:approve:{item}")
        await fake.wait_for(lambda: first.followups, what="first confirmation")
        assert "1 of 2" in first.text
        await harness.settle()
        shown = fake.messages[card["id"]]
        assert "dr_lee: approve" in json.dumps(shown["embeds"]) and shown["components"]  # still open
        assert LABEL_PENDING in reply_message(fake, thread["id"])["content"]
        await harness.rate(people["reviewer2"], card, item)
        second = await fake.click(people["reviewer2"], card["id"], f"l4s:approve:{item}")
        await fake.wait_for(lambda: second.followups, what="second confirmation")
        assert "approved" in second.text
        assert LABEL_APPROVED in reply_message(fake, thread["id"])["content"]
        await harness.settle()
        assert fake.messages[card["id"]]["components"] == []
    finally:
        await harness.stop()


async def test_gated_mode_patient_sees_review_notice_that_becomes_the_answer(tmp_path, fake, people):
    harness = await Bot(tmp_path, fake, review={"mode": "gated"}).start()
    try:
        thread = await harness.ask(people["patient"], "How do I treat sweaty feet?")
        notice = fake.bot_messages(thread["id"])[-1]
        assert notice["content"].startswith(GATED_TEXT) and REPLY not in notice["content"]
        card = fake.bot_messages(fake.reviewer_channel_id)[0]
        item = await harness.item_for_card(card)
        await harness.rate(people["reviewer"], card, item)
        click = await fake.click(people["reviewer"], card["id"], f"l4s:approve:{item}")
        await fake.wait_for(lambda: click.followups, what="confirmation")
        now = fake.messages[notice["id"]]["content"]
        assert now.startswith(REPLY) and LABEL_APPROVED in now
    finally:
        await harness.stop()


async def test_cards_keep_working_after_a_restart(tmp_path, fake, people):
    first = await Bot(tmp_path, fake).start()
    try:
        thread1 = await first.ask(people["patient"], "Can children have hyperhidrosis?")
        thread2 = await first.ask(people["other"], "Does coffee make sweating worse?")
        card1, card2 = fake.bot_messages(fake.reviewer_channel_id)
        item1 = await first.item_for_card(card1)
    finally:
        await first.stop()

    second = await Bot(tmp_path, fake).start()  # a new process: nothing in memory about the cards
    try:
        assert fake.identifies == 2
        await second.rate(people["reviewer"], card1, item1)
        click = await fake.click(people["reviewer"], card1["id"], f"l4s:approve:{item1}")
        await fake.wait_for(lambda: click.followups, what="confirmation")
        assert "approved" in click.text
        await fake.wait_for(lambda: LABEL_APPROVED in reply_message(fake, thread1["id"])["content"], what="approval")
        await fake.react(people["reviewer"], fake.reviewer_channel_id, card2["id"], render.REJECT_EMOJI)
        await fake.wait_for(lambda: WITHDRAWN_TEXT in thread_texts(fake, thread2["id"]), what="rejection")
    finally:
        await second.stop()


async def test_card_edits_are_throttled_and_coalesced(tmp_path, fake, people):
    harness = await Bot(tmp_path, fake, discord={"card_edit_interval_s": 0.15}).start()
    try:
        await harness.ask(people["patient"], "Which antiperspirant works for underarm sweating?")
        card_msg = fake.bot_messages(fake.reviewer_channel_id)[0]
        item = await harness.item_for_card(card_msg)
        card = await harness.service.core.review_card(item)
        card.card_ref = f"{fake.reviewer_channel_id}/{card_msg['id']}"
        path = rf"/channels/{fake.reviewer_channel_id}/messages/{card_msg['id']}"
        for i in range(10):
            card.decided_by = [f"reviewer {i}: approve"]
            await harness.platform.update_review_card(card)
            await asyncio.sleep(0.01)
        await harness.settle()
        edits = fake.calls_to("PATCH", path)
        assert 1 <= len(edits) <= 3  # ten updates, at most a few edits
        assert "reviewer 9" in json.dumps(fake.messages[card_msg["id"]]["embeds"])  # the newest state won
        assert harness.platform.cards.coalesced >= 7
    finally:
        await harness.stop()


# ---------------------------------------------------------------------- moderators


async def run_slash(fake: FakeDiscord, user: str, name: str, **options) -> object:
    interaction = await fake.slash(user, name, options or None)
    await fake.wait_for(lambda: interaction.followups, what=f"/{name} answer")
    assert interaction.responses[0]["type"] == 5 and interaction.responses[0]["data"]["flags"] == EPHEMERAL
    assert all(m["flags"] == EPHEMERAL for m in interaction.followups)
    return interaction


async def test_each_moderator_command(bot, fake, people, monkeypatch):
    mod = people["moderator"]
    status = await run_slash(fake, mod, "status")
    assert "Model: fixed-model" in status.text and "Review queue" in status.text and "Last job" in status.text

    dataset = await run_slash(fake, mod, "dataset")
    assert f"Dataset: {len(bot.service.pack.seeds)} examples" in dataset.text

    evaluation = await run_slash(fake, mod, "eval")
    assert "No evaluation has been run yet." in evaluation.text

    rollback = await run_slash(fake, mod, "rollback")
    assert "nothing to roll back" in rollback.text
    rollback = await run_slash(fake, mod, "rollback", version="v-does-not-exist")
    assert "v-does-not-exist" in rollback.text

    async def fake_retrain(job_id: int) -> None:  # the real job trains a model; here it reports progress
        db = bot.service.db
        await jobs.start(db, job_id)
        for step, fraction, phase in (("exporting the dataset snapshot", None, None),
                                      ("training v2: step 5/10", 0.5, "training"),
                                      ("evaluating v2: questions 30/40", 0.75, "evaluating")):
            await jobs.progress(db, job_id, step, fraction, phase)
            await fake.wait_for(lambda: any(step in m["content"] for m in fake.bot_messages(fake.mods_channel_id)),
                                what=f"progress message shows {step!r}")
        await jobs.finish(db, job_id, "succeeded", result={"version": "v2"})

    monkeypatch.setattr(bot.service, "start_retrain",
                        lambda job_id: bot.platform._spawn(fake_retrain(job_id), "test-retrain"))
    retrain = await run_slash(fake, mod, "retrain")
    assert "Retraining job #" in retrain.text
    progress = await fake.wait_for(
        lambda: [m for m in fake.bot_messages(fake.mods_channel_id) if "succeeded" in m["content"]],
        what="progress message finished")
    assert len(fake.bot_messages(fake.mods_channel_id)) == 1  # one message, edited as the job went on
    edits = fake.calls_to("PATCH", rf"/channels/{fake.mods_channel_id}/messages/{progress[0]['id']}")
    assert len(edits) >= 2
    shown = [c.body["content"] for c in edits]  # with a bar while it runs
    assert any("training: ▓▓▓▓▓▓▓▓▓▓░░░░░░░░░░ 50%" in t for t in shown), shown
    assert "▓" not in progress[0]["content"]  # finished: no bar, the outcome
    again = await run_slash(fake, mod, "retrain")
    assert "Retraining job #" in again.text

    paused = await run_slash(fake, mod, "pause")
    assert "paused" in paused.text
    question = await fake.say(people["patient"], fake.support_id, "How do I treat sweaty hands?")
    await fake.wait_for(lambda: any(NOTICE_PAUSED in t for t in thread_texts(fake, question["id"])),
                        what="paused notice")
    assert not bot.backend.calls
    resumed = await run_slash(fake, mod, "resume")
    assert "1 saved message(s) answered" in resumed.text
    await fake.wait_for(lambda: any(REPLY in t for t in thread_texts(fake, question["id"])), what="late answer")


async def test_patient_trying_a_moderator_command_is_refused(bot, fake, people):
    for name in ("status", "pause", "retrain"):
        interaction = await run_slash(fake, people["patient"], name)
        assert "Only moderators" in interaction.text
    assert not await bot.service.core.is_paused()
    refused = await bot.service.db.fetchval("SELECT COUNT(*) FROM review_audit WHERE action = 'command_refused'")
    assert refused == 3


async def test_forget_me(bot, fake, people):
    thread = await bot.ask(people["patient"], "Please remember that my palms sweat.")
    assert len(fake.bot_messages(thread["id"])) == 2  # the consent notice and the reply
    interaction = await run_slash(fake, people["patient"], "forget-me")
    assert "deleted" in interaction.text
    assert await bot.service.db.fetchval("SELECT COUNT(*) FROM patients") == 0
    # (issue 12 item 4) the bot's own messages in the patient's thread are gone, and it says so
    assert fake.bot_messages(thread["id"]) == []
    assert "I deleted 2 of my messages to you" in interaction.text
    assert "No trained model had learned from your conversation" in interaction.text


async def test_forget_me_typed_in_the_thread_and_what_could_not_be_deleted(bot, fake, people):
    thread = await bot.ask(people["patient"], "Quillfeather: my palms drip when I write, does iontophoresis help?")
    card = fake.bot_messages(fake.reviewer_channel_id)[0]
    reply_id = reply_message(fake, thread["id"])["id"]
    fake.forbid(rf"/channels/{thread['id']}/messages/{reply_id}$", method="DELETE")  # say, a moderation bot locked it
    await fake.say(people["patient"], thread["id"], "/forget-me")
    confirmation = await fake.wait_for(
        lambda: [m for m in fake.bot_messages(thread["id"]) if m["content"].startswith("Done:")], what="the confirmation")
    text = confirmation[0]["content"]
    assert "I deleted 1 of my messages to you; 1 could not be deleted (the platform did not allow it)" in text
    assert [m["id"] for m in fake.bot_messages(thread["id"]) if m["id"] != confirmation[0]["id"]] == [reply_id]
    await bot.settle()
    assert "Quillfeather" not in json.dumps(fake.messages[card["id"]])  # the card shows only a deletion note
    assert "1 review card shown to specialists now shows only a deletion note" in text


# ---------------------------------------------------------------------- the network


async def test_rate_limited_call_is_retried(bot, fake, people):
    fake.rate_limit("POST", r"/channels/\d+/messages", times=1, retry_after=0.05)
    thread = await bot.ask(people["patient"], "What causes sweating?")
    limited = [c for c in fake.calls if c.status == 429]
    assert len(limited) == 1
    retried = [c for c in fake.calls if c.path == limited[0].path and c.method == "POST" and c.status == 200]
    assert retried and fake.calls.index(retried[0]) > fake.calls.index(limited[0])
    assert REPLY in " ".join(thread_texts(fake, thread["id"]))


async def test_gateway_drop_and_resume(bot, fake, people):
    await bot.ask(people["patient"], "First question before the drop?")
    await fake.drop_connection()
    # a message sent while the bot is disconnected is replayed after RESUME
    question = await fake.say(people["other"], fake.support_id, "A question while the connection was down")
    await fake.wait_connected()
    assert fake.identifies == 1 and len(fake.resumes) == 1
    assert fake.resumes[0]["session_id"] == "session-1" and fake.resumes[0]["seq"] > 0
    await fake.wait_for(lambda: any(REPLY in t for t in thread_texts(fake, question["id"])), what="answer after resume")
    # and interactions work on the resumed session
    card = fake.bot_messages(fake.reviewer_channel_id)[-1]
    item = await bot.item_for_card(card)
    await bot.rate(people["reviewer"], card, item)
    click = await fake.click(people["reviewer"], card["id"], f"l4s:approve:{item}")
    await fake.wait_for(lambda: click.followups, what="confirmation")


# ---------------------------------------------------------------------- rendering


async def test_render_patient_parts():
    view = PatientView(ViewKind.PENDING_REVIEW, "Short answer.", LABEL_PENDING, "Not medical advice.\nSee a doctor.")
    (part,) = render.patient_parts(view)
    assert part == f"Short answer.\n\n-# \N{MANTELPIECE CLOCK}\ufe0f {LABEL_PENDING} · Not medical advice. See a doctor."
    notice = PatientView(ViewKind.NOTICE, "Your message was empty.")
    assert render.patient_parts(notice) == ["Your message was empty."]
    text = "x " * 999 + "end"  # exactly fills one message without the footer
    parts = render.patient_parts(PatientView(ViewKind.REVIEWED, text, LABEL_APPROVED, "d"))
    assert len(parts) == 2 and all(len(p) <= 2000 for p in parts) and parts[-1].endswith("d")
    assert re.sub(r"\s+", " ", " ".join(p.split("\n\n-#")[0] for p in parts)) == re.sub(r"\s+", " ", text)


# ---------------------------------------------------------------------- restarts


async def test_messages_posted_while_the_bot_was_stopped_are_answered_once(tmp_path, fake, people):
    """Discord replays nothing to a new session: a follow-up in a patient's thread, a DM and a new
    question in the support channel, all written while the bot was stopped, are fetched when it
    starts again (history after the last stored message) and answered once, even when the
    catch-up runs twice at once or after another restart."""
    first = await Bot(tmp_path, fake).start()
    dm = fake.dm_channel(people["other"])
    try:
        thread = await first.ask(people["patient"], "Do antiperspirants work on hands?")
        await fake.say(people["other"], dm, "Private question: is iontophoresis safe?")
        await fake.wait_for(lambda: any(REPLY in m["content"] for m in fake.bot_messages(dm)), what="the DM answer")
    finally:
        await first.stop()
    in_thread = len(thread_texts(fake, thread["id"]))
    in_dm = len(fake.bot_messages(dm))

    # while the bot is stopped
    await fake.say(people["patient"], thread["id"], "And does it work on feet as well?")
    await fake.say(people["other"], dm, "Also, how often would I need it?")
    newcomer = fake.add_member("kai")
    question = await fake.say(newcomer, fake.support_id, "Is excessive sweating hereditary?")
    await fake.say(people["reviewer"], fake.reviewer_channel_id, "reviewers chatting meanwhile")

    second = await Bot(tmp_path, fake).start()
    try:
        await asyncio.wait_for(second.platform.caught_up.wait(), 15)
        assert len(second.backend.calls) == 3  # the follow-up, the DM and the new question; not the reviewers
        assert len(thread_texts(fake, thread["id"])) == in_thread + 1
        assert len(fake.bot_messages(dm)) == in_dm + 1
        assert question["id"] in fake.threads  # the new question got its own thread, and an answer
        assert any(REPLY in t for t in thread_texts(fake, question["id"]))
        history = [c for c in fake.calls_to("GET", r"/channels/\d+/messages") if "after" in c.query]
        assert {c.path.split("/")[2] for c in history} >= {thread["id"], dm, fake.support_id}
        stored = await second.service.db.fetchval("SELECT COUNT(*) FROM messages")
        # run again twice at once: nothing is answered a second time
        await asyncio.gather(second.platform.catch_up(), second.platform.catch_up())
        assert len(second.backend.calls) == 3
        assert await second.service.db.fetchval("SELECT COUNT(*) FROM messages") == stored
    finally:
        await second.stop()

    third = await Bot(tmp_path, fake).start()
    try:
        await asyncio.wait_for(third.platform.caught_up.wait(), 15)
        assert not third.backend.calls
    finally:
        await third.stop()


async def test_catching_up_three_times_at_once_answers_each_message_once(bot, fake, people):
    """Messages the session never received (lost events) are found by the catch-up; three
    catch-ups at once (a reconnect while one runs) hand each message to the core once."""
    thread = await bot.ask(people["patient"], "Can sweating be treated with a cream?")
    # (not "And would it help my feet too?": a crisis for the safety model hash-mlp-5, p 0.80 — a known
    # false alarm, tests/test_safety.py::test_known_false_alarms_of_the_learned_model)
    await fake.say(people["patient"], thread["id"], "Would the cream help my feet as well?", deliver=False)
    await fake.say(people["other"], fake.support_id, "Does botox hurt?", deliver=False)
    calls = len(bot.backend.calls)
    await asyncio.gather(*(bot.platform.catch_up() for _ in range(3)))
    await fake.wait_for(lambda: len(bot.backend.calls) >= calls + 2, what="both answered")
    await bot.platform.catch_up()
    assert len(bot.backend.calls) == calls + 2
    assert await bot.service.db.fetchval("SELECT COUNT(*) FROM messages") == 3


async def test_the_judges_first_reading_appears_on_the_card(tmp_path, fake, people):
    """With an LLM judge (a local OpenAI-compatible server), the posted card is edited to show its
    verdict as information; the buttons stay, nothing is decided."""
    from tests.openai_fake import FakeOpenAI

    verdict = json.dumps({"accuracy": 2, "appropriateness": 4, "empathy": 5, "reason": "states a wrong dose"})
    async with FakeOpenAI(lambda body, i: verdict) as judge_server:
        harness = await Bot(tmp_path, fake, judge={"enabled": True, "base_url": judge_server.base_url,
                                                   "model": "judge"}).start()
        try:
            await harness.ask(people["patient"], "Which antiperspirant works for underarm sweating?")
            card = fake.bot_messages(fake.reviewer_channel_id)[0]
            item = await harness.item_for_card(card)

            def first_reading():
                fields = {f["name"]: f["value"] for f in fake.messages[card["id"]]["embeds"][0]["fields"]}
                return fields.get("First reading", "").startswith("Judge: accuracy 2/5 — states a wrong dose") and fields

            await fake.wait_for(first_reading, what="the judge's verdict on the card")
            assert custom_ids(fake.messages[card["id"]])[:3] == [f"l4s:approve:{item}", f"l4s:edit:{item}",
                                                                 f"l4s:reject:{item}"]
            assert await harness.service.db.fetchval("SELECT state FROM review_items WHERE id = ?", (item,)) == "pending"
        finally:
            await harness.stop()


async def test_cards_show_the_recent_thread_within_discords_limits(tmp_path, fake, people):
    """A card shows the turns before the patient's message (what the patient saw), older turns
    shortened first, within the 6,000 characters of an embed (the fake refuses more), and the
    reply under review is never the part that is cut."""
    long_reply = ("Strong antiperspirants applied at night help many people with sweaty palms. " * 60)[:3000]
    harness = await Bot(tmp_path, fake, reply=long_reply).start()
    try:
        thread = await harness.ask(people["patient"], "My palms drip with sweat. Why?")
        first_card = fake.bot_messages(fake.reviewer_channel_id)[0]["embeds"][0]
        assert all(f["name"] != render.THREAD_FIELD for f in first_card["fields"])  # nothing before it
        for i in range(3):
            follow_up = f"Follow-up {i}: " + ("my hands are wet all day and it is hard to write. " * 80)[:3900]
            await fake.say(people["patient"], thread["id"], follow_up)
            await fake.wait_for(lambda: len(fake.bot_messages(fake.reviewer_channel_id)) == i + 2, what="a card")
        card = fake.bot_messages(fake.reviewer_channel_id)[-1]["embeds"][0]
        earlier = card["fields"][0]
        assert earlier["name"] == render.THREAD_FIELD and len(earlier["value"]) <= 1024
        assert "Follow-up 1" in earlier["value"] and "**Shown:** Strong antiperspirants" in earlier["value"]
        assert "My palms drip" not in earlier["value"]  # the oldest turns gave way first
        assert long_reply in card["description"]  # the reply under review is whole
        total = len(card["title"]) + len(card["description"]) + len(card["footer"]["text"]) + sum(
            len(f["name"]) + len(f["value"]) for f in card["fields"])
        assert total <= 6000
    finally:
        await harness.stop()


# ---------------------------------------------------------------------- long replies


async def test_a_9000_character_reply_is_edited_whole_in_parts(tmp_path, fake, people):
    """Edit forms used to cut a reply to 4,000 characters without a word. A 9,000-character reply
    opens in several inputs (each within Discord's 4,000) that join back exactly; the edit made in
    the last part reaches the patient and the dataset with nothing lost."""
    long_reply = "\n\n".join(f"Paragraph {i}: " + "Strong antiperspirants at night help many people. " * 14
                             for i in range(12))
    assert 8500 < len(long_reply) < 9500
    harness = await Bot(tmp_path, fake, reply=long_reply).start()
    try:
        thread = await harness.ask(people["patient"], "What treatments are there for sweaty hands?")
        card = fake.bot_messages(fake.reviewer_channel_id)[0]
        item = await harness.item_for_card(card)
        await harness.rate(people["reviewer"], card, item)
        opened = await fake.click(people["reviewer"], card["id"], f"l4s:edit:{item}")
        await fake.wait_for(lambda: opened.responses, what="the edit form")
        inputs = {c["component"]["custom_id"]: c["component"]["value"] for c in opened.modal["components"]}
        assert len(inputs) == 3 and all(len(v) <= 4000 for v in inputs.values())
        stored = (await harness.service.reviews.item(item))["reply_text"]
        assert render.parse_edit_form(opened.modal["custom_id"], inputs.get) == (item, stored)  # nothing cut
        last = render.edit_text_id(3)
        edited_last = inputs[last].replace("Paragraph 11:", "Paragraph 11 (checked by a dermatologist):")
        submitted = await fake.submit_modal(people["reviewer"], opened, {**inputs, last: edited_last})
        await fake.wait_for(lambda: submitted.followups, what="the confirmation")
        assert "edited" in submitted.text
        expected = stored.replace("Paragraph 11:", "Paragraph 11 (checked by a dermatologist):")
        assert (await harness.service.reviews.item(item))["final_text"] == expected
        parts = fake.bot_messages(thread["id"])[1:]
        shown = " ".join(p["content"].split("\n\n-# ")[0] for p in parts)
        assert shown.split() == expected.split() and LABEL_EDITED in parts[-1]["content"]
        example = await harness.service.db.fetchone("SELECT messages FROM dataset_examples WHERE review_item_id = ?",
                                                    (item,))
        assert "checked by a dermatologist" in example["messages"] and "Paragraph 0:" in example["messages"]
    finally:
        await harness.stop()


async def test_a_reply_too_long_for_a_form_is_refused_with_the_console_named(tmp_path, fake, people):
    harness = await Bot(tmp_path, fake, reply="Sweating explained." + " Sweating explained." * 1299).start()
    try:
        await harness.ask(people["patient"], "Explain how iontophoresis works, please.")
        card = fake.bot_messages(fake.reviewer_channel_id)[0]
        item = await harness.item_for_card(card)
        await harness.rate(people["reviewer"], card, item)
        opened = await fake.click(people["reviewer"], card["id"], f"l4s:edit:{item}")
        await fake.wait_for(lambda: opened.responses, what="the answer")
        assert opened.modal is None and "console" in opened.text and "25,999 characters" in opened.text
        assert opened.responses[0]["data"]["flags"] == EPHEMERAL
    finally:
        await harness.stop()


# ---------------------------------------------------------------------- results people compare


async def test_retrain_result_shows_the_table_as_fields_and_attaches_the_chart(bot, fake, people, tmp_path):
    """The retraining result reaches moderators as an embed whose fields are the table rows
    (models named as they are now) with the evaluation chart attached and shown as its image;
    /eval answers the same way. Never an ASCII table in the text."""
    from pipeline import evaluate as ev
    from pipeline import registry
    from pipeline import retrain as rt
    from tests.eval_records import record

    db = bot.service.db
    evaluation = record("v2", live="v1")
    chart = ev.bar_chart(evaluation, tmp_path / "evaluation.png")
    for version in ("v1", "v2"):
        await registry.register(db, version, tmp_path / version, "base")
    await registry.set_status(db, "v1", "live")
    await registry.set_evaluation(db, "v2", {**evaluation, "files": {"png": str(chart)}})

    report = await rt.result_report(db, evaluation, {"png": str(chart)})
    await bot.service.core.alert_moderators("Retraining job #1: adapter v2 trained on 40 examples.", report=report)
    posted = await fake.wait_for(lambda: [m for m in fake.bot_messages(fake.reviewer_channel_id) if m["embeds"]],
                                 what="the retraining result")
    message = posted[0]
    embed = message["embeds"][0]
    assert message["content"].startswith("Retraining job #1") and "+--" not in message["content"]
    names = [f["name"] for f in embed["fields"]]
    assert names[:4] == ["diagnosis", "treatment", "psychological support", "overall"]
    diagnosis = embed["fields"][0]["value"].splitlines()
    assert diagnosis[:3] == ["base model: 0.400 [0.22-0.61]", "v1 (live): 0.650 [0.43-0.82]",
                             "v2 (candidate): 0.850 [0.64-0.95]"]
    [attachment] = message["attachments"]
    assert attachment["filename"] == "chart.png" and embed["image"]["url"] == attachment["url"]
    assert fake.files[attachment["id"]] == chart.read_bytes()

    # v2 goes live: /eval names it so, with the same fields and chart (ephemeral).
    await registry.set_status(db, "v1", "retired")
    await registry.set_status(db, "v2", "live")
    shown = await run_slash(fake, people["moderator"], "eval")
    answer = shown.followups[-1]
    assert "Evaluation of v2 (live)" in answer["content"] and "(candidate)" not in json.dumps(answer)
    assert answer["embeds"][0]["fields"][0]["value"].splitlines()[2] == "v2 (live): 0.850 [0.64-0.95]"
    assert answer["attachments"][0]["url"] == answer["embeds"][0]["image"]["url"]
