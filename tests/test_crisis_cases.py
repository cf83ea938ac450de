"""Crisis cases a moderator can act on (issue 14 item 6), through the command layer every
platform uses (Discord and Slack slash commands, the console's moderator panel) and the CLI.

A reviewer or moderator takes a case over (the model stays out of the conversation and the
patient's messages go to them), writes to the patient as a person (labelled, never as the AI),
and resolves it with an outcome note (who, when, how), which releases the conversation. A
patient cannot do any of it. Open cases are in /status with their age and are alerted again
when nobody acts. Everything is stored: a new service on the same database sees the same."""

from __future__ import annotations

import pytest

from bot.inference.fixed import FixedBackend
from bot.platform import IncomingMessage, ViewKind
from bot.service import Service
from bot.settings import load_settings
from reviewers.models import PermissionDenied, Actor
from tests.recording_platform import RecordingPlatform

pytestmark = pytest.mark.asyncio(loop_scope="session")  # the fakes' servers run on the session's loop

MODERATOR = Actor("local", "mod", "Mona", frozenset({"moderator"}))
REVIEWER = Actor("local", "rev", "Dr Rita", frozenset({"reviewer"}))
PATIENT = Actor("local", "pat", "pat", frozenset())
CRISIS = "I can't go on, I want to kill myself tonight"


def msg(text: str, user: str = "pat") -> IncomingMessage:
    return IncomingMessage("local", user, "console", user, text, display_name=user)


async def _service(tmp_path, **safety) -> Service:
    service = Service(load_settings(data_dir=tmp_path, safety=safety), FixedBackend(reply="Try a stronger antiperspirant."))
    service.add_platform(RecordingPlatform())
    await service.start(retry_loop=False)
    return service


async def test_take_over_reply_as_a_person_and_resolve(tmp_path):
    svc = await _service(tmp_path)
    platform = svc.core.platforms["local"]
    try:
        crisis = await svc.core.handle_message(msg(CRISIS))
        case_id = await svc.db.fetchval("SELECT id FROM incidents WHERE kind = 'crisis'")
        assert "Open crisis cases: 1" in (await svc.commands.run(MODERATOR, "status")).text
        status = await svc.commands.run(MODERATOR, "status")
        assert status.data["crisis_cases"][0]["id"] == case_id and "NOBODY has taken it" in status.text

        # a patient cannot take over or resolve
        for what in (f"take {case_id}", f"resolve {case_id} fine"):
            with pytest.raises(PermissionDenied, match="Only reviewers and moderators"):
                await svc.commands.run(PATIENT, "case", what)
        assert await svc.db.fetchval("SELECT taken_by FROM incidents WHERE id = ?", (case_id,)) is None

        taken = await svc.commands.run(REVIEWER, "case", f"take {case_id}")
        assert taken.ok and "stays out of the conversation" in taken.text
        calls = len(svc.backend.calls)
        later = await svc.core.handle_message(msg("are you still there?"))
        assert later.status == "with_person" and len(svc.backend.calls) == calls  # the model stays out
        assert any("the patient wrote: «are you still there?»" in a["text"] for a in platform.alerts)

        sent = await svc.commands.run(REVIEWER, "case", f"reply {case_id} I'm Rita, a nurse. I'm here with you.")
        assert sent.ok
        person = [v for _, v, _ in platform.sent if v.kind is ViewKind.PERSON]
        assert person[-1].text == "I'm Rita, a nurse. I'm here with you."
        assert "a person" in person[-1].label and "not the AI" in person[-1].label and "Dr Rita" in person[-1].label

        resolved = await svc.commands.run(MODERATOR, "case", f"resolve {case_id} called her; safe with family")
        assert resolved.ok
        row = await svc.db.fetchone("SELECT * FROM incidents WHERE id = ?", (case_id,))
        assert row["resolved_by"] == MODERATOR.label and row["resolved_at"] and row["outcome_note"] == "called her; safe with family"
        answered = await svc.core.handle_message(msg("which antiperspirant then?"))
        assert answered.status == "shown"  # released: the assistant answers again
        assert crisis.conversation_id == answered.conversation_id
    finally:
        await svc.stop()


