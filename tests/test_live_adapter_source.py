"""The running service is the one source of truth for the live adapter (issue 15).

While `llm4sweat run` holds the data directory, `llm4sweat adapters promote / rollback / list`
and `retrain` go through its control API, so what the command line says is what patients are
served; when it cannot be reached they change nothing. With no service running they act on the
database, and the service loads the live adapter when it next starts.
"""

from __future__ import annotations

import asyncio
import io
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from rich.console import Console

from bot.instance import AlreadyRunning, Instance, running
from bot.settings import load_settings
from bot.storage import Database
from pipeline import loop_cli, registry


def _adapter(root: Path, version: str) -> Path:
    path = root / "adapters" / version
    path.mkdir(parents=True)
    (path / "adapter_config.json").write_text("{}")
    import numpy as np
    from safetensors.numpy import save_file

    save_file({"lora.weight": np.zeros((2, 2), dtype=np.float32)}, str(path / "adapter_model.safetensors"))
    return path


def _registry(tmp_path: Path, live: str = "v1") -> None:
    """v1 and v2, both passed the gate once; ``live`` is live."""

    async def go() -> None:
        db = await Database(tmp_path / "llm4sweat.db").open()
        try:
            for version in ("v1", "v2"):
                await registry.register(db, version, _adapter(tmp_path, version), "fixed-model")
                await registry.mark_gate_passed(db, version)
            await registry.mark_live(db, live)
        finally:
            await db.close()

    asyncio.run(go())


def _live(tmp_path: Path) -> str | None:
    import sqlite3

    with sqlite3.connect(tmp_path / "llm4sweat.db") as db:
        row = db.execute("SELECT version FROM adapters WHERE status = 'live'").fetchone()
    return row[0] if row else None


def _cli(cfg, fn, *args, **kwargs) -> tuple[int, str]:
    out = io.StringIO()
    code = fn(cfg, Console(file=out, width=200), *args, **kwargs)
    return code, out.getvalue()


@pytest.fixture
def cfg(tmp_path):
    return load_settings(data_dir=tmp_path, inference={"backend": "fixed"})


def test_one_service_per_data_directory_and_the_lock_dies_with_it(tmp_path):
    """The lock says who serves a data directory; a second claim is refused with one line; a
    released (or dead) holder leaves nothing that looks running."""
    assert running(tmp_path) is None
    held = Instance(tmp_path)
    try:
        held.set_url("http://127.0.0.1:5/")
        found = running(tmp_path)
        assert found is not None and found.pid == os.getpid() and found.url == "http://127.0.0.1:5"
        with pytest.raises(AlreadyRunning, match="already running"):
            Instance(tmp_path)
    finally:
        held.release()
    assert running(tmp_path) is None
    # A process killed with -9 holds nothing: the kernel drops its lock.
    child = subprocess.Popen([sys.executable, "-c", "import sys, time; from bot.instance import Instance; "
                              f"i = Instance({str(tmp_path)!r}); i.set_url('http://127.0.0.1:6'); "
                              "print('held', flush=True); time.sleep(60)"], stdout=subprocess.PIPE, text=True,
                             env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)})
    try:
        assert child.stdout.readline().strip() == "held"
        assert running(tmp_path) is not None
    finally:
        child.kill()
        child.wait(timeout=10)
    assert running(tmp_path) is None


@pytest.mark.slow  # the direct rollback checks the weights with torch (~4 s)
def test_without_a_service_the_command_line_acts_on_the_database(cfg, tmp_path):
    _registry(tmp_path)
    listed = loop_cli.list_adapters(cfg)
    assert listed.service is None and {r["version"]: r["status"] for r in listed.rows}["v1"] == "live"
    code, out = _cli(cfg, loop_cli.rollback, "v2")
    assert code == 0 and "recorded as live" in out and "next starts" in out, out
    assert _live(tmp_path) == "v2"
    listed = loop_cli.list_adapters(cfg)
    assert listed.service is None and {r["version"]: r["status"] for r in listed.rows}["v2"] == "live"


