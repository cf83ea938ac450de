"""The model server(s): reachable, serving the base model by the name the bot asks for, LoRA
enabled with runtime loading allowed, and the registry's live adapter loaded.

LoRA and runtime loading are probed the way vLLM answers (vllm/entrypoints/serve/lora): a load
request for a folder that does not exist is answered 404 "No adapter found" when LoRA is on and
runtime updating is allowed; 400 when the engine has no LoRA (``--enable-lora`` missing); and
FastAPI's bare 404 ``{"detail": "Not Found"}`` when the route is absent
(``VLLM_ALLOW_RUNTIME_LORA_UPDATING`` not set). Nothing is loaded by the probe.
"""

from __future__ import annotations

import asyncio
import os
import secrets
from pathlib import Path
from typing import Any

import aiohttp

from bot.doctor.report import Check, fail, ok
from bot.settings import Settings

TIMEOUT_S = 10.0
PROBE_PATH = "/nonexistent/llm4sweat-doctor-probe"
START_FIX = ("start vLLM (`docker compose -f deploy/compose.yaml up -d vllm`, or `llm4sweat serve`) or correct "
             "inference.openai_base_url; meanwhile the bot runs degraded (outage notice and crisis resources)")


def _root(url: str) -> str:
    url = url.rstrip("/")
    return url[: -len("/v1")] if url.endswith("/v1") else url


def replica_urls(settings: Settings) -> list[str]:
    urls: list[str] = []
    for url in [settings.inference.openai_base_url, *settings.inference.openai_replica_urls]:
        if url.rstrip("/") not in urls:
            urls.append(url.rstrip("/"))
    return urls


async def check_model(settings: Settings, live: dict[str, Any] | None, service_running: bool,
                      demo: bool = False) -> list[Check]:
    backend = settings.inference.backend
    if backend == "local":
        if demo:
            return [ok("model.local", "the offline DEMO model (it gives no medical advice)")]
        return [_local_model(settings)]
    if backend != "openai":
        return []
    key = settings.inference.openai_api_key
    headers = {"Authorization": f"Bearer {key.get_secret_value() if key else 'EMPTY'}"}
    checks: list[Check] = []
    async with aiohttp.ClientSession(headers=headers, timeout=aiohttp.ClientTimeout(total=TIMEOUT_S)) as session:
        for url in replica_urls(settings):
            checks += await _replica(session, url, settings, live, service_running)
    return checks


async def _replica(session: aiohttp.ClientSession, url: str, settings: Settings, live: dict[str, Any] | None,
                   service_running: bool) -> list[Check]:
    try:
        async with session.get(_root(url) + "/health") as resp:
            health = resp.status
        async with session.get(url + "/models") as resp:
            status = resp.status
            body = await resp.json(content_type=None) if status == 200 else None
    except (aiohttp.ClientError, asyncio.TimeoutError, ValueError) as exc:
        return [fail("model.reachable", f"{type(exc).__name__}: {exc}".rstrip(": "), START_FIX, subject=url)]
    if status in (401, 403):
        return [fail("model.reachable", f"{url}/models answered {status}: the server wants an API key",
                     "set LLM4SWEAT_INFERENCE__OPENAI_API_KEY to the key vLLM was started with (--api-key / "
                     "VLLM_API_KEY)", subject=url)]
    if body is None or health not in (200, 404, 405):
        return [fail("model.reachable", f"/health answered {health}, /v1/models {status}",
                     "look at the model server's log (`docker compose -f deploy/compose.yaml logs vllm`); it may still "
                     "be loading the model", subject=url)]
    checks = [ok("model.reachable", "answers /health and /v1/models", subject=url)]
    cards = {m.get("id"): m for m in body.get("data", []) if isinstance(m, dict)}
    base = settings.inference.base_model
    if base in cards:
        checks.append(ok("model.base_model", f"serves {base}", subject=url))
    else:
        served = ", ".join(str(i) for i, m in cards.items() if not m.get("parent")) or "nothing"
        checks.append(fail("model.base_model", f"serves {served}, not {base}",
                           "set LLM4SWEAT_INFERENCE__BASE_MODEL (compose: LLM4SWEAT_BASE_MODEL) to the name vLLM serves "
                           "(--served-model-name), or start vLLM with that model", subject=url))
    checks.append(await _lora(session, url))
    checks.append(_live_adapter(url, cards, live, service_running))
    return checks


async def _lora(session: aiohttp.ClientSession, url: str) -> Check:
    name = f"llm4sweat-doctor-probe-{secrets.token_hex(4)}"
    try:
        async with session.post(url + "/load_lora_adapter", json={"lora_name": name, "lora_path": PROBE_PATH}) as resp:
            status = resp.status
            text = await resp.text()
        if status == 200:  # a server that accepts any path; take the probe back
            async with session.post(url + "/unload_lora_adapter", json={"lora_name": name}):
                pass
    except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
        return fail("model.lora", f"the load probe failed: {type(exc).__name__}", START_FIX, subject=url)
    if status == 404 and '"detail"' in text and "Not Found" in text:
        return fail("model.lora", "runtime adapter loading is off (no /v1/load_lora_adapter)",
                    "start vLLM with VLLM_ALLOW_RUNTIME_LORA_UPDATING=True in its environment", subject=url)
    if status in (404, 200):
        return ok("model.lora", "LoRA on, adapters can be loaded at run time", subject=url)
    if status in (401, 403):
        return fail("model.lora", f"the adapter endpoints answered {status}",
                    "set LLM4SWEAT_INFERENCE__OPENAI_API_KEY to vLLM's --api-key", subject=url)
    return fail("model.lora", f"LoRA is not enabled (load probe answered {status}: {text[:160]})",
                "start vLLM with --enable-lora and --max-lora-rank at least training.lora_rank", subject=url)


def _live_adapter(url: str, cards: dict[Any, dict[str, Any]], live: dict[str, Any] | None, service_running: bool) -> Check:
    if live is None:
        return ok("model.live_adapter", "no live adapter in the registry: the base model serves", subject=url)
    path = os.path.normpath(str(live["path"]))
    loaded = [name for name, card in cards.items() if card.get("root") and os.path.normpath(str(card["root"])) == path]
    if loaded:
        return ok("model.live_adapter", f"{live['version']} loaded as {loaded[0]}", subject=url)
    from pipeline.registry import adapter_problem

    problem = adapter_problem(Path(path))
    if problem:
        return fail("model.live_adapter", f"{live['version']}: {problem}",
                    "restore the adapters folder from a backup, or `llm4sweat adapters rollback`", subject=url)
    if not service_running:
        return ok("model.live_adapter", f"{live['version']} is not loaded yet; the bot loads it when it starts",
                  subject=url)
    return fail("model.live_adapter", f"{live['version']} is not loaded (the base model answers instead)",
                "check vLLM sees the adapters volume at the same path as the bot and the bot's log "
                "(`adapter_load_failed`); `llm4sweat adapters promote` loads it again", subject=url)


def _local_model(settings: Settings) -> Check:
    name = settings.inference.base_model
    if Path(name).is_dir():
        return ok("model.local", f"{name} (a local folder)")
    try:
        from huggingface_hub import snapshot_download

        path = snapshot_download(name, local_files_only=True)
    except Exception:
        return fail("model.local", f"{name} is not on this machine (the bot would start the offline demo model)",
                    "run `llm4sweat model download` (Llama needs a Hugging Face token), or point "
                    "LLM4SWEAT_INFERENCE__BASE_MODEL at a local folder; only `llm4sweat run` needs it "
                    "(`llm4sweat demo` does not)")
    return ok("model.local", f"{name} in {path}")
