"""The condition pack format: the shipped hyperhidrosis pack loads and passes the checker, and
each kind of defect is refused. Defective packs are built by copying the shipped one into
tmp_path and editing a file."""

from __future__ import annotations

import json
import random
import shutil
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import pytest

import pipeline.packs as packs_module
from pipeline.packs import (
    MIN_DEV_PER_TASK,
    MIN_DEV_TOTAL,
    MIN_EVAL_PER_TASK,
    NEAR_DUPLICATE_THRESHOLD,
    PACKS_DIR,
    ConditionPack,
    PackError,
    SAFETY_EXPECTATIONS,
    SAFETY_HELDOUT_JSONL,
    check_pack,
    find_eval_leaks,
    load_pack,
    pack_check_report,
)
from pipeline.eval_bias import option_bias

SHIPPED = PACKS_DIR / "hyperhidrosis"
TASKS = ["diagnosis", "treatment", "psychological_support"]


@pytest.fixture(scope="module")
def pack() -> ConditionPack:
    return load_pack(SHIPPED)


@pytest.fixture
def copy(tmp_path: Path) -> Path:
    dest = tmp_path / "pack"
    shutil.copytree(SHIPPED, dest)
    return dest


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def write_jsonl(path: Path, rows: list[dict]) -> None:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")


def edit_jsonl(path: Path, index: int, **changes) -> dict:
    rows = read_jsonl(path)
    rows[index].update(changes)
    write_jsonl(path, rows)
    return rows[index]


def problems_matching(problems: list[str], *needles: str) -> list[str]:
    return [p for p in problems if all(n in p for n in needles)]


# ------------------------------------------------------------------------------ shipped pack


def test_module_is_importable_beside_the_data_folder():
    # pipeline/packs.py (module) and pipeline/packs/ (data, no __init__.py) coexist.
    assert Path(packs_module.__file__).name == "packs.py"
    assert (Path(packs_module.__file__).parent / "packs" / "hyperhidrosis" / "pack.toml").is_file()


def test_shipped_pack_loads_with_the_expected_content(pack):
    assert pack.name == "hyperhidrosis"
    assert pack.tasks == TASKS
    assert "not medical advice" in pack.disclaimer.lower() or "not a doctor" in pack.disclaimer.lower()
    assert pack.demo_disclaimer and pack.system_prompt and pack.guidance
    assert len(pack.guidance.split()) <= 260
    assert 50 <= len(pack.facts) <= 120
    assert all(f.source for f in pack.facts)
    assert {f.id for f in pack.red_flags} == {
        "rf-late-onset",
        "rf-asymmetric",
        "rf-generalized",
        "rf-night-sweats",
        "rf-fever",
        "rf-weight-loss",
        "rf-palpitations-chest-pain",
        "rf-new-medication",
    }
    seeds = Counter(s.task for s in pack.seeds)
    assert len(pack.seeds) >= 36 and all(seeds[t] >= 12 for t in TASKS)
    test = Counter(q.task for q in pack.eval_split("test"))
    dev = Counter(q.task for q in pack.eval_split("dev"))
    assert all(test[t] >= 45 and dev[t] >= 25 for t in TASKS), (test, dev)  # above the checker's 40 / 20
    assert len(pack.eval_split("test")) + len(pack.eval_split("dev")) == len(pack.eval_questions) >= 210
    kinds = Counter(c.kind for c in pack.safety_cases)
    assert kinds["red_flag"] >= 25 and kinds["crisis_adjacent"] >= 15
    per_flag = Counter(c.red_flag for c in pack.safety_cases if c.kind == "red_flag")
    assert all(per_flag[flag.id] >= 3 for flag in pack.red_flags), per_flag


def test_shipped_pack_passes_the_checker(pack):
    assert check_pack(SHIPPED) == []
    ok, report = pack_check_report(SHIPPED)
    assert ok, report
    assert "OK" in report and "eval questions" in report
    # The seed conversations are training data: checking them as training texts changes nothing.
    texts = [m["content"] for conv in pack.seed_conversations() for m in conv]
    assert check_pack(SHIPPED, texts) == []


