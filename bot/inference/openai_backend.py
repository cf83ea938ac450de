"""Backend for OpenAI-compatible chat servers: vLLM in production, one or several replicas.

How it works:

- **Replicas.** ``inference.openai_base_url`` plus ``inference.openai_replica_urls`` are the
  servers. Each request goes to the healthy replica with the fewest requests in flight (ties
  rotate). A request that fails on one replica for a reason another replica could fix
  (connection refused, timeout, 5xx, 429, the adapter missing after a restart) is retried
  on another one, up to ``max_retries`` extra attempts, so a replica dying mid-run costs
  no failed request while another one is up.
- **Health.** A background task checks every replica every ``openai_health_interval_s``:
  ``GET /health`` (vLLM; servers without it are checked with ``GET /v1/models``), and
  whether the live adapter is still loaded there. A failing replica leaves the rotation at
  once (also when a request to it fails to connect). When it answers again, the live
  adapter is loaded on it if missing (a restarted vLLM forgets runtime-loaded adapters),
  checked with a one-token request, and only then does it rejoin.
- **Adapters by name.** vLLM serves each LoRA adapter as its own model name. Each version is
  loaded under a fresh unique name (``<version>@<random>``), never a name used before: vLLM
  serves a stale prefix cache for a same-name reload. An adapter already loaded from the same
  directory (by ``llm4sweat serve`` or an earlier run of the bot) is adopted, not reloaded.
- **All-or-nothing reload.** ``swap_adapter`` loads the new version on every replica in the
  rotation (``POST /v1/load_lora_adapter``), checks that it answers on each, and only then
  switches the name requests use. If any replica fails, the new adapter is unloaded where it
  was loaded and the live one keeps serving (AdapterLoadError says which replica and why).
  The old adapter is unloaded (``/v1/unload_lora_adapter``) once the requests that started
  with it have finished. Replicas that were out of the rotation get the live adapter when
  they come back.

Every request reads the live adapter once, so it is answered wholly by the old or wholly
by the new version.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import os
import secrets
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import openai

from bot import metrics
from bot.inference.base import (
    AdapterLoadError,
    BackendStatus,
    ChatMessages,
    Generation,
    ModelUnavailable,
    approx_tokens,
)
from bot.chat_format import DEFAULT_TEMPLATE_DATE, template_kwargs
from bot.settings import InferenceSettings

log = logging.getLogger(__name__)

# Statuses worth retrying on another replica (or the same one after a pause).
_RETRY_STATUSES = {408, 409, 425, 429, 500, 502, 503, 504}
_PROBE_MESSAGES = [{"role": "user", "content": "ping"}]


def _norm(path: str | Path) -> str:
    return os.path.normpath(str(path))


def _root_url(base_url: str) -> str:
    """The server root of an OpenAI base URL (vLLM serves /health beside /v1, not under it)."""
    url = base_url.rstrip("/")
    return url[: -len("/v1")] if url.endswith("/v1") else url


@dataclass
class _Live:
    """What requests are served with: an adapter version (None: the base model).

    ``names`` maps a replica URL to the name the adapter is loaded under on that replica; the
    base model is served under the base model's name everywhere."""

    version: str | None
    path: Path | None
    names: dict[str, str] = field(default_factory=dict)
    inflight: int = 0
    idle: asyncio.Event = field(default_factory=asyncio.Event)

    def __post_init__(self) -> None:
        self.idle.set()


class _Replica:
    def __init__(self, url: str, client: openai.AsyncOpenAI):
        self.url = url.rstrip("/")
        self.root = _root_url(self.url)
        self.client = client
        self.up = True  # optimistic until the first check; a failed request takes it out at once
        self.error: str | None = None
        self.inflight = 0
        self.served = 0
        self.failed = 0
        self.fail_streak = 0
        self.down_since: float | None = None
        self.to_unload: set[str] = set()  # retired names that could not be unloaded yet

    def describe(self) -> dict[str, Any]:
        return {
            "url": self.url,
            "up": self.up,
            "error": self.error,
            "inflight": self.inflight,
            "served": self.served,
            "failed": self.failed,
        }


class _RetryElsewhere(Exception):
    def __init__(self, reason: str, *, take_down: bool):
        super().__init__(reason)
        self.reason = reason
        self.take_down = take_down


