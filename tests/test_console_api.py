"""The local console's JSON API over real HTTP on 127.0.0.1, on a fixed-reply backend.

The server is the real ``start_console`` (port 0) running in the test's event loop; requests
go through aiohttp client sessions, so routing, body parsing, error mapping, headers and
cookies are all exercised as the page uses them. The patient is a browser of its own (an
anonymous id in a cookie); the reviewer and the moderator sign in with accounts through
``POST /api/login``. Access control itself is tested in test_console_access.py.
"""

from __future__ import annotations

import json
from pathlib import Path

import aiohttp
import pytest

from bot.access import accounts
from bot.core import LABEL_EDITED, LABEL_PENDING, NOTICE_EMPTY, NOTICE_PAUSED, NOTICE_UNAVAILABLE
from bot.local.web import MAX_BODY_BYTES, STATIC_DIR, start_console

# The service fixture's loop is the session loop; the server must run in the same one.
pytestmark = pytest.mark.asyncio(loop_scope="session")

REVIEWER = "rita"  # a reviewer account
MODERATOR = "mo"  # a moderator account
PASSWORD = "a long enough password"


class Console:
    """One browser: its own cookie jar, and the Origin header a page of the console sends."""

    def __init__(self, url: str, session: aiohttp.ClientSession):
        self.url = url.rstrip("/")
        self.session = session

    async def get(self, path: str, **params) -> tuple[int, dict]:
        async with self.session.get(self.url + path, params=params) as resp:
            return resp.status, await resp.json()

    async def post(self, path: str, body=None, *, data: bytes | None = None,
                   content_type: str = "application/json") -> tuple[int, dict]:
        payload = data if data is not None else json.dumps(body).encode()
        headers = {"Content-Type": content_type, "Origin": self.url}
        async with self.session.post(self.url + path, data=payload, headers=headers) as resp:
            assert resp.content_type == "application/json", await resp.text()
            return resp.status, await resp.json()

    async def sign_in(self, name: str, password: str = PASSWORD) -> "Console":
        status, body = await self.post("/api/login", {"name": name, "password": password})
        assert status == 200, body
        return self

    async def say(self, text: str) -> dict:
        status, body = await self.post("/api/patient/messages", {"text": text})
        assert status == 200, body
        return body

    async def thread(self) -> list[dict]:
        status, body = await self.get("/api/patient/conversation")
        assert status == 200, body
        return body["entries"]

    async def decide(self, item_id: int, action: str = "approve", **extra) -> tuple[int, dict]:
        return await self.post(f"/api/reviews/{item_id}/decision", {"action": action, **extra})

    async def pending(self) -> list[dict]:
        status, body = await self.get("/api/reviews")
        assert status == 200, body
        return body["items"]


class Browsers:
    """The patient's browser (``say``/``thread``), a signed-in reviewer and a signed-in moderator."""

    def __init__(self, patient: Console, reviewer: Console, moderator: Console, new: "callable"):
        self.patient, self.reviewer, self.moderator, self.new = patient, reviewer, moderator, new
        self.url = patient.url
        self.say, self.thread, self.get, self.post = patient.say, patient.thread, patient.get, patient.post
        self.decide, self.pending = reviewer.decide, reviewer.pending


@pytest.fixture
async def console(service):
    await accounts.add(service.db, REVIEWER, "reviewer", PASSWORD)
    await accounts.add(service.db, MODERATOR, "moderator", PASSWORD)
    runner, url = await start_console(service, "127.0.0.1", 0)
    assert url.startswith("http://127.0.0.1:") and not url.endswith(":0/")
    sessions: list[aiohttp.ClientSession] = []

    def new() -> Console:
        # unsafe=True: keep cookies set by an IP-address host (127.0.0.1), as browsers do.
        sessions.append(aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)))
        return Console(url, sessions[-1])

    try:
        yield Browsers(new(), await new().sign_in(REVIEWER), await new().sign_in(MODERATOR), new)
    finally:
        for session in sessions:
            await session.close()
        await runner.cleanup()


def replies(entries: list[dict]) -> list[dict]:
    return [e for e in entries if e["type"] == "reply"]


