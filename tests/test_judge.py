"""The LLM judge as a first reader, against a local OpenAI-compatible server (tests/openai_fake.py):
verdicts, malformed ones, timeouts and 5xx; off the answering path; shown on the card; orders the
queue; never a decision."""

from __future__ import annotations

import asyncio
import json
import logging
import time

import pytest

from bot.inference.fixed import FixedBackend
from bot.platform import IncomingMessage
from bot.service import Service
from bot.settings import load_settings
from reviewers import judge as judge_table
from reviewers.judge import JudgeUnavailable, parse_verdict
from reviewers.models import Action, Actor, Rubric
from tests.openai_fake import FakeOpenAI, Reply
from tests.recording_platform import RecordingPlatform

REVIEWER = Actor("local", "rev1", "Dr Rev", frozenset({"reviewer"}))
WRONG_DOSE = {"accuracy": 2, "appropriateness": 4, "empathy": 5, "reason": "states a wrong dose"}


def msg(text: str, user: str = "pat") -> IncomingMessage:
    return IncomingMessage("local", user, "console", user, text, display_name=user)


def verdict_json(**overrides) -> str:
    return json.dumps({**WRONG_DOSE, **overrides})


async def wait_for(check, timeout: float = 15.0):
    """Poll an async condition until it returns something truthy (or fail at the deadline)."""
    deadline = time.monotonic() + timeout
    while True:
        value = await check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError("condition not met before the deadline")
        await asyncio.sleep(0.02)


async def start_service(tmp_path, server: FakeOpenAI, **judge) -> tuple[Service, RecordingPlatform]:
    options = {"enabled": True, "base_url": server.base_url, "model": "judge-model", "timeout_s": 5.0,
               "max_attempts": 1, "retry_base_s": 0.05, **judge}
    settings = load_settings(data_dir=tmp_path, judge=options)
    service = Service(settings, FixedBackend(reply="Glycopyrronium tablets can reduce sweating all over; your doctor can tell you if they suit you."))
    platform = RecordingPlatform()
    service.add_platform(platform)
    await service.start(retry_loop=False)
    return service, platform


async def verdict_row(service: Service, item_id: int, statuses=("done", "unavailable")):
    row = await judge_table.verdict(service.db, item_id)
    return row if row is not None and row["status"] in statuses else None


def cards_for(platform: RecordingPlatform, item_id: int):
    return [c for c in platform.cards_updated if c.item_id == item_id]


# ---------------------------------------------------------------------------- parsing


def test_parse_verdict_reads_json_in_text_and_refuses_malformed_ones():
    fenced = "Here is my verdict:\n```json\n" + verdict_json() + "\n```\nThanks."
    assert parse_verdict(fenced).accuracy == 2
    chatty = "Sure. " + verdict_json(reason="fine\nreally") + " Hope this helps."
    parsed = parse_verdict(chatty)
    assert (parsed.appropriateness, parsed.reason) == (4, "fine really")  # one line
    assert parsed.lowest == ("accuracy", 2)
    for bad, why in [("", "empty"), ("I think it is good.", "no JSON object"),
                     (verdict_json(accuracy=7), "accuracy"), (verdict_json(empathy=4.5), "empathy"),
                     (json.dumps({"accuracy": 3, "appropriateness": 3, "empathy": 3}), "reason"),
                     (verdict_json(reason="   "), "reason"), ("[1, 2, 3]", "no JSON object")]:
        with pytest.raises(JudgeUnavailable, match=why):
            parse_verdict(bad)


# ---------------------------------------------------------------------------- end to end


