"""Backend for any OpenAI-compatible chat server (vLLM in production).

A LoRA adapter is addressed by model name: vLLM serves each loaded adapter as its own model.
Timeouts and retries are the ``openai`` client's own options. Runtime adapter loading uses
vLLM's ``/load_lora_adapter`` and ``/unload_lora_adapter`` endpoints; each version is loaded
under its own unique name because reloading one name serves a stale prefix cache.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import openai

from bot.inference.base import (
    AdapterLoadError,
    BackendStatus,
    ChatMessages,
    Generation,
    ModelUnavailable,
    approx_tokens,
)
from bot.settings import InferenceSettings

log = logging.getLogger(__name__)


class OpenAIBackend:
    name = "openai"

    def __init__(self, settings: InferenceSettings, model: str):
        self.settings = settings
        self.base_model = model
        self.adapter_version: str | None = None
        self.last_error: str | None = None
        key = settings.openai_api_key.get_secret_value() if settings.openai_api_key else "EMPTY"
        self.client = openai.AsyncOpenAI(
            base_url=settings.openai_base_url,
            api_key=key,
            timeout=settings.timeout_s,
            max_retries=settings.max_retries,
        )

    @property
    def served_model(self) -> str:
        return self.adapter_version or self.base_model

    async def start(self) -> None:
        return None

    async def generate(
        self, messages: ChatMessages, *, max_tokens: int | None = None, temperature: float | None = None
    ) -> Generation:
        model = self.served_model  # read once: the whole request uses one adapter
        started = time.perf_counter()
        try:
            response = await self.client.chat.completions.create(
                model=model,
                messages=messages,  # type: ignore[arg-type]
                max_tokens=max_tokens or self.settings.max_new_tokens,
                temperature=self.settings.temperature if temperature is None else temperature,
            )
        except openai.APIError as exc:
            self.last_error = f"{type(exc).__name__}: {getattr(exc, 'message', exc)}"
            raise ModelUnavailable(f"model server {self.settings.openai_base_url}: {self.last_error}") from exc
        self.last_error = None
        choice = response.choices[0] if response.choices else None
        text = (choice.message.content or "") if choice else ""
        usage = response.usage
        return Generation(
            text=text.strip(),
            model=self.base_model,
            adapter_version=model if model != self.base_model else None,
            latency_s=time.perf_counter() - started,
            prompt_tokens=usage.prompt_tokens if usage else 0,
            completion_tokens=usage.completion_tokens if usage else 0,
        )

    async def _admin(self, path: str, body: dict[str, object]) -> None:
        try:
            await self.client.post(path, body=body, cast_to=str)
        except openai.APIStatusError as exc:
            raise AdapterLoadError(f"{path} answered {exc.status_code}: {exc.message}") from exc
        except openai.APIError as exc:
            raise AdapterLoadError(f"{path} failed: {exc}") from exc

    async def swap_adapter(self, version: str | None, path: Path | None) -> float:
        started = time.perf_counter()
        old = self.adapter_version
        if version is not None:
            if path is None:
                raise AdapterLoadError(f"adapter {version}: no path given")
            await self._admin("/load_lora_adapter", {"lora_name": version, "lora_path": str(path)})
        self.adapter_version = version
        if old is not None and old != version:
            try:
                await self._admin("/unload_lora_adapter", {"lora_name": old})
            except AdapterLoadError as exc:  # the switch already happened; an old copy lingering is harmless
                log.warning("could not unload old adapter %s: %s", old, exc)
        return time.perf_counter() - started

    def count_tokens(self, text: str) -> int:
        return approx_tokens(text)

    def status(self) -> BackendStatus:
        return BackendStatus(
            self.name,
            self.base_model,
            self.adapter_version,
            healthy=self.last_error is None,
            detail={"base_url": self.settings.openai_base_url, "last_error": self.last_error},
        )

    async def close(self) -> None:
        await self.client.close()
