"""Words that say what is true (issue 13 item 3): every moderator command's confirmation and
every reviewer decision's, checked against what actually happened in the database and the
backend, and every label a patient can see checked against its disclaimer.

One walk through the whole command set on a real service (fixed-reply backend, local
platform, adapters registered on disk). A confirmation that names an adapter must name the one
now live; "promote" must say promoted, "rollback" rolled back — and a second rollback goes
further back, never forward; the live adapter is never called a candidate; a reply labelled as
reviewed by a specialist never sits beside a disclaimer saying no expert checked it.
"""

from __future__ import annotations

import re

import pytest

from bot.commands import COMMANDS
from bot.core import LABEL_APPROVED, LABEL_EDITED, LABEL_PENDING
from bot.platform import IncomingMessage
from pipeline import dataset, jobs, registry
from reviewers.models import Action, Actor, Rubric

pytestmark = pytest.mark.asyncio(loop_scope="session")

MODERATOR = Actor("local", "mod", "Mod", frozenset({"moderator", "reviewer"}))
REVIEWER = Actor("local", "rev", "Dr Rev", frozenset({"reviewer"}))
SCORES = Rubric(accuracy=4, appropriateness=4, empathy=4)
# What a disclaimer says when nobody qualified checked the answer.
CLAIMS_SPECIALIST = re.compile(r"(reviewed|edited) by a specialist", re.IGNORECASE)
UNCHECKED = re.compile(r"not (been )?checked by an expert|not by experts|not reviewed", re.IGNORECASE)


async def live(service) -> str | None:
    row = await registry.live(service.db)
    return row["version"] if row else None


async def add_adapter(service, tmp_path, version: str, evaluation: dict | None = None) -> None:
    path = tmp_path / version
    path.mkdir()
    (path / "adapter_config.json").write_text("{}")
    (path / "adapter_model.safetensors").write_bytes(b"weights")
    await registry.register(service.db, version, path, "base")
    if evaluation is not None:
        await registry.set_evaluation(service.db, version, evaluation)


async def ask(service, user: str, text: str):
    return await service.core.handle_message(IncomingMessage("local", user, "console", user, text))


async def test_every_command_says_what_happened(service, tmp_path, monkeypatch):
    from tests.eval_records import record

    run = service.commands.run
    walked: set[str] = set()

    async def command(name: str, argument: str | None = None):
        walked.add(name)
        return await run(MODERATOR, name, argument)

    # ---------------------------------------------------------------- status, dataset, case
    status = await command("status")
    assert "Live adapter: base model" in status.text and await live(service) is None
    counts = await dataset.counts(service.db)
    shown = await command("dataset")
    assert shown.text.startswith(f"Dataset: {sum(n for by in counts.values() for n in by.values())} examples")
    assert (await command("case")).text == "No open crisis case."

    # ---------------------------------------------------------------- pause, resume
    paused = await command("pause")
    assert "paused" in paused.text.lower() and await service.core.is_paused()
    resumed = await command("resume")
    assert "resumed" in resumed.text.lower() and not await service.core.is_paused()

    # ---------------------------------------------------------------- retrain (the job itself is tested elsewhere)
    monkeypatch.setattr(service, "start_retrain", lambda job_id: None)
    started = await command("retrain")
    job = await jobs.get(service.db, started.data["job_id"])
    assert started.text.startswith(f"Retraining job #{job['id']} started") and job["status"] == "queued"
    again = await command("retrain")
    assert f"#{job['id']}" in again.text and "already queued" in again.text and not again.data["created"]
    await jobs.finish(service.db, job["id"], "cancelled", error="test")

    # ---------------------------------------------------------------- promote says promoted, names what is live
    await add_adapter(service, tmp_path, "v1", record("v1", live=None))
    await add_adapter(service, tmp_path, "v2", record("v2", live="v1"))
    for version in ("v1", "v2"):
        await registry.mark_gate_passed(service.db, version)
    for version in ("v1", "v2"):
        promoted = await command("promote", f"{version} force")
        assert promoted.ok and promoted.text.startswith(f"Promoted: {version} is live"), promoted.text
        assert "Rolled back" not in promoted.text and "gate overridden" in promoted.text
        assert await live(service) == version and service.backend.adapter_version == version
        assert f"Live adapter: {version}" in (await command("status")).text
    already = await command("promote", "v2")
    assert not already.ok and already.text == "v2 is already live." and await live(service) == "v2"

    # ---------------------------------------------------------------- eval: today's names, never "candidate" for the live one
    evaluation = await command("eval")
    assert evaluation.text == "Evaluation of v2 (live)."
    columns = evaluation.report.tables[0].columns
    assert "v2 (live)" in columns and "v1 (retired)" in columns and not any("candidate" in c for c in columns)
    assert "+--" not in evaluation.text

    # ---------------------------------------------------------------- rollback goes back, and back again, never forward
    first = await command("rollback")
    assert first.text.startswith("Rolled back: v1 is live") and await live(service) == "v1"
    assert service.backend.adapter_version == "v1"
    second = await command("rollback")
    assert second.text.startswith("Rolled back: the base model is live") and await live(service) is None
    assert service.backend.adapter_version is None
    third = await command("rollback")
    assert not third.ok and "nothing to roll back" in third.text and await live(service) is None
    assert "Live adapter: base model" in (await command("status")).text
    evaluation = await command("eval")
    assert evaluation.text == "Evaluation of v2 (retired)."  # the newest evaluation, named as it is now

    assert walked == set(COMMANDS), f"commands not walked: {set(COMMANDS) - walked}"


