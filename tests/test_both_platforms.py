"""Discord and Slack in one process, sharing one review queue (issue 4: "Discord and Slack can
run in one process sharing one queue").

One real ``Service`` (fixed-reply backend) with both platforms started the way ``llm4sweat run``
starts them: the real discord.py client against ``tests.discord_fake.FakeDiscord`` and the real
slack-bolt app in HTTP mode (signed requests over real HTTP) against ``tests.slack_fake.FakeSlack``,
all on 127.0.0.1. The helpers that speak each platform's wire format are the ones the
single-platform suites use (``tests/test_discord.py``, ``tests/test_slack.py``).

What the core does with two platforms (``bot/core.py``, ``bot/effects.py``): every review card is
posted on every connected platform (one ``review_card`` outbox effect per platform) and its refs
are stored as one JSON object ``{"discord": "<channel>/<message>", "slack": "<channel>:<ts>"}``;
a decision on either platform reaches the patient on their own platform (the ``patient_view``
effect looks the conversation's platform up) and updates the card on both.
"""

from __future__ import annotations

import asyncio
import copy
import json
import time
from typing import Any, Awaitable, Callable

import pytest

from bot.core import LABEL_APPROVED, LABEL_EDITED, LABEL_PENDING, WITHDRAWN_TEXT
from bot.discord_platform import render, start_discord
from bot.inference.fixed import FixedBackend
from bot.settings import load_settings
from bot.slack_platform import start_slack
from tests.discord_fake import EPHEMERAL, FakeDiscord
from tests.slack_fake import FakeSlack
from tests.test_discord import reply_message, thread_texts
from tests.test_slack import (
    GROUP,
    LISTED,
    MODERATOR,
    PATIENT,
    REVIEW,
    REVIEWER,
    SUPPORT,
    SignedHTTP,
    block_action,
    slack_config,
    cards,
    context_texts,
    ephemerals,
    item_of,
    message,
    reaction,
    section_texts,
    view_submission,
)

# The fakes' servers and the bot share the session's event loop (pyproject).
pytestmark = pytest.mark.asyncio(loop_scope="session")

REPLY = "Primary focal hyperhidrosis is common and treatable. Strong antiperspirants are a usual first step."


async def eventually(probe: Callable[[], Any | Awaitable[Any]], what: str, timeout: float = 10.0) -> Any:
    """Poll ``probe`` (sync or async) until it returns something truthy."""
    deadline = time.monotonic() + timeout
    while True:
        value = probe()
        if asyncio.iscoroutine(value):
            value = await value
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.01)


