"""The platform fakes are as strict as Discord and Slack (issue 15, "fakes as strict as the platforms").

Each test drives a fake through the real client library (discord.py's HTTP client, slack_sdk's
AsyncWebClient, raw Slack wire payloads) and checks that what the platform refuses is refused
here too, with the platform's own error, and that what it accepts at the limit is accepted. A
bot that passes the suite against these fakes cannot rely on a leniency the platforms lack.
"""

from __future__ import annotations

import asyncio
import json
import time

import aiohttp
import discord
import pytest
from aiohttp import web
from discord.http import Route
from slack_sdk.errors import SlackApiError
from slack_sdk.web.async_client import AsyncWebClient

from tests.discord_fake import CANNOT_MESSAGE_USER, FakeDiscord
from tests.slack_fake import APP_TOKEN, BOT_TOKEN, FakeSlack, SlackHTTP

pytestmark = pytest.mark.asyncio(loop_scope="session")


# ====================================================================== Discord


@pytest.fixture
async def dfake():
    server = await FakeDiscord().start()
    server.patch_library()
    yield server
    await server.stop()


@pytest.fixture
async def client(dfake):
    bot = discord.Client(intents=discord.Intents.none())
    await bot.login("test-token")
    yield bot
    await bot.close()


async def refused(coro) -> discord.HTTPException:
    with pytest.raises(discord.HTTPException) as info:
        await coro
    return info.value


def channel(client: discord.Client, channel_id: str) -> discord.PartialMessageable:
    return client.get_partial_messageable(int(channel_id))


async def test_discord_message_content_limit(client, dfake):
    where = channel(client, dfake.support_id)
    await where.send("x" * 2000)
    error = await refused(where.send("x" * 2001))
    assert (error.status, error.code) == (400, 50035) and "2000 or fewer" in error.text


@pytest.mark.parametrize("embeds, what", [
    ([discord.Embed(title="t" * 257)], "title"),
    ([discord.Embed(description="d" * 4097)], "description"),
    ([discord.Embed.from_dict({"fields": [{"name": f"f{i}", "value": "v"} for i in range(26)]})], "fields"),
    ([discord.Embed().add_field(name="n" * 257, value="v")], "name"),
    ([discord.Embed().add_field(name="n", value="v" * 1025)], "value"),
    ([discord.Embed().add_field(name="n", value="")], "value"),
    ([discord.Embed(description="d" * 4000).add_field(name="n", value="v" * 1024).add_field(name="m", value="w" * 1000)],
     "Embed size exceeds maximum size of 6000"),
])
async def test_discord_embed_limits(client, dfake, embeds, what):
    error = await refused(channel(client, dfake.support_id).send(embeds=embeds))
    assert error.code == 50035 and what in json.dumps(dfake.calls[-1].body) + error.text


async def test_discord_at_most_ten_embeds(client, dfake):
    """discord.py itself refuses an 11th embed, so the request is sent as raw JSON."""
    route = Route("POST", "/channels/{channel_id}/messages", channel_id=dfake.support_id)
    await client.http.request(route, json={"embeds": [{"description": "e"}] * 10})
    error = await refused(client.http.request(route, json={"embeds": [{"description": "e"}] * 11}))
    assert error.code == 50035 and "10 or fewer" in error.text


async def test_discord_embed_at_its_limits_is_accepted(client, dfake):
    embed = discord.Embed(title="t" * 256, description="d" * 3000)
    for i in range(2):
        embed.add_field(name=f"n{i}", value="v" * 1024)
    assert sum(len(x) for x in ("t" * 256, "d" * 3000)) + 2 * 1026 <= 6000
    await channel(client, dfake.support_id).send(embed=embed)


async def test_discord_custom_id_limit(client, dfake):
    view = discord.ui.View()
    view.add_item(discord.ui.Button(label="ok", custom_id="c" * 100))
    await channel(client, dfake.support_id).send("fine", view=view)
    view = discord.ui.View()
    view.add_item(discord.ui.Button(label="too long", custom_id="c" * 101))
    error = await refused(channel(client, dfake.support_id).send("refused", view=view))
    assert error.code == 50035 and "custom_id" in error.text


