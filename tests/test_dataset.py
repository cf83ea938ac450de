"""The dataset: provenance, stats, chat-format export, snapshot hash, and its guards (the
evaluation set never becomes training data; only consenting patients contribute)."""

from __future__ import annotations

import json

import pytest

from pipeline import dataset
from pipeline.packs import check_pack, find_eval_leaks, load_pack

session_loop = pytest.mark.asyncio(loop_scope="session")


@pytest.fixture(scope="module")
def pack():
    return load_pack("hyperhidrosis")


def chat(question: str, answer: str, system: str = "You are a careful assistant.") -> list[dict[str, str]]:
    return [{"role": "system", "content": system}, {"role": "user", "content": question},
            {"role": "assistant", "content": answer}]


async def add_patient(db, user_id: str, consent: bool | None) -> int:
    """A patient who agreed (True), said no (False) or has not answered yet (None)."""
    return await db.execute(
        "INSERT INTO patients (platform, platform_user_id, consent, consent_at, created_at) VALUES ('local', ?, ?, ?, 0)",
        (user_id, int(bool(consent)), None if consent is None else 1.0),
    )


def synthetic_provenance(task: str, site: str, hdss: int, age: int, kind: str) -> dict:
    return {"generator": {"model": "m", "prompt_version": "p"},
            "profile": {"age": age, "sex": "female", "sites": [site], "hdss": hdss, "onset_age": 12,
                        "family_history": None, "kind": kind}}


# ------------------------------------------------------------------------------------- stats


@session_loop
async def test_stats_per_task_source_site_and_severity(db, pack):
    assert await dataset.import_seeds(db, pack) == len(pack.seeds)
    assert await dataset.import_seeds(db, pack) == 0  # idempotent
    await dataset.add_example(db, "treatment", "synthetic", chat("My feet sweat through socks daily.", "Try iontophoresis."),
                              synthetic_provenance("treatment", "soles", 3, 30, "primary"), plan_key="k1")
    patient = await add_patient(db, "p1", consent=True)
    await dataset.add_example(db, "diagnosis", "expert_approved", chat("Is this normal sweating?", "Possibly; see a GP."),
                              {"review_item_id": 1}, patient_id=patient)
    stats = await dataset.stats(db, pack)
    seeds = len(pack.seeds)
    assert stats["total"] == seeds + 2
    assert stats["source"] == {"seed": seeds, "synthetic": 1, "expert_approved": 1}
    assert stats["task_source"]["treatment"]["synthetic"] == 1
    assert sum(stats["task"].values()) == stats["total"]
    seed_soles = sum("soles" in s.profile.sites for s in pack.seeds)
    assert stats["site"]["soles"] == seed_soles + 1
    assert stats["severity"]["HDSS 3"] == sum(s.profile.hdss == 3 for s in pack.seeds) + 1
    assert stats["site"]["unknown"] == stats["severity"]["unknown"] == stats["kind"]["unknown"] == 1  # the expert reply
    assert stats["kind"]["primary"] == sum(s.profile.kind == "primary" for s in pack.seeds) + 1
    assert stats["age_band"]["adult"] >= 1
    tables = dataset.stats_tables(stats)
    assert len(tables) == 2


# ------------------------------------------------------------------------------------- export


@session_loop
async def test_export_is_chat_messages_that_a_chat_template_renders(db, pack, tmp_path):
    import jinja2

    from pipeline.tinymodel import CHAT_TEMPLATE

    await dataset.import_seeds(db, pack)
    result = await dataset.export(db, tmp_path / "out" / "train.jsonl", pack)
    lines = (tmp_path / "out" / "train.jsonl").read_text(encoding="utf-8").splitlines()
    assert result.count == len(lines) == len(pack.seeds) and not result.excluded
    template = jinja2.Environment().from_string(CHAT_TEMPLATE)
    for line in lines:
        record = json.loads(line)
        assert set(record) == {"messages", "task", "source"}
        messages = record["messages"]
        assert [m["role"] for m in messages] == ["system", "user", "assistant"]
        assert all(set(m) == {"role", "content"} and isinstance(m["content"], str) and m["content"] for m in messages)
        rendered = template.render(messages=messages, add_generation_prompt=False, bos_token="", eos_token="")
        assert messages[1]["content"] in rendered and messages[2]["content"] in rendered
    assert result.by_source == {"seed": len(pack.seeds)}
    assert not (tmp_path / "out" / "train.jsonl.tmp").exists()