class Both:
    """One service with Discord and Slack connected to their fakes."""

    def __init__(self, tmp_path, discord_fake: FakeDiscord, slack_fake: FakeSlack):
        self.tmp_path = tmp_path
        self.dc = discord_fake
        self.sl = slack_fake
        self.service = None
        self.discord_runner = None
        self.slack_runner = None
        self.http: SignedHTTP | None = None

    def settings(self):
        dc = self.dc
        discord_cfg = {
            "token": "test-token-not-a-secret",
            "guild_ids": [int(dc.guild_id)],
            "support_channel_ids": [int(dc.support_id)],
            "support_category_ids": [],
            "reviewer_channel_id": int(dc.reviewer_channel_id),
            "reviewer_role": "Reviewer",
            "moderator_role": "Moderator",
            "allow_dms": True,
            "card_edit_interval_s": 0.01,
            "progress_interval_s": 0.02,
        }
        return load_settings(data_dir=self.tmp_path, discord=discord_cfg, slack=slack_config(self.sl))

    async def start(self) -> "Both":
        from bot.service import Service

        self.backend = FixedBackend(reply=REPLY)
        self.service = Service(self.settings(), self.backend)
        await self.service.start(retry_loop=False)
        # the order `llm4sweat run` uses: Discord first, then Slack
        self.discord_runner = await start_discord(self.service, guild_ready_timeout=0.05, ready_timeout=15)
        self.slack_runner = await start_slack(self.service)
        self.http = SignedHTTP(self.sl, self.slack_runner.url)
        return self

    async def stop(self) -> None:
        if self.http is not None:
            await self.http.close()
        for runner in (self.slack_runner, self.discord_runner):
            if runner is not None:
                await runner.cleanup()
        if self.service is not None:
            await self.service.stop()

    @property
    def discord(self):
        return self.discord_runner.platform

    # ------------------------------------------------------------------ patients

    async def card_refs(self, item_id: int) -> dict[str, str]:
        raw = await self.service.db.fetchval("SELECT card_ref FROM review_items WHERE id = ?", (item_id,))
        return json.loads(raw) if raw else {}

    async def item_with_both_cards(self, platform: str, channel_id: str, thread_id: str) -> int:
        """The review item of the conversation's latest reply, once its card is recorded on both platforms."""

        async def probe():
            item = await self.service.db.fetchval(
                "SELECT i.id FROM review_items i JOIN replies r ON r.id = i.reply_id"
                " JOIN conversations c ON c.id = r.conversation_id"
                " WHERE c.platform = ? AND c.channel_id = ? AND c.thread_id = ? ORDER BY i.id DESC LIMIT 1",
                (platform, channel_id, thread_id))
            if item is None:
                return None
            refs = await self.card_refs(item)
            return item if {"discord", "slack"} <= set(refs) else None

        return await eventually(probe, f"the {platform} item's cards on both platforms")

    async def ask_on_discord(self, user_id: str, text: str) -> tuple[str, int]:
        """A Discord patient asks in the support channel; returns (thread id, review item id)."""
        question = await self.dc.say(user_id, self.dc.support_id, text)
        thread_id = question["id"]  # the bot opens a thread from the patient's message
        await self.dc.wait_for(lambda: any(REPLY in t for t in thread_texts(self.dc, thread_id)),
                               what="the Discord patient's answer")
        item = await self.item_with_both_cards("discord", self.dc.support_id, thread_id)
        return thread_id, item

    async def ask_on_slack(self, text: str, user: str = PATIENT) -> tuple[str, int]:
        """A Slack patient asks in the support channel; returns (message ts = thread, review item id)."""
        event = message(text, user=user)
        status, _ = await self.http.event(event)
        assert status == 200
        await self.sl.wait_for(lambda: len(self.sl.thread(SUPPORT, event["ts"])) >= 2)
        item = await self.item_with_both_cards("slack", SUPPORT, event["ts"])
        return event["ts"], item

    # ------------------------------------------------------------------ cards

    async def discord_card(self, item_id: int) -> dict[str, Any]:
        ref = (await self.card_refs(item_id))["discord"]
        channel_id, _, message_id = ref.partition("/")
        assert channel_id == self.dc.reviewer_channel_id
        return self.dc.messages[message_id]

    async def slack_card(self, item_id: int) -> dict[str, Any]:
        ref = (await self.card_refs(item_id))["slack"]
        channel, _, ts = ref.partition(":")
        assert channel == REVIEW
        return self.sl.messages[ts]

    # ------------------------------------------------------------------ moderators

    async def discord_status(self, moderator: str) -> str:
        interaction = await self.dc.slash(moderator, "status")
        await self.dc.wait_for(lambda: interaction.followups, what="/status answer on Discord")
        assert all(m["flags"] == EPHEMERAL for m in interaction.followups)
        return interaction.text

    async def slack_status(self) -> str:
        status, body = await self.http.command(self.sl, "/sweat-status", MODERATOR)
        assert status == 200
        return json.loads(body)["text"]



@pytest.fixture
async def discord_fake():
    server = await FakeDiscord().start()
    server.patch_library()
    yield server
    await server.stop()
    assert not server.late_interactions, "interactions answered after Discord's 3-second deadline"


@pytest.fixture
async def slack_fake():
    server = await FakeSlack().start()
    server.usergroups[GROUP] = [REVIEWER]
    yield server
    await server.stop()
    assert not server.late_acks, f"acknowledged too late for Slack: {server.late_acks}"
    assert not server.invalid_responses, f"payloads Slack would refuse: {server.invalid_responses}"


@pytest.fixture
async def both(tmp_path, discord_fake, slack_fake):
    harness = await Both(tmp_path, discord_fake, slack_fake).start()
    yield harness
    await harness.stop()


@pytest.fixture
def people(discord_fake):
    return {
        "patient": discord_fake.add_member("sam"),
        "reviewer": discord_fake.add_member("dr_lee", roles=("reviewer",)),
        "reviewer2": discord_fake.add_member("dr_kim", roles=("reviewer",)),
        "moderator": discord_fake.add_member("mod_jo", roles=("moderator",)),
    }