async def test_verdict_is_stored_shown_on_the_card_and_never_a_decision(tmp_path):
    release = asyncio.Event()

    async def respond(body, index):
        await release.wait()  # the judge is slow: the patient must not wait for it
        return verdict_json()

    async with FakeOpenAI(respond) as server:
        service, platform = await start_service(tmp_path, server)
        try:
            result = await asyncio.wait_for(
                service.core.handle_message(msg("My name is Anna Smith. My hands sweat a lot; can glycopyrronium tablets help?")),
                timeout=10)
            assert result.status == "shown"  # answered and delivered while the judge is still reading
            await wait_for(lambda: asyncio.sleep(0, server.in_flight == 1))  # the judge is reading it now
            row = await verdict_row(service, result.item_id, ("judging",))
            assert row is not None and row["claimed_by"]
            card = await service.core.review_card(result.item_id)
            assert card.judge == "Judge: reading…"
            release.set()
            row = await wait_for(lambda: verdict_row(service, result.item_id))
            await wait_for(lambda: asyncio.sleep(0, cards_for(platform, result.item_id)))
        finally:
            await service.stop()
        # The verdict, in its own table.
        assert (row["status"], row["accuracy"], row["appropriateness"], row["empathy"], row["reason"]) == \
            ("done", 2, 4, 5, "states a wrong dose")
        # What the judge was asked: the rubric with structured output, the reply, relevant facts, the
        # question scrubbed of the patient's name.
        request = server.requests[0]
        assert request["model"] == "judge-model" and request["temperature"] == 0.0
        assert request["response_format"]["type"] == "json_schema"
        system, user = request["messages"][0]["content"], request["messages"][1]["content"]
        assert "glycopyrr" in system.lower()  # the pack's facts about the drug asked about
        assert "Glycopyrronium tablets can reduce sweating" in user and "Anna Smith" not in user and "[name]" in user
        # Shown on the card of every platform, as information.
        updated = cards_for(platform, result.item_id)
        assert updated and updated[-1].judge.startswith("Judge: accuracy 2/5 — states a wrong dose (appropriateness 4")
        assert "not a decision" in updated[-1].judge
        # Never a decision: the item still waits for a person, no decision or audit was recorded for it.
        service2 = Service(service.settings, FixedBackend())
        await service2.db.open()
        try:
            item = await service2.reviews.item(result.item_id)
            assert item["state"] == "pending" and await service2.reviews.decisions(result.item_id) == []
        finally:
            await service2.db.close()


async def test_structured_output_refused_falls_back_to_json_in_the_text(tmp_path):
    async with FakeOpenAI(lambda body, i: "My verdict: ```json\n" + verdict_json(accuracy=4) + "\n```",
                          json_schema=False) as server:
        service, platform = await start_service(tmp_path, server)
        try:
            first = await service.core.handle_message(msg("Does iontophoresis help sweaty hands?"))
            row = await wait_for(lambda: verdict_row(service, first.item_id))
            second = await service.core.handle_message(msg("And for feet?"))
            row2 = await wait_for(lambda: verdict_row(service, second.item_id))
        finally:
            await service.stop()
    assert row["status"] == row2["status"] == "done" and row["accuracy"] == 4
    formats = [(r.get("response_format") or {}).get("type") for r in server.requests]
    assert formats == ["json_schema", None, None]  # refused once, then JSON asked for in the prompt
    assert "Answer with one JSON object" in server.requests[1]["messages"][0]["content"]


@pytest.mark.parametrize("content, shown", [
    (verdict_json(accuracy=9), "Judge unavailable (malformed verdict: accuracy"),
    ("The reply looks fine to me.", "Judge unavailable (malformed verdict: no JSON object)"),
    (json.dumps({"accuracy": 3, "appropriateness": 3, "empathy": 3}), "Judge unavailable (malformed verdict: reason"),
])
async def test_malformed_verdicts_are_logged_and_shown_as_unavailable(tmp_path, caplog, content, shown):
    async with FakeOpenAI(lambda body, i: content) as server:
        service, platform = await start_service(tmp_path, server)
        try:
            with caplog.at_level(logging.WARNING, logger="bot.judging"):
                result = await service.core.handle_message(msg("Is sweating at night normal?"))
                row = await wait_for(lambda: verdict_row(service, result.item_id))
                await wait_for(lambda: asyncio.sleep(0, cards_for(platform, result.item_id)))
            # A reviewer decides as always; the judge's failure blocks nothing.
            outcome = await service.core.decide(result.item_id, REVIEWER, Action.APPROVE, rubric=Rubric(4, 4, 4))
        finally:
            await service.stop()
    assert row["status"] == "unavailable" and row["accuracy"] is None
    assert cards_for(platform, result.item_id)[0].judge.startswith(shown)
    assert any("no verdict for review item" in r.getMessage() and "malformed" in r.getMessage() for r in caplog.records)
    assert outcome.closed_now and outcome.state.value == "approved"


