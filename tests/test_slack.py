"""Slack through slack-bolt's real code, at Slack's network boundary.

HTTP mode: requests signed with slack_sdk's ``SignatureVerifier`` go over real HTTP to the
app's aiohttp server on 127.0.0.1. Socket Mode: the real ``AsyncSocketModeHandler`` connects
to a local websocket server. Both talk to a local fake of Slack's Web API
(``tests/slack_fake.py``) that records every call. The service behind them is the real one
on a fixed-reply backend.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import time
from contextlib import asynccontextmanager
from typing import Any
from urllib.parse import urlencode

import aiohttp
import pytest

from bot.core import GATED_TEXT, LABEL_APPROVED, LABEL_EDITED, LABEL_PENDING, NOTICE_TOO_LONG, WITHDRAWN_TEXT
from bot.inference.fixed import FixedBackend
from bot.settings import load_settings
from bot.slack_platform import SlackStartError, start_slack
from tests.slack_fake import APP_TOKEN, BOT_TOKEN, BOT_USER, TEAM, FakeSlack, SlackHTTP

SECRET = "8f742231b10e8888abcd99yyyzzz85a5"
SUPPORT = "C0SUPPORT"
REVIEW = "C0REVIEW"
OTHER = "C0OTHER"
DM = "D0PATIENT"
PATIENT = "U0PATIENT"
PATIENT2 = "U0PATIENT2"
REVIEWER = "U0REVIEWER"  # member of the reviewer user group
LISTED = "U0LISTED"  # reviewer by listed user id
MODERATOR = "U0MOD"
STRANGER = "U0STRANGER"
GROUP = "S0REVIEWERS"
COMMANDS = ("status", "retrain", "rollback", "eval", "dataset", "pause", "resume")

# Fixtures run on the session's event loop (pyproject); the tests must share it.
pytestmark = pytest.mark.asyncio(loop_scope="session")

_ts = itertools.count(1)
_ids = itertools.count(1)


def new_ts() -> str:
    return f"{1_650_000_000 + next(_ts)}.000200"



@pytest.fixture
async def fake():
    slack = await FakeSlack().start()
    slack.usergroups[GROUP] = [REVIEWER]
    yield slack
    await slack.stop()
    # as on Slack: an ack later than 3 s, or a reply Slack would refuse, fails the test
    assert not slack.late_acks, f"acknowledged too late for Slack: {slack.late_acks}"
    assert not slack.invalid_responses, f"payloads Slack would refuse: {slack.invalid_responses}"


def slack_config(fake: FakeSlack, mode: str = "http", **slack: Any) -> dict[str, Any]:
    """The [slack] settings the tests run with, pointed at ``fake``."""
    cfg = {
        "bot_token": BOT_TOKEN,
        "app_token": APP_TOKEN,
        "signing_secret": SECRET,
        "mode": mode,
        "http_host": "127.0.0.1",
        "http_port": 0,
        "support_channel_ids": [SUPPORT],
        "reviewer_channel_id": REVIEW,
        "reviewer_usergroup_id": GROUP,
        "reviewer_user_ids": [LISTED],
        "moderator_user_ids": [MODERATOR],
        "allow_dms": True,
        "api_base_url": fake.base_url,
    }
    cfg.update(slack)
    return cfg


def make_settings(tmp_path, fake: FakeSlack, mode: str = "http", review_mode: str = "immediate", **slack: Any):
    return load_settings(data_dir=tmp_path, slack=slack_config(fake, mode, **slack), review={"mode": review_mode})


@asynccontextmanager
async def running(tmp_path, fake: FakeSlack, mode: str = "http", backend: FixedBackend | None = None,
                  review_mode: str = "immediate", **slack: Any):
    from bot.service import Service

    service = Service(make_settings(tmp_path, fake, mode, review_mode, **slack), backend or FixedBackend())
    await service.start(retry_loop=False)
    runner = None
    try:
        runner = await start_slack(service)
        yield service, runner
    finally:
        if runner is not None:
            await runner.cleanup()
        await service.stop()


class SignedHTTP(SlackHTTP):
    """Slack's side of HTTP mode (``tests.slack_fake.SlackHTTP``, with its 3-second deadline) plus
    the payload shapes of events, slash commands and interactions."""

    def __init__(self, fake: FakeSlack, url: str, secret: str = SECRET):
        super().__init__(fake, url, secret)

    async def event(self, event: dict[str, Any], event_id: str | None = None, retry_num: int | None = None,
                    **kwargs: Any) -> tuple[int, str]:
        headers = {}
        if retry_num:
            headers = {"X-Slack-Retry-Num": str(retry_num), "X-Slack-Retry-Reason": "http_timeout"}
        self.fake.record_user_message(event)
        return await self.post(json.dumps(event_body(event, event_id)), "application/json", headers, kind="event",
                               retry=retry_num or 0, **kwargs)

    async def command(self, fake: FakeSlack, command: str, user: str, text: str = "",
                      response_name: str | None = None) -> tuple[int, str]:
        return await self.post(urlencode(command_body(fake, command, user, text, response_name)),
                               "application/x-www-form-urlencoded", kind="command")

    async def interact(self, payload: dict[str, Any]) -> tuple[int, str]:
        return await self.post(urlencode({"payload": json.dumps(payload)}), "application/x-www-form-urlencoded",
                               kind="interaction")


def event_body(event: dict[str, Any], event_id: str | None = None) -> dict[str, Any]:
    return {
        "token": "legacy-verification-token",
        "team_id": TEAM,
        "api_app_id": "A0TEST",
        "event": {"event_ts": event.get("ts", new_ts()), **event},
        "type": "event_callback",
        "event_id": event_id or f"Ev{next(_ids):08d}",
        "event_time": int(time.time()),
        "authorizations": [{"team_id": TEAM, "user_id": BOT_USER, "is_bot": True, "is_enterprise_install": False}],
        "is_ext_shared_channel": False,
    }


def message(text: str, user: str = PATIENT, channel: str = SUPPORT, ts: str | None = None,
            thread_ts: str | None = None, channel_type: str = "channel", **extra: Any) -> dict[str, Any]:
    event = {"type": "message", "channel": channel, "user": user, "text": text, "ts": ts or new_ts(),
             "channel_type": channel_type, "team": TEAM, **extra}
    if thread_ts:
        event["thread_ts"] = thread_ts
    return event


def mention(text: str, user: str = PATIENT, channel: str = OTHER, ts: str | None = None,
            thread_ts: str | None = None) -> dict[str, Any]:
    event = {"type": "app_mention", "channel": channel, "user": user, "text": f"<@{BOT_USER}> {text}",
             "ts": ts or new_ts(), "team": TEAM}
    if thread_ts:
        event["thread_ts"] = thread_ts
    return event


def command_body(fake: FakeSlack, command: str, user: str, text: str = "", response_name: str | None = None):
    return {
        "token": "legacy", "team_id": TEAM, "team_domain": "clinic", "channel_id": REVIEW, "channel_name": "reviewers",
        "user_id": user, "user_name": user.lower(), "command": command, "text": text, "api_app_id": "A0TEST",
        "is_enterprise_install": "false", "response_url": fake.response_url(response_name),
        "trigger_id": f"{next(_ids)}.{next(_ids)}.trigger",
    }


SCORES = {"accuracy": 4, "appropriateness": 4, "empathy": 4}  # what a reviewer chose on the card, unless told


def block_action(fake: FakeSlack, action_id: str, item_id: int, user: str, card_ts: str = "",
                 rubric: dict[str, int] | None = None) -> dict[str, Any]:
    values = {f"review_rubric:{item_id}": {
        f"rubric_{name}": {"type": "static_select", "selected_option": {"value": str(score)}}
        for name, score in (SCORES if rubric is None else rubric).items()
    }}
    return {
        "type": "block_actions",
        "user": {"id": user, "username": user.lower(), "name": user.lower(), "team_id": TEAM},
        "api_app_id": "A0TEST", "token": "legacy",
        "container": {"type": "message", "message_ts": card_ts, "channel_id": REVIEW, "is_ephemeral": False},
        "trigger_id": f"{next(_ids)}.{next(_ids)}.trigger",
        "team": {"id": TEAM, "domain": "clinic"},
        "channel": {"id": REVIEW, "name": "reviewers"},
        "message": {"type": "message", "ts": card_ts, "bot_id": "B0BOT", "text": "card"},
        "state": {"values": values},
        "response_url": fake.response_url(),
        "actions": [{"action_id": action_id, "block_id": f"review_actions:{item_id}", "value": str(item_id),
                     "type": "button", "action_ts": str(time.time())}],
    }


def view_submission(opened_view: dict[str, Any], user: str, text: str | None,
                    rubric: dict[str, int] | None = None, parts: dict[str, str] | None = None) -> dict[str, Any]:
    """The modal submitted: ``text`` in the (first) reply input, or ``parts`` by block id."""
    values: dict[str, Any] = {block: {"text": {"type": "plain_text_input", "value": value}}
                              for block, value in (parts or {"edit_text": text}).items()}
    for name, score in (SCORES if rubric is None else rubric).items():
        values[f"rubric:{name}"] = {f"rubric_{name}": {"type": "static_select",
                                                        "selected_option": {"value": str(score)}}}
    return {
        "type": "view_submission",
        "team": {"id": TEAM, "domain": "clinic"},
        "user": {"id": user, "username": user.lower(), "name": user.lower(), "team_id": TEAM},
        "api_app_id": "A0TEST", "token": "legacy", "trigger_id": f"{next(_ids)}.trigger",
        "view": {"id": "V0EDIT", "type": "modal", "team_id": TEAM, "callback_id": opened_view["callback_id"],
                 "private_metadata": opened_view["private_metadata"], "hash": "1.abc",
                 "state": {"values": values}},
        "response_urls": [],
    }


def reaction(name: str, user: str, card_ts: str, channel: str = REVIEW) -> dict[str, Any]:
    return {"type": "reaction_added", "user": user, "reaction": name, "item_user": BOT_USER,
            "item": {"type": "message", "channel": channel, "ts": card_ts}, "event_ts": new_ts()}


def section_texts(msg: dict[str, Any]) -> list[str]:
    return [b["text"]["text"] for b in msg["blocks"] if b["type"] == "section"]


def context_texts(msg: dict[str, Any]) -> list[str]:
    return [e["text"] for b in msg["blocks"] if b["type"] == "context" for e in b["elements"]]


def cards(fake: FakeSlack) -> list[dict[str, Any]]:
    return [m for m in fake.channel_messages(REVIEW) if any(b.get("type") == "header" for b in m["blocks"])]


def ephemerals(fake: FakeSlack, user: str) -> list[str]:
    return [c.args["text"] for c in fake.calls_to("chat.postEphemeral") if c.args.get("user") == user]


async def ask(http: SignedHTTP, fake: FakeSlack, text: str, **kwargs: Any) -> tuple[str, dict[str, Any]]:
    """A patient posts in the support channel; returns (message ts, the review card once posted)."""
    before = len(cards(fake))
    event = message(text, **kwargs)
    status, _ = await http.event(event)
    assert status == 200
    await fake.wait_for(lambda: len(cards(fake)) > before)
    return event["ts"], cards(fake)[-1]


def item_of(card: dict[str, Any]) -> int:
    header = next(b for b in card["blocks"] if b["type"] == "header")
    return int(header["text"]["text"].split("#")[1].split(" ")[0])


@pytest.fixture
async def http_slack(tmp_path, fake):
    async with running(tmp_path, fake, "http") as (service, runner):
        http = SignedHTTP(fake, runner.url)
        try:
            yield service, runner, http
        finally:
            await http.close()


# ====================================================================== patients


async def test_patient_message_gets_threaded_reply_and_review_card(http_slack, fake):
    service, runner, http = http_slack
    assert fake.calls[0].method == "auth.test"
    ts, card = await ask(http, fake, "My palms sweat all the time & I'm 17 <!channel>. Is that normal?")
    thread = fake.thread(SUPPORT, ts)
    assert len(thread) == 2  # first contact notice (what is stored and why), then the reply
    assert "/forget-me" in thread[0]["text"]
    reply = thread[1]
    body = section_texts(reply)[0]
    assert "&amp; I'm 17 &lt;!channel&gt;" in body  # escaped: a patient or a model cannot ping a channel
    assert any(LABEL_PENDING in text for text in context_texts(reply))
    assert any(service.pack.disclaimer.strip()[:30] in text for text in context_texts(reply))
    # the card in the private reviewer channel, with the buttons and rubric selects
    actions = [e["action_id"] for b in card["blocks"] if b["type"] == "actions" for e in b["elements"]]
    assert actions == ["rubric_accuracy", "rubric_appropriateness", "rubric_empathy",
                       "review_approve", "review_edit", "review_reject"]
    assert card["thread_ts"] is None
    row = await service.db.fetchone("SELECT platform_message_id, text FROM messages")
    assert row["platform_message_id"] == ts
    # the bot posts without a token mix-up: every Web API call carried the bot token
    assert {c.token for c in fake.calls} == {BOT_TOKEN}


def consent_click(fake: FakeSlack, notice: dict[str, Any], user: str, agree: bool) -> dict[str, Any]:
    """A member presses "I agree" / "No" under the consent notice (a block_actions payload)."""
    action_id = "consent_agree" if agree else "consent_decline"
    return {
        "type": "block_actions", "api_app_id": "A0TEST", "token": "legacy",
        "user": {"id": user, "username": user.lower(), "name": user.lower(), "team_id": TEAM},
        "container": {"type": "message", "message_ts": notice["ts"], "channel_id": SUPPORT, "is_ephemeral": False},
        "trigger_id": f"{next(_ids)}.{next(_ids)}.trigger", "team": {"id": TEAM, "domain": "clinic"},
        "channel": {"id": SUPPORT, "name": "support"},
        "message": {"type": "message", "ts": notice["ts"], "thread_ts": notice.get("thread_ts"), "bot_id": "B0BOT",
                    "text": notice["text"]},
        "state": {"values": {}}, "response_url": fake.response_url(),
        "actions": [{"action_id": action_id, "block_id": "consent", "value": "agree" if agree else "decline",
                     "type": "button", "action_ts": str(time.time())}],
    }


async def test_consent_by_button_and_by_words(http_slack, fake):
    """(issue 12 item 5) The notice tells who sees the thread and asks; the answer counts only for
    the person who pressed; words work too; a no still gets answers and stays out of training."""
    from bot.consent import CONFIRM_AGREE, CONFIRM_DECLINE, NOT_THE_PATIENT
    from pipeline import dataset

    service, runner, http = http_slack
    ts, card = await ask(http, fake, "Does sweating get worse with stress?")
    notice = fake.thread(SUPPORT, ts)[0]
    assert "every member of the channel can read it" in notice["text"]
    assert "in the reviewers' channel in Slack" in notice["text"]
    buttons = [e["action_id"] for b in notice["blocks"] if b["type"] == "actions" for e in b["elements"]]
    assert buttons == ["consent_agree", "consent_decline"]

    await http.interact(consent_click(fake, notice, PATIENT2, True))  # someone else in the channel
    told = await fake.wait_for(lambda: ephemerals(fake, PATIENT2))
    assert told == [NOT_THE_PATIENT]
    await http.interact(consent_click(fake, notice, PATIENT, True))
    told = await fake.wait_for(lambda: ephemerals(fake, PATIENT))
    assert told == [CONFIRM_AGREE]
    ephemeral = fake.calls_to("chat.postEphemeral", lambda c: c.args.get("user") == PATIENT)[0]
    assert ephemeral.args["channel"] == SUPPORT and ephemeral.args["thread_ts"] == ts
    await http.interact(block_action(fake, "review_approve", item_of(card), REVIEWER, card["ts"]))
    await fake.wait_for(lambda: any(LABEL_APPROVED in t for t in context_texts(fake.thread(SUPPORT, ts)[1])))
    assert [e["source"] for e in await dataset.examples(service.db) if e["source"] != "seed"] == ["expert_approved"]

    status, _ = await http.event(message("I don't agree", thread_ts=ts))
    await fake.wait_for(lambda: any(m["text"] == CONFIRM_DECLINE for m in fake.thread(SUPPORT, ts)))
    assert [e for e in await dataset.examples(service.db) if e["source"] == "expert_approved"] == []
    assert len(service.backend.calls) == 1
    await ask(http, fake, "Is it hereditary?", thread_ts=ts)  # still answered
    assert len(service.backend.calls) == 2


async def test_follow_up_in_thread_continues_the_conversation(http_slack, fake):
    service, runner, http = http_slack
    ts, _ = await ask(http, fake, "Which antiperspirant works for hands?")
    await ask(http, fake, "And how often should I apply it?", thread_ts=ts)
    assert len(fake.thread(SUPPORT, ts)) == 3  # notice, reply, reply
    prompt = service.backend.calls[-1]
    assert any("Which antiperspirant" in m["content"] for m in prompt if m["role"] == "user")
    assert await service.db.fetchval("SELECT COUNT(*) FROM conversations") == 1
    # someone else chatting in the patient's thread is not answered and not stored
    status, _ = await http.event(message("hang in there!", user=PATIENT2, thread_ts=ts))
    assert status == 200
    # the patient's next follow-up is answered; by then the other person's message was passed over
    await ask(http, fake, "And on the feet?", thread_ts=ts)
    assert await service.db.fetchval("SELECT COUNT(*) FROM messages") == 3
    assert await service.db.fetchval("SELECT COUNT(*) FROM messages WHERE text = 'hang in there!'") == 0
    assert not any("hang in there" in m["content"] for call in service.backend.calls for m in call)


async def test_cards_show_the_recent_thread(http_slack, fake):
    """A follow-up's card shows the earlier turns (the patient's question and the reply shown),
    shortened from the oldest within Block Kit's limits (the fake refuses more)."""
    service, runner, http = http_slack
    ts, first = await ask(http, fake, "Which antiperspirant works for hands & feet?")
    assert "Earlier in the conversation" not in json.dumps(first["blocks"])
    _, card = await ask(http, fake, "And how often should I apply it?", thread_ts=ts)
    earlier = next(t for t in section_texts(card) if t.startswith("*Earlier in the conversation*"))
    assert "*Patient:* Which antiperspirant works for hands &amp; feet?" in earlier
    assert "*Shown:* Thank you for your question about: Which" in earlier  # what the patient saw (the fixed backend echoes)
    for i in range(4):
        _, card = await ask(http, fake, f"Follow-up {i}: " + "my hands are wet all day long. " * 120, thread_ts=ts)
    earlier = next(t for t in section_texts(card) if t.startswith("*Earlier in the conversation*"))
    assert len(earlier) <= 1600 and "Follow-up 2" in earlier and "hands &amp; feet" not in earlier