@session_loop
async def test_snapshot_hash_is_stable_and_content_sensitive(db, pack, tmp_path):
    from pipeline.training import dataset_hash

    await dataset.import_seeds(db, pack)
    first = await dataset.export(db, tmp_path / "a.jsonl", pack)
    again = await dataset.export(db, tmp_path / "b.jsonl", pack)
    assert first.hash == again.hash
    assert (tmp_path / "a.jsonl").read_bytes() == (tmp_path / "b.jsonl").read_bytes()
    conversations = [json.loads(line)["messages"] for line in (tmp_path / "a.jsonl").read_text().splitlines()]
    assert first.hash == dataset_hash(conversations)  # the hash a trained adapter's manifest names
    assert await dataset.export_jsonl(db, tmp_path / "c.jsonl", pack) == (first.count, first.hash)

    await dataset.add_example(db, "treatment", "synthetic", chat("Do wipes help underarm sweat?", "They can."))
    added = await dataset.export(db, tmp_path / "d.jsonl", pack)
    assert added.hash != first.hash

    row_id = await db.fetchval("SELECT MAX(id) FROM dataset_examples")
    await db.execute("UPDATE dataset_examples SET messages = ? WHERE id = ?",
                     (json.dumps(chat("Do wipes help underarm sweat?", "They can!")), row_id))
    edited = await dataset.export(db, tmp_path / "e.jsonl", pack)
    assert edited.count == added.count and edited.hash not in (added.hash, first.hash)


# ------------------------------------------------------------------------------------- the evaluation set


@session_loop
async def test_an_eval_question_in_an_expert_edit_is_refused(db, pack):
    patient = await add_patient(db, "p-eval", consent=True)
    question = pack.eval_questions[0]
    answer = f"Good question. By the way: {question.question.upper()} The answer is {question.correct_option}."
    result = await dataset.insert_example(db, question.task, "expert_edited", chat("How long must sweating last?", answer),
                                          {"review_item_id": 7, "original_reply": "…"}, patient_id=patient)
    assert not result.stored and result.reason == "eval_leak"
    # the default guard (no questions passed, as the conversation core calls it) knows the shipped evaluation set
    pasted = f"{question.question.rstrip('?')} — asking for a quiz"
    assert await dataset.add_example(db, question.task, "expert_approved", chat(pasted, "Six months."),
                                     patient_id=patient) is None
    assert await db.fetchval("SELECT COUNT(*) FROM dataset_examples") == 0


@session_loop
async def test_an_eval_question_in_a_synthetic_or_seed_example_is_refused(db, pack):
    q = pack.eval_questions[-1]
    for source in ("synthetic", "seed"):
        result = await dataset.insert_example(db, q.task, source, chat(q.question, q.correct_option),
                                              eval_questions=pack.eval_questions)
        assert result.reason == "eval_leak"
    # other questions on the same topic are fine
    ok = await dataset.insert_example(db, q.task, "synthetic", chat("My palms drip during piano lessons, what helps?",
                                                                     "Talk to a dermatologist about options."))
    assert ok.stored


@session_loop
async def test_export_drops_examples_that_contain_an_eval_question(db, pack, tmp_path):
    """An example stored before its question joined the evaluation set (written here straight into
    the table, past the insertion guard) never reaches an export."""
    await dataset.import_seeds(db, pack)
    question = pack.eval_questions[42]
    leaked = chat(f"Quick one: {question.question}", f"It is {question.correct_option}.")
    await db.execute(
        "INSERT INTO dataset_examples (task, source, messages, provenance, content_hash, created_at)"
        " VALUES (?, 'synthetic', ?, '{}', ?, 0)",
        (question.task, json.dumps(leaked), dataset.content_hash(leaked)),
    )
    leaked_id = await db.fetchval("SELECT MAX(id) FROM dataset_examples")
    out = tmp_path / "train.jsonl"
    result = await dataset.export(db, out, pack)
    assert result.excluded == [leaked_id] and result.count == len(pack.seeds)
    texts = [dataset.training_text(json.loads(line)["messages"]) for line in out.read_text().splitlines()]
    assert not find_eval_leaks(pack.eval_questions, texts)
    assert check_pack(pack.path, texts) == []  # the pack validator agrees: nothing leaks
    # … and without a pack, the shipped packs' evaluation sets guard the export
    assert (await dataset.export(db, tmp_path / "nopack.jsonl")).excluded == [leaked_id]