async def dataset_rows(service, source: str | None = None) -> list:
    if source is None:
        return await service.db.fetchall("SELECT * FROM dataset_examples WHERE source LIKE 'expert%'")
    return await service.db.fetchall("SELECT * FROM dataset_examples WHERE source = ?", (source,))


# ---------------------------------------------------------------------------- the whole loop


async def test_message_reply_review_edit_dataset(console, service):
    sent = await console.say("My hands drip with sweat in every exam. What can I do?")
    assert sent["status"] == "shown" and sent["item_id"] and sent["reply_id"]
    assert sent["views"][-1]["label"] == LABEL_PENDING

    entries = await console.thread()
    assert [e["type"] for e in entries] == ["message", "notice", "reply"]  # the notice: consent on first contact
    assert entries[0]["text"].startswith("My hands drip") and entries[0]["status"] == "answered"
    reply = entries[-1]
    assert reply["kind"] == "pending_review" and reply["label"] == LABEL_PENDING
    assert reply["disclaimer"] == service.pack.disclaimer and reply["text"]

    pending = await console.pending()
    assert len(pending) == 1
    card = pending[0]
    assert card["item_id"] == sent["item_id"]
    assert card["patient_text"].startswith("My hands drip") and card["reply_text"] == reply["text"]
    assert card["task"] and isinstance(card["risk_flags"], list) and "adapter_version" in card

    edited = "Exam sweating is common with hyperhidrosis. Aluminium chloride at night helps many people; a doctor can advise."
    status, outcome = await console.decide(card["item_id"], action="edit", text=edited,
                                           accuracy=4, appropriateness=5, empathy="3")
    assert status == 200, outcome
    assert outcome["state"] == "edited" and outcome["closed_now"] and outcome["final_text"] == edited

    reply = replies(await console.thread())[-1]
    assert reply["kind"] == "reviewed" and reply["text"] == edited and reply["label"] == LABEL_EDITED
    assert await console.pending() == []

    status, counts = await console.reviewer.get("/api/dataset")
    assert status == 200 and counts["by_source"].get("expert_edited") == 1
    rows = await dataset_rows(service, "expert_edited")
    assert len(rows) == 1
    messages = json.loads(rows[0]["messages"])
    assert messages[-1] == {"role": "assistant", "content": edited}
    decision = await service.db.fetchone("SELECT * FROM review_decisions WHERE item_id = ?", (card["item_id"],))
    assert (decision["reviewer_id"], decision["accuracy"], decision["appropriateness"], decision["empathy"]) == (
        REVIEWER, 4, 5, 3)
    assert decision["reviewer_platform"] == "console"
    audited = await service.db.fetchval("SELECT actor FROM review_audit WHERE item_id = ? AND action = 'edit'",
                                        (card["item_id"],))
    assert audited == f"console:{REVIEWER}"  # the signed-in account, never a typed name

    status, agreement = await console.reviewer.get("/api/reviews/agreement")
    assert status == 200 and set(agreement["agreement"]["reviewers"]) >= {"action", "accuracy", "appropriateness", "empathy"}


async def test_a_patient_cannot_review_whatever_name_they_type(console, service):
    """The probe of issue 12: a patient typed " reviewer " and saved a harmful edit."""
    sent = await console.say("Is it normal that my feet sweat so much my shoes are wet?")
    for name in (" reviewer ", "reviewer", REVIEWER, "moderator", MODERATOR):
        status, body = await console.patient.post(f"/api/reviews/{sent['item_id']}/decision",
                                                  {"reviewer": name, "action": "edit", "text": "Stop all treatment."})
        assert status == 401 and "Sign in" in body["error"] and "Traceback" not in body["error"]
    assert [p["item_id"] for p in await console.pending()] == [sent["item_id"]]
    assert await service.db.fetchval("SELECT COUNT(*) FROM review_decisions") == 0
    assert await dataset_rows(service) == []
    assert replies(await console.thread())[-1]["kind"] == "pending_review"


async def test_a_name_in_the_body_does_not_change_who_decides(console, service):
    sent = await console.say("Do antiperspirants work on hands?")
    status, outcome = await console.reviewer.post(f"/api/reviews/{sent['item_id']}/decision",
                                                  {"reviewer": "someone-else", "action": "approve", "accuracy": 4,
                                                   "appropriateness": 4, "empathy": 4})
    assert status == 200 and outcome["state"] == "approved"
    decision = await service.db.fetchone("SELECT reviewer_platform, reviewer_id FROM review_decisions")
    assert tuple(decision) == ("console", REVIEWER)


