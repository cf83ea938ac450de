"""What generation keeps out: facts balanced across the plan, answers checked against the facts
they cite, near-duplicate answers, and the evaluation set (questions, long options, light edits)."""

from __future__ import annotations

import json
import re
from collections import Counter

import pytest

from bot.settings import GenerationSettings
from pipeline import dataset
from pipeline import generate as gen
from pipeline.fact_check import FactChecker, numbers
from pipeline.packs import eval_heldout_items, find_eval_leaks, load_pack, words_of
from tests.openai_fake import FakeOpenAI, plan_of, vignette_for, vignette_responder

session_loop = pytest.mark.asyncio(loop_scope="session")


@pytest.fixture(scope="module")
def pack():
    return load_pack("hyperhidrosis")


def settings_for(server: FakeOpenAI, **overrides) -> GenerationSettings:
    values = {"base_url": server.base_url, "model": "fake-frontier", "max_retries": 0, "timeout_s": 5.0,
              "attempts_per_slot": 1, "concurrency": 2}
    values.update(overrides)
    return GenerationSettings(**values)


def modified(pack, change):
    def respond(body, index):
        plan = plan_of(body)
        vignette = vignette_for(plan, pack)
        change(vignette, plan)
        return json.dumps(vignette)

    return respond


# ------------------------------------------------------------------------------------- facts in the plan


def test_every_fact_gets_its_share_in_every_prefix_of_the_plan(pack):
    plan = gen.build_plan(pack, 600)
    running: dict[str, Counter] = {task: Counter() for task in pack.tasks}
    for n, slot in enumerate(plan, start=1):
        assert slot.fact is not None and pack.fact(slot.fact).task == slot.task
        running[slot.task][slot.fact] += 1
        for task, counts in running.items():
            values = [counts[f.id] for f in pack.facts_for(task)]
            if sum(values):
                assert max(values) - min(values) <= 1, (n, task)
    # the fact of a slot never changes when the plan grows (resuming keeps the same facts)
    assert [(s.key, s.fact) for s in gen.build_plan(pack, 90)] == [(s.key, s.fact) for s in plan[:90]]
    assert set(gen.plan_balance(plan)["fact"]) == {f.id for f in pack.facts}
    # the request names the fact
    assert gen.build_plan(pack, 3)[2].spec(pack)["fact"] == plan[2].fact


# ------------------------------------------------------------------------------------- the fact check


def test_an_answer_must_use_the_facts_it_cites_and_not_contradict_their_numbers(pack):
    checker = FactChecker(pack.facts)
    fact = pack.fact("dx-criteria-1")  # "... lasting at least six months with no apparent underlying cause"
    assert numbers(fact.text) == [(6.0, "months")]
    good = ("It sounds like focal sweating that is visible and excessive; once it has gone on for six months "
            "with no apparent underlying cause, a doctor can recognise it.")
    assert checker.check(good, [fact.id]) is None
    unused = checker.check("That sounds hard. Try breathable clothes and talk to someone you trust.", [fact.id])
    assert unused is not None and unused.reason == "fact_not_used" and unused.fact_id == fact.id
    wrong = checker.check(good.replace("six months", "three months"), [fact.id])
    assert wrong is not None and wrong.reason == "fact_contradicted" and "[3.0] months" in wrong.detail
    # a number the answer takes from the patient's profile is not a claim about the fact
    own = good.replace("six months", "six months (you said 3 months so far)")
    assert checker.check(own, [fact.id]) is None
    onset = "Since it started at age 30, that points to a secondary cause a doctor should look for."
    assert checker.check(onset, ["dx-secondary-onset"], patient_ages=[34, 30]) is None
    assert checker.check(onset, ["dx-secondary-onset"]).reason == "fact_contradicted"  # the fact says 25
    # words shared by most facts do not count as using a fact
    assert {"sweat", "hyper", "treat"} <= checker.common


def _fact_missing(v, plan):
    v["fact_ids"] = [next(f.id for f in load_pack("hyperhidrosis").facts_for(plan["task"]) if f.id != plan["fact"])]


def _cites_an_unused_fact(v, plan):
    v["fact_ids"] = [plan["fact"], "tx-ets-other-risks"]  # collapsed lung, Horner's syndrome ...


def _contradicts_a_number(v, plan):
    v["fact_ids"] = [plan["fact"], "dx-criteria-1"]
    v["answer"] += (" Doctors call it primary once visible, excessive focal sweating has gone on for three months"
                    " with no apparent underlying cause.")


@session_loop
@pytest.mark.parametrize("change, reason", [
    (_fact_missing, "fact_missing"),
    (_cites_an_unused_fact, "fact_not_used"),
    (_contradicts_a_number, "fact_contradicted"),
])
async def test_vignettes_that_misuse_facts_are_refused(db, pack, change, reason):
    async with FakeOpenAI(modified(pack, change)) as server:
        summary = await gen.generate(db, pack, settings_for(server), 6)
    assert summary.rejected == Counter({reason: 6}) and summary.generated == 0


@session_loop
async def test_stored_vignettes_use_their_planned_fact(db, pack):
    async with FakeOpenAI(vignette_responder(pack)) as server:
        summary = await gen.generate(db, pack, settings_for(server), 9)
    assert summary.generated == 9 and not summary.rejected
    rows = await db.fetchall("SELECT plan_key, provenance FROM dataset_examples WHERE source = 'synthetic'")
    plan = {s.key: s for s in gen.build_plan(pack, 9)}
    for row in rows:
        prov = json.loads(row["provenance"])
        assert prov["plan"]["fact"] == plan[row["plan_key"]].fact == prov["fact_ids"][0]
    assert gen.PROMPT_VERSION == "vignette-v2" and "the plan names (\"fact\")" in server.requests[0]["messages"][0]["content"]