async def test_mention_anywhere_and_dm(http_slack, fake):
    service, runner, http = http_slack
    event = mention("do you know about iontophoresis?")
    # Slack sends a mention twice: as app_mention and as a message event, under two event ids
    await http.event(event)
    await http.event({**event, "type": "message", "channel_type": "channel"})
    await fake.wait_for(lambda: len(cards(fake)) == 1)
    stored = await service.db.fetchval("SELECT text FROM messages")
    assert stored == "do you know about iontophoresis?"  # the mention itself is not part of the question
    # a thread follow-up without a new mention continues that conversation; once it is answered,
    # the second copy of the mention (handled before it) has been passed over: one card, one reply each
    await ask(http, fake, "and does it hurt?", channel=OTHER, thread_ts=event["ts"])
    assert len(cards(fake)) == 2 and len(fake.thread(OTHER, event["ts"])) == 3
    # plain chatter in a channel that is not a support channel is ignored
    await http.event(message("lunch anyone?", channel=OTHER))
    # DMs are answered (allow_dms), in the DM itself: one conversation per patient
    ts, _ = await ask(http, fake, "private question about sweating", channel=DM, channel_type="im", user=PATIENT2)
    assert not fake.thread(DM, ts) and len(fake.channel_messages(DM)) == 2
    assert await service.db.fetchval("SELECT COUNT(*) FROM messages") == 3