def test_a_running_service_that_cannot_be_reached_changes_nothing(cfg, tmp_path):
    """A service holds the data directory but its control API does not answer (or it runs
    without its console): promote, rollback, list and retrain --here say so, and the database
    is left as the service has it."""
    _registry(tmp_path)
    (tmp_path / "control-token").write_text("token")
    held = Instance(tmp_path)
    try:
        with __import__("socket").socket() as s:  # a port nobody listens on
            s.bind(("127.0.0.1", 0))
            held.set_url(f"http://127.0.0.1:{s.getsockname()[1]}/")
        code, out = _cli(cfg, loop_cli.rollback, "v2")
        assert code == 1 and "did not answer" in out and "nothing was changed" in out, out
        assert out.startswith("llm4sweat: "), out  # said here, not as if the service had answered
        code, out = _cli(cfg, loop_cli.promote, "v2", force=True)
        assert code == 1 and "did not answer" in out, out
        listed = loop_cli.list_adapters(cfg)
        assert listed.problem and "did not answer" in listed.problem
        code, out = _cli(cfg, loop_cli.retrain, wait=False, here=True)
        assert code == 1 and "A service is running" in out, out
        held.set_url("")  # `run --no-console`
        code, out = _cli(cfg, loop_cli.rollback, "v2")
        assert code == 1 and "serves no console" in out and "--no-console" in out, out
    finally:
        held.release()
    assert _live(tmp_path) == "v1"
    listed = loop_cli.list_adapters(cfg)  # nobody holds the data directory now: read from the database
    assert listed.service is None and listed.problem is None and len(listed.rows) == 2


@pytest.mark.slow
def test_the_command_line_goes_through_the_running_service(tmp_path):
    """`llm4sweat run` on a port it picks itself (port 0: the settings' port is not where it
    listens) serves v1; rollback, promote and list from the command line reach it, the swap
    happens in the service, and list shows what it serves. A second `run` on the same data
    directory is refused with one line."""
    _registry(tmp_path)
    cfg = load_settings(data_dir=tmp_path, inference={"backend": "fixed"})
    env = {k: v for k, v in os.environ.items() if not k.startswith("LLM4SWEAT_")}
    env.update({"LLM4SWEAT_DATA_DIR": str(tmp_path), "LLM4SWEAT_INFERENCE__BACKEND": "fixed"})
    proc = subprocess.Popen([sys.executable, "-m", "bot.cli", "run", "--port", "0"], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, env=env)
    output = ""
    try:
        for line in proc.stdout:
            output += line
            if "Open http" in line:
                break
        assert "Open http" in output, output[-2000:]
        listed = loop_cli.list_adapters(cfg)
        assert listed.service is not None and listed.service.pid == proc.pid and listed.serving == "v1"

        second = subprocess.run([sys.executable, "-m", "bot.cli", "run", "--port", "0"], capture_output=True,
                                text=True, env=env, timeout=120)
        assert second.returncode == 2 and "already running" in second.stderr, second.stderr[-2000:]
        assert "Traceback" not in second.stderr

        code, out = _cli(cfg, loop_cli.rollback, "v2")
        assert code == 0 and out.startswith("(the running service) Rolled back: v2 is live"), out
        assert loop_cli.list_adapters(cfg).serving == "v2" and _live(tmp_path) == "v2"
        code, out = _cli(cfg, loop_cli.promote, "v1", force=True)
        assert code == 0 and out.startswith("(the running service)"), out
        assert loop_cli.list_adapters(cfg).serving == "v1" and _live(tmp_path) == "v1"

        shown = subprocess.run([sys.executable, "-m", "bot.cli", "adapters", "list"], capture_output=True,
                               text=True, env={**env, "COLUMNS": "200"}, timeout=120)  # a table row per line
        assert shown.returncode == 0 and "live (serving)" in shown.stdout and "serves v1" in shown.stdout, shown.stdout
    finally:
        proc.send_signal(signal.SIGINT)
        output += proc.communicate(timeout=60)[0]
    assert proc.returncode == 0, output[-2000:]
    assert running(tmp_path) is None