async def test_reviewer_confirmations_and_patient_labels_agree_with_the_state(service):
    """Approve, edit, reject, and a repeat: each confirmation names the state now stored, and
    the patient's label matches it."""
    expected = {Action.APPROVE: ("approved", LABEL_APPROVED), Action.EDIT: ("edited", LABEL_EDITED),
                Action.REJECT: ("rejected", "")}
    for n, (action, (state, label)) in enumerate(expected.items()):
        result = await ask(service, f"patient-{n}", f"Question {n}: my palms sweat, what helps?")
        assert result.views[-1].label == LABEL_PENDING
        text = "Aluminium chloride at night is usually tried first." if action is Action.EDIT else None
        outcome = await service.core.decide(result.item_id, REVIEWER, action, text, SCORES)
        row = await service.db.fetchone("SELECT state, final_text FROM review_items WHERE id = ?", (result.item_id,))
        assert outcome.message == f"Recorded: {state}." and row["state"] == state
        reply = await service.db.fetchone("SELECT text, delivery FROM replies WHERE id = ?", (result.reply_id,))
        view = service.core.view_for(reply["text"], reply["delivery"], row["state"], row["final_text"])
        assert view.label == label
        repeat = await service.core.decide(result.item_id, MODERATOR, Action.APPROVE, None, SCORES)
        assert not repeat.recorded and repeat.message == f"This reply was already {state}; nothing changed."


@pytest.mark.parametrize("demo", [False, True])
async def test_a_reviewed_label_never_sits_beside_not_checked(service, demo):
    """Every view a patient can get, in a demo and not: a label that claims a specialist never
    comes with a disclaimer saying no expert checked the answer."""
    service.core.demo = service.demo = demo
    for state in ("pending", "approved", "edited", "rejected", "expired"):
        for delivery in ("shown", "held"):
            view = service.core.view_for("An answer.", delivery, state, "An edited answer.")
            if CLAIMS_SPECIALIST.search(view.label):
                assert not UNCHECKED.search(view.disclaimer), (state, delivery, view)
            if demo and state in ("approved", "edited"):  # demo reviewers are demo accounts
                assert not CLAIMS_SPECIALIST.search(view.label) and "demo reviewer" in view.label, view.label


def test_adapter_times_read_as_local_dates():
    from bot.text import local_time

    assert re.fullmatch(r"\d{4}-\d{2}-\d{2} \d{2}:\d{2} \S+", local_time(1_767_225_600.0))
    assert local_time(None) == "-"