async def test_one_dm_conversation_per_patient_and_a_way_to_start_afresh(http_slack, fake):
    """Every top-level DM used to start a new conversation (no history). Now a DM is one
    conversation per patient, answered in the DM itself; typing “new conversation” starts a
    fresh one (told in the first-contact notice)."""
    service, runner, http = http_slack
    first, _ = await ask(http, fake, "My palms sweat a lot, what can I do?", channel=DM, channel_type="im")
    notice = fake.channel_messages(DM)[0]
    assert "new conversation" in notice["text"] and notice.get("thread_ts") is None
    assert "only you and this app: this is a direct message" in notice["text"]  # (issue 12 item 5)
    await ask(http, fake, "And is iontophoresis safe for that?", channel=DM, channel_type="im")
    assert await service.db.fetchval("SELECT COUNT(*) FROM conversations") == 1
    prompt = service.backend.calls[-1]
    assert any("palms sweat" in m["content"] for m in prompt if m["role"] == "user")  # the earlier turn is there
    assert all(m.get("thread_ts") is None for m in fake.channel_messages(DM))  # answered in the DM, not threads

    event = message("New conversation", channel=DM, channel_type="im")
    await http.event(event)
    started = await fake.wait_for(lambda: [m for m in fake.channel_messages(DM) if "new conversation starts" in m["text"]])
    assert started[0].get("thread_ts") is None
    assert len(service.backend.calls) == 2  # the command is not a question for the model
    await ask(http, fake, "Does botox help for feet?", channel=DM, channel_type="im")
    assert await service.db.fetchval("SELECT COUNT(*) FROM conversations") == 2
    prompt = service.backend.calls[-1]
    assert not any("palms sweat" in m["content"] for m in prompt if m["role"] == "user")  # a fresh start
    assert await service.db.fetchval("SELECT COUNT(*) FROM messages") == 3  # the command is not stored
    # Slack's retry of the command changes nothing
    await http.event(event, retry_num=1)
    await runner.platform.drain()
    assert len([m for m in fake.channel_messages(DM) if "new conversation starts" in m["text"]]) == 1
    assert await service.db.fetchval("SELECT COUNT(*) FROM conversations") == 2


async def test_dms_refused_when_not_enabled(tmp_path, fake):
    async with running(tmp_path, fake, allow_dms=False) as (service, runner):
        http = SignedHTTP(fake, runner.url)
        event = message("hello?", channel=DM, channel_type="im")
        await http.event(event)
        posted = await fake.wait_calls("chat.postMessage")
        assert "don't answer direct messages" in posted[0].args["text"] and f"<#{SUPPORT}>" in posted[0].args["text"]
        assert await service.db.fetchval("SELECT COUNT(*) FROM messages") == 0
        await http.close()


async def test_ignores_bots_edits_and_the_reviewer_channel(http_slack, fake):
    """Bots, edits and reviewers talking in their channel (even one also listed as a support
    channel) get no answer: a patient's question sent after them is the only one answered (the
    events are handled in order, so once it is answered the earlier ones were passed over)."""
    service, runner, http = http_slack
    runner.platform.cfg.support_channel_ids.append(REVIEW)  # a workspace that asks and reviews in one place
    await http.event(message("a bot speaking", bot_id="B0OTHER"))
    await http.event(message("edited", subtype="message_changed"))
    await http.event(message("reviewers chatting", user=REVIEWER, channel=REVIEW))
    await http.event(mention("reviewers chatting", user=REVIEWER, channel=REVIEW))
    ts, _ = await ask(http, fake, "Does botox help sweaty underarms?")
    answered = {c.args.get("channel") for c in fake.calls_to("chat.postMessage") if c.args.get("thread_ts")}
    assert answered <= {SUPPORT}
    assert await service.db.fetchval("SELECT COUNT(*) FROM messages") == 1


async def test_attachment_only_message_gets_a_notice(http_slack, fake):
    service, runner, http = http_slack
    event = message("", subtype="file_share", files=[{"id": "F0PHOTO", "name": "hands.jpg"}])
    await http.event(event)
    posted = await fake.wait_for(lambda: len(fake.thread(SUPPORT, event["ts"])) >= 2 and fake.thread(SUPPORT, event["ts"]))
    assert "only read text" in posted[-1]["text"]
    assert not cards(fake)


async def test_crisis_message_gets_resources_and_alerts_the_reviewers(http_slack, fake):
    service, runner, http = http_slack
    fake.users[PATIENT] = {"name": "pat", "locale": "en-GB"}  # crisis resources for the patient's country
    event = message("I can't cope with this any more, I want to die")
    await http.event(event)
    alert = await fake.wait_for(lambda: [m for m in fake.channel_messages(REVIEW) if "Crisis" in m["text"]])
    assert alert[0]["text"].startswith(f":rotating_light: <@{MODERATOR}> <!subteam^{GROUP}>")
    thread = fake.thread(SUPPORT, event["ts"])
    assert service.pack.crisis_message("GB") != service.pack.crisis_message(None)
    assert section_texts(thread[-1])[0] == blocks_escape(service.pack.crisis_message("GB").strip())
    assert await service.db.fetchval("SELECT region FROM patients") == "GB"
    assert not service.backend.calls  # the model is not asked


def blocks_escape(text: str) -> str:
    from bot.slack_platform.blocks import escape

    return escape(text)


async def test_one_review_queue_shared_with_another_platform(http_slack, fake):
    """A patient on another platform (here the local console) is reviewed from Slack."""
    from bot.local.platform import LocalPlatform
    from bot.platform import IncomingMessage

    service, runner, http = http_slack
    service.add_platform(LocalPlatform())
    result = await service.core.handle_message(
        IncomingMessage("local", "console-patient", "console", "t1", "Does sweating get better with age?"))
    card = await fake.wait_for(lambda: cards(fake) and cards(fake)[-1])
    assert item_of(card) == result.item_id
    await http.interact(block_action(fake, "review_approve", result.item_id, REVIEWER, card["ts"]))
    await fake.wait_for(lambda: "Approved" in json.dumps(fake.messages[card["ts"]]["blocks"]))
    assert await service.db.fetchval("SELECT state FROM review_items WHERE id = ?", (result.item_id,)) == "approved"
    assert not fake.calls_to("chat.postMessage", lambda c: c.args["channel"] == "console")


# ====================================================================== experts


async def test_approve_button_with_rubric_reaches_patient_and_card(http_slack, fake):
    service, runner, http = http_slack
    ts, card = await ask(http, fake, "Is hyperhidrosis hereditary?")
    item = item_of(card)
    status, body = await http.interact(block_action(fake, "review_approve", item, REVIEWER, card["ts"],
                                                    rubric={"accuracy": 5, "appropriateness": 4, "empathy": 3}))
    assert status == 200 and body == ""
    await fake.wait_for(lambda: any(LABEL_APPROVED in t for t in context_texts(fake.thread(SUPPORT, ts)[1])))
    reply = fake.thread(SUPPORT, ts)[1]
    assert "Is hyperhidrosis hereditary?" in section_texts(reply)[0]  # same message, updated in place
    updated_card = await fake.wait_for(lambda: "Decided by" in json.dumps(fake.messages[card["ts"]]["blocks"])
                                       and fake.messages[card["ts"]])
    assert not [b for b in updated_card["blocks"] if b["type"] == "actions"]  # buttons gone once decided
    decision = await service.db.fetchone("SELECT * FROM review_decisions")
    assert (decision["reviewer_platform"], decision["reviewer_id"]) == ("slack", REVIEWER)
    assert (decision["accuracy"], decision["appropriateness"], decision["empathy"]) == (5, 4, 3)
    assert await service.db.fetchval(
        "SELECT COUNT(*) FROM dataset_examples WHERE source = 'expert_approved'") == 1
    # a second click is harmless: told it is already closed, nothing changes
    await http.interact(block_action(fake, "review_approve", item, LISTED, card["ts"]))
    await fake.wait_for(lambda: ephemerals(fake, LISTED))
    assert "already approved" in ephemerals(fake, LISTED)[0]
    assert await service.db.fetchval("SELECT COUNT(*) FROM review_decisions") == 1