async def test_a_timeout_is_one_failed_attempt_then_unavailable(tmp_path, caplog):
    async with FakeOpenAI(lambda body, i: Reply(content=verdict_json(), delay=3.0)) as server:
        service, platform = await start_service(tmp_path, server, timeout_s=0.3)
        try:
            with caplog.at_level(logging.WARNING, logger="bot.judging"):
                started = time.monotonic()
                result = await service.core.handle_message(msg("Can botox help underarm sweating?"))
                assert time.monotonic() - started < 2.0  # the patient never waits for the judge
                row = await wait_for(lambda: verdict_row(service, result.item_id))
                card = await service.core.review_card(result.item_id)
        finally:
            await service.stop()
    assert row["status"] == "unavailable" and row["error"] == "timed out after 0.3 s" and row["attempts"] == 1
    assert card.judge == "Judge unavailable (timed out after 0.3 s)"
    assert any("timed out" in r.getMessage() for r in caplog.records)


async def test_a_5xx_is_retried_with_backoff_then_scored(tmp_path):
    def respond(body, index):
        return Reply.error_status(503, "overloaded") if index < 2 else verdict_json(empathy=1, reason="cold, no warmth")

    async with FakeOpenAI(respond) as server:
        service, platform = await start_service(tmp_path, server, max_attempts=3, retry_base_s=0.05)
        try:
            result = await service.core.handle_message(msg("I feel ashamed of my sweaty hands at work."))
            row = await wait_for(lambda: verdict_row(service, result.item_id))

            async def card_judged():  # the card update follows the verdict's commit
                return [c for c in cards_for(platform, result.item_id) if c.judge.startswith("Judge: empathy")]

            await wait_for(card_judged)
        finally:
            await service.stop()
    assert server.statuses == [503, 503, 200]
    assert row["status"] == "done" and row["attempts"] == 3 and row["empathy"] == 1
    assert cards_for(platform, result.item_id)[-1].judge.startswith("Judge: empathy 1/5 — cold, no warmth")


async def test_5xx_until_the_last_attempt_gives_up(tmp_path):
    async with FakeOpenAI(lambda body, i: Reply.error_status(500)) as server:
        service, platform = await start_service(tmp_path, server, max_attempts=2, retry_base_s=0.05)
        try:
            result = await service.core.handle_message(msg("Is hyperhidrosis hereditary?"))
            row = await wait_for(lambda: verdict_row(service, result.item_id))
        finally:
            await service.stop()
    assert server.statuses == [500, 500] and row["status"] == "unavailable" and row["error"] == "HTTP 500"


async def test_the_queue_puts_risk_flags_then_the_lowest_judge_score_first(tmp_path):
    scores = {"How long does botox last?": 5, "What is iontophoresis?": 2, "Is it genetic?": 3}

    def respond(body, index):
        user = body["messages"][1]["content"]
        low = next(score for question, score in scores.items() if question in user)
        return verdict_json(accuracy=max(low, 1), appropriateness=5, empathy=5, reason=f"score {low}")

    async with FakeOpenAI(respond) as server:
        service, _ = await start_service(tmp_path, server)
        try:
            ids = {}
            for n, question in enumerate(scores):
                ids[question] = (await service.core.handle_message(msg(question, user=f"p{n}"))).item_id
            # Not judged yet: a reply to a message with a warning sign (risk flag, not held).
            flagged = await service.core.handle_message(msg("My sweating started at 45 and soaks me at night, why?",
                                                            user="flag"))
            for item_id in ids.values():
                await wait_for(lambda item_id=item_id: verdict_row(service, item_id))
            order = [item["item_id"] for item in await service.reviews.pending()]
        finally:
            await service.stop()
    flags = json.loads((await _reply_flags(tmp_path, flagged.reply_id)))
    assert flags, "the test message should raise a risk flag"
    assert order[0] == flagged.item_id
    assert order[1:] == [ids["What is iontophoresis?"], ids["Is it genetic?"], ids["How long does botox last?"]]