async def rate_on_discord(dc, user: str, card: dict[str, Any], item: int) -> None:
    """A Discord reviewer chooses the rubric scores on the card (approving or editing needs them)."""
    for criterion in ("accuracy", "appropriateness", "empathy"):
        rated = await dc.select(user, card["id"], f"l4s:rate:{criterion}:{item}", ["4"])
        await dc.wait_for(lambda: rated.responses, what=f"{criterion} rating acknowledged")


def slack_card_decided(card: dict[str, Any], state_word: str) -> bool:
    text = json.dumps(card["blocks"])
    return state_word in text and "Decided by" in text and not [b for b in card["blocks"] if b["type"] == "actions"]


def discord_state_field(card: dict[str, Any]) -> dict[str, Any]:
    return card["embeds"][0]["fields"][-1]


# ---------------------------------------------------------------------- one queue, cards everywhere


async def test_both_platforms_run_in_one_service_and_share_one_queue(both, people):
    dc, sl, service = both.dc, both.sl, both.service
    assert set(service.core.platforms) == {"discord", "slack"}
    assert dc.identifies == 1 and sl.calls[0].method == "auth.test"

    discord_thread, discord_item = await both.ask_on_discord(people["patient"], "My palms drip with sweat. Why?")
    slack_ts, slack_item = await both.ask_on_slack("My feet sweat through my socks. Is that normal?")
    assert discord_item != slack_item

    # one queue: both patients' replies are pending in the same review service
    pending = {p["item_id"]: p for p in await service.reviews.pending()}
    assert set(pending) == {discord_item, slack_item}
    assert pending[discord_item]["patient_text"] == "My palms drip with sweat. Why?"
    assert pending[slack_item]["patient_text"] == "My feet sweat through my socks. Is that normal?"
    platforms = await service.db.fetchall(
        "SELECT i.id, c.platform FROM review_items i JOIN replies r ON r.id = i.reply_id"
        " JOIN conversations c ON c.id = r.conversation_id ORDER BY i.id")
    assert {row[0]: row[1] for row in platforms} == {discord_item: "discord", slack_item: "slack"}
    assert len(both.backend.calls) == 2  # one model call per question, not one per platform

    # each patient is answered on their own platform only
    assert LABEL_PENDING in reply_message(dc, discord_thread)["content"]
    slack_reply = sl.thread(SUPPORT, slack_ts)[1]
    assert any(LABEL_PENDING in t for t in context_texts(slack_reply))
    assert not sl.calls_to("chat.postMessage", lambda c: c.args.get("channel") not in (SUPPORT, REVIEW))
    assert {m["channel_id"] for m in dc.messages.values() if m["author"]["id"] == dc.bot_id} == {
        discord_thread, dc.reviewer_channel_id}

    # every item has a card in BOTH reviewer channels (the core posts to every platform)
    assert len(dc.bot_messages(dc.reviewer_channel_id)) == 2
    assert len(cards(sl)) == 2
    for item, question in ((discord_item, "My palms drip"), (slack_item, "My feet sweat")):
        refs = await both.card_refs(item)
        assert set(refs) == {"discord", "slack"}
        d_card = await both.discord_card(item)
        assert d_card["embeds"][0]["title"].startswith(f"Review #{item}")
        fields = {f["name"]: f["value"] for f in d_card["embeds"][0]["fields"]}
        assert fields["Patient asked"].startswith(question)
        assert f"l4s:approve:{item}" in json.dumps(d_card["components"])
        s_card = await both.slack_card(item)
        assert item_of(s_card) == item
        assert question in json.dumps(s_card["blocks"])
        assert "review_approve" in json.dumps(s_card["blocks"])


# ---------------------------------------------------------------------- cross-platform decisions