def test_pack_can_be_named_instead_of_given_as_a_path():
    assert load_pack("hyperhidrosis").name == "hyperhidrosis"
    assert load_pack(Path("hyperhidrosis")).name == "hyperhidrosis"


def test_shipped_seeds_cover_profiles_broadly(pack):
    kinds = Counter(s.profile.kind for s in pack.seeds)
    assert kinds["primary"] >= 12 and kinds["secondary"] >= 6
    assert {s.profile.hdss for s in pack.seeds} >= {2, 3, 4}
    sites = {site for s in pack.seeds for site in s.profile.sites}
    assert sites >= {"axillae", "palms", "soles", "craniofacial", "generalized"}
    ages = [s.profile.age for s in pack.seeds]
    assert min(ages) < 16 and max(ages) > 50
    for seed in pack.seeds:
        assert len(seed.answer.split()) <= 125, seed.id


def test_eval_answers_are_spread_and_options_distinct(pack):
    positions = Counter(q.answer for q in pack.eval_questions)
    assert set(positions) == {0, 1, 2, 3}
    assert max(positions.values()) - min(positions.values()) <= len(pack.eval_questions) // 10
    for q in pack.eval_questions:
        assert len(q.options) == 4 and len(set(q.options)) == 4
        assert q.correct_option == q.options[q.answer]


def test_fact_lookup(pack):
    fact = pack.fact("dx-criteria-1")
    assert "six months" in fact.text and fact.source.startswith("Hornberger")
    with pytest.raises(KeyError, match="no-such-fact"):
        pack.fact("no-such-fact")
    assert all(f.task == "treatment" for f in pack.facts_for("treatment"))


def test_seed_conversations_are_chat_messages(pack):
    conversations = pack.seed_conversations()
    assert len(conversations) == len(pack.seeds)
    for conv, seed in zip(conversations, pack.seeds):
        assert [m["role"] for m in conv] == ["system", "user", "assistant"]
        assert conv[0]["content"] == pack.system_message()
        assert conv[1]["content"] == seed.question and conv[2]["content"] == seed.answer
    # The system message is the system prompt followed by the core guidance.
    assert pack.system_message().startswith(pack.system_prompt.strip())
    assert pack.system_message().endswith(pack.guidance.strip())
    # The evaluation set never appears among the seed conversations.
    eval_stems = {q.question for q in pack.eval_questions}
    assert not any(m["content"] in eval_stems for conv in conversations for m in conv)


@pytest.mark.parametrize(
    "region,expected",
    [
        (None, "findahelpline.com"),
        ("nowhere", "findahelpline.com"),
        ("US", "988"),
        ("us", "741741"),
        ("UK", "116 123"),
        ("gb", "Samaritans"),
        ("IE", "Pieta"),
        ("EU", "112"),
        ("de", "112"),
        ("CA", "988"),
        ("AU", "13 11 14"),
        ("NZ", "1737"),
    ],
)
def test_crisis_message_per_region(pack, region, expected):
    message = pack.crisis_message(region)
    assert expected in message
    assert "{resources}" not in message and "emergency" in message.lower()


def test_every_crisis_resource_has_a_source(pack):
    assert {"default", "US", "UK", "IE", "EU", "CA", "AU"} <= set(pack.crisis.regions)
    for region in pack.crisis.regions.values():
        for resource in region.resources:
            assert resource.source, resource.name


def test_fingerprint_changes_when_the_pack_changes(copy):
    before = load_pack(copy).fingerprint()
    assert before == load_pack(copy).fingerprint()
    edit_jsonl(copy / "facts.jsonl", 0, text="A different wording of the first fact.")
    assert load_pack(copy).fingerprint() != before


# ------------------------------------------------------------------------------ defects