async def test_cases_survive_a_restart_and_are_alerted_again_when_nobody_acts(tmp_path):
    svc = await _service(tmp_path, crisis_realert_minutes=0.001)
    try:
        await svc.core.handle_message(msg(CRISIS))
        await svc.core.handle_message(msg("Does iontophoresis help?", user="other"))
    finally:
        await svc.stop()
    svc = await _service(tmp_path, crisis_realert_minutes=0.001)  # a restart: all of it is stored
    platform = svc.core.platforms["local"]
    try:
        case_id = await svc.db.fetchval("SELECT id FROM incidents WHERE kind = 'crisis'")
        assert await svc.core.cases.realert_due() == 1
        again = [a for a in platform.alerts if "NOBODY has acted" in a["text"]]
        assert again and again[0]["urgent"] and f"Crisis case #{case_id}" in again[0]["text"]
        await svc.commands.run(MODERATOR, "case", f"take {case_id}")
        assert await svc.core.cases.realert_due() == 0  # someone has it now
    finally:
        await svc.stop()
    svc = await _service(tmp_path)
    try:
        shown = await svc.commands.run(MODERATOR, "case", f"show {case_id}")
        assert "taken over by local:Mona" in shown.text and CRISIS[:20] in shown.text
        # after the restart the conversation is still with the person who took it over
        assert (await svc.core.handle_message(msg("Is this normal?"))).status == "with_person"
    finally:
        await svc.stop()


async def test_reviewers_see_why_a_reply_is_held(tmp_path):
    svc = await _service(tmp_path)
    try:
        await svc.core.handle_message(msg(CRISIS))
        held = await svc.core.handle_message(msg("what helps sweaty hands?"))
        assert held.status == "held"
        card = await svc.core.review_card(held.item_id)
        assert card.hold_reason and "crisis case #1 is open in this conversation" in card.hold_reason
        shown = await svc.core.handle_message(msg("what helps sweaty feet?", user="other"))
        assert (await svc.core.review_card(shown.item_id)).hold_reason is None
    finally:
        await svc.stop()


async def test_the_command_line_lists_shows_and_resolves_cases(tmp_path):
    from tests.test_cli import run_cli

    svc = await _service(tmp_path)
    try:
        await svc.core.handle_message(msg(CRISIS))
        listed = run_cli("incidents", "list", tmp_path=tmp_path)
        assert listed.returncode == 0 and "#1 " in listed.stdout and "NOBODY has taken it" in listed.stdout
        shown = run_cli("incidents", "show", "1", tmp_path=tmp_path)
        assert shown.returncode == 0 and "reached the patient in their conversation" in shown.stdout
        assert run_cli("incidents", "resolve", "1", tmp_path=tmp_path).returncode != 0  # the note is required
        done = run_cli("incidents", "resolve", "1", "--note", "spoke to him by phone, safe", tmp_path=tmp_path)
        assert done.returncode == 0, done.stderr
        row = await svc.db.fetchone("SELECT resolved_by, outcome_note FROM incidents WHERE id = 1")
        assert row["resolved_by"].startswith("cli:") and row["outcome_note"] == "spoke to him by phone, safe"
        # the running service sees it: the conversation is released
        assert (await svc.core.handle_message(msg("which antiperspirant?"))).status == "shown"
        again = run_cli("incidents", "resolve", "1", "--note", "x", tmp_path=tmp_path)
        assert again.returncode == 1 and "already resolved" in again.stderr
        assert "No open crisis case." in run_cli("incidents", "list", tmp_path=tmp_path).stdout
    finally:
        await svc.stop()


# ---------------------------------------------------------------------- Discord and Slack, for real

from tests.discord_fake import FakeDiscord  # noqa: E402
from tests.slack_fake import FakeSlack  # noqa: E402


@pytest.fixture
async def discord_fake():
    server = await FakeDiscord().start()
    server.patch_library()
    yield server
    await server.stop()


async def _slash(fake: FakeDiscord, user: str, name: str, **options: str) -> str:
    interaction = await fake.slash(user, name, options or None)
    await fake.wait_for(lambda: interaction.followups, what=f"/{name} answer")
    return interaction.text