async def _reply_flags(tmp_path, reply_id: int) -> str:
    from bot.storage import Database

    settings = load_settings(data_dir=tmp_path)
    db = await Database(settings.db_path).open()
    try:
        return await db.fetchval("SELECT risk_flags FROM replies WHERE id = ?", (reply_id,))
    finally:
        await db.close()


async def test_claims_are_compare_and_set_and_a_dead_claim_is_retaken(tmp_path):
    async with FakeOpenAI(lambda body, i: verdict_json()) as server:
        settings = load_settings(data_dir=tmp_path)  # no judge running: items wait
        service = Service(settings, FixedBackend())
        service.add_platform(RecordingPlatform())
        await service.start(retry_loop=False)
        try:
            first = await service.core.handle_message(msg("Do antiperspirants help?"))
            second = await service.core.handle_message(msg("What about tablets?", user="p2"))
            a = await judge_table.claim_due(service.db, "host:1:a", 10, stale_s=60)
            b = await judge_table.claim_due(service.db, "host:2:b", 10, stale_s=60)
            assert a == [first.item_id, second.item_id] and b == []  # two workers never judge one item
            # Process "a" died holding both claims: once stale, a new service judges them.
            await service.db.execute("UPDATE judge_verdicts SET claimed_at = claimed_at - 3600")
        finally:
            await service.stop()
        restarted, platform = await start_service(tmp_path, server)
        try:
            rows = [await wait_for(lambda i=i: verdict_row(restarted, i)) for i in (first.item_id, second.item_id)]
        finally:
            await restarted.stop()
    assert [r["status"] for r in rows] == ["done", "done"] and len(server.requests) == 2


async def test_forget_me_deletes_the_verdicts(tmp_path):
    async with FakeOpenAI(lambda body, i: verdict_json()) as server:
        service, _ = await start_service(tmp_path, server)
        try:
            result = await service.core.handle_message(msg("Why do my feet sweat so much?"))
            await wait_for(lambda: verdict_row(service, result.item_id))
            await service.core.forget_patient("local", "pat")
            assert await service.db.fetchval("SELECT COUNT(*) FROM judge_verdicts") == 0
        finally:
            await service.stop()


async def test_the_console_queue_shows_the_judge_line(tmp_path):
    import aiohttp

    from bot.local.web import start_console

    from bot.access import accounts

    async with FakeOpenAI(lambda body, i: verdict_json()) as server:
        service, _ = await start_service(tmp_path, server)
        await accounts.add(service.db, "rita", "reviewer", "a long enough password")
        runner, url = await start_console(service, "127.0.0.1", 0)
        try:
            result = await service.core.handle_message(msg("Do iontophoresis devices work for feet?"))
            await wait_for(lambda: verdict_row(service, result.item_id))
            async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as session:
                async with session.post(url + "api/login", json={"name": "rita", "password": "a long enough password"},
                                        headers={"Origin": url.rstrip("/")}) as response:
                    assert response.status == 200, await response.text()
                async with session.get(url + "api/reviews") as response:
                    items = (await response.json())["items"]
        finally:
            await runner.cleanup()
            await service.stop()
    assert items[0]["item_id"] == result.item_id
    assert items[0]["judge"].startswith("Judge: accuracy 2/5 — states a wrong dose")
