"""The offline safety triage in a process of its own, so it runs beside the event loop.

The triage of a patient message (rules + the learned model, :func:`bot.safety.detector.triage`)
is pure CPU work of 1-2 ms and was the largest part of the event loop's time per message: every
other conversation waited behind it. Here it runs in a child process (``python -m
bot.triage_worker``) on the machine's other core; the core sends the text as soon as a
message arrives, so the triage runs while the message is being stored.

Rules that keep this safe:

* the child runs the same function on the same pack file, with the service's own safety model
  (the object, pickled to it at start) and the same settings, so a verdict is the one the
  service would have computed itself;
* anything that goes wrong — the child not ready yet, dead, unreadable, or slower than
  ``TIMEOUT_S`` — makes :meth:`TriageWorker.triage` return ``None`` and the caller triages in
  its own process: a message is never left untriaged, never "safe" by default;
* the child is a fresh interpreter started with ``-m`` (nothing of the parent's state is
  inherited: no database connection, no event loop, no ``__main__`` re-import), and it ends
  when its stdin closes, also when the service dies without stopping it.

Protocol: one JSON document per line. The parent writes the settings first (followed by the
pickled model, ``model_bytes`` long), then ``[id, text]`` per message; the child answers ``["ready", pid]`` once, then ``[id, fields]``
(the :class:`bot.safety.verdict.Triage` fields) or ``[id, null, error]``; ``[id, null]`` asks
for the child's CPU seconds (benchmarks count them with the service's).
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import json
import logging
import os
import pickle
import sys
import time
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

TIMEOUT_S = 5.0  # a verdict later than this is computed in the service's process instead
RESTART_AFTER_S = 30.0  # a child that died is started again at most this often
START_TIMEOUT_S = 120.0  # importing and loading the model (the service cached it at start)
_LINE_LIMIT = 64 * 1024 * 1024  # a message is cut at 100,000 characters before it gets here


def worker_config(settings: Any) -> dict[str, Any]:
    """What the child needs to triage exactly as :class:`bot.safety.layer.SafetyLayer` does."""
    cfg = settings.safety
    return {
        "pack_path": str(Path(settings.pack_path).resolve()),
        "reply_languages": list(cfg.reply_languages),
        "threshold": cfg.crisis_threshold,
        "possible_threshold": cfg.possible_crisis_threshold,
    }


def verdict_from(fields: dict[str, Any]) -> Any:
    from bot.safety.verdict import Triage

    names = _triage_fields()
    return Triage(**{k: tuple(v) if isinstance(v, list) else v for k, v in fields.items() if k in names})


@functools.lru_cache(maxsize=1)
def _triage_fields() -> frozenset[str]:
    from bot.safety.verdict import Triage

    return frozenset(f.name for f in dataclasses.fields(Triage))


class TriageWorker:
    """The parent's side: one child process, requests matched to answers by id."""

    def __init__(self, config: dict[str, Any], model: Any):
        self.config = config
        self.model = model  # the service's SafetyModel (bot.safety.detector.crisis_model)
        self._proc: asyncio.subprocess.Process | None = None
        self._reader: asyncio.Task[None] | None = None
        self._starting: asyncio.Task[None] | None = None
        self._pending: dict[int, asyncio.Future[Any]] = {}
        self._next_id = 0
        self._ready = False
        self._closed = False
        self._last_start = float("-inf")
        self.pid: int | None = None
        self.fallbacks = 0  # verdicts the service computed itself (child not ready, dead or late)

    @property
    def ready(self) -> bool:
        return self._ready

    def start(self) -> None:
        """Start the child in the background (triage runs in the service's process meanwhile)."""
        if self._closed or self._starting is not None and not self._starting.done():
            return
        self._last_start = time.monotonic()
        self._starting = asyncio.ensure_future(self._start())

    async def wait_ready(self, timeout: float = START_TIMEOUT_S) -> bool:
        if self._starting is not None:
            await asyncio.wait({self._starting}, timeout=timeout)
        return self._ready

    async def _start(self) -> None:
        env = dict(os.environ)
        root = str(Path(__file__).resolve().parent.parent)  # this checkout's code, whatever is installed
        env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
        try:
            proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "bot.triage_worker", stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE, env=env, cwd=root, limit=_LINE_LIMIT)
        except OSError as exc:
            log.error("safety triage process could not start (%s): triage runs in the service's process", exc)
            return
        self._proc, self.pid = proc, proc.pid
        assert proc.stdin is not None and proc.stdout is not None
        try:
            blob = await asyncio.to_thread(pickle.dumps, self.model, 5)
            proc.stdin.write(json.dumps({**self.config, "model_bytes": len(blob)}).encode() + b"\n")
            proc.stdin.write(blob)
            del blob
            await proc.stdin.drain()
            line = await asyncio.wait_for(proc.stdout.readline(), START_TIMEOUT_S)
            if json.loads(line)[0] != "ready":
                raise ValueError(line[:200])
        except asyncio.CancelledError:
            await self._kill(proc)
            raise
        except Exception as exc:  # noqa: BLE001 — any failure: the service triages itself
            log.error("safety triage process did not start (%s): triage runs in the service's process",
                      type(exc).__name__)
            await self._kill(proc)
            return
        self._ready = True
        self._reader = asyncio.ensure_future(self._read(proc))
        log.info("safety triage runs in process %s", proc.pid)

    async def _read(self, proc: asyncio.subprocess.Process) -> None:
        assert proc.stdout is not None
        try:
            while True:
                line = await proc.stdout.readline()
                if not line:
                    break
                answer = json.loads(line)
                future = self._pending.pop(answer[0], None)
                if future is not None and not future.done():
                    if len(answer) > 2:
                        future.set_exception(RuntimeError(str(answer[2])))
                    else:
                        future.set_result(answer[1])
        except Exception:  # noqa: BLE001
            log.exception("safety triage process: unreadable answer")
        finally:
            self._ready = False
            self._fail_pending(RuntimeError("the triage process ended"))
            if not self._closed:
                log.error("safety triage process %s ended: triage runs in the service's process until it is "
                          "started again", proc.pid)
                await self._kill(proc, grace_s=5.0)

    def _fail_pending(self, exc: BaseException) -> None:
        pending, self._pending = self._pending, {}
        for future in pending.values():
            if not future.done():
                future.set_exception(exc)

    def _request(self, payload: str | None) -> asyncio.Future[Any] | None:
        proc = self._proc
        if not self._ready or proc is None or proc.stdin is None or proc.stdin.is_closing():
            if not self._closed and time.monotonic() - self._last_start > RESTART_AFTER_S:
                self.start()
            return None
        self._next_id += 1
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        future.add_done_callback(_retrieve)  # a failure nobody awaits any more is not reported as lost
        self._pending[self._next_id] = future
        try:
            proc.stdin.write(json.dumps([self._next_id, payload]).encode() + b"\n")
        except Exception:  # noqa: BLE001 — the pipe broke: the reader sees the end
            self._pending.pop(self._next_id, None)
            return None
        return future

    def submit(self, text: str) -> asyncio.Future[Any] | None:
        """Send ``text`` to the child now; the future gives its fields (``verdict_from``). None:
        the child cannot take it (the caller triages itself)."""
        return self._request(text)

    async def result(self, future: asyncio.Future[Any] | None) -> Any:
        """The :class:`Triage` for a submitted text, or None (late, failed: triage it yourself)."""
        if future is None:
            self.fallbacks += 1
            return None
        try:
            fields = await asyncio.wait_for(asyncio.shield(future), TIMEOUT_S)
            return verdict_from(fields)
        except asyncio.TimeoutError:
            log.error("safety triage process did not answer within %.0f s: triaged in the service's process", TIMEOUT_S)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001
            log.warning("safety triage process failed (%s): triaged in the service's process", exc)
        self.fallbacks += 1
        return None

    async def cpu_seconds(self) -> float:
        """CPU time the child has used (for benchmarks); 0 when it is not running."""
        future = self._request(None)
        if future is None:
            return 0.0
        try:
            return float(await asyncio.wait_for(future, TIMEOUT_S))
        except Exception:  # noqa: BLE001
            return 0.0

    async def close(self) -> None:
        self._closed = True
        self._ready = False
        if self._starting is not None and not self._starting.done():
            self._starting.cancel()
            await asyncio.gather(self._starting, return_exceptions=True)
        proc, self._proc = self._proc, None
        if proc is not None:
            if proc.stdin is not None and not proc.stdin.is_closing():
                proc.stdin.close()  # the child ends at the end of its input
            try:
                await asyncio.wait_for(proc.wait(), 5.0)
            except asyncio.TimeoutError:
                await self._kill(proc)
        if self._reader is not None:
            await asyncio.gather(self._reader, return_exceptions=True)
        self._fail_pending(RuntimeError("the triage process was stopped"))

    @staticmethod
    async def _kill(proc: asyncio.subprocess.Process, grace_s: float = 0.0) -> None:
        if proc.returncode is None and grace_s:  # it may be ending by itself
            try:
                await asyncio.wait_for(proc.wait(), grace_s)
            except asyncio.TimeoutError:
                pass
        if proc.returncode is None:
            try:
                proc.kill()
            except ProcessLookupError:
                pass
        await proc.wait()