async def test_discord_take_over_reply_and_resolve(tmp_path, discord_fake):
    from tests.test_crisis_delivery import _discord

    fake = discord_fake
    service, runner = await _discord(tmp_path, fake)
    try:
        patient = fake.add_member("sam")
        reviewer = fake.add_member("dr_lee", roles=("reviewer",))
        moderator = fake.add_member("mod_jo", roles=("moderator",))
        said = await fake.say(patient, fake.support_id, CRISIS)
        thread = said["id"]
        await fake.wait_for(lambda: any("Crisis case #1" in m["content"] for m in fake.bot_messages(fake.reviewer_channel_id)),
                            what="the alert")
        assert "Only reviewers and moderators" in await _slash(fake, patient, "case", action="take", case_id="1")
        assert "stays out of the conversation" in await _slash(fake, reviewer, "case", action="take", case_id="1")
        await fake.say(patient, thread, "ok, thanks for the reply")
        await fake.wait_for(lambda: any("the patient wrote: «ok, thanks for the reply»" in m["content"]
                                        for m in fake.bot_messages(fake.reviewer_channel_id)),
                             what="the patient's words")
        assert await _slash(fake, reviewer, "case", action="reply", case_id="1", text="I'm Lee, a nurse. I'm here.")
        person = await fake.wait_for(lambda: [m["content"] for m in fake.bot_messages(thread) if "I'm Lee" in m["content"]],
                                     what="the person's reply")
        assert "a person from the care team — not the AI" in person[0] and "dr_lee" in person[0]
        assert service.backend.calls == []  # the model never came into it
        assert "Only reviewers and moderators" in await _slash(fake, patient, "case", action="resolve", case_id="1",
                                                              text="I'm fine")
        assert "Resolved" in await _slash(fake, moderator, "case", action="resolve", case_id="1",
                                          text="called him, safe with family")
        assert "No open crisis case." in await _slash(fake, moderator, "case")
        row = await service.db.fetchone("SELECT resolved_by, outcome_note FROM incidents WHERE id = 1")
        assert row["resolved_by"] == "discord:mod_jo" and row["outcome_note"] == "called him, safe with family"
    finally:
        await runner.cleanup()
        await service.stop()


async def test_slack_take_over_reply_and_resolve(tmp_path):
    import json

    from tests.test_slack import GROUP, MODERATOR as SLACK_MOD, PATIENT as SLACK_PATIENT, REVIEW, REVIEWER as SLACK_REV
    from tests.test_slack import SUPPORT, SignedHTTP, message, running

    fake = await FakeSlack().start()
    fake.usergroups[GROUP] = [SLACK_REV]
    try:
        async with running(tmp_path, fake, "http") as (service, runner):
            http = SignedHTTP(fake, runner.url)
            try:
                event = message(CRISIS)
                await http.event(event)
                await fake.wait_for(lambda: [m for m in fake.channel_messages(REVIEW) if "Crisis case #1" in m["text"]])

                async def case(user: str, text: str) -> str:
                    status, body = await http.command(fake, "/sweat-case", user, text)
                    assert status == 200
                    return json.loads(body)["text"]

                assert "Only reviewers and moderators" in await case(SLACK_PATIENT, "take 1")
                assert "stays out of the conversation" in await case(SLACK_REV, "take 1")  # a member of the group
                await case(SLACK_REV, "reply 1 I'm Rita, a nurse on the team. I'm here with you.")
                replies = await fake.wait_for(lambda: [m for m in fake.thread(SUPPORT, event["ts"]) if "I'm Rita" in m["text"]])
                labels = [e["text"] for b in replies[0]["blocks"] if b["type"] == "context" for e in b["elements"]]
                assert any("not the AI" in label for label in labels)
                assert "Resolved" in await case(SLACK_MOD, "resolve 1 spoke with her, safe")
                assert service.backend.calls == []
            finally:
                await http.close()
    finally:
        await fake.stop()


async def test_forget_me_removes_what_carers_wrote_to_the_patient(tmp_path):
    svc = await _service(tmp_path)
    try:
        await svc.core.handle_message(msg(CRISIS))
        await svc.commands.run(REVIEWER, "case", "reply 1 Sam, I'm Rita from the clinic; I'll call you at 5.")
        assert await svc.db.fetchval("SELECT COUNT(*) FROM case_replies") == 1
        await svc.core.forget_patient("local", "pat")
        assert await svc.db.fetchval("SELECT COUNT(*) FROM case_replies") == 0
        case = await svc.db.fetchone("SELECT conversation_id, kind FROM incidents WHERE id = 1")
        assert case["kind"] == "crisis" and case["conversation_id"] is None  # the case's audit stays, without them
    finally:
        await svc.stop()