# ------------------------------------------------------------------------------------- consent and privacy


@session_loop
async def test_only_consenting_patients_enter_the_dataset(db):
    refusing = await add_patient(db, "no-consent", consent=False)
    result = await dataset.insert_example(db, "diagnosis", "expert_approved", chat("Is it normal?", "See a GP."),
                                          patient_id=refusing)
    assert result.reason == "no_consent"
    gone = await dataset.insert_example(db, "diagnosis", "expert_approved", chat("Is it normal?", "See a GP."),
                                        patient_id=9999)  # forgotten: the patient row no longer exists
    assert gone.reason == "no_consent"
    anonymous = await dataset.insert_example(db, "diagnosis", "expert_edited", chat("Is it normal?", "See a GP."))
    assert anonymous.reason == "no_patient"
    assert await db.fetchval("SELECT COUNT(*) FROM dataset_examples") == 0

    # (issue 12 item 5) not answered yet: kept aside, in no read or export until they agree
    undecided = await add_patient(db, "undecided", consent=None)
    waiting = await dataset.insert_example(db, "diagnosis", "expert_approved", chat("Is it bad?", "See a GP."),
                                           patient_id=undecided)
    assert waiting.stored and await dataset.examples(db) == []
    await db.execute("UPDATE patients SET consent = 1, consent_at = 2 WHERE id = ?", (undecided,))
    assert [e["id"] for e in await dataset.examples(db)] == [waiting.id]
    await db.execute("DELETE FROM patients WHERE id = ?", (undecided,))

    consenting = await add_patient(db, "yes", consent=True)
    kept = await dataset.add_example(db, "treatment", "expert_approved", chat("Does botox hurt?", "A little."),
                                     patient_id=consenting, review_item_id=None)
    assert kept is not None and len(await dataset.examples(db)) == 1
    # consent withdrawn later: the example stays out of every read and export from then on
    await db.execute("UPDATE patients SET consent = 0 WHERE id = ?", (consenting,))
    assert await dataset.examples(db) == []
    assert (await dataset.stats(db))["total"] == 0
    # forgetting the patient removes the example itself
    await db.execute("DELETE FROM patients WHERE id = ?", (consenting,))
    assert await db.fetchval("SELECT COUNT(*) FROM dataset_examples") == 0


@session_loop
async def test_patient_text_is_scrubbed_before_it_is_stored(db):
    patient = await add_patient(db, "pii", consent=True)
    system = "System prompt with https://example.org/policy kept as is."
    messages = chat("Hi, my name is Anna Berg, email anna@example.org, phone 020 7946 0958. My palms drip.",
                    "Hello Anna Berg, thanks for writing. A GP can help.", system)
    example_id = await dataset.add_example(db, "diagnosis", "expert_edited", messages, {"original_reply": "…"},
                                           patient_id=patient)
    stored = json.loads(await db.fetchval("SELECT messages FROM dataset_examples WHERE id = ?", (example_id,)))
    text = json.dumps(stored)
    for secret in ("Anna", "Berg", "anna@example.org", "7946"):
        assert secret not in text
    assert stored[0]["content"] == system and "My palms drip." in stored[1]["content"]


@session_loop
async def test_duplicates_by_content_review_item_and_plan_key(db):
    first = await dataset.add_example(db, "treatment", "synthetic", chat("Q one about iontophoresis?", "A."), plan_key="k")
    assert first is not None
    assert await dataset.add_example(db, "treatment", "synthetic", chat("Q one about iontophoresis?", "A.")) is None
    again = await dataset.insert_example(db, "treatment", "synthetic", chat("Another question?", "B."), plan_key="k")
    assert again.reason == "duplicate"
    assert await dataset.stored_plan_keys(db) == {"k"}
    with pytest.raises(ValueError):
        await dataset.add_example(db, "treatment", "synthetic", [{"role": "user", "content": "no reply"}])
    with pytest.raises(ValueError):
        await dataset.add_example(db, "treatment", "scraped", chat("Q?", "A."))
