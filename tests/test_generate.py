"""Synthetic generation through the real openai client against a local OpenAI-compatible server."""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

from bot.settings import GenerationSettings
from pipeline import dataset
from pipeline import generate as gen
from pipeline.packs import find_eval_leaks, load_pack
from tests.openai_fake import FakeOpenAI, Reply, plan_of, vignette_for, vignette_responder

session_loop = pytest.mark.asyncio(loop_scope="session")


@pytest.fixture(scope="module")
def pack():
    return load_pack("hyperhidrosis")


def settings_for(server: FakeOpenAI, **overrides) -> GenerationSettings:
    values = {"base_url": server.base_url, "model": "fake-frontier", "max_retries": 2, "timeout_s": 5.0,
              "attempts_per_slot": 1, "concurrency": 4}
    values.update(overrides)
    return GenerationSettings(**values)


def modified(pack, change):
    """A responder returning a valid vignette for the plan, changed by ``change(vignette, plan)``."""

    def respond(body, index):
        plan = plan_of(body)
        vignette = vignette_for(plan, pack)
        change(vignette, plan)
        return json.dumps(vignette)

    return respond


@session_loop
async def synthetic_rows(db):
    return await db.fetchall("SELECT * FROM dataset_examples WHERE source = 'synthetic' ORDER BY id")


# ------------------------------------------------------------------------------------- the plan


def test_plan_is_balanced_over_every_dimension(pack):
    plan = gen.build_plan(pack, 120)
    balance = gen.plan_balance(plan)
    assert set(balance["task"].values()) == {40}
    for dim, share in (("hdss", 30), ("age_band", 30), ("kind", 60), ("site", 24)):
        assert all(abs(n - share) <= 1 for n in balance[dim].values()), (dim, balance[dim])
    # no primary case with generalized sweating (the seeds never show one: it points elsewhere)
    assert not [s for s in plan if s.kind == "primary" and s.site == "generalized"]
    # pairs are spread too: every task meets both kinds and every severity about equally
    assert all(abs(n - 20) <= 2 for n in Counter((s.task, s.kind) for s in plan).values())
    task_hdss = Counter((s.task, s.hdss) for s in plan)
    assert max(task_hdss.values()) - min(task_hdss.values()) <= 1
    # every prefix is balanced, not only the whole plan (a run stopped half-way is balanced too)
    sizes = {"task": 3, "site": 5, "hdss": 4, "age_band": 4, "kind": 2}
    running: dict[str, Counter] = {dim: Counter() for dim in sizes}
    for n, slot in enumerate(gen.build_plan(pack, 500), start=1):
        for dim in sizes:
            running[dim][getattr(slot, dim)] += 1
            values = list(running[dim].values()) + [0] * (sizes[dim] - len(running[dim]))
            assert max(values) - min(values) <= 2, (n, dim, running[dim])


def test_plan_keys_are_deterministic_and_grow_by_prefix(pack):
    small, large = gen.build_plan(pack, 30), gen.build_plan(pack, 1000)
    assert [s.key for s in small] == [s.key for s in large[:30]]
    assert len({s.key for s in large}) == 1000
    combos = {(s.task, s.site, s.hdss, s.age_band, s.kind) for s in large}
    assert len(combos) == 3 * 4 * 4 * 2 * 4 + 3 * 1 * 4 * 4 * 1  # every allowed combination is planned
    assert len({(s.task, s.site, s.hdss, s.age_band, s.kind) for s in large[:432]}) > 350  # mostly before repeats
    slot = large[7]
    low, high = dataset.AGE_BANDS[slot.age_band]
    assert low <= slot.age <= high and slot.age == gen.build_plan(pack, 8)[7].age


# ------------------------------------------------------------------------------------- valid output