async def test_deciding_twice_is_idempotent(console, service):
    sent = await console.say("Does botox help with underarm sweating?")
    status, first = await console.decide(sent["item_id"], action="approve", accuracy=5, appropriateness=5, empathy=4)
    assert status == 200 and first["state"] == "approved" and first["recorded"]
    for action, extra in (("approve", {}), ("edit", {"text": "A different text"}), ("reject", {})):
        status, again = await console.decide(sent["item_id"], action=action, **extra)
        assert status == 200 and again["recorded"] is False and again["state"] == "approved"
    assert len(await dataset_rows(service)) == 1
    reply = replies(await console.thread())[-1]
    assert reply["kind"] == "reviewed" and reply["text"] == sent["views"][-1]["text"]


async def test_reject_withdraws_the_reply(console, service):
    sent = await console.say("Can I cure sweating with a special diet?")
    status, outcome = await console.decide(sent["item_id"], action="reject", accuracy=1)
    assert status == 200 and outcome["state"] == "rejected"
    reply = replies(await console.thread())[-1]
    assert reply["kind"] == "withdrawn" and reply["text"] != sent["views"][-1]["text"]
    assert await dataset_rows(service) == []


async def test_review_errors_are_400(console, service):
    sent = await console.say("What is iontophoresis?")
    item = sent["item_id"]
    for body, needle in (
        ({"action": "edit", "text": "   "}, "empty"),
        ({"action": "maybe"}, "Unknown action"),
        ({"action": "approve", "accuracy": 6}, "accuracy"),
        ({"action": "approve", "empathy": "lots"}, "empathy"),
        ({"action": "approve", "empathy": True}, "empathy"),
        # (issue 11 item 5) approving or editing without every rubric score
        ({"action": "approve"}, "missing: accuracy, appropriateness, empathy"),
        ({"action": "approve", "accuracy": 4}, "missing: appropriateness, empathy"),
        ({"action": "edit", "text": "Better.", "accuracy": 4, "empathy": 4}, "missing: appropriateness"),
    ):
        status, error = await console.decide(item, **body)
        assert status == 400 and needle in error["error"], (body, error)
    status, error = await console.decide(999_999)
    assert status == 400 and "does not exist" in error["error"]
    status, error = await console.reviewer.post("/api/reviews/abc/decision", {"action": "approve"})
    assert status == 404 and "error" in error
    assert await service.db.fetchval("SELECT COUNT(*) FROM review_decisions") == 0
    assert [p["item_id"] for p in await console.pending()] == [item]


async def test_pending_list_high_priority_first(console, service):
    first = await console.new().say("First question about sweating.")
    second = await console.new().say("Second question about sweating.")
    await service.db.execute("UPDATE review_items SET priority = 'high' WHERE id = ?", (second["item_id"],))
    assert [p["item_id"] for p in await console.pending()] == [second["item_id"], first["item_id"]]


# ---------------------------------------------------------------------------- bad patient input


async def test_empty_and_whitespace_messages_get_a_notice(console, service):
    for text in ("", "   \n\t  "):
        body = await console.say(text)
        assert body["status"] == "empty" and body["message_id"] is None
        assert [v["text"] for v in body["views"]] == [NOTICE_EMPTY]
    assert await service.db.fetchval("SELECT COUNT(*) FROM messages") == 0
    assert await console.thread() == []


async def test_very_long_message_is_saved_whole_and_answered(console, service):
    text = ("My hands sweat all the time. " * 800)[:20_000]
    body = await console.say(text)
    assert body["status"] == "shown"
    assert any("very long" in v["text"] for v in body["views"])
    stored = await service.db.fetchval("SELECT text FROM messages WHERE id = ?", (body["message_id"],))
    assert len(stored) == len(text.strip())
    entries = await console.thread()
    assert entries[0]["type"] == "message" and len(entries[0]["text"]) == len(text.strip())
    assert replies(entries)


