"""Export the pack's multiple-choice set as lm-evaluation-harness tasks.

``llm4sweat eval export-lm-eval DIR`` writes, for every split (``dev``, ``test``):

- ``<pack>_<split>.jsonl`` — one row per question: ``id``, ``task``, ``split``, ``question``,
  ``options``, ``gold`` (index of the correct option), ``prompt`` (the options-format context),
  ``lettered_prompt`` (the lettered-format context) and ``letters``;
- ``<pack>_<split>.yaml`` — task ``<pack>_<split>``: each option scored as the assistant's reply
  (``acc`` = summed log-probability, ``acc_norm`` = per character), ``target_delimiter: ""``;
- ``<pack>_<split>_lettered.yaml`` — task ``<pack>_<split>_lettered``: options shown as A–D, the
  assistant turn opens with ``Answer:``, continuations `` A`` … `` D`` (MMLU style; ``acc``).

Run them on any Hugging Face model with
``lm_eval --model hf --model_args pretrained=MODEL --tasks hyperhidrosis_test --include_path DIR``.

**The prompt format** is the project's own (``pipeline.evaluate``): the chat is rendered with
the chat template of the tokenizer named at export (by default the model the service runs), so
the contexts are exactly what ``llm4sweat eval`` scores — system turn (the pack's system prompt,
closed book unless ``--open-book``), the question as the user's turn, the assistant turn opened.
For a model with another chat template, export again with ``--base-model`` pointing at it (only
its tokenizer is read). The data files are named by absolute path in the YAML: export again if
the folder moves.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from bot.chat_format import DEFAULT_TEMPLATE_DATE, model_prompt_format
from pipeline import evaluate as ev


def _yaml(task: str, data_file: Path, text_field: str, choice_field: str, delimiter: str, metrics: list[str]) -> str:
    lines = [
        f"task: {task}",
        "dataset_path: json",
        "dataset_kwargs:",
        "  data_files:",
        f"    test: {json.dumps(str(data_file.resolve()))}",
        "test_split: test",
        "output_type: multiple_choice",
        f"doc_to_text: {text_field}",
        f"doc_to_choice: {choice_field}",
        "doc_to_target: gold",
        f"target_delimiter: {json.dumps(delimiter)}",
        "metric_list:",
    ]
    for metric in metrics:
        lines += [f"  - metric: {metric}", "    aggregation: mean", "    higher_is_better: true"]
    lines += ["metadata:", "  version: 1.0", ""]
    return "\n".join(lines)


def task_names(pack: Any, splits: list[str]) -> list[str]:
    name = _slug(getattr(pack, "name", "pack"))
    return [t for s in splits for t in (f"{name}_{s}", f"{name}_{s}_lettered")]


def _slug(text: str) -> str:
    return "".join(c if c.isalnum() else "_" for c in str(text)).strip("_").lower() or "pack"


def export_lm_eval(out_dir: Path, pack: Any, tokenizer_path: str | Path, *, open_book: bool = False,
                   limit_per_task: int | None = None, template_date: str = DEFAULT_TEMPLATE_DATE) -> dict[str, Any]:
    """Write the data and task YAML files for every split; returns {"tasks": [...], "files": [...]}.
    Contexts are rendered as ``llm4sweat eval`` renders them: task line, the model's prompt
    format, ``template_date``."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(tokenizer_path), local_files_only=True)
    prompting = ev.Prompting(model_prompt_format(tokenizer_path), template_date)
    questions = ev.questions_from_pack(pack, limit_per_task)
    if not questions:
        raise ValueError("the pack has no evaluation questions")
    system = ev.system_text(pack, open_book)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    name = _slug(getattr(pack, "name", "pack"))
    files: list[Path] = []
    tasks: list[str] = []
    for split in ev.splits_of(questions):
        rows = []
        for q in (q for q in questions if q.split == split):
            options = ev.options_request(tokenizer, system, q, prompting=prompting)
            lettered = ev.lettered_request(tokenizer, system, q, prompting=prompting)
            rows.append({"id": q.id, "task": q.task, "split": q.split, "question": q.question,
                         "options": list(options.choices), "gold": q.answer, "prompt": options.context,
                         "lettered_prompt": lettered.context, "letters": list(lettered.choices)})
        data = out_dir / f"{name}_{split}.jsonl"
        data.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
        plain = out_dir / f"{name}_{split}.yaml"
        plain.write_text(_yaml(f"{name}_{split}", data, "prompt", "options", "", ["acc", "acc_norm"]))
        letters = out_dir / f"{name}_{split}_lettered.yaml"
        letters.write_text(_yaml(f"{name}_{split}_lettered", data, "lettered_prompt", "letters", " ", ["acc"]))
        files += [data, plain, letters]
        tasks += [f"{name}_{split}", f"{name}_{split}_lettered"]
    return {"tasks": tasks, "files": [str(f) for f in files], "book": "open" if open_book else "closed",
            "tokenizer": str(tokenizer_path)}