@session_loop
async def test_valid_vignettes_are_stored_with_provenance(db, pack):
    async with FakeOpenAI(vignette_responder(pack), delay=0.05) as server:
        summary = await gen.generate(db, pack, settings_for(server), 12, concurrency=3)
    assert summary.generated == 12 and summary.remaining == 0 and not summary.rejected and not summary.failed
    assert server.max_in_flight == 3  # the concurrency limit is used, and kept
    body = server.requests[0]
    assert body["model"] == "fake-frontier"
    assert body["response_format"]["type"] == "json_schema" and body["response_format"]["json_schema"]["strict"]
    assert body["messages"][0]["role"] == "system" and "[dx-criteria-1]" in body["messages"][0]["content"]
    # every system message is identical (a long cacheable prefix); the slot is in the user message
    assert len({r["messages"][0]["content"] for r in server.requests}) == 1
    assert summary.prompt_tokens > 0 and summary.completion_tokens > 0 and summary.requests == len(server.requests) == 12

    rows = await synthetic_rows(db)
    plan = gen.build_plan(pack, 12)
    assert sorted(r["plan_key"] for r in rows) == sorted(s.key for s in plan)
    row = rows[0]
    messages = json.loads(row["messages"])
    assert [m["role"] for m in messages] == ["system", "user", "assistant"]
    assert messages[0]["content"] == pack.system_message()
    prov = json.loads(row["provenance"])
    assert prov["generator"]["model"] == "fake-frontier" and prov["generator"]["prompt_version"] == gen.PROMPT_VERSION
    assert prov["plan_key"] == row["plan_key"] and prov["pack"] == "hyperhidrosis"
    assert prov["fact_ids"] and all(pack.fact(f) for f in prov["fact_ids"])
    slot = next(s for s in plan if s.key == row["plan_key"])
    assert prov["profile"]["hdss"] == slot.hdss and prov["profile"]["kind"] == slot.kind
    assert row["task"] == slot.task
    if slot.kind == "secondary":
        assert prov["red_flags"]


@session_loop
async def test_fenced_json_without_structured_output_support(db, pack):
    """A server that refuses json_schema: auto mode falls back to JSON mode, replies are still validated."""

    def fenced(body, index):
        return "```json\n" + json.dumps(vignette_for(plan_of(body), pack)) + "\n```"

    async with FakeOpenAI(fenced, json_schema=False) as server:
        summary = await gen.generate(db, pack, settings_for(server), 6, concurrency=1)
    assert summary.generated == 6 and summary.structured_output == "json_object"
    assert server.statuses.count(400) == 1  # asked once, then remembered
    later = server.requests[-1]
    assert later["response_format"] == {"type": "json_object"}
    assert '"fact_ids"' in later["messages"][0]["content"]  # the schema is spelled out in the prompt instead


# ------------------------------------------------------------------------------------- rejections


@session_loop
async def test_malformed_json_is_rejected_and_counted(db, pack):
    replies = itertools.cycle(["{not json", "Sure! Here is a vignette about sweaty palms.", json.dumps(["a", "list"]),
                               json.dumps({"task": "diagnosis", "question": "only this"}),
                               Reply(content='{"task": "diagnosis", "profile": {"age": 1', finish_reason="length")])

    async with FakeOpenAI(lambda body, i: next(replies)) as server:
        summary = await gen.generate(db, pack, settings_for(server, attempts_per_slot=2), 5, concurrency=1)
    assert summary.generated == 0 and summary.remaining == 5
    assert summary.rejected == Counter({"invalid_json": 4, "invalid_schema": 4, "truncated": 2})
    assert len(server.requests) == 10  # two attempts per slot
    assert not await synthetic_rows(db)


def _no_facts(v, plan):
    v["fact_ids"] = []


def _unknown_fact(v, plan):
    v["fact_ids"] = ["dx-criteria-1", "tx-made-up-cure"]


def _secondary_without_doctor(v, plan):
    v["answer"] = "That sounds tiring. Try a stronger antiperspirant at night and wear breathable fabrics."


def _red_flag_in_primary(v, plan):
    v["question"] += " Lately I also wake up soaked in night sweats."