async def test_edit_opens_modal_validates_and_updates_patient(http_slack, fake):
    service, runner, http = http_slack
    ts, card = await ask(http, fake, "Can botox help with armpit sweating?")
    item = item_of(card)
    action = block_action(fake, "review_edit", item, LISTED, card["ts"], rubric={"accuracy": 2})
    status, _ = await http.interact(action)
    assert status == 200
    opened = (await fake.wait_calls("views.open"))[0]
    assert opened.args["trigger_id"] == action["trigger_id"]
    view = opened.args["view"]
    field = next(b for b in view["blocks"] if b.get("block_id") == "edit_text")
    assert "Can botox help" in field["element"]["initial_value"]  # the reply, prefilled
    accuracy = next(b for b in view["blocks"] if b.get("block_id") == "rubric:accuracy")
    assert accuracy["element"]["initial_option"]["value"] == "2"  # carried over from the card
    # an empty edit is refused inside the modal (response_action: errors)
    status, body = await http.interact(view_submission(view, LISTED, "   "))
    assert status == 200
    assert json.loads(body) == {"response_action": "errors", "errors": {"edit_text": json.loads(body)["errors"]["edit_text"]}}
    assert "empty" in json.loads(body)["errors"]["edit_text"]
    status, body = await http.interact(view_submission(view, LISTED, "x" * 3001))
    assert "limit is 3000" in json.loads(body)["errors"]["edit_text"]
    assert await service.db.fetchval("SELECT state FROM review_items WHERE id = ?", (item,)) == "pending"
    # a valid edit closes the modal and replaces the patient's reply in place
    edited = "Yes. Botulinum toxin injections reduce underarm sweating for several months. Ask a dermatologist."
    # (issue 11 item 5) a score missing: refused inside the modal, next to the score, the text kept
    status, body = await http.interact(view_submission(view, LISTED, edited, rubric={"accuracy": 2, "empathy": 5}))
    assert json.loads(body) == {"response_action": "errors", "errors": {"rubric:appropriateness": "Choose a score from 1 to 5."}}
    assert await service.db.fetchval("SELECT COUNT(*) FROM review_decisions") == 0
    score_block = next(b for b in view["blocks"] if b.get("block_id") == "rubric:appropriateness")
    assert score_block["optional"] is False  # Slack itself asks for every score
    status, body = await http.interact(view_submission(view, LISTED, edited,
                                                       rubric={"accuracy": 2, "appropriateness": 3, "empathy": 5}))
    assert status == 200 and body == ""
    await fake.wait_for(lambda: section_texts(fake.thread(SUPPORT, ts)[1])[0] == edited)
    assert any(LABEL_EDITED in t for t in context_texts(fake.thread(SUPPORT, ts)[1]))
    assert await service.db.fetchval("SELECT state FROM review_items WHERE id = ?", (item,)) == "edited"
    decision = await service.db.fetchone("SELECT * FROM review_decisions")
    assert (decision["action"], decision["accuracy"], decision["empathy"]) == ("edit", 2, 5)
    await fake.wait_for(lambda: edited[:40] in json.dumps(fake.messages[card["ts"]]["blocks"]))
    example = await service.db.fetchone("SELECT * FROM dataset_examples WHERE source = 'expert_edited'")
    assert edited in example["messages"]


async def test_reject_withdraws_the_reply(http_slack, fake):
    service, runner, http = http_slack
    ts, card = await ask(http, fake, "Should I stop drinking water to sweat less?")
    await http.interact(block_action(fake, "review_reject", item_of(card), REVIEWER, card["ts"]))
    await fake.wait_for(lambda: section_texts(fake.thread(SUPPORT, ts)[1])[0] == WITHDRAWN_TEXT)
    assert await service.db.fetchval("SELECT COUNT(*) FROM dataset_examples WHERE source LIKE 'expert%'") == 0
    await fake.wait_for(lambda: "Rejected" in json.dumps(fake.messages[card["ts"]]["blocks"]))


async def test_reactions_decide(http_slack, fake):
    service, runner, http = http_slack
    ts1, card1 = await ask(http, fake, "first question about sweaty feet")
    ts2, card2 = await ask(http, fake, "second question, about sweaty feet in summer", user=PATIENT2)
    # (issue 11 item 5) a ✅ carries no rubric scores: refused, the reviewer told privately how to approve
    await http.event(reaction("white_check_mark", LISTED, card1["ts"]))
    told = await fake.wait_for(lambda: ephemerals(fake, LISTED))
    assert "needs all three rubric scores" in told[0]
    assert await service.db.fetchval("SELECT COUNT(*) FROM review_decisions") == 0
    await http.interact(block_action(fake, "review_approve", item_of(card1), LISTED, card1["ts"]))
    await http.interact(block_action(fake, "review_approve", item_of(card2), REVIEWER, card2["ts"], rubric={}))
    told = await fake.wait_for(lambda: ephemerals(fake, REVIEWER))  # the button without scores: refused too
    assert "missing: accuracy, appropriateness, empathy" in told[0]
    await http.event(reaction("x", REVIEWER, card2["ts"]))
    await http.event(reaction("tada", REVIEWER, card2["ts"]))  # other reactions mean nothing
    await fake.wait_for(lambda: any(LABEL_APPROVED in t for t in context_texts(fake.thread(SUPPORT, ts1)[1])))
    await fake.wait_for(lambda: section_texts(fake.thread(SUPPORT, ts2)[1])[0] == WITHDRAWN_TEXT)
    states = await service.db.fetchall("SELECT id, state FROM review_items ORDER BY id")
    assert [r["state"] for r in states] == ["approved", "rejected"]
    # a ✅ on some other message in the reviewer channel is not a decision
    await http.event(reaction("white_check_mark", LISTED, "1234.5678"))
    await ask(http, fake, "one more question about sweating")  # handled after the reaction
    assert await service.db.fetchval("SELECT COUNT(*) FROM review_decisions") == 2


async def test_non_reviewer_is_refused_with_an_ephemeral_message(http_slack, fake):
    service, runner, http = http_slack
    ts, card = await ask(http, fake, "what is the best treatment for sweaty hands?")
    item = item_of(card)
    await http.interact(block_action(fake, "review_approve", item, STRANGER, card["ts"]))
    await http.interact(block_action(fake, "review_edit", item, STRANGER, card["ts"]))
    await http.event(reaction("white_check_mark", STRANGER, card["ts"]))
    refusals = await fake.wait_for(lambda: len(ephemerals(fake, STRANGER)) >= 3 and ephemerals(fake, STRANGER))
    assert all("reviewer" in text for text in refusals)
    assert all(c.args["channel"] == REVIEW for c in fake.calls_to("chat.postEphemeral"))
    assert not fake.calls_to("views.open")  # no edit window for them
    # even a forged view_submission cannot edit
    view = {"callback_id": "review_edit_modal", "private_metadata": json.dumps({"item_id": item, "channel": REVIEW})}
    status, body = await http.interact(view_submission(view, STRANGER, "my own answer"))
    assert "reviewer" in json.loads(body)["errors"]["edit_text"]
    assert await service.db.fetchval("SELECT state FROM review_items WHERE id = ?", (item,)) == "pending"
    assert await service.db.fetchval("SELECT COUNT(*) FROM review_audit WHERE action = 'refused'") >= 2
    # membership is read on every action: added to the group now, they may decide now
    fake.usergroups[GROUP].append(STRANGER)
    await http.interact(block_action(fake, "review_approve", item, STRANGER, card["ts"]))
    await fake.wait_for(lambda: any(LABEL_APPROVED in t for t in context_texts(fake.thread(SUPPORT, ts)[1])))


async def test_an_unexpected_error_still_answers_the_reviewer(http_slack, fake, monkeypatch):
    service, runner, http = http_slack
    ts, card = await ask(http, fake, "Do sweaty hands run in families?")

    async def broken(*args, **kwargs):
        raise RuntimeError("database is locked")

    monkeypatch.setattr(service.core, "decide", broken)
    await http.interact(block_action(fake, "review_approve", item_of(card), REVIEWER, card["ts"]))
    replies = await fake.wait_for(lambda: ephemerals(fake, REVIEWER))
    assert "Something went wrong" in replies[0] and "database" not in replies[0]


async def test_gated_mode_holds_the_reply_until_approved(tmp_path, fake):
    async with running(tmp_path, fake, review_mode="gated") as (service, runner):
        http = SignedHTTP(fake, runner.url)
        ts, card = await ask(http, fake, "Is it safe to use aluminium chloride every day?")
        held = fake.thread(SUPPORT, ts)[1]
        assert section_texts(held)[0] == GATED_TEXT
        await http.interact(block_action(fake, "review_approve", item_of(card), REVIEWER, card["ts"]))
        await fake.wait_for(lambda: "aluminium chloride" in section_texts(fake.thread(SUPPORT, ts)[1])[0])
        assert held["ts"] == fake.thread(SUPPORT, ts)[1]["ts"]  # the same message, now with the answer
        await http.close()


# ====================================================================== moderators


@pytest.mark.parametrize("name", COMMANDS)
async def test_every_slash_command_for_a_moderator(http_slack, fake, name, monkeypatch):
    service, runner, http = http_slack

    async def quick_retrain(job_id: int) -> None:  # the training pipeline is tested elsewhere
        from pipeline import jobs

        await jobs.finish(service.db, job_id, "succeeded", result={"version": "v2"})

    monkeypatch.setattr(service, "_run_retrain", quick_retrain)
    runner.platform.job_poll_s = 0.05
    status, body = await http.command(fake, f"/sweat-{name}", MODERATOR, response_name=f"r-{name}")
    assert status == 200
    reply = json.loads(body)
    assert reply["text"] and "Only moderators" not in reply["text"] and "failed" not in reply["text"]
    expected = {"status": "Model:", "retrain": "Retraining job #1 started", "rollback": "nothing to roll back",
                "eval": "No evaluation", "dataset": "Dataset:", "pause": "paused", "resume": "resumed"}[name]
    assert expected in reply["text"]
    if name == "pause":
        assert await service.core.is_paused()
        ts = new_ts()
        await http.event(message("are you there?", ts=ts))
        await fake.wait_for(lambda: any("paused" in m["text"] for m in fake.thread(SUPPORT, ts)))
    if name == "retrain":  # long work is reported through respond() when it ends
        responses = await fake.wait_for(lambda: fake.responses_to(f"r-{name}"))
        assert "Retraining job #1 succeeded" in responses[0]["text"]
        assert responses[0]["response_type"] == "ephemeral"
    audit = await service.db.fetchval("SELECT COUNT(*) FROM review_audit WHERE action = 'command' AND detail = ?", (name,))
    assert audit == 1


