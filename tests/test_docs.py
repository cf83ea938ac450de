"""The README and the guides name commands, flags and settings; each must exist.

A newcomer copies what the README says. A renamed flag or a setting that was never added fails
only on their machine, so this walks the documents and checks every name against the real CLI
(typer's click tree) and the real settings model."""
from __future__ import annotations

import re
from pathlib import Path

from typing import Any

import pytest
import typer.main
from pydantic import BaseModel

from bot.cli import app
from bot.settings import ENV_PREFIX, Settings

ROOT = Path(__file__).resolve().parent.parent
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")), ROOT / "deploy" / "README.md",
        ROOT / "pipeline" / "packs" / "README.md", ROOT / "deploy" / "llm4sweat.example.toml",
        ROOT / "deploy" / "env.example"]


def _lines() -> list[tuple[str, int, str]]:
    return [(str(p.relative_to(ROOT)), n, line) for p in DOCS
            for n, line in enumerate(p.read_text(encoding="utf-8").splitlines(), 1)]


def _setting_names(model: type[BaseModel], prefix: str = "") -> set[str]:
    names: set[str] = set()
    for name, field in model.model_fields.items():
        names.add(prefix + name)
        inner = field.annotation
        if isinstance(inner, type) and issubclass(inner, BaseModel):
            names |= _setting_names(inner, prefix + name + ".")
    return names


SETTINGS = _setting_names(Settings)
SECTIONS = {name for name in SETTINGS if "." not in name and f"{name}." in "|".join(SETTINGS)}
# Doctor check names look like settings (`slack.token`); they are what `llm4sweat doctor` prints.
DOCTOR_CHECKS = {m for path in (ROOT / "bot" / "doctor").glob("*.py")
                 for m in re.findall(r'"([a-z_]+\.[a-z_.]+)"', path.read_text(encoding="utf-8"))}
# Variables of deploy/compose.yaml itself (interpolated there, never read by the settings).
COMPOSE_VARS = set(re.findall(r"\$\{(" + ENV_PREFIX + r"[A-Z0-9_]+)", (ROOT / "deploy" / "compose.yaml").read_text()))


def _commands() -> list[tuple[str, int, list[str]]]:
    """Every `llm4sweat …` in inline code or a shell line, as argument lists."""
    found = []
    for where, n, line in _lines():
        for snippet in re.findall(r"`(llm4sweat [^`]+)`", line) or re.findall(r"(?:^|\s)(llm4sweat (?:(?:-c|--config) \S+ )?[a-z][^#|&;`]*)", line):
            words = snippet.replace("\\|", "|").split()
            found.append((where, n, words[1:]))
    return found


def _resolve(root: Any, words: list[str]) -> tuple[Any, list[str], list[str]]:
    """The deepest command the words name, the words that name it, and the rest."""
    command = root  # typer's click tree (typer 0.29 vendors click: duck-typed)
    path, rest = [], list(words)
    if rest[:1] in (["-c"], ["--config"]):  # the one option before the command
        rest = rest[2:]
    while rest and rest[0] in getattr(command, "commands", {}):
        path.append(rest[0])
        command = command.commands[rest.pop(0)]
    return command, path, rest


def test_every_documented_command_and_flag_exists() -> None:
    root = typer.main.get_command(app)
    wrong = []
    for where, n, words in _commands():
        shown = f"{where}:{n}: `llm4sweat {' '.join(words)}`"
        command, path, rest = _resolve(root, words)
        if not path:
            wrong.append(f"{shown}: no such command")
            continue
        if getattr(command, "commands", None) and rest and rest[0].isidentifier():
            wrong.append(f"{shown}: `llm4sweat {' '.join(path)}` has no command {rest[0]!r}")
        flags = {opt for param in command.params for opt in (*param.opts, *param.secondary_opts)}
        for word in rest:
            flag = word.strip("[]").split("=")[0]
            if flag.startswith("--") and flag not in flags:
                wrong.append(f"{shown}: no option {flag} (it has {', '.join(sorted(flags))})")
    assert not wrong, "\n".join(wrong)


def test_every_documented_setting_exists() -> None:
    wrong = []
    dotted = re.compile(r"`((?:" + "|".join(sorted(SECTIONS)) + r")\.[a-z_][a-z0-9_.]*)`")
    env = re.compile(ENV_PREFIX + r"[A-Z0-9_]*[A-Z0-9]")
    for where, n, line in _lines():
        for name in dotted.findall(line):
            if name not in SETTINGS and name not in DOCTOR_CHECKS:
                wrong.append(f"{where}:{n}: `{name}` is not a setting")
        for var in env.findall(line):
            if var in COMPOSE_VARS or var == ENV_PREFIX + "CONFIG":
                continue
            name = var[len(ENV_PREFIX):].lower().replace("__", ".")
            if name not in SETTINGS:
                wrong.append(f"{where}:{n}: {var} is not a setting")
    assert not wrong, "\n".join(wrong)


def test_every_slash_command_is_in_its_platform_guide() -> None:
    """A command the bot registers (Discord) or the manifest declares (Slack) that the guide
    does not name is one nobody finds; /case and /sweat-case were such."""
    import discord
    import yaml
    from discord import app_commands

    from bot.discord_platform.platform import _add_commands

    tree = app_commands.CommandTree(discord.Client(intents=discord.Intents.none()))
    _add_commands(tree, None)  # type: ignore[arg-type]  # the handlers are only registered, never run
    guide = (ROOT / "docs" / "discord.md").read_text(encoding="utf-8")
    missing = [f"/{c.name}" for c in tree.get_commands() if f"`/{c.name}" not in guide]
    for name in ("slack-manifest.yaml", "slack-manifest-http.yaml"):
        manifest = yaml.safe_load((ROOT / "deploy" / name).read_text(encoding="utf-8"))
        guide = (ROOT / "docs" / "slack.md").read_text(encoding="utf-8")
        missing += [f"{name}: {c['command']}" for c in manifest["features"]["slash_commands"]
                    if f"`{c['command']}" not in guide]
    assert not missing, f"slash commands the guides do not name: {missing}"


def test_every_benchmark_is_named_in_the_readme() -> None:
    """The README lists the scripts that print measured figures; a new one is listed too."""
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    missing = [p.name for p in sorted((ROOT / "bench").glob("bench_*.py")) if p.name not in readme]
    assert not missing, f"bench scripts the README does not name: {missing}"


@pytest.mark.parametrize("section,guide", [("discord", "docs/discord.md"), ("slack", "docs/slack.md"),
                                           ("judge", "docs/judge.md")])
def test_every_setting_of_a_section_is_in_its_guide(section: str, guide: str) -> None:
    """The guide's settings table is where an operator looks; a new setting goes there too."""
    model = Settings.model_fields[section].annotation
    assert isinstance(model, type) and issubclass(model, BaseModel)
    text = (ROOT / guide).read_text(encoding="utf-8")
    env = f"{ENV_PREFIX}{section.upper()}__"
    missing = [name for name in model.model_fields if f"`{name}`" not in text and f"{env}{name.upper()}" not in text]
    assert not missing, f"{guide} does not name these {section} settings: {missing}"