async def test_slack_reviewer_edits_the_discord_patients_reply(both, people):
    dc, sl, service = both.dc, both.sl, both.service
    thread_id, item = await both.ask_on_discord(people["patient"], "Can I stop sweating forever?")
    answer_id = reply_message(dc, thread_id)["id"]
    d_card_before = copy.deepcopy(await both.discord_card(item))
    s_card = await both.slack_card(item)

    # the Slack reviewer presses Edit on the Slack card: the modal opens prefilled with the reply
    action = block_action(sl, "review_edit", item, REVIEWER, s_card["ts"], rubric={"accuracy": 3})
    status, _ = await both.http.interact(action)
    assert status == 200
    opened = (await sl.wait_calls("views.open"))[0]
    view = opened.args["view"]
    field = next(b for b in view["blocks"] if b.get("block_id") == "edit_text")
    assert field["element"]["initial_value"] == REPLY
    edited = "There is no permanent cure, but treatments work well. Please talk to a dermatologist."
    status, body = await both.http.interact(view_submission(view, REVIEWER, edited, rubric={"accuracy": 3, "appropriateness": 4, "empathy": 4}))
    assert status == 200 and body == ""

    # the Discord patient's message is edited in place through discord.py's REST route
    await dc.wait_for(lambda: dc.messages[answer_id]["content"].startswith(edited), what="the Discord reply edited")
    assert LABEL_EDITED in dc.messages[answer_id]["content"]
    assert dc.messages[answer_id]["edited_timestamp"] is not None
    edits = dc.calls_to("PATCH", rf"/channels/{thread_id}/messages/{answer_id}")
    assert len(edits) == 1 and edits[0].status == 200 and edits[0].body["content"].startswith(edited)
    assert REPLY not in " ".join(thread_texts(dc, thread_id))
    # nothing about it went to a Slack patient channel
    assert not sl.calls_to("chat.update", lambda c: c.args.get("channel") != REVIEW)

    # the Slack card shows the decision (the Discord card: see the test below)
    await sl.wait_for(lambda: slack_card_decided(sl.messages[s_card["ts"]], "Edited"))
    assert edited[:40] in json.dumps(sl.messages[s_card["ts"]]["blocks"])

    decision = await service.db.fetchone("SELECT * FROM review_decisions WHERE item_id = ?", (item,))
    assert (decision["reviewer_platform"], decision["reviewer_id"], decision["action"]) == ("slack", REVIEWER, "edit")
    assert decision["accuracy"] == 3
    example = await service.db.fetchone("SELECT source, messages, provenance FROM dataset_examples"
                                        " WHERE review_item_id = ?", (item,))
    assert example["source"] == "expert_edited" and edited in example["messages"]
    assert f"slack:{REVIEWER}" in example["provenance"]

    # later, a Discord reviewer still looking at the old card clicks Approve: refused idempotently
    dc.messages[d_card_before["id"]] = d_card_before
    click = await dc.click(people["reviewer"], d_card_before["id"], f"l4s:approve:{item}")
    await dc.wait_for(lambda: click.followups, what="the answer to the late click")
    assert "already edited" in click.text and click.followups[0]["flags"] == EPHEMERAL
    # and a ❌ reaction on the Discord card changes nothing either
    await dc.react(people["reviewer2"], dc.reviewer_channel_id, d_card_before["id"], render.REJECT_EMOJI)
    await eventually(lambda: service.db.fetchval(
        "SELECT COUNT(*) = 2 FROM review_audit WHERE item_id = ? AND action = 'ignored'", (item,)),
        "both late decisions recorded as ignored")
    assert (await service.reviews.item(item))["state"] == "edited"
    assert await service.db.fetchval("SELECT COUNT(*) FROM review_decisions WHERE item_id = ?", (item,)) == 1
    assert await service.db.fetchval("SELECT COUNT(*) FROM dataset_examples WHERE review_item_id = ?", (item,)) == 1
    assert dc.messages[answer_id]["content"].startswith(edited)  # the patient still sees the edit
    assert len(dc.calls_to("PATCH", rf"/channels/{thread_id}/messages/{answer_id}")) == 1