async def test_bad_requests_are_clear_400s(console, service):
    path = "/api/patient/messages"
    cases = [
        (dict(data=b"{not json"), 400, "not valid JSON"),
        (dict(data=b"[1, 2]"), 400, "JSON object"),
        (dict(data=b'"text"'), 400, "JSON object"),
        (dict(data=b""), 400, "not valid JSON"),
        (dict(data=b'{"text": "\xff\xfe"}'), 400, "UTF-8"),
        (dict(body={"user": "a"}), 400, "'text'"),
        (dict(body={"text": 42}), 400, "string"),
        (dict(body={"text": ["hi"]}), 400, "string"),
        (dict(body={"text": "hi"}, content_type="text/plain"), 415, "JSON"),
        (dict(data=b'{"text": "' + b"x" * (MAX_BODY_BYTES + 10) + b'"}'), 413, "too large"),
    ]
    for kwargs, expected, needle in cases:
        status, body = await console.post(path, **kwargs)
        assert status == expected and needle in body["error"], (kwargs.get("body"), status, body)
        assert "Traceback" not in body["error"]
    assert await service.db.fetchval("SELECT COUNT(*) FROM messages") == 0
    status, body = await console.get("/api/nothing-here")
    assert status == 404 and "error" in body


async def test_unexpected_failure_is_a_json_500_without_traceback(console, service, monkeypatch, caplog):
    async def broken(msg):
        raise RuntimeError("database exploded")

    monkeypatch.setattr(service.core, "handle_message", broken)
    status, body = await console.post("/api/patient/messages", {"text": "hi"})
    assert status == 500
    assert "logged" in body["error"] and "exploded" not in body["error"] and "Traceback" not in body["error"]
    assert any("console POST /api/patient/messages failed" in r.getMessage() for r in caplog.records)


async def test_model_outage_shows_saved_notice_and_alerts_moderators(console, service):
    service.backend.fail_with = "connection refused"
    body = await console.say("Why do I sweat at night?")
    assert body["status"] == "queued_retry"
    entries = await console.thread()
    message = entries[0]
    assert message["status"] == "queued_retry" and "saved" in message["status_text"]
    assert NOTICE_UNAVAILABLE in [e["text"] for e in entries if e["type"] == "notice"]
    status, alerts = await console.moderator.get("/api/moderator/alerts")
    assert status == 200
    assert any("failing" in a["text"] for a in alerts["alerts"])
    assert any(i["kind"] == "model_unavailable" for i in alerts["incidents"])

    service.backend.fail_with = None
    status, reply = await console.moderator.post("/api/moderator/command", {"command": "resume"})
    assert status == 200 and reply["data"]["answered"] == 1
    entries = await console.thread()
    assert entries[0]["status"] == "answered" and replies(entries)


async def test_crisis_message_shows_resources_and_alerts_moderators(console, service):
    body = await console.say("I can't take this sweating anymore, I want to kill myself.")
    assert body["status"] == "crisis"
    entries = await console.thread()
    assert entries[0]["status"] == "crisis"
    crisis = [e for e in entries if e["type"] == "notice" and e["kind"] == "crisis"]
    assert len(crisis) == 1 and crisis[0]["text"]
    assert replies(entries) == []  # never a model reply to a crisis message
    status, alerts = await console.moderator.get("/api/moderator/alerts")
    assert status == 200 and any(a["urgent"] for a in alerts["alerts"])
    assert any(i["kind"] == "crisis" for i in alerts["incidents"])


async def test_a_person_of_the_care_team_is_labelled_as_a_person(console, service):
    """A moderator who takes a crisis case over and writes to the patient is shown on the patient's
    page with who wrote it — a person, not the AI (the label was dropped on the console)."""
    await console.say("I can't take this sweating anymore, I want to kill myself.")
    status, body = await console.moderator.post("/api/moderator/command", {"command": "case", "argument": "list"})
    assert status == 200, body
    case_id = body["text"].split()[0].lstrip("#")
    for argument in (f"take {case_id}", f"reply {case_id} I am here with you. Are you safe right now?"):
        status, body = await console.moderator.post("/api/moderator/command", {"command": "case", "argument": argument})
        assert status == 200 and body["ok"], body
    person = [e for e in await console.thread() if e["type"] == "notice" and e["kind"] == "person"]
    assert [e["text"] for e in person] == ["I am here with you. Are you safe right now?"]
    assert person[0]["label"] == f"Written by {MODERATOR}, a person from the care team — not the AI", person


