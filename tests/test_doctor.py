"""``llm4sweat doctor``: every check fails on the mistake it is there for and passes otherwise.

The checks run against the strict fakes — Discord (tests/discord_fake.py) through discord.py's
own REST client, Slack (tests/slack_fake.py) through slack_sdk, a fake vLLM
(tests/vllm_fake.py) — and a real database file. One baseline configuration passes every
check; each case below breaks one thing the way an operator does, and exactly the checks for
that thing fail, each with a fix.
"""

from __future__ import annotations

import asyncio
import os
import re
import sqlite3
import sys
from pathlib import Path
from typing import Any, Awaitable, Callable

import discord
import pytest
import yaml

from bot.discord_platform.permissions import invite_permissions
from bot.doctor import run_checks
from bot.doctor.local_checks import check_settings
from bot.settings import load_settings
from bot.slack_platform.scopes import BOT_SCOPES
from bot.storage import Database
from tests.discord_fake import DOCUMENTED_INVITE_PERMISSIONS, FakeDiscord
from tests.slack_fake import APP_TOKEN, BOT_TOKEN, MANIFEST_SCOPES, FakeSlack
from tests.vllm_fake import FakeVLLM

# The fakes run on the session's event loop (pyproject), which the async tests share.
aio = pytest.mark.asyncio(loop_scope="session")

REPO = Path(__file__).resolve().parent.parent
SUPPORT, REVIEW, GROUP = "C0SUPPORT", "C0REVIEW", "S0REVIEWERS"


class World:
    """Fakes of Discord, Slack and vLLM, a migrated owner-only database, and settings that
    point at all of them."""

    def __init__(self, tmp_path: Path, discord_fake: FakeDiscord, slack: FakeSlack, vllm: FakeVLLM):
        self.tmp_path = tmp_path
        self.discord = discord_fake
        self.slack = slack
        self.vllm = vllm
        self.min_free_bytes = 1
        self.service_running = False

    def settings(self, **overrides: Any):
        d = self.discord
        sections: dict[str, dict[str, Any]] = {
            "discord": {"token": "discord-test-token", "guild_ids": [int(d.guild_id)],
                        "support_channel_ids": [int(d.support_id)], "support_category_ids": [int(d.category_id)],
                        "reviewer_channel_id": int(d.reviewer_channel_id), "reviewer_role": "Reviewer",
                        "moderator_role": "Moderator"},
            "slack": {"bot_token": BOT_TOKEN, "app_token": APP_TOKEN, "mode": "socket",
                      "api_base_url": self.slack.base_url, "support_channel_ids": [SUPPORT],
                      "reviewer_channel_id": REVIEW, "reviewer_usergroup_id": GROUP},
            "inference": {"backend": "openai", "openai_base_url": self.vllm.url, "base_model": "base"},
            "safety": {"regions": ["US", "UK"]},
        }
        for section, values in overrides.items():
            sections.setdefault(section, {}).update(values)
        return load_settings(data_dir=self.tmp_path, **sections)

    async def run(self, **overrides: Any):
        return await run_checks(self.settings(**overrides), service_running=self.service_running,
                                min_free_bytes=self.min_free_bytes)


@pytest.fixture
async def world(tmp_path):
    discord_fake = await FakeDiscord().start()
    discord_fake.patch_library()
    slack = await FakeSlack().start()
    slack.usergroups[GROUP] = ["U0REVIEWER"]
    vllm = await FakeVLLM(base_model="base").start()
    db = await Database(tmp_path / "llm4sweat.db").open()
    await db.close()
    for path in tmp_path.glob("llm4sweat.db*"):
        path.chmod(0o600)
    yield World(tmp_path, discord_fake, slack, vllm)
    await vllm.stop()
    await slack.stop()
    await discord_fake.stop()


def failed(report) -> set[str]:
    return {c.name for c in report.failed}


@aio
async def test_a_sound_deployment_passes_every_check(world):
    report = await world.run()
    assert report.passed, report.text()
    names = {c.name for c in report.checks}
    assert len(names) >= 20, names
    # Every configured channel is checked: the support channel, the category's other text
    # channel, and the reviewer channel (also the alert channel).
    channel_checks = [c.subject for c in report.named("discord.channel_permissions")]
    assert len(channel_checks) == 3 and any("ask-here-too" in s for s in channel_checks), channel_checks
    assert report.named("discord.moderator_mention")[0].ok
    assert "✓ slack.scopes" in report.text()


# Each case: what the operator got wrong (a change to the fakes, the files or the settings), the
# checks that must fail, and a word the failure's detail or fix must contain.
Case = tuple[str, Callable[["World"], Awaitable[dict[str, Any]]], set[str], str]


async def _overrides(**values: Any) -> dict[str, Any]:
    return values


