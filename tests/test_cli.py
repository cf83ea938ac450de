"""The console script as a user runs it."""

import os
import subprocess
import sys
import pytest


def run_cli(*args, env_extra=None, tmp_path=None):
    env = {k: v for k, v in os.environ.items() if not k.startswith("LLM4SWEAT_")}
    if tmp_path is not None:
        env["LLM4SWEAT_DATA_DIR"] = str(tmp_path)
    env.update(env_extra or {})
    return subprocess.run([sys.executable, "-m", "bot.cli", *args], capture_output=True, text=True, env=env, timeout=120)


def test_invalid_setting_stops_with_one_line(tmp_path):
    out = run_cli("settings", env_extra={"LLM4SWEAT_REVIEW__MODE": "sometimes"}, tmp_path=tmp_path)
    assert out.returncode == 2
    lines = [line for line in out.stderr.strip().splitlines() if line.strip()]
    assert len(lines) == 1 and "review.mode" in lines[0] and "Traceback" not in out.stderr


def test_a_secret_in_the_settings_file_is_refused_naming_its_section(tmp_path):
    """The message names `[discord] token`; the terminal must show the brackets, not read them
    as rich markup (it printed "settings file …:  token is a secret")."""
    config = tmp_path / "llm4sweat.toml"
    config.write_text('[discord]\ntoken = "not-a-real-token"\n', encoding="utf-8")
    out = run_cli("--config", str(config), "settings", tmp_path=tmp_path)
    assert out.returncode == 2
    assert "[discord] token is a secret" in out.stderr and "LLM4SWEAT_DISCORD__TOKEN" in out.stderr, out.stderr
    assert "not-a-real-token" not in out.stderr + out.stdout


def test_settings_masks_secrets(tmp_path):
    out = run_cli("settings", env_extra={"LLM4SWEAT_SLACK__BOT_TOKEN": "xoxb-very-secret"}, tmp_path=tmp_path)
    assert out.returncode == 0, out.stderr
    assert "xoxb-very-secret" not in out.stdout + out.stderr and "(set)" in out.stdout


def test_db_upgrade_then_up_to_date(tmp_path):
    first = run_cli("db", "upgrade", tmp_path=tmp_path)
    assert first.returncode == 0, first.stderr
    assert "applied bot/001" in first.stdout
    second = run_cli("db", "upgrade", tmp_path=tmp_path)
    assert "up to date" in second.stdout


def test_pack_check_shipped_pack():
    from bot.settings import PACKS_DIR

    out = run_cli("pack", "check", str(PACKS_DIR / "hyperhidrosis"))
    assert out.returncode == 0, out.stdout + out.stderr


def test_dataset_stats_and_export(tmp_path):
    run_cli("db", "upgrade", tmp_path=tmp_path)
    export = run_cli("dataset", "export", str(tmp_path / "d.jsonl"), tmp_path=tmp_path)
    assert export.returncode == 0, export.stderr
    assert "snapshot" in export.stdout


@pytest.mark.slow
def test_platform_start_error_is_one_line_and_the_service_keeps_running(tmp_path):
    """Slack configured without its app-level token: one line says what is missing; the console
    starts anyway (each platform starts on its own) and Ctrl-C ends the service cleanly."""
    import signal

    env = {k: v for k, v in os.environ.items() if not k.startswith("LLM4SWEAT_")}
    env.update({"LLM4SWEAT_DATA_DIR": str(tmp_path), "LLM4SWEAT_INFERENCE__BACKEND": "fixed",
                "LLM4SWEAT_SLACK__BOT_TOKEN": "xoxb-not-shown"})
    proc = subprocess.Popen([sys.executable, "-m", "bot.cli", "run", "--port", "0"], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, env=env)
    output = ""
    try:
        for line in proc.stdout:
            output += line
            if "Open http" in line:
                break
        assert "Open http" in output, output[-2000:]
    finally:
        proc.send_signal(signal.SIGINT)
        output += proc.communicate(timeout=60)[0]
    assert proc.returncode == 0, output[-2000:]
    lines = [line for line in output.splitlines() if "APP_TOKEN" in line]
    assert len(lines) == 1 and "slack: cannot connect" in lines[0], output[-2000:]
    assert "Traceback" not in output and "xoxb-not-shown" not in output


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run_until(args: list[str], env_extra: dict[str, str], tmp_path, ready: str) -> tuple[str, int]:
    """Start `llm4sweat run ARGS`, read its output until ``ready``, GET /healthz on the port it
    was given, then Ctrl-C it: returns its whole output and the /healthz status."""
    import signal
    import urllib.request

    env = {k: v for k, v in os.environ.items() if not k.startswith("LLM4SWEAT_")}
    env.update({"LLM4SWEAT_DATA_DIR": str(tmp_path), "LLM4SWEAT_INFERENCE__BACKEND": "fixed", **env_extra})
    port = _free_port()
    proc = subprocess.Popen([sys.executable, "-m", "bot.cli", "run", "--port", str(port), *args],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    output, status = "", 0
    try:
        for line in proc.stdout:
            output += line
            if ready in line:
                break
        assert ready in output, output[-2000:]
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=10) as resp:
            status = resp.status
    finally:
        proc.send_signal(signal.SIGINT)
        output += proc.communicate(timeout=60)[0]
    assert proc.returncode == 0, output[-2000:]
    return output, status


