"""Model downloads against a local stand-in for the Hugging Face Hub (tests/hub_fake.py, via
``HF_ENDPOINT``): progress and a dropped connection resumed with a Range request, the gated
Llama path (401/403 with a message naming the licence page and HF_TOKEN), unknown models, no
network; and ``llm4sweat demo`` online (a small general model, labelled as such) and offline
(the demo model, in one line)."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import re
import signal
import socket
import sys
from pathlib import Path

import aiohttp
import pytest

from tests.hub_fake import FakeHub

pytestmark = pytest.mark.asyncio(loop_scope="session")

CHUNK = 10 * 1024 * 1024  # huggingface_hub writes downloads in chunks of this size
LLAMA = "meta-llama/Llama-3.2-1B-Instruct"


def environment(tmp_path: Path, hub_url: str, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("LLM4SWEAT_", "HF_", "HUGGING_FACE")) and k != "HUGGINGFACE_HUB_CACHE"}
    env.update({"HF_ENDPOINT": hub_url, "HF_HOME": str(tmp_path / "hf-home"), "LLM4SWEAT_DATA_DIR": str(tmp_path),
                "PYTHONPATH": os.getcwd(), "HF_HUB_DISABLE_TELEMETRY": "1", **extra})
    return env


async def cli(env: dict[str, str], *args: str, timeout: float = 120) -> tuple[int, str, str]:
    process = await asyncio.create_subprocess_exec(sys.executable, "-m", "bot.cli", *args, env=env,
                                                   stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(process.communicate(), timeout)
    return process.returncode, out.decode(), err.decode()


@pytest.fixture
async def hub():
    server = await FakeHub().start()
    yield server
    await server.stop()


def one_line(text: str) -> str:
    """The one line that says what went wrong (the library's progress bars aside)."""
    lines = [line for line in text.replace("\r", "\n").splitlines()
             if line.strip() and not re.match(r"\s*(Fetching \d+ files|Downloading|Reconstructing)", line)]
    assert len(lines) == 1 and "Traceback" not in text, text
    return " ".join(lines[0].split())


async def test_download_shows_progress_and_resumes_a_dropped_connection_with_range(tmp_path, hub):
    weights = os.urandom(CHUNK * 2 + 12345)
    hub.add("acme/small-chat", {"config.json": b'{"model_type": "llama"}', "tokenizer.json": b"{}",
                                "model.safetensors": weights, "README.md": b"# card",
                                "original/consolidated.00.pth": b"a second copy of the weights"})
    hub.cut_after["model.safetensors"] = CHUNK + 4096  # the connection drops once, mid-file
    code, out, err = await cli(environment(tmp_path, hub.url), "model", "download", "acme/small-chat")
    assert code == 0, err
    path = Path(out.strip().split(" is in ")[1])
    assert hashlib.sha256((path / "model.safetensors").read_bytes()).digest() == hashlib.sha256(weights).digest()
    assert sorted(p.name for p in path.iterdir()) == ["config.json", "model.safetensors", "tokenizer.json"]
    gets = hub.gets("model.safetensors")
    assert [g.range for g in gets] == [None, f"bytes={CHUNK}-"]  # resumed where the written part ends
    assert "Trying to resume download" in err and "Fetching 3 files" in err  # the library's progress
    # A second run finds everything in the cache and fetches no file again.
    code, out_again, _ = await cli(environment(tmp_path, hub.url), "model", "download", "acme/small-chat")
    assert code == 0 and out_again == out and len(hub.gets("model.safetensors")) == 2


async def test_gated_llama_needs_the_licence_and_a_token(tmp_path, hub):
    hub.add(LLAMA, {"config.json": b"{}", "model.safetensors": b"weights"}, gated=True, allowed_tokens={"hf_granted"})
    code, out, err = await cli(environment(tmp_path, hub.url), "model", "download")  # the default base model
    assert code == 1 and out == ""
    line = one_line(err)
    assert f"{hub.url}/{LLAMA}" in line and "licence" in line and "HF_TOKEN" in line and "Traceback" not in err
    # A token whose account did not accept the licence: the hub answers 403 GatedRepo.
    code, _, err = await cli(environment(tmp_path, hub.url, HF_TOKEN="hf_not_granted"), "model", "download")
    line = one_line(err)
    assert code == 1 and "has no access" in line and f"{hub.url}/{LLAMA}" in line and "hf_not_granted" not in err
    assert [r.authorization for r in hub.requests if "/resolve/" in r.path][-1] == "Bearer hf_not_granted"
    # Licence accepted, token set: downloaded.
    code, out, err = await cli(environment(tmp_path, hub.url, HF_TOKEN="hf_granted"), "model", "download")
    assert code == 0, err
    assert (Path(out.strip().split(" is in ")[1]) / "model.safetensors").read_bytes() == b"weights"


async def test_unknown_model_and_no_network_are_one_line(tmp_path, hub):
    code, _, err = await cli(environment(tmp_path, hub.url), "model", "download", "acme/no-such-model")
    assert code == 1 and "there is no model acme/no-such-model" in one_line(err)
    with socket.socket() as sock:  # a port nothing listens on
        sock.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{sock.getsockname()[1]}"
    code, _, err = await cli(environment(tmp_path, dead), "model", "download", "acme/small-chat")
    assert code == 1 and "no connection to" in one_line(err) and "Traceback" not in err


# ---------------------------------------------------------------------------- llm4sweat demo


async def test_a_general_models_replies_say_so_until_an_adapter_is_live(tmp_path):
    from bot.core import LABEL_DEMO, LABEL_GENERAL, LABEL_PENDING
    from bot.inference.fixed import FixedBackend
    from bot.local.platform import LocalPlatform
    from bot.platform import IncomingMessage
    from bot.service import Service
    from bot.settings import load_settings
    from reviewers.models import Actor

    service = Service(load_settings(data_dir=tmp_path), FixedBackend(), general_model="acme/small-chat")
    service.add_platform(LocalPlatform())
    await service.start(retry_loop=False)
    try:
        first = await service.core.handle_message(IncomingMessage("local", "p1", "console", "p1", "Is it normal?"))
        assert first.views[-1].label == f"{LABEL_PENDING} · {LABEL_GENERAL}" and LABEL_DEMO not in first.views[-1].label
        status = await service.commands.run(Actor("local", "m", "m", frozenset({"moderator"})), "status", None)
        assert "small general model, not fine-tuned yet" in status.text
        await service.backend.swap_adapter("v1", None)  # an adapter trained on reviewed answers went live
        second = await service.core.handle_message(IncomingMessage("local", "p2", "console", "p2", "And now?"))
        assert second.views[-1].label == LABEL_PENDING
    finally:
        await service.stop()


async def start_demo(env: dict[str, str], *args: str) -> tuple[asyncio.subprocess.Process, str, list[str]]:
    """Start `llm4sweat demo --port 0`; returns the process, the console URL and stderr lines so far."""
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "bot.cli", "demo", "--port", "0", *args, env={**env, "COLUMNS": "250"},
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    seen: list[str] = []

    async def until_running() -> str:
        while True:
            line = (await process.stdout.readline()).decode()
            if not line:
                raise AssertionError("demo ended: " + "".join(seen) + (await process.stderr.read()).decode())
            seen.append(line)
            found = re.search(r"Open (http://\S+)", line)
            if found:
                return found.group(1)

    url = await asyncio.wait_for(until_running(), 600)
    return process, url, seen


async def stop_demo(process: asyncio.subprocess.Process) -> str:
    process.send_signal(signal.SIGTERM)
    _, err = await asyncio.wait_for(process.communicate(), 60)
    return err.decode()


async def ask(url: str, text: str) -> dict:
    async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as session:
        async with session.post(url + "api/patient/messages", data=json.dumps({"text": text}),
                                headers={"Content-Type": "application/json", "Origin": url.rstrip("/")}) as response:
            assert response.status == 200, await response.text()
            return await response.json()


@pytest.mark.slow
async def test_demo_online_serves_the_small_general_model_labelled_honestly(tmp_path, hub, tiny_model_dir):
    from bot.core import LABEL_DEMO, LABEL_GENERAL

    hub.add("acme/small-chat", {p.name: p.read_bytes() for p in tiny_model_dir.iterdir() if p.is_file()})
    env = environment(tmp_path, hub.url, LLM4SWEAT_INFERENCE__DEMO_MODEL="acme/small-chat",
                      LLM4SWEAT_INFERENCE__MAX_NEW_TOKENS="8")
    process, url, seen = await start_demo(env)
    try:
        assert any("Fetching acme/small-chat" in line for line in seen)
        assert any("a small general model, not fine-tuned for" in line for line in seen)
        reply = (await ask(url, "My hands sweat all day, is that normal?"))["views"][-1]
        assert LABEL_GENERAL in reply["label"] and LABEL_DEMO not in reply["label"]
    finally:
        await stop_demo(process)


@pytest.mark.slow
async def test_demo_offline_falls_back_to_the_demo_model_in_one_line(tmp_path):
    from bot.core import LABEL_DEMO

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{sock.getsockname()[1]}"
    process, url, _ = await start_demo(environment(tmp_path, dead, LLM4SWEAT_INFERENCE__MAX_NEW_TOKENS="8"))
    try:
        reply = (await ask(url, "My hands sweat all day, is that normal?"))["views"][-1]
        assert LABEL_DEMO in reply["label"]
    finally:
        err = await stop_demo(process)
    fallback = [line for line in err.splitlines() if "offline DEMO model" in line]
    assert len(fallback) == 1 and "No connection to the Hugging Face Hub" in fallback[0]
