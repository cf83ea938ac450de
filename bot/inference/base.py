"""The one interface through which the service talks to a model.

Two real backends implement it (``openai`` for any OpenAI-compatible server such as vLLM,
``local`` for transformers + peft in-process) and one for tests and benchmarks (``fixed``).
The conversation core never knows which one it holds.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol, runtime_checkable

ChatMessages = list[dict[str, str]]


class ModelUnavailable(Exception):
    """The model could not answer (server down, timeout, crash). The message is for moderators."""


class AdapterLoadError(Exception):
    """An adapter could not be loaded; the live adapter keeps serving."""


@dataclass(frozen=True)
class Generation:
    text: str
    model: str
    adapter_version: str | None
    latency_s: float
    prompt_tokens: int = 0
    completion_tokens: int = 0
    replica: str = ""  # which model server answered (the openai backend's replica URL); "" in-process


@dataclass
class BackendStatus:
    backend: str
    model: str
    adapter_version: str | None
    healthy: bool
    detail: dict[str, object] = field(default_factory=dict)


@runtime_checkable
class InferenceBackend(Protocol):
    name: str

    async def start(self) -> None:
        """Load or connect; must not raise for a missing adapter (serve the base model, warn)."""

    async def generate(
        self, messages: ChatMessages, *, max_tokens: int | None = None, temperature: float | None = None
    ) -> Generation:
        """One chat completion. Raises ModelUnavailable when the model cannot answer."""

    async def swap_adapter(self, version: str | None, path: Path | None) -> float:
        """Make ``version`` the live adapter (None: base model). Returns seconds taken.

        Atomic: each request is answered wholly by the old or wholly by the new adapter.
        Raises AdapterLoadError and keeps the old adapter live if loading fails."""

    def count_tokens(self, text: str) -> int:
        """Tokens ``text`` takes in the prompt (exact where a tokenizer is at hand)."""

    def status(self) -> BackendStatus: ...

    async def close(self) -> None: ...


def approx_tokens(text: str) -> int:
    """Rough token count (about 4 characters per token) when no tokenizer is available."""
    return max(1, (len(text) + 3) // 4)