async def test_discord_reviewer_approves_the_slack_patients_reply(both, people):
    dc, sl, service = both.dc, both.sl, both.service
    ts, item = await both.ask_on_slack("Is hyperhidrosis hereditary?")
    reply_ts = sl.thread(SUPPORT, ts)[1]["ts"]
    d_card = await both.discord_card(item)
    s_card_before = copy.deepcopy(await both.slack_card(item))

    # rubric scores chosen on the Discord card, then Approve
    await rate_on_discord(dc, people["reviewer"], d_card, item)
    click = await dc.click(people["reviewer"], d_card["id"], f"l4s:approve:{item}")
    await dc.wait_for(lambda: click.followups, what="the Discord reviewer's confirmation")
    assert "approved" in click.text and click.followups[0]["flags"] == EPHEMERAL

    # chat.update reached Slack: the patient's reply is relabelled in place, not reposted
    updates = await sl.wait_calls("chat.update", where=lambda c: c.args.get("channel") == SUPPORT)
    assert len(updates) == 1 and updates[0].args["ts"] == reply_ts
    reply = sl.messages[reply_ts]
    assert any(LABEL_APPROVED in t for t in context_texts(reply))
    assert section_texts(reply)[0] == REPLY  # same text, now marked as reviewed
    assert len(sl.thread(SUPPORT, ts)) == 2  # consent notice + the same reply; nothing new posted

    # the Slack card shows the decision and who made it on Discord (the Discord card: see below)
    await sl.wait_for(lambda: slack_card_decided(sl.messages[s_card_before["ts"]], "Approved"))
    assert "dr_lee: approve" in json.dumps(sl.messages[s_card_before["ts"]]["blocks"])

    decision = await service.db.fetchone("SELECT * FROM review_decisions WHERE item_id = ?", (item,))
    assert (decision["reviewer_platform"], decision["reviewer_id"]) == ("discord", people["reviewer"])
    assert decision["empathy"] == 4
    example = await service.db.fetchone("SELECT source, provenance FROM dataset_examples WHERE review_item_id = ?",
                                        (item,))
    assert example["source"] == "expert_approved" and f"discord:{people['reviewer']}" in example["provenance"]

    # later, a Slack reviewer clicks Reject on the Slack card they still have on screen: refused
    updates_before = len(sl.calls_to("chat.update"))
    status, _ = await both.http.interact(block_action(sl, "review_reject", item, LISTED, s_card_before["ts"]))
    assert status == 200
    told = await sl.wait_for(lambda: ephemerals(sl, LISTED))
    assert "already approved" in told[0]
    # and a Slack ✅ reaction on the card is ignored too
    await both.http.event(reaction("white_check_mark", REVIEWER, s_card_before["ts"]))
    await eventually(lambda: service.db.fetchval(
        "SELECT COUNT(*) = 2 FROM review_audit WHERE item_id = ? AND action = 'ignored'", (item,)),
        "both late decisions recorded as ignored")
    assert (await service.reviews.item(item))["state"] == "approved"
    assert await service.db.fetchval("SELECT COUNT(*) FROM review_decisions WHERE item_id = ?", (item,)) == 1
    assert await service.db.fetchval("SELECT COUNT(*) FROM dataset_examples WHERE review_item_id = ?", (item,)) == 1
    assert len(sl.calls_to("chat.update")) == updates_before  # neither the reply nor a card was touched again
    assert any(LABEL_APPROVED in t for t in context_texts(sl.messages[reply_ts]))


async def test_discord_reviewer_edits_the_slack_patients_reply_through_the_form(both, people):
    dc, sl, service = both.dc, both.sl, both.service
    ts, item = await both.ask_on_slack("Can botox help with armpit sweating?")
    reply_ts = sl.thread(SUPPORT, ts)[1]["ts"]
    d_card = await both.discord_card(item)
    s_card = await both.slack_card(item)

    await rate_on_discord(dc, people["reviewer"], d_card, item)
    opened = await dc.click(people["reviewer"], d_card["id"], f"l4s:edit:{item}")
    await dc.wait_for(lambda: opened.responses, what="the Discord edit form")
    assert opened.modal is not None and opened.modal["components"][0]["component"]["value"] == REPLY
    edited = "Yes. Botulinum toxin injections reduce underarm sweating for several months. Ask a dermatologist."
    submitted = await dc.submit_modal(people["reviewer"], opened, {render.EDIT_TEXT_ID: edited})
    await dc.wait_for(lambda: submitted.followups, what="the Discord reviewer's confirmation")
    assert "edited" in submitted.text

    await sl.wait_for(lambda: section_texts(sl.messages[reply_ts])[0] == edited)
    assert any(LABEL_EDITED in t for t in context_texts(sl.messages[reply_ts]))
    assert sl.thread(SUPPORT, ts)[1]["ts"] == reply_ts  # updated in place with chat.update
    await sl.wait_for(lambda: slack_card_decided(sl.messages[s_card["ts"]], "Edited"))
    assert (await service.reviews.item(item))["state"] == "edited"