def modal(title: str = "Edit", label: str = "Reply", value: str = "v", placeholder: str | None = None,
          inputs: int = 1) -> dict:
    component = {"type": 4, "style": 2, "custom_id": "text", "value": value, "max_length": 4000}
    if placeholder is not None:
        component["placeholder"] = placeholder
    return {"type": 9, "data": {"custom_id": "form", "title": title,
                                "components": [{"type": 18, "label": label, "component": dict(component, custom_id=f"t{i}")}
                                               for i in range(inputs)]}}


async def respond(client: discord.Client, dfake: FakeDiscord, body: dict, age_s: float = 0.0):
    payload = dfake._interaction(3, dfake.add_member("someone"), dfake.support_id, {"custom_id": "x", "component_type": 2})
    dfake.interactions[payload["id"]].created_at -= age_s
    route = Route("POST", "/interactions/{interaction_id}/{interaction_token}/callback",
                  interaction_id=payload["id"], interaction_token=payload["token"])
    return await client.http.request(route, json=body)


@pytest.mark.parametrize("body, what", [
    (modal(title="t" * 46), "title"),
    (modal(label="l" * 46), "label"),
    (modal(value="v" * 4001), "value"),
    (modal(placeholder="p" * 101), "placeholder"),
    (modal(inputs=6), "components"),
])
async def test_discord_modal_limits(client, dfake, body, what):
    error = await refused(respond(client, dfake, body))
    assert error.code == 50035 and what in error.text


async def test_discord_modal_at_its_limits_is_accepted(client, dfake):
    await respond(client, dfake, modal(title="t" * 45, label="l" * 45, value="v" * 4000, placeholder="p" * 100, inputs=5))


async def test_discord_interaction_answered_after_three_seconds_is_unknown(client, dfake):
    await respond(client, dfake, {"type": 5, "data": {"flags": 64}}, age_s=2.5)  # in time
    error = await refused(respond(client, dfake, {"type": 5, "data": {"flags": 64}}, age_s=3.1))
    assert (error.status, error.code) == (404, 10062)
    assert len(dfake.late_interactions) == 1
    dfake.late_interactions.clear()


async def test_discord_forbidden_on_any_route_until_allowed(client, dfake):
    where = channel(client, dfake.reviewer_channel_id)
    dfake.forbid(rf"/channels/{dfake.reviewer_channel_id}/.*")
    error = await refused(where.send("card"))
    assert isinstance(error, discord.Forbidden) and error.code == 50013
    message = await channel(client, dfake.support_id).send("elsewhere is fine")
    assert message.content == "elsewhere is fine"
    dfake.allow()
    await where.send("card")
    member = dfake.add_member("closed-dms")
    dm = dfake.dm_channel(member)
    dfake.forbid(rf"/channels/{dm}/messages", code=CANNOT_MESSAGE_USER)
    error = await refused(channel(client, dm).send("hello"))
    assert isinstance(error, discord.Forbidden) and error.code == 50007


async def test_discord_archived_threads_refuse_edits_and_locked_ones_posts(client, dfake):
    patient = dfake.add_member("sam")
    question = await dfake.say(patient, dfake.support_id, "a question")
    await client.http.start_thread_with_message(dfake.support_id, question["id"], name="q", auto_archive_duration=60)
    thread = question["id"]
    answer = await channel(client, thread).send("an answer")
    await dfake.archive_thread(thread)
    error = await refused(answer.edit(content="edited"))
    assert error.code == 50083
    await channel(client, thread).send("posting unarchives it")
    assert not dfake.threads[thread]["thread_metadata"]["archived"]
    await answer.edit(content="edited")
    await dfake.archive_thread(thread, locked=True)
    error = await refused(channel(client, thread).send("refused in a locked thread"))
    assert error.code == 50083


async def test_discord_history_after_a_message(client, dfake):
    patient = dfake.add_member("sam")
    first = await dfake.say(patient, dfake.support_id, "one")
    later = [await dfake.say(patient, dfake.support_id, f"m{i}") for i in range(3)]
    got = [m async for m in channel(client, dfake.support_id).history(after=discord.Object(int(first["id"])), limit=None)]
    assert [m.content for m in got] == ["m0", "m1", "m2"]
    assert all(int(m.id) > int(first["id"]) for m in got) and later


