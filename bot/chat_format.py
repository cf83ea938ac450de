"""The prompt format a model sees, in one place for training, evaluation and serving.

A fine-tuned model learns the exact token sequence it is trained on; anything that differs at
serving time (a missing line, another date, a system message it never saw) is a prompt it was
not trained for. Three things are therefore fixed here and used by every path that renders a
conversation for a model (``pipeline.training``, ``pipeline.evaluate``, the local backend,
the vLLM backend through ``chat_template_kwargs``):

**The task label.** As in the LLM4Sweat paper, the task (diagnosis, treatment recommendation,
psychological support) is part of the prompt: the system message ends with one line
``Task: <task>`` (``Task: diagnosis``, ``Task: treatment``, ``Task: psychological support``;
:func:`with_task`). Training adds it from the example's ``task`` column (at dataset export),
evaluation from the question's task, serving from ``bot.tasks.classify_task`` of the patient's
message. :func:`with_task` replaces an existing label, so an expert example that kept the
prompt it was served with carries the reviewed task, once.

**The template date.** Llama 3.x chat templates print "Today Date: <date>" into the system
turn, today's date unless ``date_string`` is passed. A model trained in March and served in
May would see a different prompt. :func:`render` always passes ``date_string`` (setting
``prompt.template_date``, default :data:`DEFAULT_TEMPLATE_DATE`, the fallback Llama 3.2's own
template uses); templates that print no date ignore it.

**The model's prompt format.** ``full`` (the default): the conversation as built. ``task_only``:
the system message is cut down to its task line. The offline demo model uses ``task_only``: it
is tiny and trained for a minute, the pack's system prompt (~750 tokens) would take most of its
context and training time, and a system prompt it never learned from made it repeat words. It
is trained, served and evaluated in that one format; its ``demo.json`` says so
(``"prompt_format": "task_only"``), and :func:`model_prompt_format` reads it for every path.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

DEFAULT_TEMPLATE_DATE = "26 Jul 2024"
TASK_PREFIX = "Task: "
PROMPT_FORMATS = ("full", "task_only")
PromptFormat = Literal["full", "task_only"]
MARKER_NAME = "demo.json"  # the demo model's marker (pipeline.demo)

_TASK_LINE_RE = re.compile(r"(?:\n\n)?^Task: [^\n]*\Z", re.M)

Messages = list[dict[str, str]]


def task_line(task: str) -> str:
    """``Task: psychological support`` for ``psychological_support``."""
    return TASK_PREFIX + task.replace("_", " ")


def task_of(messages: Sequence[dict[str, str]]) -> str | None:
    """The task label a conversation carries (``psychological support``), or None."""
    for m in messages:
        if m.get("role") == "system":
            found = _TASK_LINE_RE.search(m["content"])
            return found.group(0).strip()[len(TASK_PREFIX):] if found else None
    return None


def _strip_task(system: str) -> str:
    return _TASK_LINE_RE.sub("", system).rstrip()


def with_task(messages: Sequence[dict[str, str]], task: str | None) -> Messages:
    """The conversation with its system message ending in the task line (a system message
    holding only the line is added when there is none). ``task`` None: unchanged."""
    out = [dict(m) for m in messages]
    if not task:
        return out
    line = task_line(task)
    for m in out:
        if m.get("role") == "system":
            rest = _strip_task(m["content"])
            m["content"] = f"{rest}\n\n{line}" if rest else line
            return out
    return [{"role": "system", "content": line}, *out]


def for_format(messages: Sequence[dict[str, str]], prompt_format: str) -> Messages:
    """The conversation as a model of ``prompt_format`` is given it."""
    out = [dict(m) for m in messages]
    if prompt_format == "full":
        return out
    if prompt_format != "task_only":
        raise ValueError(f"unknown prompt format {prompt_format!r}; expected one of {PROMPT_FORMATS}")
    kept = []
    for m in out:
        if m.get("role") != "system":
            kept.append(m)
            continue
        found = _TASK_LINE_RE.search(m["content"])
        if found:
            kept.append({"role": "system", "content": found.group(0).strip()})
    return kept


def model_prompt_format(model_dir: str | Path) -> PromptFormat:
    """The prompt format a model was trained with: its marker's ``prompt_format`` (older demo
    models: ``drop_system_messages``), else ``full``."""
    try:
        marker = json.loads((Path(model_dir) / MARKER_NAME).read_text())
    except (OSError, ValueError):
        return "full"
    if not isinstance(marker, dict) or marker.get("demo") is not True:
        return "full"
    fmt = marker.get("prompt_format")
    if fmt in PROMPT_FORMATS:
        return fmt
    return "task_only" if marker.get("drop_system_messages") else "full"


def render(tokenizer: Any, messages: Sequence[dict[str, str]], *, add_generation_prompt: bool,
           template_date: str = DEFAULT_TEMPLATE_DATE) -> str:
    """The model's chat template applied to ``messages`` with the pinned date (text, not ids);
    an empty ``template_date`` lets the template print what it likes (today's date)."""
    extra = {"date_string": template_date} if template_date else {}
    return tokenizer.apply_chat_template(list(messages), tokenize=False, add_generation_prompt=add_generation_prompt,
                                         **extra)


def template_kwargs(template_date: str = DEFAULT_TEMPLATE_DATE) -> dict[str, Any]:
    """What an OpenAI-compatible server that renders the template itself (vLLM) must be sent
    (``extra_body``) to render it as :func:`render` does."""
    return {"chat_template_kwargs": {"date_string": template_date}}