# ------------------------------------------------------------------------------------- near-duplicate answers


@session_loop
async def test_near_duplicate_answers_are_dropped_even_when_the_questions_differ(db, pack):
    answer = ("That sounds really frustrating, and you are not alone. Sweating like this is common and it can be "
              "treated: a strong antiperspirant at night is the usual first step, then a GP or dermatologist can talk "
              "you through {what}. {fact_words}")

    def same_answer(v, plan):
        fact_words = v["answer"].split("Worth knowing: ")[1].split(".")[0]
        v["answer"] = answer.format(what="the next options" if plan["hdss"] % 2 else "what comes next",
                                    fact_words=f"Worth knowing: {fact_words}.")

    async with FakeOpenAI(modified(pack, same_answer)) as server:
        summary = await gen.generate(db, pack, settings_for(server, concurrency=1), 8)
    assert summary.generated == 1 and summary.duplicates == 7
    assert summary.duplicate_kinds == Counter({"answer": 7})
    assert "duplicates 7 (answer 7)" in summary.lines()


@session_loop
async def test_the_duplicate_index_holds_questions_and_answers_of_seeds_and_examples(db, pack):
    index = await gen.NearDuplicates.from_dataset(db, pack, 0.6)
    seed = pack.seeds[0]
    assert index.match(seed.answer.replace(".", "!"), "answer")[0] == f"seed:{seed.id}"
    assert index.match(seed.answer, "question")[0] is None  # questions and answers are kept apart
    assert index.check_and_add("k1", "A brand new question about gloves and grip at the climbing wall?",
                               "A brand new answer about chalk, grip training and when to see a GP for it.") is None
    assert index.check_and_add("k2", "Another question entirely, about exam nerves and damp paper in class.",
                               "A brand new answer about chalk, grip training and when to see a GP for it!") == \
        ("answer", "k1")
    index.remove("k1")
    assert index.match("A brand new answer about chalk, grip training and when to see a GP for it.", "answer")[0] is None


# ------------------------------------------------------------------------------------- the leak guard


def _two_word_edit(text: str) -> str:
    """Replace two words (alphabetic, 4+ letters) with other words, as a light edit would."""
    words = text.split()
    picks = [i for i, w in enumerate(words) if re.fullmatch(r"[A-Za-z]{4,}", w)]
    assert len(picks) >= 2, text
    for i, new in zip((picks[0], picks[len(picks) // 2]), ("really", "perhaps")):
        words[i] = new if words[i].lower() != new else "truly"
    return " ".join(words)


def _reordered(text: str) -> str:
    """The first clause moved to the end (or the two halves swapped)."""
    parts = re.split(r"(?<=[,.?:;])\s+", text.strip())
    if len(parts) > 1:
        return " ".join(parts[1:] + parts[:1])
    words = text.split()
    return " ".join(words[len(words) // 2:] + words[: len(words) // 2])


def test_every_two_word_edit_and_reordering_of_an_evaluation_question_is_caught(pack):
    patient = "I am 34 and my hands drip at work. I read this online: {} Is that right for me?"
    for q in pack.eval_questions:
        for edited in (_two_word_edit(q.question), _reordered(q.question)):
            assert q.id in dataset.leaked_questions(patient.format(edited), pack.eval_questions), (q.id, edited)


def test_long_options_are_held_out_and_short_or_factual_ones_are_not(pack):
    items = eval_heldout_items(pack.eval_questions)
    stems = {q.question for q in pack.eval_questions}
    held_options = [i for i in items if i.question not in stems]
    assert held_options and all(len(words_of(i.question)) >= 8 for i in held_options)
    option = held_options[0]
    answer = f"That is a good question, and it is common to wonder. In short: {option.question.lower()}. See a GP."
    assert option.id in dataset.leaked_questions(answer, pack.eval_questions)
    assert option.id in dataset.leaked_questions(
        answer.replace(option.question.lower(), _two_word_edit(option.question)), pack.eval_questions)
    # a short option is a common phrase, and an option that repeats a fact is the knowledge itself
    short = next(o for q in pack.eval_questions for o in q.options if len(words_of(o)) <= 4)
    assert not dataset.leaked_questions(f"Well, {short.lower()} is one thing people mention.", pack.eval_questions)
    texts = [f.text for f in pack.facts]
    leaked_facts = {leak.text_index for leak in find_eval_leaks(pack.eval_questions, texts)}
    by_options = {i for i, text in enumerate(texts) if any(o.question in text for o in held_options)}
    assert not by_options & leaked_facts


def test_seed_texts_are_not_mistaken_for_leaks(pack):
    texts = [t for s in pack.seeds for t in (s.question, s.answer)]
    assert find_eval_leaks(pack.eval_questions, texts) == []


@session_loop
async def test_a_vignette_with_an_edited_evaluation_question_or_a_long_option_is_never_stored(db, pack):
    q = pack.eval_questions[5]
    option = next(i.question for i in eval_heldout_items(pack.eval_questions)
                  if i.question not in {e.question for e in pack.eval_questions})

    def leak(v, plan):
        if plan["kind"] == "primary":
            v["question"] = f"I am {plan['age']} and I keep wondering: {_two_word_edit(q.question)} " + v["question"]
        else:
            v["answer"] += f" Remember: {option}."

    async with FakeOpenAI(modified(pack, leak)) as server:
        summary = await gen.generate(db, pack, settings_for(server), 6)
    assert summary.generated == 0 and summary.rejected == Counter({"eval_leak": 6})
    assert not await db.fetchval("SELECT COUNT(*) FROM dataset_examples WHERE source = 'synthetic'")