async def test_a_reviewer_takes_over_answers_and_resolves_a_case_in_the_console(console, service):
    """Issue 14 item 6 in the console: the reviewer's case routes; the patient's browser is refused."""
    await console.say("I can't take this sweating anymore, I want to kill myself.")
    status, body = await console.reviewer.get("/api/cases")
    assert status == 200 and len(body["cases"]) == 1 and "NOBODY has taken it" in body["cases"][0]["line"]
    case_id = body["cases"][0]["id"]
    status, _ = await console.post(f"/api/cases/{case_id}/take", {})  # the patient's own browser
    assert status in (401, 403)
    await console.say("Which antiperspirant works best?")  # held: the reviewer sees why
    held = [i for i in await console.pending() if i["patient_text"] == "Which antiperspirant works best?"]
    assert held and f"crisis case #{case_id} is open in this conversation" in held[0]["hold_reason"]
    status, body = await console.reviewer.post(f"/api/cases/{case_id}/take", {})
    assert status == 200 and body["case"]["taken_by"] == f"console:{REVIEWER}", body
    status, body = await console.reviewer.post(f"/api/cases/{case_id}/reply", {"text": "I'm here. Are you safe?"})
    assert status == 200, body
    # The panel shows what the patient wrote and what was sent (no review card has the crisis message).
    status, body = await console.reviewer.get("/api/cases")
    assert "patient: I can't take this sweating anymore" in body["cases"][0]["text"], body
    assert f"console:{REVIEWER} (person): I'm here. Are you safe?" in body["cases"][0]["text"], body
    person = [e for e in await console.thread() if e["type"] == "notice" and e["kind"] == "person"]
    assert [e["text"] for e in person] == ["I'm here. Are you safe?"] and "not the AI" in person[0]["label"]
    status, body = await console.reviewer.post(f"/api/cases/{case_id}/resolve", {"note": ""})
    assert status == 400 and "outcome note" in body["error"]
    status, body = await console.reviewer.post(f"/api/cases/{case_id}/resolve", {"note": "safe, with her sister"})
    assert status == 200 and body["case"]["outcome_note"] == "safe, with her sister"
    status, body = await console.reviewer.get("/api/cases")
    assert body["cases"] == []


async def test_a_check_in_sent_only_to_the_page_is_shown(console, service):
    """A possible crisis's check-in is a crisis notice that is not stored with the message; the
    page shows it (reading stored crisis resources from the database must not hide it)."""
    from bot.platform import ConversationRef, PatientView, ViewKind

    body = await console.say("Why do my feet sweat in winter?")
    user = await service.db.fetchval("SELECT thread_id FROM conversations WHERE id = ?", (body["conversation_id"],))
    ref = ConversationRef(body["conversation_id"], "local", "console", user, user)
    await service.core.platforms["local"].send_to_patient(ref, PatientView(ViewKind.CRISIS, "Just checking in: are you OK?"))
    crisis = [e["text"] for e in await console.thread() if e["type"] == "notice" and e["kind"] == "crisis"]
    assert crisis == ["Just checking in: are you OK?"]


async def test_crisis_resources_and_a_carers_words_stay_on_the_page_after_a_restart(console, service):
    """The page read them from the console's memory: after a restart a patient in crisis saw
    their message with nothing under it (and no consent notice to answer). They come from the
    database now, once each, the consent notice first and the resources after it."""
    await console.say("I can't take this sweating anymore, I want to kill myself.")
    status, body = await console.moderator.post("/api/moderator/command", {"command": "case", "argument": "list"})
    case_id = body["text"].split()[0].lstrip("#")
    status, body = await console.moderator.post("/api/moderator/command",
                                                {"command": "case", "argument": f"reply {case_id} Are you safe?"})
    assert status == 200 and body["ok"], body

    def shown(entries: list[dict]) -> list[tuple[str, str]]:
        return [(e["kind"], e["text"][:20]) for e in entries if e["type"] == "notice"]

    before = shown(await console.thread())
    assert [kind for kind, _ in before] == ["consent", "crisis", "person"] and before[2][1] == "Are you safe?", before
    service.core.platforms["local"].notices.clear()  # what a restart leaves of them
    assert shown(await console.thread()) == before