async def test_reactions_decide_across_platforms(both, people):
    dc, sl, service = both.dc, both.sl, both.service
    discord_thread, discord_item = await both.ask_on_discord(people["patient"], "Should I take pills for sweating?")
    slack_ts, slack_item = await both.ask_on_slack("Does iontophoresis work for sweaty hands?")
    discord_answer = reply_message(dc, discord_thread)["id"]
    slack_reply_ts = sl.thread(SUPPORT, slack_ts)[1]["ts"]

    # ❌ on Slack withdraws the Discord patient's reply; ✅ on Discord approves the Slack patient's reply
    await both.http.event(reaction("x", REVIEWER, (await both.slack_card(discord_item))["ts"]))
    await rate_on_discord(dc, people["reviewer"], await both.discord_card(slack_item), slack_item)
    await dc.react(people["reviewer"], dc.reviewer_channel_id, (await both.discord_card(slack_item))["id"],
                   render.APPROVE_EMOJI)
    await dc.wait_for(lambda: dc.messages[discord_answer]["content"] == WITHDRAWN_TEXT,
                      what="the Discord reply withdrawn")
    await sl.wait_for(lambda: any(LABEL_APPROVED in t for t in context_texts(sl.messages[slack_reply_ts])))
    states = {r["id"]: r["state"] for r in await service.db.fetchall("SELECT id, state FROM review_items")}
    assert states == {discord_item: "rejected", slack_item: "approved"}
    rows = await service.db.fetchall("SELECT item_id, reviewer_platform FROM review_decisions")
    assert {r[0]: r[1] for r in rows} == {discord_item: "slack", slack_item: "discord"}
    assert await service.db.fetchval("SELECT COUNT(*) FROM dataset_examples WHERE review_item_id = ?",
                                     (discord_item,)) == 0
    assert await service.db.fetchval("SELECT COUNT(*) FROM dataset_examples WHERE review_item_id = ?",
                                     (slack_item,)) == 1


@pytest.mark.parametrize("decided_on", ["slack", "discord"])
async def test_a_decision_updates_the_discord_card_too(both, people, decided_on):
    dc, sl = both.dc, both.sl
    thread_id, item = await both.ask_on_discord(people["patient"], "Is excessive sweating hereditary?")
    d_card = await both.discord_card(item)
    s_card = await both.slack_card(item)
    if decided_on == "slack":
        await both.http.interact(block_action(sl, "review_approve", item, REVIEWER, s_card["ts"]))
        who = f"{REVIEWER.lower()}: approve"
    else:
        await rate_on_discord(dc, people["reviewer"], d_card, item)
        click = await dc.click(people["reviewer"], d_card["id"], f"l4s:approve:{item}")
        await dc.wait_for(lambda: click.followups, what="confirmation")
        who = "dr_lee: approve"
    await dc.wait_for(lambda: LABEL_APPROVED in reply_message(dc, thread_id)["content"], what="the patient's reply")
    await sl.wait_for(lambda: slack_card_decided(sl.messages[s_card["ts"]], "Approved"))  # Slack's card: fine
    await both.discord.cards.flush()
    await dc.wait_for(lambda: discord_state_field(dc.messages[d_card["id"]])["name"] == "State: approved",
                      timeout=1, what="the Discord card updated")
    assert who in discord_state_field(dc.messages[d_card["id"]])["value"]
    assert dc.messages[d_card["id"]]["components"] == []  # closed: no buttons left on Discord


async def test_a_refused_reviewer_on_one_platform_does_not_close_the_item_on_the_other(both, people):
    dc, sl, service = both.dc, both.sl, both.service
    thread_id, item = await both.ask_on_discord(people["patient"], "Is it bad to sweat a lot?")
    s_card = await both.slack_card(item)
    await both.http.interact(block_action(sl, "review_approve", item, "U0STRANGER", s_card["ts"]))
    told = await sl.wait_for(lambda: ephemerals(sl, "U0STRANGER"))
    assert "reviewer" in told[0]
    assert (await service.reviews.item(item))["state"] == "pending"
    assert LABEL_PENDING in reply_message(dc, thread_id)["content"]
    # a Discord member without the reviewer role cannot decide the Slack copy's item either
    d_card = await both.discord_card(item)
    click = await dc.click(people["patient"], d_card["id"], f"l4s:approve:{item}")
    await dc.wait_for(lambda: click.followups, what="the refusal on Discord")
    assert "reviewer role" in click.text
    assert (await service.reviews.item(item))["state"] == "pending"
    assert "review_approve" in json.dumps(sl.messages[s_card["ts"]]["blocks"])  # still open on Slack