async def revoked_discord_token(w: World) -> dict[str, Any]:
    w.discord.token_revoked = True
    return {}


async def message_content_intent_off(w: World) -> dict[str, Any]:
    w.discord.app_flags = 0
    return {}


async def interactions_url_set(w: World) -> dict[str, Any]:
    w.discord.interactions_endpoint_url = "https://example.org/interactions"
    return {}


async def reviewer_channel_denies_embeds(w: World) -> dict[str, Any]:
    deny = discord.Permissions(embed_links=True, manage_messages=True).value
    w.discord.overwrite(w.discord.reviewer_channel_id, w.discord.bot_role, deny=deny)
    return {}


async def category_channel_denies_threads(w: World) -> dict[str, Any]:
    # @everyone may not create threads there, and the bot's role has no allow to override it.
    w.discord.overwrite(w.discord.category_channel_id, w.discord.everyone_role,
                        deny=discord.Permissions(create_public_threads=True).value)
    w.discord.set_role(w.discord.bot_role, permissions=invite_permissions().value
                       & ~discord.Permissions(create_public_threads=True).value)
    return {}


async def moderators_cannot_be_pinged(w: World) -> dict[str, Any]:
    w.discord.set_role(w.discord.bot_role, permissions=invite_permissions(mention_everyone=False).value)
    return {}


async def unknown_guild(w: World) -> dict[str, Any]:
    return {"discord": {"guild_ids": [int(w.discord.guild_id), 4242]}}


async def unknown_reviewer_channel(w: World) -> dict[str, Any]:
    return {"discord": {"reviewer_channel_id": 4242}}


async def missing_discord_role(w: World) -> dict[str, Any]:
    return {"discord": {"reviewer_role": "Specialists"}}


async def revoked_slack_token(w: World) -> dict[str, Any]:
    w.slack.bot_tokens.clear()
    return {}


async def slack_scope_not_granted(w: World) -> dict[str, Any]:
    w.slack.scopes.discard("reactions:read")
    return {}


async def bot_not_in_reviewer_channel(w: World) -> dict[str, Any]:
    w.slack.remove_bot(REVIEW, private=True)
    return {}


async def bot_not_in_support_channel(w: World) -> dict[str, Any]:
    w.slack.remove_bot(SUPPORT)
    return {}


async def app_token_refused(w: World) -> dict[str, Any]:
    w.slack.app_tokens.clear()
    return {}


async def http_mode_without_signing_secret(w: World) -> dict[str, Any]:
    return {"slack": {"mode": "http"}}


async def unknown_usergroup(w: World) -> dict[str, Any]:
    return {"slack": {"reviewer_usergroup_id": "S0NOPE"}}


async def model_server_down(w: World) -> dict[str, Any]:
    await w.vllm.stop()
    return {}


async def model_server_wants_a_key(w: World) -> dict[str, Any]:
    w.vllm.api_key = "vllm-key"
    return {}


async def wrong_base_model_name(w: World) -> dict[str, Any]:
    return {"inference": {"base_model": "meta-llama/Llama-3.2-1B-Instruct"}}


async def runtime_lora_off(w: World) -> dict[str, Any]:
    w.vllm.runtime_lora = False
    return {}


async def lora_off(w: World) -> dict[str, Any]:
    w.vllm.lora_enabled = False
    return {}


async def live_adapter_not_loaded(w: World) -> dict[str, Any]:
    await _register_live_adapter(w)
    w.service_running = True
    return {}


async def pending_migration(w: World) -> dict[str, Any]:
    with sqlite3.connect(w.tmp_path / "llm4sweat.db") as conn:
        conn.execute("DELETE FROM schema_migrations WHERE package = 'bot' AND version = 2")
    return {}


async def database_readable_by_others(w: World) -> dict[str, Any]:
    (w.tmp_path / "llm4sweat.db").chmod(0o644)
    return {}


async def little_disk_space(w: World) -> dict[str, Any]:
    w.min_free_bytes = 1 << 60
    return {}


async def no_support_channels(w: World) -> dict[str, Any]:
    # The example settings as shipped: a token, and nowhere to answer.
    return {"discord": {"support_channel_ids": [], "support_category_ids": [], "allow_dms": False}}


async def region_without_resources(w: World) -> dict[str, Any]:
    return {"safety": {"regions": ["US", "BR"]}}