def _retrieve(future: asyncio.Future[Any]) -> None:
    if not future.cancelled():
        future.exception()


# ---------------------------------------------------------------------- the child


def serve(stdin: Any, stdout: Any) -> None:
    """The child's loop: settings line, then one verdict per message line, until stdin ends."""
    from bot.safety.detector import triage
    from pipeline.packs import load_pack

    config = json.loads(stdin.readline())
    model = pickle.loads(stdin.read(config["model_bytes"]))  # the service's own model  # noqa: S301 — our pipe
    pack = load_pack(Path(config["pack_path"]))
    options = {"model": model, "reply_languages": config["reply_languages"], "threshold": config["threshold"],
               "possible_threshold": config["possible_threshold"]}
    stdout.write(json.dumps(["ready", os.getpid()]).encode() + b"\n")
    stdout.flush()
    for line in stdin:
        request_id, text = json.loads(line)
        try:
            if text is None:
                answer = json.dumps([request_id, time.process_time()])
            else:
                answer = json.dumps([request_id, dataclasses.asdict(triage(text, pack, **options))])
        except Exception as exc:  # noqa: BLE001 — the parent triages this one itself
            answer = json.dumps([request_id, None, f"{type(exc).__name__}: {exc}"])
        stdout.write(answer.encode() + b"\n")
        stdout.flush()


def main() -> None:
    # The protocol owns the real stdout; anything printed by a library goes to stderr instead.
    protocol_out = os.fdopen(os.dup(sys.stdout.fileno()), "wb")
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())
    logging.basicConfig(level=logging.WARNING, format="triage process: %(levelname)s %(name)s: %(message)s")
    try:
        serve(sys.stdin.buffer, protocol_out)
    except (KeyboardInterrupt, BrokenPipeError):
        pass


if __name__ == "__main__":
    main()
