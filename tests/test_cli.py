"""The console script as a user runs it."""

import os
import subprocess
import sys


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


def test_platform_start_error_is_one_line(tmp_path):
    out = run_cli("run", "--port", "0", tmp_path=tmp_path, env_extra={
        "LLM4SWEAT_INFERENCE__BACKEND": "fixed", "LLM4SWEAT_SLACK__BOT_TOKEN": "xoxb-not-shown"})
    assert out.returncode == 2
    assert "cannot connect" in out.stderr and "APP_TOKEN" in out.stderr
    assert "Traceback" not in out.stderr and "xoxb-not-shown" not in out.stdout + out.stderr