CASES: list[Case] = [
    ("discord token reset", revoked_discord_token, {"discord.token"}, "Reset Token"),
    ("Message Content intent off", message_content_intent_off, {"discord.intents"}, "Message Content"),
    ("Interactions Endpoint URL set", interactions_url_set, {"discord.interactions_url"}, "Interactions Endpoint URL"),
    ("reviewer channel denies embeds", reviewer_channel_denies_embeds, {"discord.channel_permissions"}, "Embed Links"),
    ("category channel denies threads", category_channel_denies_threads, {"discord.channel_permissions"},
     "Create Public Threads"),
    ("moderator role not mentionable", moderators_cannot_be_pinged, {"discord.moderator_mention"}, "mention"),
    ("no support channels", no_support_channels, {"discord.configuration"}, "answers nobody"),
    ("bot not in a guild", unknown_guild, {"discord.guild"}, "invite"),
    ("reviewer channel id wrong", unknown_reviewer_channel, {"discord.channel"}, "not found"),
    ("reviewer role missing", missing_discord_role, {"discord.roles"}, "Specialists"),
    ("slack token revoked", revoked_slack_token, {"slack.token"}, "invalid_auth"),
    ("slack scope missing", slack_scope_not_granted, {"slack.scopes"}, "reactions:read"),
    ("bot not in private reviewer channel", bot_not_in_reviewer_channel, {"slack.channels"}, "/invite"),
    ("bot not in support channel", bot_not_in_support_channel, {"slack.channels"}, "not_in_channel"),
    ("app-level token refused", app_token_refused, {"slack.connection"}, "app-level token"),
    ("HTTP mode without signing secret", http_mode_without_signing_secret, {"slack.connection"}, "Signing Secret"),
    ("reviewer user group wrong", unknown_usergroup, {"slack.reviewer_group"}, "S…"),
    ("model server down", model_server_down, {"model.reachable"}, "degraded"),
    ("model server needs an API key", model_server_wants_a_key, {"model.reachable"}, "OPENAI_API_KEY"),
    ("base model served under another name", wrong_base_model_name, {"model.base_model"}, "served-model-name"),
    ("runtime LoRA loading off", runtime_lora_off, {"model.lora"}, "VLLM_ALLOW_RUNTIME_LORA_UPDATING"),
    ("LoRA off", lora_off, {"model.lora"}, "--enable-lora"),
    ("live adapter not loaded", live_adapter_not_loaded, {"model.live_adapter"}, "not loaded"),
    ("migration pending", pending_migration, {"database.migrations"}, "llm4sweat db upgrade"),
    ("database readable by others", database_readable_by_others, {"database.permissions"}, "chmod 600"),
    ("disk nearly full", little_disk_space, {"disk.space"}, "free"),
    ("region without crisis resources", region_without_resources, {"pack.crisis_resources"}, "BR"),
]


@aio
@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
async def test_each_mistake_fails_its_check_with_a_fix(world, case: Case):
    _, breaks, expected, word = case
    report = await world.run(**await breaks(world))
    assert failed(report) == expected, report.text()
    for check in report.failed:
        assert check.fix and "fix: " + check.fix in report.text()
    shown = " ".join(f"{c.detail} {c.fix}" for c in report.failed)
    assert word in shown, shown


