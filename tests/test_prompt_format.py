"""Training data as the model sees it: the task line, the pinned template date and the model's
prompt format are the same for training, evaluation and serving (bot/chat_format.py)."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import pytest

from bot.chat_format import (
    DEFAULT_TEMPLATE_DATE,
    for_format,
    model_prompt_format,
    render,
    task_line,
    task_of,
    with_task,
)
from bot.inference.local_backend import LocalBackend
from bot.prompt import build_prompt
from bot.settings import InferenceSettings, load_settings
from bot.tasks import classify_task
from pipeline import dataset
from pipeline import evaluate as ev
from pipeline.packs import load_pack
from pipeline.training import IGNORE_INDEX, training_rows

# A Llama-3.2-style template: the system turn starts with the knowledge cutoff and today's date
# (today unless the caller passes date_string), as the production model's template does.
DATED_TEMPLATE = (
    "{{- bos_token }}"
    "{%- if date_string is not defined %}{%- if strftime_now is defined %}"
    "{%- set date_string = strftime_now('%d %b %Y') %}{%- else %}{%- set date_string = '26 Jul 2024' %}{%- endif %}"
    "{%- endif %}"
    "{%- if messages[0]['role'] == 'system' %}{%- set system_message = messages[0]['content'] | trim %}"
    "{%- set messages = messages[1:] %}{%- else %}{%- set system_message = '' %}{%- endif %}"
    "{{- '<|start_header_id|>system<|end_header_id|>\\n\\n' }}"
    "{{- 'Cutting Knowledge Date: December 2023\\n' }}"
    "{{- 'Today Date: ' + date_string + '\\n\\n' }}"
    "{{- system_message }}{{- '<|eot_id|>' }}"
    "{%- for message in messages %}"
    "{{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n' + message['content'] | trim + '<|eot_id|>' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{%- endif %}"
)


@pytest.fixture(scope="module")
def pack():
    return load_pack("hyperhidrosis")


@pytest.fixture(scope="module")
def dated_model_dir(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny model with a chat template that prints a date, like Llama 3.2's."""
    from transformers import AutoTokenizer

    target = tmp_path_factory.mktemp("dated") / "model"
    shutil.copytree(tiny_model_dir, target)
    tok = AutoTokenizer.from_pretrained(str(target), local_files_only=True)
    tok.chat_template = DATED_TEMPLATE
    tok.save_pretrained(str(target))
    return target