async def test_discord_direct_messages_have_no_guild_fields(client, dfake):
    patient = dfake.add_member("sam")
    dm = dfake.dm_channel(patient)
    said = await dfake.say(patient, dm, "private")
    assert "guild_id" not in said and "member" not in said
    await channel(client, dm).send("reply")
    posted = dfake.bot_messages(dm)[0]
    assert "guild_id" not in posted and "member" not in posted
    payload = dfake._interaction(3, patient, dm, {"custom_id": "x", "component_type": 2})
    assert "guild_id" not in payload and "member" not in payload and payload["user"]["id"] == patient


# ====================================================================== Slack


@pytest.fixture
async def sfake():
    server = await FakeSlack().start()
    yield server
    await server.stop()


@pytest.fixture
async def web_client(sfake):
    return AsyncWebClient(token=BOT_TOKEN, base_url=sfake.base_url)


async def slack_error(coro) -> SlackApiError:
    with pytest.raises(SlackApiError) as info:
        await coro
    return info.value


async def test_slack_unknown_method_is_not_ok(web_client):
    error = await slack_error(web_client.api_call("conversations.invent"))
    assert error.response["error"] == "unknown_method"


def section(text: str) -> dict:
    return {"type": "section", "text": {"type": "mrkdwn", "text": text}}


def button(**overrides) -> dict:
    return dict({"type": "button", "action_id": "a", "value": "v", "text": {"type": "plain_text", "text": "OK"}},
                **overrides)


@pytest.mark.parametrize("blocks, pointer", [
    ([section("x")] * 51, "/blocks"),
    ([section("x" * 3001)], "/blocks/0/text/text"),
    ([{"type": "header", "text": {"type": "plain_text", "text": "h" * 151}}], "/blocks/0/text/text"),
    ([{"type": "actions", "elements": [button(text={"type": "plain_text", "text": "b" * 76})]}],
     "/blocks/0/elements/0/text/text"),
    ([{"type": "actions", "elements": [button(value="v" * 2001)]}], "/blocks/0/elements/0/value"),
    ([{"type": "actions", "elements": [button(action_id="a" * 256)]}], "/blocks/0/elements/0/action_id"),
    ([{"type": "context", "elements": [{"type": "mrkdwn", "text": "c"}] * 11}], "/blocks/0/elements"),
    ([section("")], "/blocks/0/text/text"),
])
async def test_slack_invalid_blocks(web_client, sfake, blocks, pointer):
    error = await slack_error(web_client.chat_postMessage(channel="C1", text="fallback", blocks=blocks))
    assert error.response["error"] == "invalid_blocks"
    assert any(f"[json-pointer:{pointer}]" in e for e in error.response["errors"])
    assert not sfake.messages


async def test_slack_message_at_its_limits_is_accepted_and_text_beyond_40000_is_not(web_client, sfake):
    blocks = [section("x" * 3000)] * 49 + [{"type": "actions", "elements": [button(value="v" * 2000, action_id="a" * 255)]}]
    await web_client.chat_postMessage(channel="C1", text="t" * 40_000, blocks=blocks)
    error = await slack_error(web_client.chat_postMessage(channel="C1", text="t" * 40_001))
    assert error.response["error"] == "msg_too_long"


def edit_view(blocks: int = 1, max_length: int = 3000, initial: str = "v") -> dict:
    field = {"type": "input", "block_id": "b", "label": {"type": "plain_text", "text": "Reply"},
             "element": {"type": "plain_text_input", "action_id": "t", "multiline": True,
                         "max_length": max_length, "initial_value": initial}}
    return {"type": "modal", "callback_id": "cb", "title": {"type": "plain_text", "text": "Edit"},
            "submit": {"type": "plain_text", "text": "Save"}, "blocks": [field] + [section("s")] * (blocks - 1)}


@pytest.mark.parametrize("view", [edit_view(blocks=101), edit_view(max_length=3001), edit_view(initial="v" * 3001),
                                  dict(edit_view(), title={"type": "plain_text", "text": "t" * 25})])
async def test_slack_modal_limits(web_client, view):
    error = await slack_error(web_client.views_open(trigger_id="1.2.3", view=view))
    assert error.response["error"] == "invalid_arguments"