def test_fact_without_source_is_refused(copy):
    fact = edit_jsonl(copy / "facts.jsonl", 3, source="")
    problems = check_pack(copy)
    assert problems_matching(problems, "facts.jsonl line 4", fact["id"], "no source"), problems
    # A missing key is the same defect as an empty one.
    rows = read_jsonl(copy / "facts.jsonl")
    del rows[5]["source"]
    write_jsonl(copy / "facts.jsonl", rows)
    assert problems_matching(check_pack(copy), "facts.jsonl line 6", "no source")
    ok, report = pack_check_report(copy)
    assert not ok and "FAILED" in report and "no source" in report


def test_question_with_two_correct_options_is_refused(copy):
    rows = read_jsonl(copy / "eval.jsonl")
    q = rows[10]
    wrong = next(i for i in range(4) if i != q["answer"])
    q["options"][wrong] = q["options"][q["answer"]].upper() + "!"  # same option, other case/punctuation
    write_jsonl(copy / "eval.jsonl", rows)
    problems = check_pack(copy)
    assert problems_matching(problems, "eval.jsonl line 11", q["id"], "more than one option is correct"), problems


def test_question_with_answer_out_of_range_is_refused(copy):
    q = edit_jsonl(copy / "eval.jsonl", 0, answer=4)
    assert problems_matching(check_pack(copy), "eval.jsonl line 1", q["id"], "out of range")
    q = edit_jsonl(copy / "eval.jsonl", 0, answer=-1)
    assert problems_matching(check_pack(copy), "eval.jsonl line 1", "out of range")


def test_question_without_four_options_is_refused(copy):
    rows = read_jsonl(copy / "eval.jsonl")
    rows[2]["options"] = rows[2]["options"][:3]
    rows[2]["answer"] = min(rows[2]["answer"], 2)
    write_jsonl(copy / "eval.jsonl", rows)
    assert problems_matching(check_pack(copy), "eval.jsonl line 3", "has 3 options")


def test_duplicate_ids_are_refused_within_and_across_files(copy):
    facts = read_jsonl(copy / "facts.jsonl")
    edit_jsonl(copy / "facts.jsonl", 1, id=facts[0]["id"])
    problems = check_pack(copy)
    assert problems_matching(problems, "facts.jsonl line 2", "duplicate id", facts[0]["id"], "facts.jsonl line 1")
    # An evaluation question may not reuse a seed's id either.
    seed_id = read_jsonl(copy / "seed_vignettes.jsonl")[0]["id"]
    edit_jsonl(copy / "eval.jsonl", 5, id=seed_id)
    assert problems_matching(check_pack(copy), "eval.jsonl line 6", "duplicate id", seed_id)


def test_unknown_fact_id_is_refused(copy):
    edit_jsonl(copy / "eval.jsonl", 7, fact_ids=["dx-criteria-1", "dx-made-up"])
    edit_jsonl(copy / "seed_vignettes.jsonl", 2, fact_ids=["tx-imaginary"])
    problems = check_pack(copy)
    assert problems_matching(problems, "eval.jsonl line 8", "unknown fact id 'dx-made-up'")
    assert problems_matching(problems, "seed_vignettes.jsonl line 3", "unknown fact id 'tx-imaginary'")
    edit_jsonl(copy / "eval.jsonl", 9, fact_ids=[])
    assert problems_matching(check_pack(copy), "eval.jsonl line 10", "tied to no fact")


def test_eval_question_copied_into_training_texts_is_refused(pack):
    question = next(q for q in pack.eval_questions if q.id == "eval-dx-t08")
    # Lightly altered: other case and punctuation, one word changed, pasted into a chat.
    altered = (
        question.question.lower()
        .replace("what does her age at onset suggest?", "what does her age at onset suggest")
        .replace("pouring with sweat", "dripping with sweat")
    )
    assert altered != question.question
    training = [
        "User: my palms sweat before exams, what can I do?\nAssistant: Try an antiperspirant at night.",
        f"User: hi, quick one. {altered} thanks\nAssistant: See a doctor.",
    ]
    problems = check_pack(SHIPPED, training)
    hits = problems_matching(problems, question.id, "training text #1", "must never be trained on")
    assert hits, problems
    assert not problems_matching(problems, "training text #0")
    leaks = find_eval_leaks(pack.eval_questions, training)
    assert [(leak.question_id, leak.text_index) for leak in leaks] == [(question.id, 1)]
    assert leaks[0].score >= NEAR_DUPLICATE_THRESHOLD