def _secondary_without_red_flag(v, plan):
    v["question"] = f"I am {plan['age']} and my hands sweat a lot at work. It is annoying. What helps?"


def _off_plan(v, plan):
    v["profile"]["hdss"] = 1 if plan["hdss"] != 1 else 2


def _personal_details(v, plan):
    v["question"] = "Hi, my name is Anna Berg and you can reach me at anna@example.org. " + v["question"]


def _late_onset_primary(v, plan):
    v["profile"]["onset_age"] = 40


@session_loop
@pytest.mark.parametrize(
    "change, kinds, reason",
    [
        (_no_facts, ("primary", "secondary"), "no_facts"),
        (_unknown_fact, ("primary", "secondary"), "unknown_fact"),
        (_secondary_without_doctor, ("secondary",), "red_flag_no_doctor"),
        (_red_flag_in_primary, ("primary",), "kind_mismatch"),
        (_secondary_without_red_flag, ("secondary",), "kind_mismatch"),
        (_late_onset_primary, ("primary",), "kind_mismatch"),
        (_off_plan, ("primary", "secondary"), "off_plan"),
        (_personal_details, ("primary", "secondary"), "personal_details"),
    ],
)
async def test_schema_valid_but_unsupported_vignettes_are_rejected(db, pack, change, kinds, reason):
    def respond(body, index):
        plan = plan_of(body)
        vignette = vignette_for(plan, pack)
        if plan["kind"] in kinds:
            change(vignette, plan)
        return json.dumps(vignette)

    async with FakeOpenAI(respond) as server:
        summary = await gen.generate(db, pack, settings_for(server), 8, concurrency=2)
    bad = sum(1 for s in gen.build_plan(pack, 8) if s.kind in kinds)
    assert summary.rejected == Counter({reason: bad})
    assert summary.generated == 8 - bad
    rows = await synthetic_rows(db)
    assert all(json.loads(r["provenance"])["profile"]["kind"] not in kinds for r in rows)


@session_loop
async def test_a_vignette_quoting_an_evaluation_question_is_never_stored(db, pack):
    question = pack.eval_questions[3]

    def leak(v, plan):
        v["question"] = f"I am {plan['age']} and I read this somewhere: {question.question} " + v["question"]

    async with FakeOpenAI(modified(pack, leak)) as server:
        summary = await gen.generate(db, pack, settings_for(server), 4, concurrency=2)
    assert summary.generated == 0 and summary.rejected == Counter({"eval_leak": 4})
    texts = [dataset.training_text(json.loads(r["messages"])) for r in await db.fetchall(
        "SELECT messages FROM dataset_examples")]
    assert not find_eval_leaks(pack.eval_questions, texts)


@session_loop
async def test_near_duplicates_are_dropped(db, pack):
    """The model keeps writing (almost) the same message: one is kept, the rest are duplicates."""
    base = ("I am {age} and my {site} sweat so much that I have to change shirts twice a day at the office. "
            "It has been like this since school, on both sides, and never at night. What can I do about it?")

    def respond(body, index):
        plan = plan_of(body)
        vignette = vignette_for(plan, pack)
        if plan["kind"] == "primary":
            vignette["question"] = base.format(age=plan["age"], site="palms" if index % 2 else "hands")
        return json.dumps(vignette)

    async with FakeOpenAI(respond) as server:
        summary = await gen.generate(db, pack, settings_for(server), 10, concurrency=1)
    primary = sum(1 for s in gen.build_plan(pack, 10) if s.kind == "primary")
    assert summary.duplicates == primary - 1
    assert summary.generated == 10 - primary + 1

    # a near-copy of a seed question is a duplicate too
    seed = next(s for s in pack.seeds if s.profile.kind == "primary")
    index = await gen.NearDuplicates.from_dataset(db, pack, 0.6)
    assert index.match(seed.question.replace("exam papers", "school notebooks"))[0] == f"seed:{seed.id}"
    assert index.match("Does iontophoresis at home work for feet that sweat through trainers?")[0] is None