async def test_slash_commands_refused_for_patients_and_reviewers(http_slack, fake):
    service, runner, http = http_slack
    for user in (PATIENT, REVIEWER):
        for name in COMMANDS:
            status, body = await http.command(fake, f"/sweat-{name}", user)
            assert status == 200
            assert "Only moderators" in json.loads(body)["text"]
    assert not await service.core.is_paused()
    assert await service.db.fetchval("SELECT COUNT(*) FROM jobs") == 0


async def test_commands_ack_in_time_while_the_user_group_is_rate_limited(http_slack, fake):
    """usergroups.users.list answers 429 (Retry-After 4 s, longer than Slack's 3 s for an ack):
    a moderator's command is acknowledged in time, and answered."""
    service, runner, http = http_slack
    fake.rate_limit("usergroups.users.list", times=3, retry_after=4)
    started = time.monotonic()
    status, body = await http.command(fake, "/sweat-status", MODERATOR, response_name="limited")
    assert status == 200 and time.monotonic() - started < fake.ack_deadline_s
    assert not fake.late_acks
    assert "Model:" in json.loads(body)["text"]  # moderators are listed ids: nothing to wait for
    status, body = await http.command(fake, "/sweat-pause", REVIEWER)
    assert "Only moderators" in json.loads(body)["text"] and not fake.late_acks


async def test_edit_submission_acks_in_time_while_the_user_group_is_rate_limited(http_slack, fake):
    """A reviewer (by user group) saves an edit while usergroups.users.list answers 429 with
    Retry-After 4 s and nothing is cached: the modal closes within Slack's 3 s and the edit is
    applied once Slack answers the lookup."""
    service, runner, http = http_slack
    ts, card = await ask(http, fake, "Can I use antiperspirant on my feet?")
    view = blocks_edit_view(card)
    fake.rate_limit("usergroups.users.list", times=1, retry_after=4)
    started = time.monotonic()
    status, body = await http.interact(view_submission(view, REVIEWER, "Yes, at night on dry skin."))
    assert status == 200 and body == "" and time.monotonic() - started < fake.ack_deadline_s
    assert not fake.late_acks
    await fake.wait_for(lambda: section_texts(fake.thread(SUPPORT, ts)[1])[0] == "Yes, at night on dry skin.",
                        timeout=15)
    assert await service.db.fetchval("SELECT state FROM review_items WHERE id = ?", (item_of(card),)) == "edited"


@pytest.mark.slow  # waits out a 4 s Retry-After
async def test_buttons_ack_in_time_while_the_user_group_is_rate_limited(http_slack, fake):
    """A reviewer (by user group, nothing cached) clicks Approve while usergroups.users.list
    answers 429 with Retry-After 4 s: Slack gets its ack within 3 s, and the decision is
    applied once the lookup answers."""
    service, runner, http = http_slack
    ts, card = await ask(http, fake, "Does iontophoresis hurt?")
    fake.rate_limit("usergroups.users.list", times=1, retry_after=4)
    started = time.monotonic()
    status, body = await http.interact(block_action(fake, "review_approve", item_of(card), REVIEWER, card["ts"]))
    assert status == 200 and time.monotonic() - started < fake.ack_deadline_s
    assert not fake.late_acks
    await fake.wait_for(lambda: any(LABEL_APPROVED in t for t in context_texts(fake.thread(SUPPORT, ts)[1])),
                        timeout=15)


async def test_user_group_members_are_cached_and_newcomers_looked_up(http_slack, fake):
    """Once read, the group list answers without a call while it is fresh (a 429 then costs
    nothing); someone not in it is looked up again, so a member added now may review now."""
    service, runner, http = http_slack
    ts1, card1 = await ask(http, fake, "first question about sweaty palms")
    ts2, card2 = await ask(http, fake, "second question about sweaty palms", user=PATIENT2)
    await http.interact(block_action(fake, "review_approve", item_of(card1), REVIEWER, card1["ts"]))
    await fake.wait_for(lambda: any(LABEL_APPROVED in t for t in context_texts(fake.thread(SUPPORT, ts1)[1])))
    lookups = len(fake.attempts("usergroups.users.list"))
    fake.rate_limit("usergroups.users.list", times=1, retry_after=30)
    started = time.monotonic()
    await http.interact(block_action(fake, "review_approve", item_of(card2), REVIEWER, card2["ts"]))
    await fake.wait_for(lambda: any(LABEL_APPROVED in t for t in context_texts(fake.thread(SUPPORT, ts2)[1])))
    assert time.monotonic() - started < 3 and len(fake.attempts("usergroups.users.list")) == lookups
    fake._failures.clear()
    ts3, card3 = await ask(http, fake, "third question about sweaty palms")
    fake.usergroups[GROUP].append(STRANGER)
    await http.interact(block_action(fake, "review_approve", item_of(card3), STRANGER, card3["ts"]))
    await fake.wait_for(lambda: any(LABEL_APPROVED in t for t in context_texts(fake.thread(SUPPORT, ts3)[-1])))
    assert len(fake.attempts("usergroups.users.list")) == lookups + 1


def blocks_edit_view(card: dict[str, Any]) -> dict[str, Any]:
    """The edit modal as the app opens it for ``card`` (callback id and metadata are what a submission echoes)."""
    return {"callback_id": "review_edit_modal",
            "private_metadata": json.dumps({"item_id": item_of(card), "channel": REVIEW})}


async def test_slow_command_is_acknowledged_then_answered_through_respond(http_slack, fake, monkeypatch):
    service, runner, http = http_slack
    original = service.commands.run

    async def slow_run(actor, command, argument=None):
        await asyncio.sleep(0.6)  # past the ack budget (2 s in production, shortened here)
        return await original(actor, command, argument)

    monkeypatch.setattr(service.commands, "run", slow_run)
    runner.platform.ack_budget_s = 0.2
    started = time.monotonic()
    status, body = await http.command(fake, "/sweat-status", MODERATOR, response_name="slow")
    assert status == 200 and time.monotonic() - started < 0.6
    assert "Working on" in json.loads(body)["text"]
    responses = await fake.wait_for(lambda: fake.responses_to("slow"), timeout=5)
    assert "Model:" in responses[0]["text"]


async def test_command_names_are_configurable(tmp_path, fake):
    async with running(tmp_path, fake, command_prefix="clinic-", command_names={"dataset": "/examples"}) as (service, runner):
        http = SignedHTTP(fake, runner.url)
        status, body = await http.command(fake, "/clinic-status", MODERATOR)
        assert "Model:" in json.loads(body)["text"]
        status, body = await http.command(fake, "/examples", MODERATOR)
        assert "Dataset:" in json.loads(body)["text"]
        status, body = await http.command(fake, "/sweat-status", MODERATOR)
        assert status == 404  # no such command any more
        await http.close()


async def test_forget_me(http_slack, fake):
    service, runner, http = http_slack
    ts, card = await ask(http, fake, "please remember my sweaty palms")
    assert "sweaty palms" in json.dumps(fake.messages[card["ts"]])
    status, body = await http.command(fake, "/forget-me", PATIENT)
    prompt = json.loads(body)
    assert prompt["blocks"][1]["elements"][0]["action_id"] == "forget_me_confirm"
    confirm = block_action(fake, "forget_me_confirm", 0, PATIENT)
    confirm["actions"][0]["value"] = "confirm"
    confirm["response_url"] = fake.response_url("forget")
    await http.interact(confirm)
    responses = await fake.wait_for(lambda: fake.responses_to("forget"))
    assert "deleted" in responses[0]["text"]
    assert await service.db.fetchval("SELECT COUNT(*) FROM patients") == 0
    # (issue 12 item 4) the app's own messages in the patient's thread are deleted with chat.delete
    assert [m for m in fake.thread(SUPPORT, ts) if m.get("bot_id")] == []
    assert len(fake.calls_to("chat.delete")) == 2 and "I deleted 2 of my messages to you" in responses[0]["text"]
    assert await service.db.fetchval("SELECT COUNT(*) FROM messages") == 0
    # the review card already posted in the reviewer channel no longer shows what they wrote
    await fake.wait_for(lambda: "sweaty palms" not in json.dumps(fake.messages[card["ts"]]))
    assert not [b for b in fake.messages[card["ts"]]["blocks"] if b["type"] == "actions"]


async def test_forget_me_deletes_the_apps_messages_in_a_dm(http_slack, fake):
    """(issue 12 item 4) In a DM the app's messages (notice and replies) go with chat.delete; the
    patient's own stay theirs; nothing of the patient is left in the database."""
    service, runner, http = http_slack
    await ask(http, fake, "Quillfeather: my palms drip", channel=DM, channel_type="im")
    await ask(http, fake, "Quillfeather: and my feet?", channel=DM, channel_type="im")
    assert len([m for m in fake.channel_messages(DM) if m.get("bot_id")]) == 3  # notice + two replies
    await http.command(fake, "/forget-me", PATIENT)
    confirm = block_action(fake, "forget_me_confirm", 0, PATIENT)
    confirm["actions"][0]["value"] = "confirm"
    confirm["response_url"] = fake.response_url("forget-dm")
    await http.interact(confirm)
    responses = await fake.wait_for(lambda: fake.responses_to("forget-dm"))
    assert "I deleted 3 of my messages to you" in responses[0]["text"]
    assert [m for m in fake.channel_messages(DM) if m.get("bot_id")] == []
    dump = "\n".join(await service.db.run(lambda conn: list(conn.iterdump()), write=False))
    assert "Quillfeather" not in dump


# ====================================================================== the wire