def test_on_topic_training_text_is_not_mistaken_for_a_leak(pack):
    # Long texts on the same topic share vocabulary with the questions but copy none of them.
    answers = [s.answer for s in pack.seeds]
    long_texts = [" ".join(answers[i : i + 6]) for i in range(0, len(answers), 3)]
    assert find_eval_leaks(pack.eval_questions, long_texts) == []


def test_every_eval_question_copied_verbatim_is_caught(pack):
    texts = [f"Q: {q.question}\nOptions: {' / '.join(q.options)}" for q in pack.eval_questions]
    found = {(leak.question_id, leak.text_index) for leak in find_eval_leaks(pack.eval_questions, texts)}
    assert {(q.id, i) for i, q in enumerate(pack.eval_questions)} <= found


def test_eval_question_copied_into_a_seed_is_refused(copy):
    question = read_jsonl(copy / "eval.jsonl")[20]
    edit_jsonl(copy / "seed_vignettes.jsonl", 4, question=question["question"].replace("?", ", please?"))
    problems = check_pack(copy)
    assert problems_matching(problems, question["id"], "nearly appears in seed", "seed_vignettes.jsonl line 5"), problems


def test_too_few_eval_questions_for_a_task_is_refused(copy):
    rows = read_jsonl(copy / "eval.jsonl")
    test = [r for r in rows if r["task"] == "treatment" and r["split"] == "test"]
    dev = [r for r in rows if r["task"] == "diagnosis" and r["split"] == "dev"]
    # Keep one question fewer than needed in each: treatment's test split, diagnosis's dev split.
    dropped = {r["id"] for r in test[MIN_EVAL_PER_TASK - 1 :]} | {r["id"] for r in dev[MIN_DEV_PER_TASK - 1 :]}
    write_jsonl(copy / "eval.jsonl", [r for r in rows if r["id"] not in dropped])
    problems = check_pack(copy)
    assert problems_matching(problems, "task 'treatment'", f"has {MIN_EVAL_PER_TASK - 1} test questions, needs at least 40")
    assert problems_matching(problems, "task 'diagnosis'", f"has {MIN_DEV_PER_TASK - 1} dev questions, needs at least 20")
    assert not problems_matching(problems, "task 'psychological_support'")
    dev_total = sum(1 for r in rows if r["split"] == "dev" and r["id"] not in dropped)
    if dev_total < MIN_DEV_TOTAL:
        assert problems_matching(problems, f"{dev_total} dev questions in all, needs at least {MIN_DEV_TOTAL}")


def test_red_flag_seed_without_doctor_advice_is_refused(copy):
    rows = read_jsonl(copy / "seed_vignettes.jsonl")
    index = next(i for i, r in enumerate(rows) if r["id"] == "seed-dx-03")
    rows[index]["answer"] = "Try a stronger antiperspirant at bedtime and see how it goes."
    write_jsonl(copy / "seed_vignettes.jsonl", rows)
    assert problems_matching(check_pack(copy), "seed-dx-03", "does not advise seeing a doctor")


def test_crisis_file_defects_are_refused(copy):
    path = copy / "crisis_resources.toml"
    text = path.read_text(encoding="utf-8")
    text = text.replace('source = "Samaritans (samaritans.org)"', 'source = ""')
    text = text.replace("[regions.default]", "[regions.fallback]").replace("regions.default.", "regions.fallback.")
    path.write_text(text, encoding="utf-8")
    problems = check_pack(copy)
    assert problems_matching(problems, "crisis_resources.toml", "Samaritans", "no source")
    assert problems_matching(problems, "crisis_resources.toml", "no [regions.default]")


# ------------------------------------------------------------------------------ malformed data