class OpenAIBackend:
    name = "openai"

    def __init__(self, settings: InferenceSettings, model: str, *, template_date: str = DEFAULT_TEMPLATE_DATE):
        """``template_date``: the date the server's chat template prints (``prompt.template_date``),
        sent as ``chat_template_kwargs`` (vLLM renders the template itself); empty: not sent."""
        self.settings = settings
        self.base_model = model
        self._extra_body = template_kwargs(template_date) if template_date else None
        key = settings.openai_api_key.get_secret_value() if settings.openai_api_key else "EMPTY"
        self._headers = {"Authorization": f"Bearer {key}"}
        urls: list[str] = []
        for url in [settings.openai_base_url, *settings.openai_replica_urls]:
            if url.rstrip("/") not in urls:
                urls.append(url.rstrip("/"))
        single = len(urls) == 1
        self.replicas = [
            _Replica(
                url,
                openai.AsyncOpenAI(
                    base_url=url,
                    api_key=key,
                    timeout=settings.timeout_s,
                    # One replica: the client's own retries (with backoff). Several: no client
                    # retries, the backend retries on another replica instead.
                    max_retries=settings.max_retries if single else 0,
                ),
            )
            for url in urls
        ]
        self._attempts = 1 if single else settings.max_retries + 1
        self.health_interval_s = float(getattr(settings, "openai_health_interval_s", 5.0))
        self.health_timeout_s = min(5.0, settings.timeout_s)
        self._live = _Live(None, None)
        self._retired: set[str] = set()  # names never to be used again
        self._rotation = itertools.count()
        self._lock = asyncio.Lock()  # swaps and replica re-syncs never overlap
        self._session: aiohttp.ClientSession | None = None
        self._health_task: asyncio.Task[None] | None = None
        self._retire_tasks: set[asyncio.Task[None]] = set()
        self._closed = False
        self.last_error: str | None = None
        # Figures for status(), tests and benchmarks.
        self.swaps: deque[dict[str, Any]] = deque(maxlen=100)

    # --- lifecycle -----------------------------------------------------------------------------

    @property
    def adapter_version(self) -> str | None:
        return self._live.version

    @property
    def served_model(self) -> str:
        """The model name requests use on the first replica that serves the live adapter."""
        live = self._live
        if live.version is None:
            return self.base_model
        return next(iter(live.names.values()), live.version)

    async def start(self) -> None:
        """Check every replica once and start the health checks. Never raises: a server that is
        down now is taken into the rotation when it answers."""
        await self.check_health()
        if not any(r.up for r in self.replicas):
            log.warning(
                "no model server answers yet (%s); requests fail until one does",
                "; ".join(f"{r.url}: {r.error}" for r in self.replicas),
            )
        if self._health_task is None and self.health_interval_s > 0:
            self._health_task = asyncio.create_task(self._health_loop(), name="openai-backend-health")

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._health_task is not None:
            self._health_task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._health_task
        for task in list(self._retire_tasks):
            task.cancel()
        for replica in self.replicas:
            with contextlib.suppress(Exception):
                await replica.client.close()
        if self._session is not None:
            await self._session.close()

    def _http(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(headers=self._headers)
        return self._session

    # --- generation ----------------------------------------------------------------------------

    async def generate(
        self, messages: ChatMessages, *, max_tokens: int | None = None, temperature: float | None = None
    ) -> Generation:
        live = self._live  # read once: the whole request uses one adapter
        live.inflight += 1
        live.idle.clear()
        started = time.perf_counter()
        tried: list[_Replica] = []
        reasons: list[str] = []
        try:
            for attempt in range(self._attempts):
                replica = self._pick(live, tried)
                if replica is None:
                    break
                if replica in tried:  # no other replica left: pause before asking it again
                    await asyncio.sleep(min(2.0, 0.25 * 2 ** (attempt - 1)))
                tried.append(replica)
                model = self._model_on(live, replica)
                try:
                    response = await self._complete(replica, model, messages, max_tokens, temperature)
                except _RetryElsewhere as exc:
                    reasons.append(f"{replica.url}: {exc.reason}")
                    metrics.MODEL_ERRORS.labels(replica=replica.url).inc()
                    replica.failed += 1
                    replica.fail_streak += 1
                    if exc.take_down or replica.fail_streak >= 3:
                        self._take_down(replica, exc.reason)
                    continue
                replica.served += 1
                replica.fail_streak = 0
                self.last_error = None
                choice = response.choices[0] if response.choices else None
                text = (choice.message.content or "") if choice else ""
                usage = response.usage
                return Generation(
                    text=text.strip(),
                    model=self.base_model,
                    adapter_version=live.version,
                    latency_s=time.perf_counter() - started,
                    prompt_tokens=usage.prompt_tokens if usage else 0,
                    completion_tokens=usage.completion_tokens if usage else 0,
                    replica=replica.url,
                )
            if not reasons:
                reasons = [f"{r.url}: {r.error or 'out of rotation'}" for r in self.replicas]
            self.last_error = "; ".join(reasons)
            raise ModelUnavailable(f"no model server could answer ({self.last_error})")
        finally:
            live.inflight -= 1
            if live.inflight == 0:
                live.idle.set()

    def _serves(self, live: _Live, replica: _Replica) -> bool:
        return live.version is None or replica.url in live.names

    def _model_on(self, live: _Live, replica: _Replica) -> str:
        if live.version is None:
            return self.base_model
        return live.names.get(replica.url, live.version)

    def _pick(self, live: _Live, tried: list[_Replica]) -> _Replica | None:
        """Healthy untried replicas first (fewest in flight, ties rotate), then ones out of the
        rotation that have not been tried (a last resort when all look down), then any again."""
        turn = next(self._rotation)
        n = len(self.replicas)
        ordered = [self.replicas[(turn + i) % n] for i in range(n)]
        candidates = [r for r in ordered if self._serves(live, r)]
        for group in (
            [r for r in candidates if r.up and r not in tried],
            [r for r in candidates if not r.up and r not in tried],
            candidates,
        ):
            if group:
                return min(group, key=lambda r: r.inflight)
        return None

    async def _complete(
        self, replica: _Replica, model: str, messages: ChatMessages, max_tokens: int | None, temperature: float | None
    ) -> Any:
        replica.inflight += 1
        try:
            return await replica.client.chat.completions.create(
                model=model,
                messages=messages,  # type: ignore[arg-type]
                max_tokens=max_tokens or self.settings.max_new_tokens,
                temperature=self.settings.temperature if temperature is None else temperature,
                extra_body=self._extra_body,
            )
        except openai.APIConnectionError as exc:  # also APITimeoutError
            raise _RetryElsewhere(f"{type(exc).__name__}: {exc}", take_down=not isinstance(exc, openai.APITimeoutError))
        except openai.APIStatusError as exc:
            reason = f"HTTP {exc.status_code}: {exc.message}"
            if exc.status_code == 404 and model != self.base_model:
                # The replica lost the adapter (restarted): out of the rotation until re-synced.
                raise _RetryElsewhere(f"adapter {model} is not loaded there ({reason})", take_down=True)
            if exc.status_code in _RETRY_STATUSES:
                raise _RetryElsewhere(reason, take_down=False)
            self.last_error = reason
            raise ModelUnavailable(f"model server {replica.url} refused the request: {reason}") from exc
        except openai.APIError as exc:
            raise _RetryElsewhere(f"{type(exc).__name__}: {exc}", take_down=False)
        finally:
            replica.inflight -= 1

    def _take_down(self, replica: _Replica, reason: str) -> None:
        replica.error = reason
        if replica.up:
            replica.up = False
            replica.down_since = time.monotonic()
            log.warning("model server %s is out of the rotation: %s", replica.url, reason)

    # --- health --------------------------------------------------------------------------------

    async def _health_loop(self) -> None:
        while True:
            await asyncio.sleep(self.health_interval_s)
            try:
                await self.check_health()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("model server health check failed")

    async def check_health(self) -> None:
        """Check every replica now; take failing ones out, bring recovered ones back."""
        await asyncio.gather(*(self._check_replica(r) for r in self.replicas))

    async def _check_replica(self, replica: _Replica, *, locked: bool = False) -> None:
        """``locked``: the caller holds ``self._lock`` already (a swap finding no replica up)."""
        problem, models = await self._probe_server(replica)
        if problem is not None:
            self._take_down(replica, problem)
            return
        live = self._live
        missing = live.version is not None and models is not None and live.names.get(replica.url) not in models
        if replica.up and not missing:
            replica.fail_streak = 0
            if replica.to_unload and models is not None:
                await self._unload_retired(replica, models)
            return
        if missing and replica.up:
            self._take_down(replica, f"the live adapter {live.version} is no longer loaded there")
        if locked:
            await self._resync(replica)
            return
        async with self._lock:
            await self._resync(replica)

    async def _probe_server(self, replica: _Replica) -> tuple[str | None, dict[str, dict[str, Any]] | None]:
        """(problem or None, served models by name or None when the server cannot list them)."""
        timeout = aiohttp.ClientTimeout(total=self.health_timeout_s)
        session = self._http()
        try:
            async with session.get(replica.root + "/health", timeout=timeout) as resp:
                health = resp.status
            async with session.get(replica.url + "/models", timeout=timeout) as resp:
                if resp.status == 200:
                    body = await resp.json(content_type=None)
                    models = {m["id"]: m for m in body.get("data", []) if isinstance(m, dict) and "id" in m}
                else:
                    models = None
        except (aiohttp.ClientError, asyncio.TimeoutError, ValueError) as exc:
            return f"health check failed: {type(exc).__name__}: {exc}".rstrip(": "), None
        if health in (404, 405):  # not vLLM: a server that lists its models is up
            if models is None:
                return "neither /health nor /v1/models answers", None
        elif health >= 300:
            return f"/health answered {health}", None
        return None, models

    async def _resync(self, replica: _Replica) -> None:
        """Make a reachable replica serve the live adapter, then put it back into the rotation."""
        problem, models = await self._probe_server(replica)
        if problem is not None:
            self._take_down(replica, problem)
            return
        live = self._live
        if live.version is not None and live.path is not None:
            name = live.names.get(replica.url)
            if models is None or name not in models:
                name = self._adoptable(live.version, live.path, models) or self._new_name(live.version)
                try:
                    if models is None or name not in models:
                        await self._load(replica, name, live.path)
                    await self._probe(replica, name)
                except AdapterLoadError as exc:
                    self._take_down(replica, f"could not load the live adapter {live.version}: {exc}")
                    return
                live.names[replica.url] = name
        if models is not None:
            await self._unload_retired(replica, models)
        replica.fail_streak = 0
        replica.error = None
        if not replica.up:
            replica.up = True
            log.warning("model server %s is back in the rotation", replica.url)

    # --- adapters ------------------------------------------------------------------------------

    def _new_name(self, version: str) -> str:
        while True:
            name = f"{version}@{secrets.token_hex(4)}"
            if name not in self._retired:
                return name

    def _adoptable(self, version: str, path: Path, models: dict[str, dict[str, Any]] | None) -> str | None:
        """A name under which this very adapter directory is already loaded (and not retired)."""
        for name, card in (models or {}).items():
            if (
                name.startswith(version + "@")
                and name not in self._retired
                and card.get("root") is not None
                and _norm(card["root"]) == _norm(path)
            ):
                return name
        return None

    async def _admin(self, replica: _Replica, path: str, body: dict[str, Any]) -> None:
        timeout = aiohttp.ClientTimeout(total=self.settings.timeout_s)
        try:
            async with self._http().post(replica.url + path, json=body, timeout=timeout) as resp:
                if resp.status >= 300:
                    text = (await resp.text())[:500]
                    raise AdapterLoadError(f"{replica.url}{path} answered {resp.status}: {text}")
        except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
            raise AdapterLoadError(f"{replica.url}{path} failed: {type(exc).__name__}: {exc}") from exc

    async def _load(self, replica: _Replica, name: str, path: Path) -> None:
        await self._admin(replica, "/load_lora_adapter", {"lora_name": name, "lora_path": str(path)})

    async def _unload(self, replica: _Replica, name: str) -> None:
        await self._admin(replica, "/unload_lora_adapter", {"lora_name": name})

    async def _probe(self, replica: _Replica, name: str) -> None:
        """One greedy token through the adapter: it really answers on this replica."""
        try:
            await replica.client.chat.completions.create(
                model=name, messages=_PROBE_MESSAGES, max_tokens=1, temperature=0.0  # type: ignore[arg-type]
            )
        except openai.APIError as exc:
            raise AdapterLoadError(f"{replica.url}: {name} loaded but does not answer: {exc}") from exc

    async def _models(self, replica: _Replica) -> dict[str, dict[str, Any]] | None:
        return (await self._probe_server(replica))[1]

    async def swap_adapter(self, version: str | None, path: Path | None) -> float:
        """Load ``version`` on every replica in the rotation, check it answers, switch, retire the
        old one. All or nothing: on any failure the live adapter keeps serving everywhere."""
        started = time.perf_counter()
        async with self._lock:
            old = self._live
            if version == old.version and (version is None or _norm(path or "") == _norm(old.path or "")):
                return time.perf_counter() - started
            if version is None:
                new = _Live(None, None)
            else:
                if path is None:
                    raise AdapterLoadError(f"adapter {version}: no path given")
                new = await self._load_everywhere(version, Path(path), old)
            loaded_s = time.perf_counter() - started
            self._live = new
            switched_s = time.perf_counter() - started
        self.swaps.append({"version": version, "load_s": loaded_s, "switch_s": switched_s, "names": dict(new.names)})
        log.info(
            "model servers now answer with %s (%s) after %.3f s",
            version or "the base model", ", ".join(f"{u}: {n}" for u, n in new.names.items()) or self.base_model,
            switched_s,
        )
        if old.version is not None:
            task = asyncio.create_task(self._retire(old, new), name=f"retire-{old.version}")
            self._retire_tasks.add(task)
            task.add_done_callback(self._retire_tasks.discard)
        return time.perf_counter() - started

    async def _load_everywhere(self, version: str, path: Path, old: _Live) -> _Live:
        targets = [r for r in self.replicas if r.up]
        if not targets:  # maybe one came back since the last health check
            await asyncio.gather(*(self._check_replica(r, locked=True) for r in self.replicas))
            targets = [r for r in self.replicas if r.up]
        if not targets:
            reasons = "; ".join(f"{r.url}: {r.error}" for r in self.replicas)
            raise AdapterLoadError(
                f"adapter {version} was not loaded: no model server is reachable ({reasons}); "
                f"{old.version or 'the base model'} stays live"
            )

        async def load_one(replica: _Replica) -> tuple[str, bool]:
            models = await self._models(replica)
            adopted = self._adoptable(version, path, models)
            if adopted is not None:
                await self._probe(replica, adopted)
                return adopted, False
            name = self._new_name(version)
            await self._load(replica, name, path)
            try:
                await self._probe(replica, name)
            except AdapterLoadError:
                with contextlib.suppress(AdapterLoadError):
                    await self._unload(replica, name)
                raise
            return name, True

        results = await asyncio.gather(*(load_one(r) for r in targets), return_exceptions=True)
        failures = [(r, res) for r, res in zip(targets, results) if isinstance(res, BaseException)]
        if failures:
            # All or nothing: unload the new version wherever it did load.
            for replica, res in zip(targets, results):
                if not isinstance(res, BaseException) and res[1]:
                    try:
                        await self._unload(replica, res[0])
                    except AdapterLoadError as exc:
                        log.warning("could not unload %s from %s after a failed reload: %s", res[0], replica.url, exc)
                        replica.to_unload.add(res[0])
                    self._retired.add(res[0])
            for _, res in failures:
                if not isinstance(res, AdapterLoadError):
                    raise res
            why = "; ".join(str(res) for _, res in failures)
            raise AdapterLoadError(
                f"adapter {version} could not be loaded on {len(failures)} of {len(targets)} model server(s) "
                f"({why}); {old.version or 'the base model'} keeps serving"
            )
        return _Live(version, path, {r.url: res[0] for r, res in zip(targets, results)})  # type: ignore[index]

    async def _retire(self, old: _Live, new: _Live) -> None:
        """Unload the old adapter once every request that started with it has finished."""
        drain_s = self.settings.timeout_s * (self.settings.max_retries + 1) + 5
        try:
            await asyncio.wait_for(old.idle.wait(), timeout=drain_s)
        except asyncio.TimeoutError:
            log.warning("requests on %s still running after %.0f s; unloading it anyway", old.version, drain_s)
        keep = set(new.names.values())
        for replica in self.replicas:
            name = old.names.get(replica.url)
            if name is None or name in keep:
                continue
            self._retired.add(name)
            try:
                await self._unload(replica, name)
            except AdapterLoadError as exc:
                log.warning("could not unload old adapter %s from %s (retried later): %s", name, replica.url, exc)
                replica.to_unload.add(name)

    async def _unload_retired(self, replica: _Replica, models: dict[str, dict[str, Any]]) -> None:
        for name in list(replica.to_unload):
            if name in models:
                try:
                    await self._unload(replica, name)
                except AdapterLoadError:
                    continue
            replica.to_unload.discard(name)

    async def wait_retired(self) -> None:
        """Wait until old adapters are unloaded (tests, benchmarks)."""
        while self._retire_tasks:
            await asyncio.gather(*list(self._retire_tasks), return_exceptions=True)

    # --- the rest of the interface -------------------------------------------------------------

    def count_tokens(self, text: str) -> int:
        return approx_tokens(text)

    def status(self) -> BackendStatus:
        live = self._live
        up = [r for r in self.replicas if r.up]
        return BackendStatus(
            self.name,
            self.base_model,
            live.version,
            healthy=bool(up),
            detail={
                "base_url": self.settings.openai_base_url,
                "replicas": [r.describe() | {"model": self._model_on(live, r)} for r in self.replicas],
                "replicas_up": f"{len(up)}/{len(self.replicas)}",
                "last_error": self.last_error,
                "last_swap": self.swaps[-1] if self.swaps else None,
            },
        )