async def test_bad_signatures_are_refused_with_401(http_slack, fake):
    service, runner, http = http_slack
    body = json.dumps(event_body(message("forged message")))
    assert (await http.post(body, "application/json", signature="v0=" + "0" * 64))[0] == 401
    assert (await http.post(body, "application/json", timestamp=int(time.time()) - 3600))[0] == 401  # replay
    forger = SignedHTTP(fake, runner.url, secret="not-the-secret")
    assert (await forger.event(message("forged message")))[0] == 401
    assert (await forger.command(fake, "/sweat-pause", MODERATOR))[0] == 401
    await forger.close()
    async with aiohttp.ClientSession() as session:
        async with session.post(runner.url, data=body, headers={"Content-Type": "application/json"}) as response:
            assert response.status == 401
        async with session.get(runner.url.rsplit("/", 2)[0] + "/healthz") as response:
            assert response.status == 200
    # a 401 is answered before anything is dispatched: nothing can still be on its way
    assert await service.db.fetchval("SELECT COUNT(*) FROM messages") == 0
    assert not await service.core.is_paused()
    assert not fake.calls_to("chat.postMessage")


async def test_url_verification_challenge(http_slack, fake):
    service, runner, http = http_slack
    status, body = await http.post(json.dumps({"token": "t", "challenge": "abc123", "type": "url_verification"}),
                                   "application/json")
    assert status == 200 and json.loads(body)["challenge"] == "abc123"


async def test_retried_event_is_answered_once(tmp_path, fake):
    # a slow model: Slack's retries (same event id, X-Slack-Retry-Num) arrive while the first is in flight
    async with running(tmp_path, fake, backend=FixedBackend(delay_s=0.5)) as (service, runner):
        http = SignedHTTP(fake, runner.url)
        event = message("my scalp sweats a lot, is that hyperhidrosis too?")
        assert (await http.event(event, event_id="Ev0RETRY"))[0] == 200
        assert (await http.event(event, event_id="Ev0RETRY", retry_num=1))[0] == 200
        assert (await http.event(event, event_id="Ev0RETRY", retry_num=2))[0] == 200
        await fake.wait_for(lambda: len(cards(fake)) == 1)
        # and a retry arriving after the app restarted (memory empty) is recognised from the database
        await runner.cleanup()
        runner2 = await start_slack(service)
        http2 = SignedHTTP(fake, runner2.url)
        assert (await http2.event(event, event_id="Ev0RETRY", retry_num=3))[0] == 200
        # a new question after the retry: once it is answered, the retry (handled first) was passed over
        after = message("and my feet sweat too, is that the same?")
        assert (await http2.event(after))[0] == 200
        await fake.wait_for(lambda: len(cards(fake)) == 2)
        assert len(fake.thread(SUPPORT, event["ts"])) == 2  # consent notice + one reply
        assert len(service.backend.calls) == 2
        assert await service.db.fetchval("SELECT COUNT(*) FROM messages") == 2
        await runner2.cleanup()
        await http.close()
        await http2.close()


async def test_web_api_ok_false_and_429_are_handled(http_slack, fake):
    service, runner, http = http_slack
    # Slack refuses the first post (ok: false): the message and reply are kept, nothing crashes
    fake.fail("chat.postMessage", "channel_not_found")
    event = message("question one about sweating")
    await http.event(event)
    await fake.wait_for(lambda: len(cards(fake)) == 1)
    assert await service.db.fetchval("SELECT COUNT(*) FROM replies") == 1
    # rate limited twice (HTTP 429 + Retry-After): the client waits and the reply arrives once
    fake.rate_limit("chat.postMessage", times=2, retry_after=0)
    ts, card = await ask(http, fake, "question two about sweating", user=PATIENT2)
    assert len([c for c in fake.attempts("chat.postMessage") if c.status == 429]) == 2
    assert len(fake.thread(SUPPORT, ts)) == 2  # notice + reply, none doubled
    # an ok:false from chat.update while deciding: the decision still stands
    fake.fail("chat.update", "message_not_found")
    await http.interact(block_action(fake, "review_approve", item_of(card), LISTED, card["ts"]))
    await fake.wait_for(lambda: len(fake.attempts("chat.update")) >= 2)
    assert await service.db.fetchval("SELECT state FROM review_items WHERE id = ?", (item_of(card),)) == "approved"
    # the usergroup lookup failing, with no list read before, falls back to listed reviewer ids
    # (and refuses the rest)
    fake.fail("usergroups.users.list", "missing_scope", times=5)
    ts3, card3 = await ask(http, fake, "question three about sweating")
    await http.interact(block_action(fake, "review_approve", item_of(card3), REVIEWER, card3["ts"]))
    await fake.wait_for(lambda: ephemerals(fake, REVIEWER))
    await http.interact(block_action(fake, "review_approve", item_of(card3), LISTED, card3["ts"]))
    await fake.wait_for(lambda: any(LABEL_APPROVED in t for t in context_texts(fake.thread(SUPPORT, ts3)[-1])))


async def test_message_of_20000_characters(http_slack, fake):
    service, runner, http = http_slack
    text = ("My hands sweat so much that paper gets wet. " * 460)[:20_000]
    assert len(text) == 20_000
    ts, card = await ask(http, fake, text)
    assert await service.db.fetchval("SELECT length(text) FROM messages") == 20_000  # stored whole
    thread = fake.thread(SUPPORT, ts)
    limit = service.settings.prompt.max_message_chars
    assert any(NOTICE_TOO_LONG.format(chars=limit)[:40] in m["text"] for m in thread)
    for msg in fake.channel_messages(SUPPORT) + fake.channel_messages(REVIEW):
        assert all(len(t) <= 3000 for t in section_texts(msg))
        assert len(msg["text"]) < 4000
        assert sum(len(t) for t in section_texts(msg) + context_texts(msg)) < 4000


async def test_block_kit_limits_hold_for_hostile_text():
    """Text dense with Slack's control characters (& < > grow when escaped) and newlines stays
    within every Block Kit limit on the patient's messages, the card and the modal."""
    from bot.platform import PatientView, ReviewCard, ViewKind
    from bot.slack_platform import blocks
    from reviewers.models import Rubric

    hostile = ("<!channel> & <@U123> >>> \n" * 900)[:20_000]
    card = ReviewCard(item_id=7, reply_id=7, patient_text=hostile, reply_text=hostile, task="diagnosis",
                      risk_flags=["red_flag:x"] * 50, adapter_version="v" * 500, state="pending",
                      decided_by=["Dr & <b>"] * 200)
    rendered = [blocks.review_card(card)]
    rendered += blocks.patient_messages(PatientView(ViewKind.REVIEWED, hostile, "AI-written & <reviewed>", hostile))
    for msg in rendered:
        assert len(msg["text"]) < 4000 and len(msg["blocks"]) <= 50
        assert all(len(t) <= 3000 for t in section_texts(msg) + context_texts(msg))
        assert all("<!channel>" not in t and "<@U123>" not in t for t in section_texts(msg) + context_texts(msg))
    modal = blocks.edit_modal(card, {"item_id": 7}, Rubric(accuracy=3))
    field = next(b for b in modal["blocks"] if b.get("block_id") == "edit_text")
    assert len(field["element"]["initial_value"]) <= 3000 and len(modal["title"]["text"]) <= 24
    assert all(len(b["text"]["text"]) <= 3000 for b in modal["blocks"] if b["type"] == "section")


async def test_long_reply_is_split_and_updated_in_place(tmp_path, fake):
    paragraph = "Sweating is controlled by the sympathetic nervous system, and treatments act at several points. "
    long_reply = "\n\n".join(paragraph * 6 for _ in range(16))  # about 9,000 characters
    async with running(tmp_path, fake, backend=FixedBackend(reply=long_reply)) as (service, runner):
        http = SignedHTTP(fake, runner.url)
        ts, card = await ask(http, fake, "tell me everything about the treatments for sweaty hands")
        parts = fake.thread(SUPPORT, ts)[1:]
        assert len(parts) >= 3
        assert all(len(section_texts(p)[0]) <= 3000 and len(p["text"]) < 4000 for p in parts)
        assert "".join(section_texts(p)[0] for p in parts).replace("\n", "").replace(" ", "") == \
            long_reply.replace("\n", "").replace(" ", "")
        assert any(LABEL_PENDING in t for t in context_texts(parts[-1]))
        assert not any(LABEL_PENDING in t for t in context_texts(parts[0]))
        assert all(len(section_texts(b)[0]) <= 3000 for b in [card])
        # an edit to a short text: the first part is updated, the rest removed
        await http.interact(block_action(fake, "review_edit", item_of(card), REVIEWER, card["ts"]))
        view = (await fake.wait_calls("views.open"))[0].args["view"]
        await http.interact(view_submission(view, REVIEWER, "Short, corrected answer."))
        await fake.wait_for(lambda: len(fake.thread(SUPPORT, ts)) == 2)
        assert section_texts(fake.thread(SUPPORT, ts)[1])[0] == "Short, corrected answer."
        assert fake.thread(SUPPORT, ts)[1]["ts"] == parts[0]["ts"]
        assert len(fake.deleted) == len(parts) - 1
        await http.close()


