"""In-process inference with transformers + peft: the embedded default backend.

Why it is built this way:

- Generation is CPU-heavy and would freeze the bot if it ran on the event loop, so every
  touch of the model (loading, generating, loading or deleting an adapter) runs in ONE
  worker thread (``ThreadPoolExecutor(max_workers=1)``). One thread means these jobs never
  overlap: an adapter is never loaded or deleted while a batch is using the model.
- Concurrent requests are batched. A batcher task takes the first waiting request, waits
  at most ``batch_window_ms`` for more (up to ``max_batch_size``) and runs one left-padded
  ``generate`` for all of them. Requests that arrive while a batch runs wait in the queue
  and form the next batch, so under load batches fill by themselves.
- Adapter swap is atomic per batch. A new adapter is loaded beside the old one (a fresh
  internal peft name per load, never reusing a name, so a re-trained version can never be
  served from a stale copy), then the ``_active`` pointer is flipped on the event loop. The
  batcher reads the pointer once when it dispatches a batch and the worker uses that
  adapter for the whole batch, so each request is answered wholly by the old or wholly by
  the new adapter. The old adapter is deleted by a job queued in the same worker after the
  flip, i.e. after every batch that could still use it.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import logging
import time
import warnings
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bot.inference.base import (
    AdapterLoadError,
    BackendStatus,
    ChatMessages,
    Generation,
    ModelUnavailable,
    approx_tokens,
)
from bot.chat_format import DEFAULT_TEMPLATE_DATE, for_format, model_prompt_format, render
from bot.settings import InferenceSettings

logger = logging.getLogger(__name__)
# transformers 5 warns about its own deprecated call when peft wraps a model: noise, not ours.
warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)

_STOP = object()
TINY_MODEL_PARAMS = 20_000_000
ADAPTER_WEIGHT_FILES = ("adapter_model.safetensors", "adapter_model.bin")


@dataclass
class _Request:
    messages: ChatMessages
    max_tokens: int
    temperature: float
    future: asyncio.Future
    enqueued: float = field(default_factory=time.perf_counter)


@dataclass(frozen=True)
class _Adapter:
    version: str
    name: str  # internal peft adapter name (unique per load; versions may contain dots)
    path: Path


@dataclass
class _Output:
    text: str
    prompt_tokens: int
    completion_tokens: int


class LocalBackend:
    """transformers + peft in-process, batched, with atomic adapter hot swap."""

    name = "local"

    def __init__(
        self,
        settings: InferenceSettings,
        model_path: str,
        *,
        adapter_version: str | None = None,
        adapter_path: Path | str | None = None,
        num_threads: int | None = None,
        template_date: str = DEFAULT_TEMPLATE_DATE,
    ):
        """``adapter_version``/``adapter_path``: the adapter to serve from start (falls back to
        the base model with a warning). ``num_threads``: torch CPU threads (process-wide);
        None = torch's default, except 1 for tiny models (see ``_load_model``).
        ``template_date``: the date the chat template prints (``prompt.template_date``)."""
        self.settings = settings
        self.template_date = template_date
        self._num_threads = num_threads
        self.model_path = str(model_path)
        self._initial_adapter = (adapter_version, Path(adapter_path) if adapter_path else None)
        self._executor: ThreadPoolExecutor | None = None
        self._queue: asyncio.Queue | None = None
        self._batcher: asyncio.Task | None = None
        self._swap_lock: asyncio.Lock | None = None
        self._retire_tasks: set[asyncio.Task] = set()
        # Touched only in the worker thread (after start):
        self._tokenizer: Any = None
        self._base: Any = None
        self._peft: Any = None
        self._device = "cpu"
        self._eos_ids: list[int] = []
        self.prompt_format = "full"  # the offline demo model: "task_only" (bot/chat_format.py)
        # The live adapter; read by the batcher once per batch, written only by swap_adapter.
        self._active: _Adapter | None = None
        self._names = itertools.count(1)
        self._started = False
        self._closed = False
        # Figures for status(), tests and benchmarks.
        self.batch_sizes: deque[int] = deque(maxlen=10_000)
        self.swap_times: deque[float] = deque(maxlen=100)  # swap_adapter wall time (incl. waiting for the running batch)
        self.load_times: deque[float] = deque(maxlen=100)  # time the worker spent loading the adapter itself
        self.requests_served = 0
        self.requests_failed = 0
        self.last_error: str | None = None
        self.adapter_error: str | None = None

    # --- lifecycle ---------------------------------------------------------------------------

    async def start(self) -> None:
        """Load model and tokenizer (offline only); then the initial adapter, if any.

        A missing model raises ModelUnavailable with what to do about it. A failing initial
        adapter does not stop start-up: the base model serves and a WARNING says so.
        """
        if self._started:
            return
        loop = asyncio.get_running_loop()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="llm4sweat-local-model")
        try:
            await loop.run_in_executor(self._executor, self._load_model)
        except BaseException:
            self._executor.shutdown(wait=False)
            self._executor = None
            raise
        self._queue = asyncio.Queue()
        self._swap_lock = asyncio.Lock()
        self._batcher = asyncio.create_task(self._batch_loop(), name="llm4sweat-local-batcher")
        self._started = True
        version, path = self._initial_adapter
        if version is not None:
            try:
                await self.swap_adapter(version, path)
            except AdapterLoadError as exc:
                self.adapter_error = str(exc)
                logger.warning(
                    "ADAPTER NOT LOADED - serving the BASE MODEL %s without adapter %s: %s",
                    self.model_path, version, exc,
                )

    async def close(self) -> None:
        """Stop the batcher after the running batch, fail what is still queued, stop the worker."""
        if self._closed:
            return
        self._closed = True
        if self._queue is not None:
            self._queue.put_nowait(_STOP)
        if self._batcher is not None:
            with contextlib.suppress(Exception, asyncio.CancelledError):
                await asyncio.wait_for(self._batcher, timeout=max(30.0, self.settings.timeout_s))
            if not self._batcher.done():
                self._batcher.cancel()
        if self._queue is not None:
            while not self._queue.empty():
                item = self._queue.get_nowait()
                if isinstance(item, _Request) and not item.future.done():
                    item.future.set_exception(ModelUnavailable("the local model was shut down"))
        for task in list(self._retire_tasks):
            task.cancel()
        if self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)

    def _load_model(self) -> None:
        """Worker thread: read model + tokenizer from a local directory or the local HF cache."""
        import peft  # noqa: F401  (imported now so the first adapter swap does not pay for it)
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        wanted = self.settings.device
        if wanted == "cuda" and not torch.cuda.is_available():
            logger.warning("inference.device is cuda but no GPU is available; using the CPU")
        self._device = "cuda" if wanted != "cpu" and torch.cuda.is_available() else "cpu"
        if self._device == "cuda":
            dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        else:
            dtype = torch.float32
        try:
            tokenizer = AutoTokenizer.from_pretrained(self.model_path, local_files_only=True)
            model = AutoModelForCausalLM.from_pretrained(self.model_path, local_files_only=True, dtype=dtype)
        except Exception as exc:
            where = Path(self.model_path)
            if where.is_dir():
                hint = "the directory exists but does not hold a loadable model and tokenizer"
            else:
                hint = (
                    "it is not a local directory and not in the local Hugging Face cache; "
                    f"download it once (huggingface-cli download {self.model_path}) or set "
                    "LLM4SWEAT_INFERENCE__BASE_MODEL to a local model directory, or run `llm4sweat demo`"
                )
            raise ModelUnavailable(f"model {self.model_path!r} is not available offline: {hint} ({exc})") from exc
        tokenizer.padding_side = "left"  # generation continues at the right edge of every row
        if tokenizer.pad_token_id is None:
            tokenizer.pad_token = tokenizer.eos_token
        model.to(self._device)
        model.eval()
        threads = self._num_threads
        if threads is None and self._device == "cpu" and model.num_parameters() < TINY_MODEL_PARAMS:
            # A tiny model (the demo, the tests) gains nothing from a second thread, but OpenMP
            # threads that compete for cores with another process (a training job) can make it
            # many times slower.
            threads = 1
        if threads is not None:
            torch.set_num_threads(max(1, threads))
        eos: list[int] = []
        configured = model.generation_config.eos_token_id
        for value in ([configured] if isinstance(configured, int) else list(configured or [])) + [tokenizer.eos_token_id]:
            if value is not None and value not in eos:
                eos.append(int(value))
        eot = tokenizer.convert_tokens_to_ids("<|eot_id|>")
        if isinstance(eot, int) and eot != tokenizer.unk_token_id and eot not in eos:
            eos.append(eot)
        self._tokenizer, self._base, self._eos_ids = tokenizer, model, eos
        self.prompt_format = model_prompt_format(self.model_path)
        if self.prompt_format != "full":
            logger.info("%s was trained with prompt format %s: its prompts are given that way", self.model_path,
                        self.prompt_format)
        logger.info("local model %s loaded on %s", self.model_path, self._device)

    # --- generation ----------------------------------------------------------------------------

    async def generate(
        self, messages: ChatMessages, *, max_tokens: int | None = None, temperature: float | None = None
    ) -> Generation:
        if not self._started or self._closed or self._queue is None:
            raise ModelUnavailable("the local model is not running")
        if self._batcher is None or self._batcher.done():
            raise ModelUnavailable("the local model's batcher stopped; restart the service")
        if not messages:
            raise ValueError("no messages to answer")
        request = _Request(
            messages=messages,
            max_tokens=max(1, int(max_tokens or self.settings.max_new_tokens)),
            temperature=float(self.settings.temperature if temperature is None else temperature),
            future=asyncio.get_running_loop().create_future(),
        )
        self._queue.put_nowait(request)
        return await request.future

    async def _batch_loop(self) -> None:
        """Collect up to max_batch_size requests within batch_window_ms, run them as one batch.

        A full batch already waiting goes at once; otherwise the window gives requests that
        arrive a moment apart the chance to share one generate call."""
        assert self._queue is not None
        window = self.settings.batch_window_ms / 1000.0
        limit = self.settings.max_batch_size
        stopping = False
        while not stopping:
            first = await self._queue.get()
            if first is _STOP:
                break
            batch: list[_Request] = [first]
            if window > 0 and self._queue.qsize() < limit - 1:
                await asyncio.sleep(window)
            while len(batch) < limit and not self._queue.empty():
                item = self._queue.get_nowait()
                if item is _STOP:
                    stopping = True
                    break
                batch.append(item)
            live = [r for r in batch if not r.future.done()]  # callers may have given up
            if live:
                try:
                    await self._dispatch(live)
                except Exception as exc:  # never let the batcher die: that would hang futures
                    logger.exception("local batcher error")
                    for r in live:
                        if not r.future.done():
                            r.future.set_exception(ModelUnavailable(f"local generation failed: {exc}"))

    async def _dispatch(self, batch: list[_Request]) -> None:
        adapter = self._active  # read ONCE: the whole batch uses this adapter
        loop = asyncio.get_running_loop()
        self.batch_sizes.append(len(batch))
        try:
            assert self._executor is not None
            outputs = await loop.run_in_executor(self._executor, self._run_batch, batch, adapter)
        except Exception as exc:
            self.requests_failed += len(batch)
            self.last_error = f"{type(exc).__name__}: {exc}"
            logger.error("local generation failed for a batch of %d: %s", len(batch), self.last_error)
            error = ModelUnavailable(f"local generation failed: {self.last_error}")
            for r in batch:
                if not r.future.done():
                    r.future.set_exception(error)
            return
        done = time.perf_counter()
        version = adapter.version if adapter else None
        for r, out in zip(batch, outputs):
            self.requests_served += 1
            if r.future.done():
                continue
            r.future.set_result(
                Generation(
                    text=out.text,
                    model=self.model_path,
                    adapter_version=version,
                    latency_s=done - r.enqueued,
                    prompt_tokens=out.prompt_tokens,
                    completion_tokens=out.completion_tokens,
                )
            )

    def _run_batch(self, batch: list[_Request], adapter: _Adapter | None) -> list[_Output]:
        """Worker thread: one batch, one adapter. Requests with different sampling settings
        run as sub-batches (``generate`` takes one temperature)."""
        import torch

        outputs: list[_Output | None] = [None] * len(batch)
        groups: dict[float, list[int]] = {}
        for i, r in enumerate(batch):
            groups.setdefault(r.temperature, []).append(i)
        with self._select(adapter) as model, torch.inference_mode():
            for temperature, idx in groups.items():
                for i, out in zip(idx, self._generate_group(model, [batch[i] for i in idx], temperature)):
                    outputs[i] = out
        return [o for o in outputs if o is not None]

    def prompt_text(self, messages: ChatMessages) -> str:
        """The text the model is given for ``messages``: its prompt format, the chat template,
        the pinned date, the assistant turn opened (``pipeline.training`` builds the same)."""
        return render(self._tokenizer, for_format(messages, self.prompt_format), add_generation_prompt=True,
                      template_date=self.template_date)

    def prompt_ids(self, messages: ChatMessages) -> list[int]:
        """The token ids the model is given for ``messages``."""
        return list(self._tokenizer(self.prompt_text(messages), add_special_tokens=False)["input_ids"])

    @contextlib.contextmanager
    def _select(self, adapter: _Adapter | None):
        """Worker thread: the model to generate with, set to ``adapter`` (None: base model)."""
        if adapter is not None:
            if self._peft is None or adapter.name not in self._peft.peft_config:
                raise RuntimeError(f"adapter {adapter.version} is not loaded")
            self._peft.set_adapter(adapter.name)
            yield self._peft
        elif self._peft is not None:
            with self._peft.disable_adapter():
                yield self._peft
        else:
            yield self._base

    def _generate_group(self, model: Any, group: list[_Request], temperature: float) -> list[_Output]:
        tok = self._tokenizer
        prompts = [self.prompt_text(r.messages) for r in group]
        enc = tok(prompts, return_tensors="pt", padding=True, add_special_tokens=False).to(self._device)
        kwargs: dict[str, Any] = dict(
            max_new_tokens=max(r.max_tokens for r in group),
            eos_token_id=self._eos_ids,
            pad_token_id=tok.pad_token_id,
        )
        if temperature <= 0:
            kwargs.update(do_sample=False, temperature=None, top_p=None, top_k=None)
        else:
            kwargs.update(do_sample=True, temperature=temperature)
        out = model.generate(**enc, **kwargs)
        width = enc["input_ids"].shape[1]
        eos = set(self._eos_ids)
        results = []
        for row, r in enumerate(group):
            new = out[row, width:].tolist()[: r.max_tokens]
            for cut, token in enumerate(new):
                if token in eos or token == tok.pad_token_id:
                    new = new[:cut]
                    break
            text = tok.decode(new, skip_special_tokens=True).strip()
            prompt_tokens = int(enc["attention_mask"][row].sum())
            results.append(_Output(text, prompt_tokens, len(new)))
        return results

    # --- adapters ------------------------------------------------------------------------------

    async def swap_adapter(self, version: str | None, path: Path | None) -> float:
        """Load ``version`` beside the live adapter, then flip. Returns seconds to load + flip."""
        if not self._started or self._closed or self._swap_lock is None:
            raise AdapterLoadError("the local model is not running")
        loop = asyncio.get_running_loop()
        async with self._swap_lock:
            started = time.perf_counter()
            new: _Adapter | None = None
            if version is not None:
                adapter_dir = _check_adapter_dir(version, path)
                new = _Adapter(version, f"adapter_{next(self._names)}", adapter_dir)
                try:
                    await loop.run_in_executor(self._executor, self._load_adapter, new)
                except AdapterLoadError:
                    raise
                except Exception as exc:
                    raise AdapterLoadError(f"adapter {version} at {adapter_dir} could not be loaded: {exc}") from exc
            old, self._active = self._active, new  # the flip: batches dispatched from now on use `new`
            elapsed = time.perf_counter() - started
            self.swap_times.append(elapsed)
            self.adapter_error = None
            logger.info("adapter %s live (was %s), swap took %.3f s", version, old.version if old else None, elapsed)
            if old is not None:
                task = asyncio.create_task(self._retire(old))
                self._retire_tasks.add(task)
                task.add_done_callback(self._retire_tasks.discard)
            return elapsed

    async def _retire(self, adapter: _Adapter) -> None:
        """Delete ``adapter`` in the worker. Queued behind every batch dispatched before the flip."""
        try:
            await asyncio.get_running_loop().run_in_executor(self._executor, self._unload_adapter, adapter.name)
        except Exception as exc:  # memory stays allocated; serving is unaffected
            logger.warning("could not free old adapter %s: %s", adapter.version, exc)

    def _load_adapter(self, adapter: _Adapter) -> None:
        """Worker thread: load an adapter under a fresh name; undo everything if it fails."""
        from peft import PeftModel

        started = time.perf_counter()
        _check_weights_readable(adapter)
        if self._peft is None:
            try:
                self._peft = PeftModel.from_pretrained(
                    self._base, str(adapter.path), adapter_name=adapter.name, is_trainable=False
                )
            except Exception:
                _strip_peft_layers(self._base)  # from_pretrained may have injected layers before failing
                raise
        else:
            try:
                self._peft.load_adapter(str(adapter.path), adapter_name=adapter.name, is_trainable=False)
            except Exception:
                if adapter.name in self._peft.peft_config:
                    self._unload_adapter(adapter.name)
                raise
        self._peft.eval()
        self.load_times.append(time.perf_counter() - started)

    def _unload_adapter(self, name: str) -> None:
        """Worker thread: free one adapter; the last one removes the peft wrapper altogether
        (peft cannot delete its last adapter and keep working)."""
        if self._peft is None or name not in self._peft.peft_config:
            return
        remaining = [n for n in self._peft.peft_config if n != name]
        if remaining:
            self._peft.set_adapter(remaining[0])
            self._peft.delete_adapter(name)
        else:
            self._base = self._peft.unload()
            _strip_peft_layers(self._base)
            self._peft = None

    # --- information ---------------------------------------------------------------------------

    def count_tokens(self, text: str) -> int:
        """Exact token count with the model's tokenizer (an estimate before start())."""
        if self._tokenizer is None:
            return approx_tokens(text)
        return len(self._tokenizer.encode(text, add_special_tokens=False))

    @property
    def active_adapter(self) -> str | None:
        return self._active.version if self._active else None

    def status(self) -> BackendStatus:
        running = self._started and not self._closed and self._batcher is not None and not self._batcher.done()
        sizes = list(self.batch_sizes)
        return BackendStatus(
            backend=self.name,
            model=self.model_path,
            adapter_version=self.active_adapter,
            healthy=running,
            detail={
                "device": self._device,
                "adapter_path": str(self._active.path) if self._active else None,
                "adapter_error": self.adapter_error,
                "queued": self._queue.qsize() if self._queue is not None else 0,
                "batches": len(sizes),
                "mean_batch_size": round(sum(sizes) / len(sizes), 2) if sizes else 0.0,
                "requests_served": self.requests_served,
                "requests_failed": self.requests_failed,
                "last_error": self.last_error,
                "last_swap_s": self.swap_times[-1] if self.swap_times else None,
            },
        )