# ------------------------------------------------------------------------------------- transport


@session_loop
async def test_429_and_500_are_retried_by_the_client(db, pack):
    seen: Counter[str] = Counter()
    good = vignette_responder(pack)

    def respond(body, index):
        key = json.dumps(plan_of(body), sort_keys=True)
        seen[key] += 1
        if seen[key] == 1:
            return Reply.error_status(429, "slow down", retry_after_ms=20)
        if seen[key] == 2:
            return Reply.error_status(500, "upstream hiccup", retry_after_ms=20)
        return good(body, index)

    async with FakeOpenAI(respond) as server:
        summary = await gen.generate(db, pack, settings_for(server, max_retries=2), 5, concurrency=5)
    assert summary.generated == 5 and not summary.failed
    assert Counter(server.statuses) == Counter({429: 5, 500: 5, 200: 5})


@session_loop
async def test_failures_after_retries_are_counted_and_left_for_the_next_run(db, pack):
    async with FakeOpenAI(lambda body, i: Reply.error_status(429, "quota", retry_after_ms=10)) as server:
        summary = await gen.generate(db, pack, settings_for(server, max_retries=1), 3, concurrency=3)
    assert summary.generated == 0 and summary.failed == Counter({"rate_limited": 3}) and summary.remaining == 3
    assert len(server.requests) == 6  # one try and one retry each
    async with FakeOpenAI(lambda body, i: Reply.error_status(503, "down", retry_after_ms=10)) as server:
        summary = await gen.generate(db, pack, settings_for(server, max_retries=0), 3, concurrency=3)
    assert summary.failed == Counter({"server_error": 3})
    async with FakeOpenAI(vignette_responder(pack)) as server:
        summary = await gen.generate(db, pack, settings_for(server), 3)
    assert summary.generated == 3 and summary.already_stored == 0 and summary.remaining == 0


@session_loop
async def test_timeout_is_retried_then_counted(db, pack):
    good = vignette_responder(pack)
    first = {"done": False}

    def slow_once(body, index):
        if not first["done"]:
            first["done"] = True
            return Reply(content=good(body, index), delay=2.0)  # longer than the client's timeout
        return good(body, index)

    async with FakeOpenAI(slow_once) as server:
        summary = await gen.generate(db, pack, settings_for(server, timeout_s=0.3, max_retries=1), 2, concurrency=1)
    assert summary.generated == 2 and not summary.failed and len(server.requests) == 3

    async with FakeOpenAI(lambda body, i: Reply(content="{}", delay=2.0)) as server:
        started = time.monotonic()
        summary = await gen.generate(db, pack, settings_for(server, timeout_s=0.2, max_retries=0), 3, concurrency=1)
        assert time.monotonic() - started < 1.5
    # the two slots stored above are skipped; the third timed out and waits for the next run
    assert summary.already_stored == 2 and summary.failed == Counter({"timeout": 1}) and summary.remaining == 1


@session_loop
async def test_a_wrong_key_stops_the_run_with_a_clear_error(db, pack):
    async with FakeOpenAI(lambda body, i: Reply.error_status(401, "invalid api key")) as server:
        with pytest.raises(gen.GenerationError, match="API key") as info:
            await gen.generate(db, pack, settings_for(server), 20, concurrency=4)
    assert len(server.requests) <= 4  # no retry storm
    assert info.value.summary is not None and info.value.summary.generated == 0


# ------------------------------------------------------------------------------------- crash and resume