async def test_a_9000_character_reply_is_edited_whole_in_parts(tmp_path, fake):
    """The edit modal used to cut a reply to 3,000 characters without a word. A 9,000-character
    reply opens in several inputs (each within plain_text_input's 3,000) that join back exactly;
    the edit made in the last part reaches the patient with nothing lost."""
    from bot.slack_platform import blocks

    long_reply = "\n\n".join(f"Paragraph {i}: " + "Strong antiperspirants at night help many people. " * 14
                             for i in range(12))
    async with running(tmp_path, fake, backend=FixedBackend(reply=long_reply)) as (service, runner):
        http = SignedHTTP(fake, runner.url)
        ts, card = await ask(http, fake, "Tell me everything about the treatments, please")
        item = item_of(card)
        await http.interact(block_action(fake, "review_edit", item, REVIEWER, card["ts"]))
        view = (await fake.wait_calls("views.open"))[0].args["view"]
        inputs = {b["block_id"]: b["element"]["initial_value"] for b in view["blocks"] if b["type"] == "input"
                  and b["block_id"].startswith("edit_text")}
        assert len(inputs) >= 3 and all(len(v) <= 3000 for v in inputs.values())
        stored = (await service.reviews.item(item))["reply_text"]
        cuts = json.loads(view["private_metadata"])["cuts"]
        joined, errors = blocks.edited_text({b: {"text": {"value": v}} for b, v in inputs.items()}, cuts)
        assert joined == stored and not errors  # nothing cut
        last = max(inputs, key=lambda b: int(b.rsplit("_", 1)[-1]) if b[-1].isdigit() else 1)
        edited = {**inputs, last: inputs[last].replace("Paragraph 11:", "Paragraph 11 (checked by a dermatologist):")}
        status, body = await http.interact(view_submission(view, REVIEWER, None, parts=edited))
        assert status == 200 and body == ""
        expected = stored.replace("Paragraph 11:", "Paragraph 11 (checked by a dermatologist):")
        await fake.wait_for(lambda: any("checked by a dermatologist" in m["text"] for m in fake.thread(SUPPORT, ts)))
        assert (await service.reviews.item(item))["final_text"] == expected
        shown = " ".join(section_texts(m)[0] for m in fake.thread(SUPPORT, ts)[1:])
        assert shown.split() == expected.split()
        await http.close()


# ====================================================================== start-up


async def test_start_errors_are_one_clear_line(tmp_path, fake):
    from bot.service import Service

    settings = make_settings(tmp_path, fake, "socket", app_token=None)
    service = Service(settings, FixedBackend())
    await service.start(retry_loop=False)
    try:
        with pytest.raises(SlackStartError, match="APP_TOKEN"):
            await start_slack(service)
        service.settings.slack.app_token = load_settings(slack={"app_token": "xapp-wrong"}).slack.app_token
        with pytest.raises(SlackStartError, match=r"app-level token for Socket Mode \(invalid_auth\)"):
            await start_slack(service)
        service.settings.slack.bot_token = load_settings(slack={"bot_token": "xoxb-revoked"}).slack.bot_token
        with pytest.raises(SlackStartError, match=r"bot token \(invalid_auth\)") as info:
            await start_slack(service)
        assert "xoxb-revoked" not in str(info.value)
        service.settings.slack.mode = "http"
        service.settings.slack.signing_secret = None
        with pytest.raises(SlackStartError, match="SIGNING_SECRET"):
            await start_slack(service)
        assert "slack" not in service.core.platforms
    finally:
        await service.stop()


# ====================================================================== Socket Mode


async def test_socket_mode_full_loop(tmp_path, fake):
    async with running(tmp_path, fake, "socket") as (service, runner):
        opened = fake.calls_to("apps.connections.open")
        assert len(opened) == 1 and opened[0].token == APP_TOKEN
        await fake.wait_for(lambda: fake.socket_connections == 1)
        # a patient message arrives as an events_api envelope and is acknowledged by envelope id
        event = message("do sweat glands grow back after surgery?")
        body = event_body(event, "Ev0SOCKET")
        envelope = await fake.send_envelope("events_api", body)
        assert (await fake.wait_ack(envelope)) == {"envelope_id": envelope}
        await fake.wait_for(lambda: len(cards(fake)) == 1)
        # Slack's retry of the same event (retry_attempt 1) is acknowledged and not answered again
        retry = await fake.send_envelope("events_api", body, retry_attempt=1, retry_reason="timeout")
        await fake.wait_ack(retry)
        # the expert edits through the modal: an empty edit is refused in the ack payload
        card = cards(fake)[0]
        item = item_of(card)
        ack = await fake.wait_ack(await fake.send_envelope(
            "interactive", block_action(fake, "review_edit", item, REVIEWER, card["ts"])))
        assert ack["envelope_id"]
        view = (await fake.wait_calls("views.open"))[0].args["view"]
        ack = await fake.wait_ack(await fake.send_envelope("interactive", view_submission(view, REVIEWER, "")))
        assert ack["payload"]["response_action"] == "errors"
        ack = await fake.wait_ack(await fake.send_envelope(
            "interactive", view_submission(view, REVIEWER, "After surgery they do not grow back.")))
        assert "payload" not in ack or not ack["payload"]
        await fake.wait_for(
            lambda: section_texts(fake.thread(SUPPORT, event["ts"])[1])[0] == "After surgery they do not grow back.")
        await fake.wait_for(lambda: "Edited" in json.dumps(fake.messages[card["ts"]]["blocks"]))  # decision done
        # a moderator's slash command: the result comes back in the ack payload
        ack = await fake.wait_ack(await fake.send_envelope(
            "slash_commands", command_body(fake, "/sweat-dataset", MODERATOR)))
        assert "Dataset:" in ack["payload"]["text"] and "expert_edited 1" in ack["payload"]["text"]
        ack = await fake.wait_ack(await fake.send_envelope(
            "slash_commands", command_body(fake, "/sweat-status", PATIENT)))
        assert "Only moderators" in ack["payload"]["text"]
        # a reaction decides too
        ts2 = new_ts()
        await fake.send_envelope("events_api", event_body(message("second question: does iontophoresis work for sweaty feet?", ts=ts2, user=PATIENT2)))
        await fake.wait_for(lambda: len(cards(fake)) == 2)
        await fake.send_envelope("events_api", event_body(reaction("x", LISTED, cards(fake)[1]["ts"])))
        await fake.wait_for(lambda: section_texts(fake.thread(SUPPORT, ts2)[-1])[0] == WITHDRAWN_TEXT)
        assert len(fake.thread(SUPPORT, event["ts"])) == 2
        assert len(service.backend.calls) == 2
        # Slack refreshes Socket Mode connections: a new URL is fetched and events keep flowing
        await fake.ws.send_str(json.dumps({"type": "disconnect", "reason": "refresh_requested"}))
        await fake.wait_for(lambda: fake.socket_connections == 2 and not fake.ws.closed)
        assert len(fake.calls_to("apps.connections.open")) == 2
        ts3 = new_ts()
        later = message("after the reconnect: is sweating worse in summer?", ts=ts3, user=PATIENT2)
        await fake.send_envelope("events_api", event_body(later))
        await fake.wait_for(lambda: len(cards(fake)) == 3)
        assert len(fake.thread(SUPPORT, ts3)) == 1  # PATIENT2 already had the first-contact notice


# ====================================================================== the app manifest


@pytest.mark.parametrize("name", ["slack-manifest.yaml", "slack-manifest-http.yaml"])
async def test_manifest_matches_the_app(name):
    """The manifest an admin pastes must subscribe to what the app handles, with the scopes it uses."""
    from pathlib import Path

    import yaml

    from bot.settings import SlackSettings
    from bot.slack_platform import command_names

    manifest = yaml.safe_load((Path(__file__).parent.parent / "deploy" / name).read_text())
    commands = {c["command"] for c in manifest["features"]["slash_commands"]}
    assert commands == set(command_names(SlackSettings()).values())
    assert all(len(c["description"]) <= 100 for c in manifest["features"]["slash_commands"])
    assert len(manifest["display_information"]["description"]) <= 140
    events = set(manifest["settings"]["event_subscriptions"]["bot_events"])
    assert events == {"app_mention", "message.channels", "message.groups", "message.im", "reaction_added"}
    scopes = set(manifest["oauth_config"]["scopes"]["bot"])
    assert {"app_mentions:read", "channels:history", "groups:history", "im:history", "chat:write", "commands",
            "reactions:read", "usergroups:read", "users:read"} <= scopes
    assert manifest["settings"]["interactivity"]["is_enabled"] is True
    if name.endswith("-http.yaml"):
        assert manifest["settings"]["socket_mode_enabled"] is False
        url = manifest["settings"]["event_subscriptions"]["request_url"]
        assert url == manifest["settings"]["interactivity"]["request_url"]
        assert all(c["url"] == url for c in manifest["features"]["slash_commands"])
        assert url.endswith(SlackSettings().http_path)
    else:
        assert manifest["settings"]["socket_mode_enabled"] is True


# ====================================================================== the product's own command


@pytest.mark.slow
async def test_llm4sweat_run_connects_in_socket_mode(tmp_path, fake):
    """`llm4sweat run` with Slack tokens in the environment connects (Socket Mode by default),
    answers in the thread, posts the card, and disconnects cleanly on Ctrl-C."""
    import signal
    import sys

    env = {k: v for k, v in os.environ.items() if not k.startswith("LLM4SWEAT_")}
    env.update({
        "LLM4SWEAT_DATA_DIR": str(tmp_path),
        "LLM4SWEAT_INFERENCE__BACKEND": "fixed",
        "LLM4SWEAT_SLACK__BOT_TOKEN": BOT_TOKEN,
        "LLM4SWEAT_SLACK__APP_TOKEN": APP_TOKEN,
        "LLM4SWEAT_SLACK__API_BASE_URL": fake.base_url,
        "LLM4SWEAT_SLACK__SUPPORT_CHANNEL_IDS": json.dumps([SUPPORT]),
        "LLM4SWEAT_SLACK__REVIEWER_CHANNEL_ID": REVIEW,
        "LLM4SWEAT_SLACK__REVIEWER_USER_IDS": json.dumps([LISTED]),
    })
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", "from bot.cli import app; app()", "run", "--no-console", "--port", "0",
        env=env, cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
    try:
        await fake.wait_for(lambda: fake.socket_connections == 1 or proc.returncode is not None, timeout=90)
        assert proc.returncode is None
        event = message("Which antiperspirant works for sweaty hands?")
        await fake.send_envelope("events_api", event_body(event))
        card = (await fake.wait_for(lambda: cards(fake), timeout=30))[0]
        assert len(fake.thread(SUPPORT, event["ts"])) == 2
        await fake.send_envelope("interactive", block_action(fake, "review_approve", item_of(card), LISTED, card["ts"]))
        await fake.wait_for(lambda: any(LABEL_APPROVED in t for t in context_texts(fake.thread(SUPPORT, event["ts"])[1])))
    finally:
        if proc.returncode is None:
            proc.send_signal(signal.SIGINT)
        output = (await asyncio.wait_for(proc.communicate(), 60))[0].decode(errors="replace")
    assert proc.returncode == 0, output[-2000:]
    assert "connected in Socket Mode" in output and "slack: disconnected" in output
    assert BOT_TOKEN not in output and APP_TOKEN not in output