async def test_forget_deletes_the_patient(console, service):
    await console.say("Please remember that my armpits sweat.")
    status, body = await console.post("/api/patient/forget", {})
    assert status == 200 and body["deleted"] is True
    assert await console.thread() == []
    assert await service.db.fetchval("SELECT COUNT(*) FROM messages") == 0
    status, body = await console.post("/api/patient/forget", {})
    assert status == 200 and body["deleted"] is False


async def test_typed_forget_me_leaves_no_old_notices_behind(console, service):
    await console.say("Something private about my sweating.")
    body = await console.say("/forget-me")
    assert body["message_id"] is None and body["views"]  # answered on the spot, not stored in a thread
    assert await console.thread() == []
    await console.say("A fresh start: does sweating get better with age?")
    entries = await console.thread()
    assert [e["type"] for e in entries] == ["message", "notice", "reply"]  # one consent notice, nothing older
    assert all("private" not in e["text"] for e in entries)


# ---------------------------------------------------------------------------- moderator


async def test_moderator_commands_need_the_role(console, service):
    for who, expected in ((console.patient, 401), (console.reviewer, 403)):
        status, body = await who.post("/api/moderator/command", {"moderator": MODERATOR, "command": "pause"})
        assert status == expected and ("Sign in" if expected == 401 else "moderators") in body["error"]
        assert not await service.core.is_paused()
        for path in ("/api/moderator/status", "/api/moderator/alerts"):
            status, body = await who.get(path, moderator=MODERATOR)
            assert status == expected, (path, body)
    refused = await service.db.fetchall("SELECT actor, detail FROM review_audit WHERE action = 'refused' ORDER BY id")
    assert [r["actor"] for r in refused] == [f"console:{REVIEWER}"] * 3  # who tried is on the trail
    assert refused[0]["detail"] == "POST /api/moderator/command: lacks the moderator role"


async def test_moderator_commands_are_audited_with_the_account(console, service):
    status, body = await console.moderator.post("/api/moderator/command", {"command": "pause"})
    assert status == 200 and body["ok"]
    status, body = await console.moderator.post("/api/moderator/command", {"command": "resume"})
    assert status == 200 and body["ok"]
    rows = await service.db.fetchall("SELECT actor, detail FROM review_audit WHERE action = 'command' ORDER BY id")
    assert [tuple(r) for r in rows] == [(f"console:{MODERATOR}", "pause"), (f"console:{MODERATOR}", "resume")]


async def test_moderator_status_pause_resume_dataset(console, service):
    status, body = await console.moderator.get("/api/moderator/status")
    assert status == 200 and "Live adapter" in body["text"] and body["data"]["model"] == "fixed-model"

    status, body = await console.moderator.post("/api/moderator/command", {"command": "/Pause"})
    assert status == 200 and body["ok"] and await service.core.is_paused()
    sent = await console.say("What helps sweaty hands?")  # ("Is anyone there?" is triaged as a possible crisis,
    assert sent["status"] == "paused"                     # which is answered before the pause: tests/test_crisis_first.py) and NOTICE_PAUSED in [v["text"] for v in sent["views"]]

    status, body = await console.moderator.post("/api/moderator/command", {"command": "resume"})
    assert status == 200 and not await service.core.is_paused()

    status, body = await console.moderator.post("/api/moderator/command", {"command": "dataset"})
    assert status == 200 and body["text"].startswith("Dataset:")
    status, counts = await console.moderator.get("/api/dataset")  # a moderator may also review
    assert status == 200 and counts["total"] == body["data"]["total"]

    status, body = await console.moderator.post("/api/moderator/command", {"command": "rollback"})
    assert status == 200 and body["ok"] is False and body["text"]  # nothing to roll back to: said plainly
    status, body = await console.moderator.post("/api/moderator/command", {"command": "launch"})
    assert status == 200 and body["ok"] is False and "Unknown command" in body["text"]
    status, body = await console.moderator.post("/api/moderator/command", {})
    assert status == 400 and "'command'" in body["error"]


# ---------------------------------------------------------------------------- the page itself