def _check_adapter_dir(version: str, path: Path | str | None) -> Path:
    """Refuse an adapter directory that is missing or obviously not a PEFT adapter."""
    if path is None:
        raise AdapterLoadError(f"adapter {version}: no directory given")
    adapter_dir = Path(path)
    if not adapter_dir.is_dir():
        raise AdapterLoadError(f"adapter {version}: directory {adapter_dir} does not exist")
    config = adapter_dir / "adapter_config.json"
    if not config.is_file():
        raise AdapterLoadError(f"adapter {version}: {adapter_dir} is not a PEFT adapter (no adapter_config.json)")
    try:
        data = json.loads(config.read_text())
        if not isinstance(data, dict) or "peft_type" not in data:
            raise ValueError("peft_type missing")
    except (ValueError, UnicodeDecodeError) as exc:
        raise AdapterLoadError(f"adapter {version}: {config} is corrupt ({exc})") from None
    if not any((adapter_dir / f).is_file() for f in ADAPTER_WEIGHT_FILES):
        raise AdapterLoadError(f"adapter {version}: {adapter_dir} has no adapter weights ({ADAPTER_WEIGHT_FILES[0]})")
    return adapter_dir


def _check_weights_readable(adapter: _Adapter) -> None:
    """Read the weights once before touching the model, so a corrupt file fails cleanly."""
    weights = adapter.path / ADAPTER_WEIGHT_FILES[0]
    if not weights.is_file():
        return  # .bin: peft reads it; failures are still undone by the caller
    try:
        from safetensors import safe_open

        with safe_open(str(weights), framework="pt") as f:
            for key in f.keys():
                f.get_tensor(key)
    except Exception as exc:
        raise AdapterLoadError(f"adapter {adapter.version}: weights file {weights} is corrupt ({exc})") from None


def _strip_peft_layers(model: Any) -> None:
    """Put back the original layers wherever peft injected LoRA layers (undo after a failure)."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    for module in list(model.modules()):
        for child_name, child in list(module.named_children()):
            if isinstance(child, BaseTunerLayer):
                setattr(module, child_name, child.get_base_layer())
    if hasattr(model, "peft_config"):
        with contextlib.suppress(AttributeError):
            del model.peft_config