@pytest.mark.slow
def test_run_on_a_given_port_serves_the_console_and_its_health_checks_there(tmp_path):
    """`llm4sweat run --port P` serves the console, /healthz included, on P, and binds P once
    (a second server on the console's port failed with "address already in use")."""
    output, status = _run_until([], {}, tmp_path, "Open http")
    assert status == 200 and "cannot serve" not in output and "Traceback" not in output, output[-2000:]


@pytest.mark.slow
def test_run_without_console_still_answers_health_checks_with_metrics_on(tmp_path):
    """`--no-console` serves /healthz and /readyz on the console's port, also when metrics have
    a port of their own."""
    output, status = _run_until(["--no-console"], {"LLM4SWEAT_METRICS__PORT": str(_free_port())}, tmp_path,
                                "metrics for Prometheus at")
    assert status == 200 and "health checks at" in output, output[-2000:]


def test_users_add_passwd_list_remove(tmp_path):
    """Console accounts from the command line; the password comes from standard input or a
    hidden prompt, never from an argument."""
    import sqlite3

    added = subprocess.run([sys.executable, "-m", "bot.cli", "users", "add", "rita", "--role", "reviewer",
                            "--password-stdin"], input="first long password\n", capture_output=True, text=True,
                           env={**{k: v for k, v in os.environ.items() if not k.startswith("LLM4SWEAT_")},
                                "LLM4SWEAT_DATA_DIR": str(tmp_path)}, timeout=120)
    assert added.returncode == 0, added.stderr
    assert "rita (reviewer) created" in added.stdout
    with sqlite3.connect(tmp_path / "llm4sweat.db") as db:
        first_hash = db.execute("SELECT password_hash FROM accounts WHERE name = 'rita'").fetchone()[0]
    # argon2id with argon2-cffi's production defaults (RFC 9106 low-memory: 64 MiB, t=3, p=4).
    assert first_hash.startswith("$argon2id$v=19$m=65536,t=3,p=4$") and "first long password" not in first_hash

    env = {**{k: v for k, v in os.environ.items() if not k.startswith("LLM4SWEAT_")}, "LLM4SWEAT_DATA_DIR": str(tmp_path)}
    short = subprocess.run([sys.executable, "-m", "bot.cli", "users", "passwd", "rita", "--password-stdin"],
                           input="short\n", capture_output=True, text=True, env=env, timeout=120)
    assert short.returncode == 2 and "at least 10 characters" in short.stderr
    changed = subprocess.run([sys.executable, "-m", "bot.cli", "users", "passwd", "rita", "--password-stdin"],
                             input="second long password\n", capture_output=True, text=True, env=env, timeout=120)
    assert changed.returncode == 0, changed.stderr
    with sqlite3.connect(tmp_path / "llm4sweat.db") as db:
        assert db.execute("SELECT password_hash FROM accounts WHERE name = 'rita'").fetchone()[0] != first_hash

    listed = run_cli("users", "list", tmp_path=tmp_path)
    assert listed.returncode == 0 and "rita" in listed.stdout and "reviewer" in listed.stdout
    removed = run_cli("users", "remove", "rita", tmp_path=tmp_path)
    assert removed.returncode == 0 and "removed" in removed.stdout
    again = run_cli("users", "remove", "rita", tmp_path=tmp_path)
    assert again.returncode == 1 and "no account named 'rita'" in again.stderr


def test_no_users_command_takes_a_password_argument():
    import typer

    from bot.cli import app

    users = typer.main.get_command(app).commands["users"]
    for name, command in users.commands.items():
        options = {opt for param in command.params for opt in getattr(param, "opts", [])}
        assert not any("password" in opt and opt != "--password-stdin" for opt in options), (name, options)
        assert not any("password" in param.name for param in command.params if param.param_type_name == "argument")


def test_a_port_in_use_is_one_line_before_any_model_work(tmp_path):
    """`llm4sweat run` (and `demo`, which builds a model for minutes first) on a port another
    program holds stops at once with one line naming the port and how to choose another — not a
    traceback after the model has loaded."""
    import socket

    env = {k: v for k, v in os.environ.items() if not k.startswith("LLM4SWEAT_")}
    env.update({"LLM4SWEAT_DATA_DIR": str(tmp_path), "LLM4SWEAT_INFERENCE__BACKEND": "fixed"})
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        done = subprocess.run([sys.executable, "-m", "bot.cli", "run", "--port", str(port)], capture_output=True,
                              text=True, env=env, timeout=120)
    output = done.stdout + done.stderr
    assert done.returncode == 2, output[-2000:]
    assert f"cannot serve the console on 127.0.0.1:{port}: the port is in use" in output and "--port" in output
    assert "Traceback" not in output and "LLM4Sweat is running" not in output, output[-2000:]
    assert "imported" not in output, output[-2000:]  # stopped before the service started (it imports the seeds)


def test_the_console_bind_itself_names_the_port_when_it_is_taken():
    """The check before start-up can race another program; the bind itself then says the same."""
    import asyncio
    import socket

    from aiohttp import web

    from bot.listen import CannotListen, start_site

    async def bind(port: int) -> str:
        runner = web.AppRunner(web.Application())
        await runner.setup()
        try:
            await start_site(runner, "127.0.0.1", port, "the console", "--port")
        except CannotListen as exc:
            return str(exc)
        await runner.cleanup()
        return "bound"

    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        said = asyncio.run(bind(port))
    assert said.startswith(f"cannot serve the console on 127.0.0.1:{port}: the port is in use") and "--port" in said