@pytest.fixture(scope="module")
def demo_format_dir(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny model marked as a demo model (prompt format task_only), as pipeline.demo marks it."""
    target = tmp_path_factory.mktemp("demo-format") / "model"
    shutil.copytree(tiny_model_dir, target)
    (target / "demo.json").write_text(json.dumps({"demo": True, "prompt_format": "task_only"}))
    return target


# ------------------------------------------------------------------------------------- the rule


def test_the_task_line_ends_the_system_turn_once():
    convo = [{"role": "system", "content": "Be kind."}, {"role": "user", "content": "Hi"}]
    labelled = with_task(convo, "psychological_support")
    assert labelled[0]["content"] == "Be kind.\n\nTask: psychological support"
    assert task_of(labelled) == "psychological support" and task_of(convo) is None
    # an example that kept the prompt it was served with gets the reviewed task, once
    relabelled = with_task(labelled, "treatment")
    assert relabelled[0]["content"] == "Be kind.\n\nTask: treatment" and relabelled[1:] == convo[1:]
    assert with_task([{"role": "user", "content": "Hi"}], "diagnosis") == [
        {"role": "system", "content": "Task: diagnosis"}, {"role": "user", "content": "Hi"}]
    assert convo[0]["content"] == "Be kind."  # the input is not changed
    # the demo model's format keeps the task line only
    assert for_format(relabelled, "task_only") == [{"role": "system", "content": "Task: treatment"}, convo[1]]
    assert for_format(convo, "task_only") == [convo[1]]
    assert for_format(relabelled, "full") == relabelled


def test_serving_prompts_end_with_the_task_of_the_message(pack):
    text = "Does botox work for sweaty armpits?"
    task = classify_task(text)
    messages = build_prompt(pack, [], text, count_tokens=lambda t: len(t) // 4, budget=4000,
                            red_flag_advice=["Night sweats need a doctor."], task=task)
    assert task == "treatment" and messages[0]["content"].endswith("\n\n" + task_line(task))
    assert "Night sweats need a doctor." in messages[0]["content"]


async def test_the_service_stores_the_prompt_with_its_task_line(service):
    from bot.platform import IncomingMessage

    result = await service.core.handle_message(
        IncomingMessage("local", "pat", "console", "pat", "Is iontophoresis worth trying for my feet?", display_name="p"))
    row = await service.db.fetchone("SELECT prompt, task FROM replies WHERE id = ?", (result.reply_id,))
    prompt = json.loads(row["prompt"])
    assert row["task"] == "treatment" and prompt[0]["content"].endswith("Task: treatment")


async def test_exported_examples_carry_their_task_line(db, pack, tmp_path):
    await dataset.import_seeds(db, pack)
    result = await dataset.export(db, tmp_path / "train.jsonl", pack)
    rows = [json.loads(line) for line in (tmp_path / "train.jsonl").read_text().splitlines()]
    assert len(rows) == result.count == len(pack.seeds)
    for row in rows:
        assert row["messages"][0]["content"].endswith("\n\n" + task_line(row["task"]))
        assert row["messages"][0]["content"].count("Task: ") == 1
    stored = json.loads((await db.fetchall("SELECT messages FROM dataset_examples LIMIT 1"))[0]["messages"])
    assert task_of(stored) is None  # stored as written; the label is added on the way to training
    assert result.hash == dataset.snapshot_hash([r["messages"] for r in rows])


def test_the_template_date_is_pinned(dated_model_dir):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(dated_model_dir), local_files_only=True)
    convo = [{"role": "system", "content": "Task: diagnosis"}, {"role": "user", "content": "Hi"}]
    today = time.strftime("%d %b %Y")
    assert f"Today Date: {today}" in tok.apply_chat_template(convo, tokenize=False)  # what the template does alone
    pinned = render(tok, convo, add_generation_prompt=True)
    assert f"Today Date: {DEFAULT_TEMPLATE_DATE}\n" in pinned and today not in pinned
    assert "Today Date: 01 Mar 2025" in render(tok, convo, add_generation_prompt=True, template_date="01 Mar 2025")
    assert f"Today Date: {today}" in render(tok, convo, add_generation_prompt=True, template_date="")  # not pinned
    assert load_settings().prompt.template_date == DEFAULT_TEMPLATE_DATE


# ------------------------------------------------------------------------------------- the same token ids


async def _serving_ids(model_dir: Path, messages: list[dict[str, str]], template_date: str) -> tuple[list[int], str]:
    backend = LocalBackend(InferenceSettings(max_new_tokens=4, temperature=0.0), str(model_dir),
                           template_date=template_date)
    await backend.start()
    try:
        return backend.prompt_ids(messages), backend.prompt_format
    finally:
        await backend.close()


@pytest.mark.parametrize("which", ["plain", "dated", "demo"])
async def test_the_trainer_sees_the_token_ids_serving_builds(which, pack, db, tmp_path, tiny_model_dir,
                                                             dated_model_dir, demo_format_dir):
    """A patient message answered by the service and approved by an expert becomes a training
    example; the tokens the trainer gives the model for it are exactly the tokens serving gave
    it, followed by the reply, for a plain template, a template that prints a date, and the
    demo model's task-only format."""
    from transformers import AutoTokenizer

    model_dir = {"plain": tiny_model_dir, "dated": dated_model_dir, "demo": demo_format_dir}[which]
    date = "03 Feb 2025"
    text = "My hands drip when I write exams. Would iontophoresis help?"
    reply = "Tap-water iontophoresis often helps sweaty palms; a dermatologist can show you how."
    task = classify_task(text)
    served = build_prompt(pack, [], text, count_tokens=lambda t: len(t) // 3, budget=4000, task=task)
    serving_ids, fmt = await _serving_ids(model_dir, served, date)
    assert fmt == ("task_only" if which == "demo" else "full")

    # the example as the dataset stores it (the pack's system message, no label) and exports it
    await dataset.add_example(db, task, "synthetic", [{"role": "system", "content": pack.system_message()},
                                                      {"role": "user", "content": text},
                                                      {"role": "assistant", "content": reply}])
    await dataset.export(db, tmp_path / "train.jsonl", pack)
    exported = json.loads((tmp_path / "train.jsonl").read_text().splitlines()[0])["messages"]

    tok = AutoTokenizer.from_pretrained(str(model_dir), local_files_only=True)
    (row,) = training_rows(tok, [exported], model_prompt_format(model_dir), max_length=8192, template_date=date)
    ids, labels = row["input_ids"], row["labels"]
    n = len(serving_ids)
    assert ids[:n] == serving_ids
    assert all(label == IGNORE_INDEX for label in labels[:n]) and labels[n] != IGNORE_INDEX
    assert tok.decode(ids[n:], skip_special_tokens=True).strip() == reply
    shown = tok.decode(serving_ids)
    assert "Task: treatment" in shown
    assert ("Today Date: 03 Feb 2025" in shown) == (which == "dated")
    assert (pack.system_prompt.strip()[:60] in shown) == (which != "demo")


def test_evaluation_contexts_are_rendered_as_serving_renders_them(pack, tiny_model_dir, demo_format_dir):
    from transformers import AutoTokenizer

    q = ev.questions_from_pack(pack, 1)[0]
    system = ev.system_text(pack)
    for model_dir in (tiny_model_dir, demo_format_dir):
        tok = AutoTokenizer.from_pretrained(str(model_dir), local_files_only=True)
        how = ev.Prompting(model_prompt_format(model_dir), "05 May 2025")
        context = ev.options_request(tok, system, q, prompting=how).context
        messages = with_task([{"role": "system", "content": system}, {"role": "user", "content": q.question}], q.task)
        assert context == render(tok, for_format(messages, how.prompt_format), add_generation_prompt=True,
                                 template_date="05 May 2025")
        assert task_line(q.task) in context
        assert (system[:60] in context) == (how.prompt_format == "full")
    # a different date or task line is a different evaluation set
    questions = ev.questions_from_pack(pack, 2)
    assert ev.eval_hash(questions, system) != ev.eval_hash(questions, system, template_date="05 May 2025")


def test_the_evaluator_scores_with_the_models_format(demo_format_dir):
    evaluator = ev.Evaluator(demo_format_dir, template_date="06 Jun 2025")
    assert evaluator.prompting == ev.Prompting("task_only", "06 Jun 2025")


async def test_vllm_is_asked_to_render_the_template_with_the_pinned_date():
    """vLLM renders the chat template itself: the openai backend sends the date as
    chat_template_kwargs, so the served prompt has the date training used."""
    from bot.inference import make_backend
    from tests.vllm_fake import FakeVLLM

    server = await FakeVLLM().start()
    try:
        settings = load_settings(inference={"backend": "openai", "openai_base_url": server.url,
                                            "openai_health_interval_s": 0, "base_model": "base"},
                                 prompt={"template_date": "07 Jul 2025"})
        backend = make_backend(settings)
        await backend.start()
        try:
            await backend.generate([{"role": "user", "content": "Hi"}])
        finally:
            await backend.close()
    finally:
        await server.stop()
    assert server.chat_bodies[-1]["chat_template_kwargs"] == {"date_string": "07 Jul 2025"}


def test_the_remembered_system_turn_is_the_one_built_for_these_inputs():
    """build_prompt remembers the system turn per (system message, extra lines, advice, task):
    each input still changes it, in order, and advice given as a list or a tuple is the same."""
    from types import SimpleNamespace

    from bot.prompt import build_prompt

    pack = SimpleNamespace(system_message=lambda: "You help with sweating.")

    def system(**kw):
        return build_prompt(pack, [], "hi", count_tokens=len, budget=10_000, **kw)[0]["content"]

    plain = system(task="diagnosis")
    assert plain == "You help with sweating.\n\nTask: diagnosis" and system(task="diagnosis") == plain
    both = system(red_flag_advice=["fever: see a doctor", "weight loss: see a doctor"], task="treatment")
    assert both.endswith("- fever: see a doctor\n- weight loss: see a doctor\n\nTask: treatment")
    assert system(red_flag_advice=("fever: see a doctor", "weight loss: see a doctor"), task="treatment") == both
    assert system(red_flag_advice=["weight loss: see a doctor", "fever: see a doctor"], task="treatment") != both
    assert system(extra_system="Answer in French.", task="diagnosis") == (
        "You help with sweating.\n\nAnswer in French.\n\nTask: diagnosis")
