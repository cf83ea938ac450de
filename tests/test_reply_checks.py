"""Reply checks after the model: a failing reply is never posted; it goes to review as blocked."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bot.core import GATED_TEXT
from bot.platform import IncomingMessage, ViewKind
from bot.safety.reply_checks import advises_doctor, check_reply
from bot.safety import policy_for
from pipeline.packs import PACKS_DIR, load_pack
from reviewers.models import Action, Actor, Rubric

REDTEAM = Path(__file__).parent / "data" / "redteam"
REVIEWER = Actor("local", "rev1", "Dr Rev", frozenset({"reviewer"}))


def load(name: str) -> list[dict]:
    return [json.loads(line) for line in (REDTEAM / name).read_text(encoding="utf-8").splitlines() if line.strip()]


def msg(text: str, user: str = "pat") -> IncomingMessage:
    return IncomingMessage("local", user, "console", user, text, display_name=user)


@pytest.fixture(scope="module")
def pack():
    return load_pack(PACKS_DIR / "hyperhidrosis")


def test_labelled_replies(pack):
    rows = load("replies.jsonl")
    assert len(rows) >= 50 and sum(r["expect"] == "fail" for r in rows) >= 25
    wrong = []
    for row in rows:
        result = check_reply(row["reply"], pack, red_flags=row["red_flags"])
        if row["expect"] == "pass" and not result.ok:
            wrong.append(("false block", row["reply"], result.failures))
        if row["expect"] == "fail" and row["check"] not in result.checks_failed:
            wrong.append(("missed", row["check"], row["reply"], result.failures))
    assert not wrong, wrong
    checks = {r["check"] for r in rows if r["expect"] == "fail"}
    assert checks == {"doctor_claim", "citation", "dosing", "red_flag_advice", "prompt_leak"}


@pytest.mark.parametrize(
    "reply",
    [
        "I'm not a doctor, but iontophoresis is often tried for hands.",
        "I am an AI assistant, not a doctor or nurse.",
        "I can't prescribe anything; please ask your GP.",
        "I cannot diagnose you, but a dermatologist can.",
    ],
)
def test_disclaiming_is_not_claiming(pack, reply):
    assert check_reply(reply, pack).ok


def test_pack_sources_may_be_cited(pack):
    assert check_reply("Hornberger et al. describe the criteria for primary focal hyperhidrosis.", pack).ok
    assert check_reply("The International Hyperhidrosis Society (sweathelp.org) has a good overview.", pack).ok
    assert not check_reply("See https://sweathelp.org.evil.example/cure for more.", pack).ok


def test_dosing_ranges_come_from_the_pack(pack):
    policy = policy_for(pack)
    assert {d.id for d in policy.dosing} >= {"aluminium-chloride", "oxybutynin", "glycopyrrolate-oral", "botulinum-toxin"}
    assert check_reply("Oxybutynin is often started at 2.5 mg.", pack).ok
    assert not check_reply("Oxybutynin 25 mg twice a day works well.", pack).ok
    assert check_reply("About 3% of people have hyperhidrosis.", pack).ok
    assert check_reply("Sessions last about 20 minutes at 15 mA.", pack).ok
    assert not check_reply("Take 600 mg of ibuprofen with it.", pack).ok


def test_advises_doctor():
    assert advises_doctor("Please see your GP soon.") and advises_doctor("Get it checked by a doctor.")
    assert not advises_doctor("Try a stronger antiperspirant.")


# ------------------------------------------------------------------------------ in the core


async def test_doctor_claim_is_blocked_and_held(service):
    service.backend.reply = "As a doctor, I can tell you this is primary hyperhidrosis. Try iontophoresis."
    result = await service.core.handle_message(msg("My palms sweat all day, what is it?"))
    assert result.status == "held"
    assert result.views[-1].kind is ViewKind.UNDER_REVIEW and result.views[-1].text == GATED_TEXT
    assert all("As a doctor" not in v.text for v in result.views)
    item = await service.reviews.item(result.item_id)
    assert item["priority"] == "high" and "blocked:doctor_claim" in item["risk_flags"]
    reply = await service.db.fetchone("SELECT delivery, text FROM replies WHERE id = ?", (result.reply_id,))
    assert reply["delivery"] == "held" and "As a doctor" in reply["text"]  # kept for the reviewer
    card = await service.core.review_card(result.item_id)
    assert "blocked:doctor_claim" in card.risk_flags


async def test_blocked_reply_reaches_the_patient_only_after_review(service):
    service.backend.reply = "According to Smith et al. (2019), sage tea cures sweating."
    result = await service.core.handle_message(msg("Does sage tea help?"))
    assert result.status == "held"
    outcome = await service.core.decide(
        result.item_id, REVIEWER, Action.EDIT, edited_text="There's little good evidence for sage tea; ask a pharmacist.",
        rubric=Rubric(4, 4, 4))
    assert outcome.closed_now
    view = await service.db.fetchone("SELECT shown_text FROM replies WHERE id = ?", (result.reply_id,))
    assert view["shown_text"].startswith("There's little good evidence")


async def test_good_reply_is_shown_with_the_disclaimer(service):
    service.backend.reply = "That sounds hard. An aluminium chloride antiperspirant at night is a common first step."
    result = await service.core.handle_message(msg("My armpits soak my shirts"))
    assert result.status == "shown"
    view = result.views[-1]
    assert view.kind is ViewKind.PENDING_REVIEW and view.disclaimer and "not a doctor" in view.disclaimer.lower()


async def test_no_red_flag_vignette_gets_a_reply_without_doctor_advice(service):
    """Every red-flag message of the red-team set, answered by a model that forgets the doctor."""
    service.backend.reply = "Sweating is common. Try a stronger antiperspirant and breathable clothes."
    service.core.safety.limiter.max_messages = 10_000
    shown = []
    for i, row in enumerate(load("red_flags.jsonl")):
        result = await service.core.handle_message(msg(row["text"], user=f"rf{i}"))
        if result.status == "shown":
            shown.append(row["text"])
            continue
        if result.status == "held" and result.item_id:
            item = await service.reviews.item(result.item_id)
            flags = json.loads(item["risk_flags"])
            if any(f.startswith("red_flag:") for f in flags):
                assert "blocked:red_flag_advice" in flags
        for view in result.views:
            assert "stronger antiperspirant" not in view.text
    # Messages the pack's patterns miss are answered normally; none of them may be a red flag it caught.
    assert len(shown) <= 6, shown


async def test_red_flag_reply_with_advice_is_held_but_not_blocked(service):
    service.backend.reply = "Night sweats should be checked: please see a doctor soon."
    result = await service.core.handle_message(msg("I wake up drenched every night"))
    assert result.status == "held"
    item = await service.reviews.item(result.item_id)
    flags = json.loads(item["risk_flags"])
    assert "red_flag:rf-night-sweats" in flags and not any(f.startswith("blocked:") for f in flags)