# ====================================================================== restarts


async def test_messages_posted_while_the_app_was_stopped_are_answered_once(tmp_path, fake):
    """Slack retries an event for a few minutes only: a follow-up in a patient's thread and a new
    question in the support channel, written while the app was stopped, are fetched when it
    starts (conversations.replies / conversations.history after the last stored message) and
    answered once; Slack's late retry of one of them, and another restart, answer nothing again."""
    async with running(tmp_path, fake) as (service, runner):
        http = SignedHTTP(fake, runner.url)
        ts, _ = await ask(http, fake, "Which antiperspirant works for hands?")
        await http.close()
    # while the app is stopped
    follow_up = fake.post_as_user(SUPPORT, PATIENT, "And does it work on feet too?", thread_ts=ts)
    question = fake.post_as_user(SUPPORT, PATIENT2, "Is hyperhidrosis hereditary?")
    fake.post_as_user(OTHER, STRANGER, "lunch anyone?")  # not a support channel: not read, not answered

    async with running(tmp_path, fake) as (service, runner):
        await asyncio.wait_for(runner.platform.caught_up.wait(), 10)
        assert len(service.backend.calls) == 2
        assert len(fake.thread(SUPPORT, ts)) == 3  # notice, the first answer, the follow-up's answer
        assert len(fake.thread(SUPPORT, question["ts"])) == 2  # a first contact: notice, answer
        replies = fake.calls_to("conversations.replies")
        assert [(c.args["ts"], c.args["oldest"]) for c in replies] == [(ts, ts)]
        assert {c.args["channel"] for c in fake.calls_to("conversations.history")} == {SUPPORT}
        # Slack's retry of the follow-up's event arrives late: recognised, not answered again
        http = SignedHTTP(fake, runner.url)
        assert (await http.event(follow_up, retry_num=3))[0] == 200
        await runner.platform.drain()
        await http.close()
        assert len(service.backend.calls) == 2
        assert await service.db.fetchval("SELECT COUNT(*) FROM messages") == 3

    async with running(tmp_path, fake) as (service, runner):
        await asyncio.wait_for(runner.platform.caught_up.wait(), 10)
        assert not service.backend.calls


async def test_the_judges_first_reading_appears_on_the_card(tmp_path, fake):
    """With an LLM judge (a local OpenAI-compatible server), the card is updated (chat.update) with its
    verdict as a context line; the buttons stay and nothing is decided."""
    from bot.service import Service
    from tests.openai_fake import FakeOpenAI

    verdict = json.dumps({"accuracy": 5, "appropriateness": 2, "empathy": 4, "reason": "no referral for a red flag"})
    async with FakeOpenAI(lambda body, i: verdict) as judge_server:
        settings = load_settings(data_dir=tmp_path, slack=slack_config(fake, "http"),
                                 judge={"enabled": True, "base_url": judge_server.base_url, "model": "judge"})
        service = Service(settings, FixedBackend())
        await service.start(retry_loop=False)
        runner = await start_slack(service)
        http = SignedHTTP(fake, runner.url)
        try:
            ts, card = await ask(http, fake, "Is hyperhidrosis hereditary?")
            line = "Judge: appropriateness 2/5 — no referral for a red flag"
            updated = await fake.wait_for(
                lambda: any(t.startswith(line) for t in context_texts(fake.messages[card["ts"]]))
                and fake.messages[card["ts"]])
            assert [e["action_id"] for b in updated["blocks"] if b["type"] == "actions" for e in b["elements"]][-3:] \
                == ["review_approve", "review_edit", "review_reject"]
            assert await service.db.fetchval("SELECT COUNT(*) FROM review_decisions") == 0
        finally:
            await http.close()
            await runner.cleanup()
            await service.stop()


# ====================================================================== results people compare, progress


async def test_retrain_result_has_table_fields_and_the_chart_uploaded(http_slack, fake, tmp_path):
    """The retraining result: Block Kit section fields (one per table row, models named as they are
    now), the chart shared in the result's thread through files.uploadV2; /eval answers with the
    same fields. No ASCII table anywhere."""
    from pipeline import evaluate as ev
    from pipeline import registry
    from pipeline import retrain as rt
    from tests.eval_records import record

    service, runner, http = http_slack
    evaluation = record("v2", live="v1")
    chart = ev.bar_chart(evaluation, tmp_path / "evaluation.png")
    for version in ("v1", "v2"):
        await registry.register(service.db, version, tmp_path / version, "base")
    await registry.set_status(service.db, "v1", "live")
    await registry.set_evaluation(service.db, "v2", evaluation)
    report = await rt.result_report(service.db, evaluation, {"png": str(chart)})
    await service.core.alert_moderators("Retraining job #1: adapter v2 trained on 40 examples.", report=report)

    [complete] = await fake.wait_calls("files.completeUploadExternal")
    [message] = [m for m in fake.channel_messages(REVIEW) if m["blocks"]]
    fields = [f["text"] for b in message["blocks"] if b["type"] == "section" for f in b.get("fields", [])]
    assert fields[0].splitlines() == ["*diagnosis*", "base model: 0.400 [0.22-0.61]", "v1 (live): 0.650 [0.43-0.82]",
                                      "v2 (candidate): 0.850 [0.64-0.95]", "Δ vs v1 (live): +0.200"]
    assert [f.splitlines()[0] for f in fields][:4] == ["*diagnosis*", "*treatment*", "*psychological support*", "*overall*"]
    assert "+--" not in json.dumps(message) and "ASCII table" not in json.dumps(message)
    [shared] = fake.files
    assert shared["channel"] == REVIEW and shared["thread_ts"] == message["ts"] and shared["data"] == chart.read_bytes()
    assert shared["title"] == "Evaluation of v2 (candidate)"

    await registry.set_status(service.db, "v1", "retired")
    await registry.set_status(service.db, "v2", "live")
    status, body = await http.command(fake, "/sweat-eval", MODERATOR)
    answer = json.loads(body)
    assert status == 200 and answer["text"].startswith("Evaluation of v2 (live)")
    fields = [f["text"] for b in answer["blocks"] if b["type"] == "section" for f in b.get("fields", [])]
    assert "v2 (live): 0.850 [0.64-0.95]" in fields[0] and "(candidate)" not in json.dumps(answer)
    assert not fake.invalid_responses


async def test_retrain_progress_is_one_message_edited_in_place(http_slack, fake, monkeypatch):
    """/retrain: one message in the reviewer channel shows the job with a progress bar, edited
    (chat.update) as training and evaluation go on; the moderator hears how it ended."""
    from pipeline import jobs

    service, runner, http = http_slack
    runner.platform.job_poll_s = 0.02
    steps = asyncio.Event()

    async def slow_retrain(job_id: int) -> None:
        await jobs.start(service.db, job_id)
        for text, fraction, phase in (("training v1: step 2/10", 0.2, "training"),
                                      ("training v1: step 10/10", 1.0, "training"),
                                      ("evaluating v1: questions 30/60", 0.5, "evaluating")):
            await jobs.progress(service.db, job_id, text, fraction, phase)
            await fake.wait_for(lambda: any(text in m["text"] for m in fake.channel_messages(REVIEW)))
        await steps.wait()
        await jobs.finish(service.db, job_id, "succeeded", result={"version": "v1"})

    monkeypatch.setattr(service, "_run_retrain", slow_retrain)
    status, body = await http.command(fake, "/sweat-retrain", MODERATOR, response_name="retrain")
    assert status == 200 and "Retraining job #1 started" in json.loads(body)["text"]
    [progress] = await fake.wait_for(lambda: [m for m in fake.channel_messages(REVIEW) if "evaluating v1" in m["text"]])
    assert "evaluating: ▓▓▓▓▓▓▓▓▓▓░░░░░░░░░░ 50%" in progress["text"]
    steps.set()
    await fake.wait_for(lambda: fake.responses_to("retrain"))
    [final] = [m for m in fake.channel_messages(REVIEW) if "Retraining job #1" in m["text"]]  # still one message
    assert final["ts"] == progress["ts"] and "succeeded" in final["text"]
    assert len(fake.calls_to("chat.update", lambda c: c.args.get("ts") == progress["ts"])) >= 3


async def test_a_chart_that_cannot_be_shared_does_not_repeat_the_result(http_slack, fake, tmp_path, caplog):
    """An app installed before files:write: the result is posted once with its fields, the chart
    is left out with a log line naming the scope, and the alert is not retried (no duplicate)."""
    from pipeline import evaluate as ev
    from pipeline import retrain as rt
    from tests.eval_records import record

    service, runner, http = http_slack
    fake.scopes.discard("files:write")
    evaluation = record("v2", live="v1")
    chart = ev.bar_chart(evaluation, tmp_path / "evaluation.png")
    report = await rt.result_report(service.db, evaluation, {"png": str(chart)})
    await service.core.alert_moderators("Retraining job #1: adapter v2 trained.", report=report)
    await fake.wait_for(lambda: fake.attempts("files.getUploadURLExternal"))
    assert (await service.core.outbox.stats())["pending"] == 0
    assert len([m for m in fake.channel_messages(REVIEW) if "Retraining job #1" in m["text"]]) == 1
    assert not fake.files and "add the files:write scope" in caplog.text