@aio
async def test_database_locked_by_another_writer_is_reported(world):
    holder = sqlite3.connect(world.tmp_path / "llm4sweat.db", isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")
    try:
        report = await world.run()
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    assert failed(report) == {"database.writable"}, report.text()
    assert "write lock" in report.named("database.writable")[0].detail
    assert (await world.run()).passed


@aio
async def test_passing_variants(world):
    """The other ways to be right: a mentionable moderator role instead of Mention Everyone; the
    API key the server wants; the live adapter loaded; no live adapter before the bot starts."""
    world.discord.set_role(world.discord.bot_role, permissions=invite_permissions(mention_everyone=False).value)
    world.discord.set_role(world.discord.moderator_role, mentionable=True)
    world.vllm.api_key = "vllm-key"
    live = await _register_live_adapter(world)
    world.vllm.loaded["v1@cafe"] = str(live)
    world.service_running = True
    report = await world.run(inference={"openai_api_key": "vllm-key"})
    assert report.passed, report.text()
    assert "mentionable" in report.named("discord.moderator_mention")[0].detail
    assert "v1 loaded as v1@cafe" in report.named("model.live_adapter")[0].detail

    world.vllm.loaded.clear()
    world.service_running = False  # before the first start the bot has not loaded it yet
    report = await world.run(inference={"openai_api_key": "vllm-key"})
    assert report.passed, report.text()


@aio
async def test_a_missing_database_is_fine_before_the_first_start(world, tmp_path):
    fresh = tmp_path / "fresh"
    report = await run_checks(load_settings(data_dir=fresh, inference={"backend": "fixed"}), min_free_bytes=1)
    assert report.passed, report.text()
    assert "created at the first start" in report.named("database.open")[0].detail
    assert not fresh.joinpath("llm4sweat.db").exists()  # the doctor creates nothing


def test_settings_check_fails_with_the_setting_named(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text('[discord]\ntoken = "in-a-file"\n', encoding="utf-8")
    cfg, check = check_settings(bad)
    assert cfg is None and not check.ok
    assert "[discord] token is a secret" in check.detail and check.fix
    good = tmp_path / "good.toml"
    good.write_text('[review]\nmode = "gated"\n', encoding="utf-8")
    cfg, check = check_settings(good)
    assert cfg is not None and cfg.review.mode == "gated" and check.ok


def test_the_documented_permissions_and_scopes_are_what_the_code_needs():
    """docs/discord.md's invite integer, the fake's bot role and the code agree; so do the Slack
    manifests, the fake's granted scopes and the code."""
    guide = (REPO / "docs" / "discord.md").read_text(encoding="utf-8")
    assert f"permissions={invite_permissions().value}" in guide or f"`{invite_permissions().value}`" in guide
    assert f"`{invite_permissions(mention_everyone=False).value}`" in guide
    assert DOCUMENTED_INVITE_PERMISSIONS == invite_permissions().value
    for manifest in ("slack-manifest.yaml", "slack-manifest-http.yaml"):
        scopes = yaml.safe_load((REPO / "deploy" / manifest).read_text(encoding="utf-8"))["oauth_config"]["scopes"]["bot"]
        assert sorted(scopes) == sorted(BOT_SCOPES) == sorted(MANIFEST_SCOPES), manifest


@aio
async def test_the_command_prints_marks_and_fixes_and_exits_non_zero(world, tmp_path):
    """``llm4sweat doctor`` as an operator runs it (a subprocess; Slack and vLLM fakes reached
    through the settings — discord.py cannot be pointed at a fake from outside the process)."""
    config = tmp_path / "llm4sweat.toml"
    config.write_text(
        f'data_dir = "{tmp_path}"\n[inference]\nbackend = "openai"\nbase_model = "base"\n'
        f'openai_base_url = "{world.vllm.url}"\n[slack]\nmode = "socket"\napi_base_url = "{world.slack.base_url}"\n'
        f'support_channel_ids = ["{SUPPORT}"]\nreviewer_channel_id = "{REVIEW}"\n', encoding="utf-8")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LLM4SWEAT_", "SLACK_"))}
    env.update(LLM4SWEAT_SLACK__BOT_TOKEN=BOT_TOKEN, LLM4SWEAT_SLACK__APP_TOKEN=APP_TOKEN, PYTHONPATH=str(REPO))

    async def doctor() -> tuple[int, str]:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "bot.cli", "--config", str(config), "doctor", "--min-free-gb", "0",
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT, env=env, cwd=tmp_path)
        out, _ = await asyncio.wait_for(proc.communicate(), 120)
        return proc.returncode, out.decode()

    world.slack.remove_bot(REVIEW, private=True)
    code, out = await doctor()
    assert code == 1, out
    assert re.search(r"^✗ slack\.channels C0REVIEW \(reviewer channel\): the bot is not in it", out, re.M), out
    assert re.search(r"^    fix: in Slack, open the channel and type /invite @", out, re.M), out
    assert re.search(r"^✓ model\.lora ", out, re.M) and BOT_TOKEN not in out

    world.slack.not_member.clear()
    code, out = await doctor()
    assert code == 0, out
    assert not re.search(r"^✗", out, re.M) and out.rstrip().endswith("0 ✗"), out


async def _register_live_adapter(w: World) -> Path:
    folder = w.tmp_path / "adapters" / "v1"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "adapter_config.json").write_text('{"r": 8, "peft_type": "LORA"}', encoding="utf-8")
    (folder / "adapter_model.safetensors").write_bytes(b"\0" * 16)
    db = await Database(w.tmp_path / "llm4sweat.db").open(migrate=False)
    try:
        await db.execute(
            "INSERT INTO adapters (version, path, base_model, status, created_at) VALUES ('v1', ?, 'base', 'live', 0)",
            (str(folder),))
    finally:
        await db.close()
    return folder


def test_a_missing_local_model_says_the_demo_does_not_need_it(tmp_path, monkeypatch):
    """A newcomer who ran `llm4sweat demo` and then `llm4sweat doctor` sees model.local fail; the
    fix says how to get the model and that only `llm4sweat run` needs it."""
    from bot.doctor.model_checks import _local_model

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))  # an empty cache
    monkeypatch.setenv("LLM4SWEAT_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("LLM4SWEAT_INFERENCE__BASE_MODEL", "example-org/not-downloaded-model")
    check = _local_model(load_settings(None))
    assert not check.ok and "not-downloaded-model is not on this machine" in check.detail
    assert "llm4sweat model download" in check.fix and "`llm4sweat demo` does not" in check.fix