async def test_slack_modal_at_its_limits_is_accepted(web_client):
    await web_client.views_open(trigger_id="1.2.3", view=edit_view(blocks=100, initial="v" * 3000))


async def test_slack_history_and_replies_since_a_timestamp(web_client, sfake):
    first = sfake.post_as_user("C1", "U1", "first")
    second = sfake.post_as_user("C1", "U1", "second")
    reply = sfake.post_as_user("C1", "U2", "in the thread", thread_ts=first["ts"])
    history = await web_client.conversations_history(channel="C1", oldest=first["ts"])
    assert [m["text"] for m in history["messages"]] == ["second"]  # newest first, exclusive, no replies
    replies = await web_client.conversations_replies(channel="C1", ts=first["ts"], oldest=second["ts"])
    assert [m["text"] for m in replies["messages"]] == ["first", "in the thread"] and reply


async def slow_app(delay_s: float, seen: list[dict]) -> tuple[web.AppRunner, str]:
    """A stand-in Request URL that answers after ``delay_s`` and records the retry headers."""

    async def handle(request: web.Request) -> web.Response:
        seen.append({"retry": request.headers.get("X-Slack-Retry-Num"),
                     "reason": request.headers.get("X-Slack-Retry-Reason"), "at": time.monotonic()})
        if len(seen) == 1:
            await asyncio.sleep(delay_s)
        return web.Response(text="")

    app = web.Application()
    app.router.add_post("/slack/events", handle)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    return runner, f"http://127.0.0.1:{site._server.sockets[0].getsockname()[1]}/slack/events"


async def test_slack_http_ack_after_the_deadline_is_a_failure_and_the_event_comes_again(sfake):
    sfake.ack_deadline_s = 0.3  # Slack's 3 s, scaled down for the test
    seen: list[dict] = []
    runner, url = await slow_app(0.6, seen)
    sender = SlackHTTP(sfake, url, "secret")
    try:
        body = json.dumps({"type": "event_callback", "event_id": "Ev1", "event": {"type": "message"}})
        status, _ = await sender.post(body, "application/json", kind="event")
        assert status == 200
        await sfake.wait_for(lambda: len(seen) == 2)
        assert seen[1]["retry"] == "1" and seen[1]["reason"] == "http_timeout"
        assert seen[1]["at"] - seen[0]["at"] < 0.55  # redelivered at the deadline, not after the answer
        assert [a["kind"] for a in sfake.late_acks] == ["event"]
        assert sfake.redeliveries == [{"event_id": "Ev1", "retry": 1, "reason": "http_timeout"}]
    finally:
        await sender.close()
        await runner.cleanup()


@pytest.mark.slow
async def test_slack_socket_mode_envelope_not_acked_in_time_is_sent_again(sfake):
    sfake.ack_deadline_s = 0.3
    async with aiohttp.ClientSession() as session:
        async with session.ws_connect(f"ws://127.0.0.1:{sfake.port}/socket") as ws:
            hello = await ws.receive_json()
            assert hello["type"] == "hello"
            await sfake.send_envelope("events_api", {"event_id": "Ev2", "event": {"type": "message"}})
            first = await ws.receive_json()
            second = await ws.receive_json(timeout=5)  # never acked: Slack tries again
            assert (first["retry_attempt"], second["retry_attempt"], second["retry_reason"]) == (0, 1, "timeout")
            await ws.send_str(json.dumps({"envelope_id": second["envelope_id"]}))
            await sfake.send_envelope("slash_commands", {"command": "/x"})
            command = await ws.receive_json()
            await sfake.wait_for(lambda: len(sfake.late_acks) == 2)  # the command's ack deadline passes unanswered
            assert [a["kind"] for a in sfake.late_acks] == ["events_api", "slash_commands"]
            assert command["type"] == "slash_commands"


async def test_slack_socket_mode_token_is_checked(sfake):
    client = AsyncWebClient(base_url=sfake.base_url)
    opened = await client.apps_connections_open(app_token=APP_TOKEN)
    assert opened["url"].startswith("ws://127.0.0.1")
    error = await slack_error(client.apps_connections_open(app_token="xapp-wrong"))
    assert error.response["error"] == "invalid_auth"