async def test_page_is_served_and_loads_nothing_external(console, service):
    async with console.patient.session.get(console.url + "/") as resp:
        assert resp.status == 200 and "text/html" in resp.content_type
        html = await resp.text()
        assert "default-src 'self'" in resp.headers["Content-Security-Policy"]
    for name in ("app.js", "style.css", "login.js"):
        async with console.patient.session.get(f"{console.url}/static/{name}") as resp:
            assert resp.status == 200
    for path in Path(STATIC_DIR).iterdir():
        text = path.read_text()
        assert "http://" not in text and "https://" not in text and "//cdn" not in text, path.name
    for testid in ("patient-send", "review-queue", "cmd-status", "demo-banner"):
        assert f'data-testid="{testid}"' in html
    status, info = await console.get("/api/info")
    assert status == 200 and info["demo"] is False and info["title"] == service.pack.title


async def test_foreign_host_header_is_refused(console):
    async with console.patient.session.get(console.url + "/api/info", headers={"Host": "evil.example:80"}) as resp:
        assert resp.status == 403
        assert "not served here" in (await resp.json())["error"]


async def test_consent_in_the_console(console, service):
    """(issue 12 item 5) The first-contact notice asks; the browser answers for its own id only;
    typing the words works too; a no keeps the answers coming and out of training."""
    from bot.consent import CONFIRM_AGREE, CONFIRM_DECLINE
    from pipeline import dataset

    sent = await console.say("Do sweaty feet need a doctor?")
    status, body = await console.get("/api/patient/conversation")
    notice = next(e for e in body["entries"] if e["type"] == "notice")
    assert notice["kind"] == "consent" and "only this browser" in notice["text"] and body["consent"] == "asked"
    status, bad = await console.post("/api/patient/consent", {"choice": "maybe"})
    assert status == 400 and "agree or decline" in bad["error"]
    status, agreed = await console.post("/api/patient/consent", {"choice": "agree"})
    assert status == 200 and agreed == {"consent": "agreed", "text": CONFIRM_AGREE}
    other = console.new()  # another browser: its own id, its own answer, nothing changed here
    status, _ = await other.post("/api/patient/consent", {"choice": "decline"})
    assert status == 200 and (await console.get("/api/patient/conversation"))[1]["consent"] == "agreed"
    status, outcome = await console.decide(sent["item_id"], action="approve", accuracy=4, appropriateness=4, empathy=4)
    assert status == 200
    assert [e["source"] for e in await dataset.examples(service.db) if e["source"] != "seed"] == ["expert_approved"]

    declined = await console.say("I do not agree")
    assert declined["status"] == "declined" and declined["views"][-1]["text"] == CONFIRM_DECLINE
    assert (await console.get("/api/patient/conversation"))[1]["consent"] == "declined"
    assert [e for e in await dataset.examples(service.db) if e["source"] != "seed"] == []
    later = await console.say("And for hands?")
    assert later["status"] == "shown"


# ---------------------------------------------------------------------------- live updates, charts


class EventStream:
    """A browser's EventSource on /api/events: reads ``event:`` / ``data:`` blocks as they come."""

    def __init__(self, response: aiohttp.ClientResponse):
        self.response = response

    async def next(self, timeout: float = 10.0) -> tuple[str, dict]:
        import asyncio

        event, data = "message", None
        async with asyncio.timeout(timeout):
            while True:
                line = (await self.response.content.readline()).decode().rstrip("\n")
                if line.startswith("event: "):
                    event = line[len("event: "):]
                elif line.startswith("data: "):
                    data = json.loads(line[len("data: "):])
                elif line == "" and data is not None:
                    return event, data

    async def until(self, event: str, where=lambda d: True, timeout: float = 10.0) -> dict:
        while True:
            name, data = await self.next(timeout)
            if name == event and where(data):
                return data


async def open_stream(browser: Console) -> EventStream:
    response = await browser.session.get(browser.url + "/api/events", headers={"Accept": "text/event-stream"})
    assert response.status == 200 and response.content_type == "text/event-stream"
    return EventStream(response)


