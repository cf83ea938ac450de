"""Building the prompt sent to the model, within a token budget.

Order of priority when the budget is tight: the system prompt and the pack's guidance are
always kept, then the new message, then as much of the thread's history as fits, newest
first. Red-flag advice is added to the system turn so the model is told to send the patient
to a doctor. The system turn ends with the task line (``Task: treatment``), the same line the
model was trained with (``bot.chat_format``).
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any, Callable, Sequence

from bot.chat_format import with_task
from bot.inference.base import ChatMessages


def build_prompt(
    pack: Any,
    history: Sequence[tuple[str, str]],
    message: str,
    *,
    count_tokens: Callable[[str], int],
    budget: int,
    red_flag_advice: Sequence[str] = (),
    extra_system: str = "",
    task: str | None = None,
) -> ChatMessages:
    """Chat messages for the model. ``history`` is (role, text) pairs, oldest first; ``task``
    (``bot.tasks.classify_task`` of the message) becomes the system turn's last line."""
    system = system_turn(pack.system_message(), extra_system, tuple(red_flag_advice), task)
    used = count_tokens(system) + 8
    remaining = budget - used
    new_tokens = count_tokens(message) + 4
    if new_tokens > remaining:  # keep the start of an over-long message rather than nothing
        keep_chars = max(200, int(len(message) * max(remaining, 50) / new_tokens))
        message = message[:keep_chars]
        new_tokens = count_tokens(message) + 4
    remaining -= new_tokens
    kept: list[dict[str, str]] = []
    for role, text in reversed(history):
        cost = count_tokens(text) + 4
        if cost > remaining:
            break
        kept.append({"role": role, "content": text})
        remaining -= cost
    kept.reverse()
    while kept and kept[0]["role"] != "user":  # never open the history mid-exchange
        kept.pop(0)
    return [{"role": "system", "content": system}, *kept, {"role": "user", "content": message}]


@lru_cache(maxsize=256)
def system_turn(base: str, extra_system: str, red_flag_advice: tuple[str, ...], task: str | None) -> str:
    """The system turn: the pack's system message, the safety layer's extra lines, red-flag
    advice, then the task line. Remembered: nearly every message has one of a few (per message it
    was a regular-expression pass over the whole system prompt)."""
    system = base
    if extra_system:
        system += "\n\n" + extra_system.strip()
    if red_flag_advice:
        system += (
            "\n\nThis patient's message mentions signs that can point to another cause. Say kindly and clearly"
            " that they should see a doctor soon, and why:\n- " + "\n- ".join(red_flag_advice)
        )
    return with_task([{"role": "system", "content": system}], task)[0]["content"]