def test_malformed_json_names_file_and_line(copy):
    lines = (copy / "facts.jsonl").read_text(encoding="utf-8").splitlines()
    lines[6] = lines[6][:-1]  # drop the closing brace
    (copy / "facts.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    with pytest.raises(PackError, match=r"facts\.jsonl line 7: not valid JSON") as err:
        load_pack(copy)
    assert err.value.file == "facts.jsonl" and err.value.line == 7
    assert problems_matching(check_pack(copy), "facts.jsonl line 7", "not valid JSON")


def test_wrong_types_unknown_fields_and_bad_regexes_are_refused(copy):
    edit_jsonl(copy / "eval.jsonl", 3, answer="two")
    with pytest.raises(PackError, match=r"eval\.jsonl line 4: answer"):
        load_pack(copy)
    edit_jsonl(copy / "eval.jsonl", 3, answer=1, explanation="unknown field")
    with pytest.raises(PackError, match=r"eval\.jsonl line 4: explanation"):
        load_pack(copy)
    rows = read_jsonl(copy / "eval.jsonl")
    del rows[3]["explanation"]
    write_jsonl(copy / "eval.jsonl", rows)
    load_pack(copy)  # repaired
    flag = read_jsonl(copy / "red_flags.jsonl")[0]
    edit_jsonl(copy / "red_flags.jsonl", 0, patterns=flag["patterns"] + ["(unclosed"])
    with pytest.raises(PackError, match=r"red_flags\.jsonl line 1: patterns: .*does not compile"):
        load_pack(copy)


def test_bad_ids_and_undeclared_tasks_are_refused(copy):
    edit_jsonl(copy / "facts.jsonl", 0, id="Has Spaces")
    edit_jsonl(copy / "seed_vignettes.jsonl", 0, task="billing")
    problems = check_pack(copy)
    assert problems_matching(problems, "facts.jsonl line 1", "id")
    assert problems_matching(problems, "seed_vignettes.jsonl line 1", "task 'billing'")
    with pytest.raises(PackError):
        load_pack(copy)


def test_missing_files_and_bad_toml_are_refused(copy, tmp_path):
    (copy / "guidance.md").unlink()
    (copy / "pack.toml").write_text('name = "x"\ntitle = \n', encoding="utf-8")
    problems = check_pack(copy)
    assert problems_matching(problems, "guidance.md", "missing")
    assert problems_matching(problems, "pack.toml line 2", "invalid TOML")
    assert check_pack(tmp_path / "nowhere") and "no pack folder" in check_pack(tmp_path / "nowhere")[0]
    ok, report = pack_check_report(tmp_path / "nowhere")
    assert not ok and "no pack folder" in report


def test_overlong_guidance_is_refused(copy):
    (copy / "guidance.md").write_text("word " * 400, encoding="utf-8")
    assert problems_matching(check_pack(copy), "guidance.md", "400 words")


# ------------------------------------------------------------------------------ splits


def test_a_row_without_split_is_a_test_question_and_splits_are_selected(copy):
    rows = read_jsonl(copy / "eval.jsonl")
    for row in rows:
        row.pop("split", None)
    rows[0]["split"] = "dev"
    rows[1]["split"] = "test"
    write_jsonl(copy / "eval.jsonl", rows)
    pack = load_pack(copy)
    dev, test = pack.eval_split("dev"), pack.eval_split("test")
    assert [q.id for q in dev] == [rows[0]["id"]]
    assert len(test) == len(rows) - 1 and rows[0]["id"] not in {q.id for q in test}
    assert sum(len(v) for v in pack.eval_by_task("dev").values()) == 1
    with pytest.raises(ValueError, match="unknown evaluation split 'valid'"):
        pack.eval_split("valid")
    edit_jsonl(copy / "eval.jsonl", 2, split="train")
    with pytest.raises(PackError, match=r"eval\.jsonl line 3: split"):
        load_pack(copy)


# ------------------------------------------------------------------------------ held-out safety cases


def test_shipped_safety_cases_load_and_name_real_red_flags(pack):
    assert pack.safety_cases
    flags = {flag.id for flag in pack.red_flags}
    for case in pack.safety_cases:
        assert case.expect in SAFETY_EXPECTATIONS
        if case.kind == "red_flag":
            assert case.red_flag in flags


def test_a_pack_without_held_out_safety_cases_still_loads(copy):
    (copy / SAFETY_HELDOUT_JSONL).unlink()
    assert load_pack(copy).safety_cases == []


def test_safety_case_defects_are_refused(copy):
    path = copy / SAFETY_HELDOUT_JSONL
    rows = read_jsonl(path)
    index = next(i for i, r in enumerate(rows) if r["kind"] == "red_flag")
    edit_jsonl(path, index, red_flag="rf-made-up")
    assert problems_matching(check_pack(copy), f"heldout.jsonl line {index + 1}", "unknown red flag 'rf-made-up'")
    edit_jsonl(path, index, red_flag=None)
    with pytest.raises(PackError, match=f"heldout.jsonl line {index + 1}: .*must name its red flag"):
        load_pack(copy)
    edit_jsonl(path, index, red_flag=rows[index]["red_flag"], expect="reassure")
    with pytest.raises(PackError, match=f"heldout.jsonl line {index + 1}: expect"):
        load_pack(copy)


def test_held_out_safety_case_in_a_seed_or_training_text_is_refused(copy):
    case = read_jsonl(copy / SAFETY_HELDOUT_JSONL)[1]
    # Lightly edited (case, punctuation, one word) inside a longer training conversation.
    altered = case["text"].lower().replace("weird one", "odd one").rstrip("?")
    training = [f"User: hello. {altered}\nAssistant: please see a doctor.", "User: my feet sweat\nAssistant: try socks."]
    problems = check_pack(copy, training)
    assert problems_matching(problems, case["id"], "training text #0", "never be trained on"), problems
    assert not problems_matching(problems, "training text #1")
    edit_jsonl(copy / "seed_vignettes.jsonl", 4, question=case["text"] + " Thanks!")
    problems = check_pack(copy)
    assert problems_matching(problems, "held-out safety case", case["id"], "nearly appears in seed",
                             "seed_vignettes.jsonl line 5"), problems


# ------------------------------------------------------------------------------ option form and splits


def test_shipped_report_prints_the_option_form_figures(pack):
    ok, report = pack_check_report(SHIPPED)
    assert ok, report
    for split in ("test", "dev"):
        bias = option_bias(pack.eval_split(split))
        row = next(line for line in report.splitlines() if line.split()[:2] == [split, "all"])
        assert f"{bias.longest_share:.1%}" in row and f"{bias.shortest_share:.1%}" in row, row
        assert f"{bias.pick_longest:.3f}" in row
        assert f"option length ratio, {split}" in report
    assert "pick-longest" in report and "psychological_support" in report


def test_correct_option_longest_too_often_is_refused(copy):
    rows = read_jsonl(copy / "eval.jsonl")
    target = [r for r in rows if r["task"] == "treatment" and r["split"] == "test"]
    for row in target:  # the writer's habit: qualify the right answer until it is the longest
        row["options"][row["answer"]] += ", as most studies and guidelines agree"
    write_jsonl(copy / "eval.jsonl", rows)
    problems = check_pack(copy)
    n = len(target)
    assert problems_matching(
        problems, "split 'test', task 'treatment'", f"the correct option is the longest in 100% of questions ({n} of {n})",
        "limit 35%",
    ), problems
    assert not problems_matching(problems, "split 'dev'")


def test_correct_option_shortest_too_often_is_refused(copy):
    rows = read_jsonl(copy / "eval.jsonl")
    target = [r for r in rows if r["task"] == "psychological_support" and r["split"] == "dev"]
    for i, row in enumerate(target):
        row["options"][row["answer"]] = f"Yes ({i})"
    write_jsonl(copy / "eval.jsonl", rows)
    n = len(target)
    assert problems_matching(
        check_pack(copy), "split 'dev', task 'psychological_support'",
        f"the correct option is the shortest in 100% of questions ({n} of {n}), limit 35%",
    )


def test_answer_always_in_one_position_is_refused(copy):
    rows = read_jsonl(copy / "eval.jsonl")
    dev = [r for r in rows if r["split"] == "dev"]
    for row in dev:  # move the correct option to A, keeping the others in order
        correct = row["options"].pop(row["answer"])
        row["options"].insert(0, correct)
        row["answer"] = 0
    write_jsonl(copy / "eval.jsonl", rows)
    problems = check_pack(copy)
    n = len(dev)
    assert problems_matching(problems, "split 'dev':", f"answer A is correct in 100% of questions ({n} of {n})", "allowed 15%-35%")
    assert problems_matching(problems, "split 'dev':", f"answer D is correct in 0% of questions (0 of {n})")
    assert not problems_matching(problems, "split 'test':", "answer")


def test_a_pack_without_a_dev_split_is_refused(copy):
    rows = read_jsonl(copy / "eval.jsonl")
    for row in rows:
        del row["split"]  # an old pack: every question reads as test
    write_jsonl(copy / "eval.jsonl", rows)
    pack = load_pack(copy)
    assert pack.eval_split("dev") == [] and len(pack.eval_split("test")) == len(rows)
    problems = check_pack(copy)
    assert problems_matching(problems, "no 'dev' questions", "give each row \"split\""), problems


def test_a_dev_question_repeating_a_test_question_is_refused(copy):
    rows = read_jsonl(copy / "eval.jsonl")
    test = next(r for r in rows if r["split"] == "test" and r["task"] == "diagnosis")
    index, dev = next((i, r) for i, r in enumerate(rows) if r["split"] == "dev" and r["task"] == "treatment")
    dev["question"] = test["question"].replace("?", ", roughly?").upper()  # reworded only by punctuation and case
    write_jsonl(copy / "eval.jsonl", rows)
    assert problems_matching(
        check_pack(copy), f"eval.jsonl line {index + 1}", f"dev question {dev['id']!r} repeats test question {test['id']!r}",
    )


def test_too_few_held_out_safety_cases_are_refused(copy):
    path = copy / SAFETY_HELDOUT_JSONL
    rows = read_jsonl(path)
    kept = [r for r in rows if r.get("red_flag") != "rf-fever"][:20]
    write_jsonl(path, kept)
    problems = check_pack(copy)
    assert problems_matching(problems, "20 held-out safety cases, needs at least 30")
    assert problems_matching(problems, "red flag 'rf-fever' has 0 held-out red_flag cases, needs at least 3")
    crisis = sum(r["kind"] == "crisis_adjacent" for r in kept)
    assert problems_matching(problems, f"{crisis} crisis_adjacent cases, needs at least 10")


def test_option_bias_counts_ties_for_both_sides():
    @dataclass
    class Q:
        options: list[str]
        answer: int

    questions = [
        Q(["aaaa", "bb", "cc", "dddd"], 0),  # tied longest: counts as longest, pick-longest gets 1/2
        Q(["aa", "bbbb", "c", "ddd"], 2),  # shortest
        Q(["aaa", "bb", "cccc", "d"], 1),  # neither
        Q(["aa", "bb", "cc", "dd"], 3),  # all tied: longest and shortest
    ]
    bias = option_bias(questions)
    assert (bias.questions, bias.longest_correct, bias.shortest_correct) == (4, 2, 2)
    assert bias.positions == (1, 1, 1, 1)
    assert bias.pick_longest == pytest.approx((1 / 2 + 1 / 4) / 4)
    assert bias.length_ratios == (2.0, 4.0, 4.0, 1.0)
    assert bias.within_ratio_target == 0.25  # only the all-tied question is within 1.8


# ------------------------------------------------------------------------------ a pack for another condition


def small_pack(root: Path, *, longest_every_time: bool = False) -> Path:
    """A minimal pack for another condition (two tasks of its own), with a generated question
    set whose form is balanced: the correct option takes each length rank and position in turn."""
    shutil.copy(SHIPPED / "crisis_resources.toml", root / "crisis_resources.toml")
    (root / "pack.toml").write_text(
        'name = "chilblains"\ntitle = "Chilblains"\nversion = "0.1.0"\ntasks = ["recognition", "care"]\n'
        'disclaimer = "AI-written, not medical advice."\ndemo_disclaimer = "Demo only."\n', encoding="utf-8")
    (root / "system_prompt.md").write_text("You help people with chilblains.\n", encoding="utf-8")
    (root / "guidance.md").write_text("Chilblains follow cold; see a doctor if they do not heal.\n", encoding="utf-8")
    nhs = "NHS: Chilblains, nhs.uk"
    write_jsonl(root / "facts.jsonl", [
        {"id": "rec-cold", "task": "recognition", "text": "Chilblains are small itchy swellings after cold exposure.", "source": nhs},
        {"id": "care-warm", "task": "care", "text": "Keeping hands and feet warm helps chilblains heal.", "source": nhs},
    ])
    flags = [("rf-no-heal", "not healing", r"\bnot heal\w*"), ("rf-infected", "infected", r"\bpus\b")]
    write_jsonl(root / "red_flags.jsonl", [
        {"id": i, "name": n, "description": n, "patterns": [p], "advice": "See a doctor.", "source": nhs}
        for i, n, p in flags
    ])
    write_jsonl(root / "seed_vignettes.jsonl", [
        {"id": "seed-rec-01", "task": "recognition", "question": "My toes itch after winter walks.", "answer": "That can be chilblains.",
         "fact_ids": ["rec-cold"], "profile": {"age": 30, "sex": "female", "sites": ["toes"], "hdss": 1, "kind": "primary"}},
    ])
    words = ("amber basil cedar dune ember fjord garnet harbour indigo juniper kelp lagoon meadow nectar "
             "orchid pebble quartz river saffron tundra umber violet willow yarrow zephyr").split()
    rng = random.Random(7)
    rows, n = [], 0
    for task, fact in (("recognition", "rec-cold"), ("care", "care-warm")):
        for split, count in (("test", MIN_EVAL_PER_TASK), ("dev", 30)):
            for _ in range(count):
                stem = " ".join(rng.sample(words, 9)) + f" {n}?"
                lengths = [10, 14, 18, 22]  # correct option: shortest, then 2nd, 3rd, longest, in turn
                correct_rank = 3 if longest_every_time else n % 4
                others = [length for i, length in enumerate(lengths) if i != correct_rank]
                answer = (n // 4) % 4
                options = [f"{n}-" + "x" * (length - len(str(n)) - 1) for length in others]
                options.insert(answer, f"{n}+" + "y" * (lengths[correct_rank] - len(str(n)) - 1))
                rows.append({"id": f"eval-{n}", "task": task, "split": split, "question": stem, "options": options,
                             "answer": answer, "fact_ids": [fact]})
                n += 1
    write_jsonl(root / "eval.jsonl", rows)
    (root / "safety").mkdir()
    cases = [{"id": f"held-{flag}-{i}", "kind": "red_flag", "red_flag": flag, "expect": "doctor",
              "text": f"case {i} for {flag}: " + " ".join(rng.sample(words, 6))} for flag, _, _ in flags for i in range(10)]
    cases += [{"id": f"held-crisis-{i}", "kind": "crisis_adjacent", "expect": "crisis_resources",
               "text": f"crisis case {i}: " + " ".join(rng.sample(words, 6))} for i in range(10)]
    write_jsonl(root / "safety" / "heldout.jsonl", cases)
    return root


def test_a_small_pack_of_another_condition_is_checked_by_the_same_rules(tmp_path):
    root = small_pack(tmp_path)
    assert check_pack(root) == []
    ok, report = pack_check_report(root)
    assert ok and "recognition" in report and "care" in report and "pick-longest" in report, report
    pack = load_pack(root)
    assert len(pack.eval_split("dev")) == 60 and len(pack.eval_split("test")) == 80
    assert option_bias(pack.eval_split("test")).longest_share == 0.25

    (tmp_path / "biased").mkdir()
    biased = small_pack(tmp_path / "biased", longest_every_time=True)
    problems = check_pack(biased)
    assert problems_matching(problems, "split 'test', task 'care'", "longest in 100% of questions (40 of 40)")
    assert problems_matching(problems, "split 'dev', task 'recognition'", "longest in 100% of questions (30 of 30)")
