"""A backend that answers after a known, fixed delay without any model.

Used to measure the core's own overhead (subtract the known delay) and in tests of
behaviour that does not depend on what a model says.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

from bot.inference.base import BackendStatus, ChatMessages, Generation, ModelUnavailable, approx_tokens


class FixedBackend:
    name = "fixed"

    def __init__(self, delay_s: float = 0.0, reply: str | None = None, model: str = "fixed-model"):
        self.delay_s = delay_s
        self.reply = reply
        self.model = model
        self.adapter_version: str | None = None
        self.fail_with: str | None = None  # set to make every call fail (tests of outages)
        self.calls: list[ChatMessages] = []

    async def start(self) -> None:
        return None

    async def generate(
        self, messages: ChatMessages, *, max_tokens: int | None = None, temperature: float | None = None
    ) -> Generation:
        self.calls.append(messages)
        started = time.perf_counter()
        if self.delay_s:
            await asyncio.sleep(self.delay_s)
        if self.fail_with:
            raise ModelUnavailable(self.fail_with)
        last = next((m["content"] for m in reversed(messages) if m["role"] == "user"), "")
        text = self.reply if self.reply is not None else f"Thank you for your question about: {last[:200]}"
        return Generation(
            text=text,
            model=self.model,
            adapter_version=self.adapter_version,
            latency_s=time.perf_counter() - started,
            prompt_tokens=sum(approx_tokens(m["content"]) for m in messages),
            completion_tokens=approx_tokens(text),
        )

    async def swap_adapter(self, version: str | None, path: Path | None) -> float:
        self.adapter_version = version
        return 0.0

    def count_tokens(self, text: str) -> int:
        return approx_tokens(text)

    def status(self) -> BackendStatus:
        return BackendStatus(self.name, self.model, self.adapter_version, healthy=self.fail_with is None)

    async def close(self) -> None:
        return None