async def test_job_progress_review_items_and_alerts_are_pushed(console, service):
    """Server-Sent Events: a moderator's page hears job progress (with the fraction for the bar)
    and alerts; a reviewer's hears new review items and never job or alert events; nobody
    signed out hears anything."""
    from pipeline import jobs

    status, body = await console.patient.get("/api/events")
    assert status == 401 and "sign in" in body["error"].lower()
    moderator, reviewer = await open_stream(console.moderator), await open_stream(console.reviewer)
    try:
        request = await jobs.request(service.db, "retrain", "console:mo")
        await jobs.start(service.db, request.job_id)
        await jobs.progress(service.db, request.job_id, "training v1: step 4/10", 0.4, "training")
        job = await moderator.until("job", lambda d: d.get("fraction") == 0.4)
        assert (job["id"], job["status"], job["phase"], job["progress"]) == (
            request.job_id, "running", "training", "training v1: step 4/10")

        sent = await console.say("Is it normal that my feet sweat all day?")
        review = await reviewer.until("review")
        assert review["item_id"] == sent["item_id"]  # the first thing a reviewer hears: no job events
        await service.core.alert_moderators("Adapter v1 was promoted and is live.")
        alert = await moderator.until("alert")
        assert alert["text"] == "Adapter v1 was promoted and is live."

        await jobs.finish(service.db, request.job_id, "succeeded", result={"version": "v1"})
        done = await moderator.until("job", lambda d: d["status"] == "succeeded")
        assert done["fraction"] is None
        await console.say("And my hands?")
        assert (await reviewer.next())[0] == "review"  # the alert and the job's end never reached it
    finally:
        moderator.response.close()
        reviewer.response.close()


async def _charts_history(console, service, tmp_path) -> None:
    """Two trained versions (v2 live), each with its evaluation, and one approval of a base reply."""
    from pipeline import registry
    from tests.eval_records import record

    for version in ("v1", "v2"):
        await registry.register(service.db, version, tmp_path / version, "base")
    await registry.set_evaluation(service.db, "v1", record("v1", live=None))
    await registry.set_evaluation(service.db, "v2", record("v2", live="v1"))
    await registry.set_status(service.db, "v1", "retired")
    await registry.set_status(service.db, "v2", "live")
    sent = await console.say("Which antiperspirant should I try first?")
    assert (await console.decide(sent["item_id"], "approve", accuracy=4, appropriateness=5, empathy=4))[0] == 200


async def test_chart_numbers_for_moderators(console, service, tmp_path):
    """Evaluation per task with CIs (models named as they are now), versions over time with
    rubric means, review throughput and outcomes per week."""
    status, empty = await console.moderator.get("/api/moderator/charts")
    assert status == 200 and empty["evaluation"] is None and empty["reviews"] == {"weeks": []}
    await _charts_history(console, service, tmp_path)
    status, data = await console.moderator.get("/api/moderator/charts")
    assert status == 200
    assert [data["evaluation"]["runs"][x]["title"] for x in data["evaluation"]["order"]] == [
        "base model", "v1 (retired)", "v2 (live)"]
    assert [p["version"] for p in data["versions"]["points"]] == ["base model", "v1", "v2"]
    assert data["versions"]["points"][2]["accuracy"]["accuracy"] == 0.7667
    assert data["versions"]["points"][0]["rubric"] == {"accuracy": 4.0, "appropriateness": 5.0, "empathy": 4.0, "n": 1}
    [week] = data["reviews"]["weeks"]
    assert week["total"] == 1 and week["rates"] == {"approve": 1.0, "edit": 0.0, "reject": 0.0}
    status, body = await console.reviewer.get("/api/moderator/charts")
    assert status == 403


@pytest.mark.slow
async def test_charts_are_drawn_as_svg_with_words_as_text(console, service, tmp_path):
    await _charts_history(console, service, tmp_path)
    for name, words in (("evaluation", ["v2 (live)", "v1 (retired)", "diagnosis"]),
                        ("versions", ["overall accuracy", "empathy"]), ("reviews", ["approved", "decisions"])):
        async with console.moderator.session.get(f"{console.url}/api/moderator/charts/{name}.svg") as resp:
            svg = await resp.text()
        assert resp.status == 200 and resp.content_type == "image/svg+xml" and "<svg" in svg
        assert all(w in svg for w in words), (name, [w for w in words if w not in svg])
    async with console.moderator.session.get(f"{console.url}/api/moderator/charts/nothing.svg") as resp:
        assert resp.status == 404