# ---------------------------------------------------------------------- moderators


async def test_status_on_either_platform_shows_the_combined_queue(both, people):
    dc, sl, service = both.dc, both.sl, both.service
    mod = people["moderator"]
    assert "Review queue: 0 pending" in await both.discord_status(mod)
    assert "Review queue: 0 pending" in await both.slack_status()

    _, discord_item = await both.ask_on_discord(people["patient"], "What is primary hyperhidrosis?")
    _, slack_item = await both.ask_on_slack("What is secondary hyperhidrosis?")
    for text in (await both.discord_status(mod), await both.slack_status()):
        assert "Review queue: 2 pending, 0 approved, 0 edited, 0 rejected" in text
        assert "Model: fixed-model" in text

    # one decided on each platform, the other platform's item
    click = await dc.click(people["reviewer"], (await both.discord_card(slack_item))["id"], f"l4s:reject:{slack_item}")
    await dc.wait_for(lambda: click.followups, what="the rejection confirmed")
    await both.http.interact(block_action(sl, "review_approve", discord_item, REVIEWER,
                                          (await both.slack_card(discord_item))["ts"]))
    await eventually(lambda: _closed(service, discord_item), "the Discord item approved from Slack")
    for text in (await both.discord_status(mod), await both.slack_status()):
        assert "Review queue: 0 pending, 1 approved, 0 edited, 1 rejected" in text
    # the Slack status is a slash-command answer visible only to the moderator
    assert not sl.calls_to("chat.postMessage", lambda c: "Review queue" in (c.args.get("text") or ""))


async def _closed(service, item_id: int) -> bool:
    item = await service.reviews.item(item_id)
    return item is not None and item["state"] != "pending"


# ---------------------------------------------------------------------- alerts


async def test_a_crisis_on_slack_alerts_moderators_on_both_platforms(both, people):
    dc, sl = both.dc, both.sl
    event = message("I can't cope with this any more, I want to die")
    await both.http.event(event)
    await sl.wait_for(lambda: [m for m in sl.channel_messages(REVIEW) if "Crisis" in m["text"]])
    alert = await dc.wait_for(lambda: [m for m in dc.bot_messages(dc.reviewer_channel_id) if "Urgent" in m["content"]],
                              what="the urgent alert on Discord")
    assert "on slack)" in alert[0]["content"] and alert[0]["content"].startswith(f"<@&{dc.moderator_role}>")
    assert not both.backend.calls  # the model is not asked
    assert not cards(sl) and not [m for m in dc.bot_messages(dc.reviewer_channel_id) if m["embeds"]]


# ---------------------------------------------------------------------- one platform failing


async def test_a_card_that_fails_on_slack_still_works_on_discord(both, people):
    dc, sl, service = both.dc, both.sl, both.service
    sl.fail("chat.postMessage", "channel_not_found")  # the only Slack post for a Discord patient is the card
    question = await dc.say(people["patient"], dc.support_id, "Do antiperspirants help with sweaty palms?")
    await dc.wait_for(lambda: dc.bot_messages(dc.reviewer_channel_id), what="the Discord card")
    await sl.wait_for(lambda: sl.attempts("chat.postMessage"))
    card = dc.bot_messages(dc.reviewer_channel_id)[0]
    item = await service.db.fetchval("SELECT id FROM review_items")

    async def discord_ref():
        return (await both.card_refs(item)).get("discord")

    try:
        ref = await eventually(discord_ref, "the Discord card ref stored despite Slack's failure", timeout=1)
    except AssertionError as exc:
        raise AssertionError(f"card_ref is {await both.card_refs(item)!r}") from exc
    assert ref == f"{dc.reviewer_channel_id}/{card['id']}"
    await rate_on_discord(dc, people["reviewer"], card, item)
    click = await dc.click(people["reviewer"], card["id"], f"l4s:approve:{item}")
    await dc.wait_for(lambda: click.followups, what="confirmation")
    await dc.wait_for(lambda: LABEL_APPROVED in reply_message(dc, question["id"])["content"], what="approval")
    await both.discord.cards.flush()
    await dc.wait_for(lambda: dc.messages[card["id"]]["components"] == [], what="the Discord card closed")