@session_loop
async def test_crash_mid_run_then_resume_continues_without_duplicates(db, pack):
    count = 24
    async with FakeOpenAI(vignette_responder(pack), delay=0.03) as server:
        task = asyncio.create_task(gen.generate(db, pack, settings_for(server), count, concurrency=4))
        while await db.fetchval("SELECT COUNT(*) FROM dataset_examples WHERE source = 'synthetic'") < 8:
            await asyncio.sleep(0.01)
        task.cancel()  # what Ctrl-C does
        with pytest.raises(asyncio.CancelledError):
            await task
        stored_first = await db.fetchval("SELECT COUNT(*) FROM dataset_examples WHERE source = 'synthetic'")
        assert 8 <= stored_first < count
        server.reset()

        summary = await gen.generate(db, pack, settings_for(server), count, concurrency=4)
    assert summary.already_stored == stored_first and summary.generated == count - stored_first
    assert len(server.requests) == count - stored_first  # nothing stored is asked for again
    rows = await synthetic_rows(db)
    assert len(rows) == count
    assert sorted(r["plan_key"] for r in rows) == sorted(s.key for s in gen.build_plan(pack, count))
    assert len({r["content_hash"] for r in rows}) == count
    assert len({json.loads(r["messages"])[1]["content"] for r in rows}) == count

    # growing the dataset later asks only for the new slots
    async with FakeOpenAI(vignette_responder(pack)) as server:
        summary = await gen.generate(db, pack, settings_for(server), count + 6)
    assert summary.already_stored == count and summary.generated == 6 and len(server.requests) == 6


def _cli(args, env):
    return subprocess.Popen([sys.executable, "-m", "bot.cli", *args], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def _synthetic_count(path: Path) -> int:
    if not path.exists():
        return 0
    try:
        with sqlite3.connect(path, timeout=5) as conn:
            return conn.execute("SELECT COUNT(*) FROM dataset_examples WHERE source = 'synthetic'").fetchone()[0]
    except sqlite3.OperationalError:  # not migrated yet
        return 0


@pytest.mark.slow
def test_cli_killed_mid_run_resumes_then_stats_and_export(tmp_path, pack):
    """The real command in a real process, killed with SIGKILL mid-run, run again, then the
    dataset commands: generate → dataset stats → dataset export."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("LLM4SWEAT_")}
    db_path = tmp_path / "llm4sweat.db"
    count = 16
    with FakeOpenAI(vignette_responder(pack), delay=0.15).running_in_thread() as server:
        env.update({"LLM4SWEAT_DATA_DIR": str(tmp_path), "LLM4SWEAT_GENERATION__BASE_URL": server.base_url,
                    "LLM4SWEAT_GENERATION__MODEL": "fake-frontier", "LLM4SWEAT_GENERATION__CONCURRENCY": "2"})
        proc = _cli(["generate", "--count", str(count)], env)
        deadline = time.monotonic() + 60
        while _synthetic_count(db_path) < 3 and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.05)
        os.kill(proc.pid, signal.SIGKILL)
        proc.communicate()
        first = _synthetic_count(db_path)
        assert 3 <= first < count
        server.reset()
        second = _cli(["generate", "--count", str(count), "--concurrency", "4"], env)
        out, errs = second.communicate(timeout=120)
        assert second.returncode == 0, out + errs
        assert len(server.requests) == count - first
    assert f"{first} already stored, {count - first} generated now, 0 still missing" in out
    assert "tokens" in out and "rejected 0" in out
    assert _synthetic_count(db_path) == count

    stats = _cli(["dataset", "stats", "--json"], env)
    out, errs = stats.communicate(timeout=60)
    assert stats.returncode == 0, errs
    data = json.loads(out)
    assert data["source"] == {"seed": len(pack.seeds), "synthetic": count}
    assert set(data["severity"]) == {"HDSS 1", "HDSS 2", "HDSS 3", "HDSS 4"}

    export = _cli(["dataset", "export", str(tmp_path / "train.jsonl")], env)
    out, errs = export.communicate(timeout=60)
    assert export.returncode == 0, errs
    lines = (tmp_path / "train.jsonl").read_text().splitlines()
    assert len(lines) == count + len(pack.seeds) and "snapshot" in out
    assert all(json.loads(line)["messages"][-1]["role"] == "assistant" for line in lines)
