"""Inference backends behind one interface; ``make_backend`` picks one from settings."""

from __future__ import annotations

from bot.inference.base import (
    AdapterLoadError,
    BackendStatus,
    ChatMessages,
    Generation,
    InferenceBackend,
    ModelUnavailable,
)
from bot.settings import Settings

__all__ = [
    "AdapterLoadError",
    "BackendStatus",
    "ChatMessages",
    "Generation",
    "InferenceBackend",
    "ModelUnavailable",
    "make_backend",
]


def make_backend(settings: Settings, model_path: str | None = None) -> InferenceBackend:
    """Build the configured backend. ``model_path`` overrides the base model (demo model)."""
    kind = settings.inference.backend
    if kind == "fixed":
        from bot.inference.fixed import FixedBackend

        return FixedBackend(delay_s=settings.inference.fixed_delay_s)
    if kind == "openai":
        from bot.inference.openai_backend import OpenAIBackend

        return OpenAIBackend(settings.inference, model=model_path or settings.inference.base_model,
                             template_date=settings.prompt.template_date)
    from bot.inference.local_backend import LocalBackend

    return LocalBackend(settings.inference, model_path=model_path or settings.inference.base_model,
                        template_date=settings.prompt.template_date)
