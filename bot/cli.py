"""The ``llm4sweat`` command: one console script with a subcommand per job."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any, Optional

import typer
from rich.console import Console
from rich.markup import escape  # messages may hold [section] names: shown, not read as markup
from rich.table import Table

from bot.settings import Settings, SettingsError, load_settings
from bot.storage import Database, StorageError

app = typer.Typer(help="LLM4Sweat: a reviewed AI support service for rare conditions.", no_args_is_help=True)
db_app = typer.Typer(help="The SQLite database.")
pack_app = typer.Typer(help="Condition packs.")
dataset_app = typer.Typer(help="The training dataset.")
adapters_app = typer.Typer(help="The adapter registry.")
reviews_app = typer.Typer(help="Expert reviews.")
model_app = typer.Typer(help="The base model.")
incidents_app = typer.Typer(help="Crisis cases (docs/safety.md): list, show, resolve.", no_args_is_help=True)
users_app = typer.Typer(help="Console accounts of reviewers and moderators (docs/access.md).", no_args_is_help=True)
app.add_typer(db_app, name="db")
app.add_typer(pack_app, name="pack")
app.add_typer(dataset_app, name="dataset")
app.add_typer(adapters_app, name="adapters")
app.add_typer(reviews_app, name="reviews")
app.add_typer(model_app, name="model")
app.add_typer(users_app, name="users")
app.add_typer(incidents_app, name="incidents")

console = Console(soft_wrap=True)
err = Console(stderr=True, soft_wrap=True)
log = logging.getLogger("llm4sweat")

_state: dict[str, Any] = {"config": None}


@app.callback()
def main(config: Optional[Path] = typer.Option(None, "--config", "-c", help="TOML settings file.")) -> None:
    _state["config"] = config
    # Everything llm4sweat writes (database, adapters, snapshots, exports, the control token)
    # is health data or a key: owner-only, whatever the shell's umask.
    os.umask(0o077)


def settings() -> Settings:
    """Load settings or stop with one clear line."""
    try:
        loaded = load_settings(_state["config"])
    except SettingsError as exc:
        err.print(f"[red]llm4sweat: invalid settings:[/red] {escape(str(exc))}", highlight=False)
        raise typer.Exit(2)
    from bot.logs import setup_logging

    setup_logging(loaded.log_level, loaded.secret_values())
    return loaded


def run_async(coro: Any) -> Any:
    """Run a coroutine; start-up problems end in one clear line, not a traceback."""
    from bot.inference.base import ModelUnavailable
    from bot.instance import AlreadyRunning
    from bot.listen import CannotListen
    from bot.local.auth import ConsoleRefused
    from bot.platform import PlatformStartError

    try:
        return asyncio.run(coro)
    except StorageError as exc:
        err.print(f"[red]llm4sweat: storage error:[/red] {escape(str(exc))}", highlight=False)
        raise typer.Exit(2)
    except PlatformStartError as exc:
        err.print(f"[red]llm4sweat: cannot connect:[/red] {escape(str(exc))}", highlight=False)
        raise typer.Exit(2)
    except ModelUnavailable as exc:
        err.print(f"[red]llm4sweat: model unavailable:[/red] {escape(str(exc))}", highlight=False)
        raise typer.Exit(2)
    except (ConsoleRefused, AlreadyRunning, CannotListen) as exc:
        err.print(f"[red]llm4sweat:[/red] {escape(str(exc))}", highlight=False)
        raise typer.Exit(2)


async def _open_db(cfg: Settings) -> Database:
    return await Database(cfg.db_path).open()


# ---------------------------------------------------------------------------- run


def resolve_model(cfg: Settings, demo: bool) -> tuple[str | None, bool]:
    """The model path to serve and whether it is the demo model.

    With the local backend, a base model that is neither a local directory nor already in the
    Hugging Face cache falls back to the offline demo model, loudly."""
    if cfg.inference.backend != "local":
        return None, False
    if not demo:
        if Path(cfg.inference.base_model).is_dir():
            return cfg.inference.base_model, False
        try:
            from huggingface_hub import snapshot_download

            return snapshot_download(cfg.inference.base_model, local_files_only=True), False
        except Exception:
            err.print(
                f"[yellow]The base model {cfg.inference.base_model} is not on this machine. "
                "Run `llm4sweat model download` to fetch it (needs internet and, for Llama, a Hugging Face token). "
                "Starting the offline DEMO model instead: it gives no medical advice.[/yellow]"
            )
    from pipeline.demo import build_demo_model
    from pipeline.packs import load_pack

    pack = load_pack(cfg.pack_path)
    with console.status("Building the offline demo model (first run only, one to two minutes)…"):
        path = build_demo_model(cfg.data_dir, pack.seed_conversations(labelled=True))
    return str(path), True


def demo_model(cfg: Settings, offline: bool) -> tuple[str | None, bool, str | None]:
    """What `llm4sweat demo` serves: (model path, is the offline demo model, general model name).

    Online, the small general model named in ``inference.demo_model`` (from the cache, or
    downloaded once with progress); without a network, or with ``--offline``, the offline demo
    model, said in one line. Another backend (vLLM) serves what it serves."""
    if cfg.inference.backend != "local":
        return None, False, None
    name = cfg.inference.demo_model
    if name and not offline:
        from bot import hub

        path = hub.cached(name)
        if path is None:
            console.print(f"Fetching {name}, a small general model (Apache-2.0, about 1 GB, once) so the demo "
                          "writes real sentences. `llm4sweat demo --offline` skips this.", highlight=False)
            try:
                path = hub.download(name)
            except hub.Offline as exc:
                err.print(f"[yellow]No connection to the Hugging Face Hub ({escape(str(exc))}): starting the offline DEMO model "
                          "instead (tiny, no medical advice).[/yellow]", highlight=False)
            except hub.HubError as exc:
                err.print(f"[yellow]Could not fetch {name}: {escape(str(exc))}. Starting the offline DEMO model instead (tiny, "
                          "no medical advice).[/yellow]", highlight=False)
        if path is not None:
            return str(path), False, name
    path, _ = resolve_model(cfg, demo=True)
    return path, True, None


async def _serve(cfg: Settings, demo: bool, host: str, port: int, console_enabled: bool,
                 offline: bool = False) -> None:
    from bot.instance import Instance
    from bot.local.platform import LocalPlatform
    from bot.service import Service

    # One service per data directory, held until this process ends: the command line finds it
    # here and sends it whatever changes the live adapter (bot/instance.py).
    instance = Instance(cfg.data_dir)
    try:
        await _serve_claimed(cfg, instance, demo, host, port, console_enabled, offline)
    finally:
        instance.release()


async def _serve_claimed(cfg: Settings, instance: Any, demo: bool, host: str, port: int, console_enabled: bool,
                         offline: bool) -> None:
    from bot.local.platform import LocalPlatform
    from bot.service import Service

    from bot.listen import CONSOLE_PORT_HOW, check_free

    # Refuse a wide binding or a port in use before minutes of model loading, not after. The
    # binding first: it is the settings' own fault, whatever else runs on this machine, and a
    # freed port would only lead to that refusal next.
    if console_enabled:
        from bot.local.auth import check_binding

        db = await _open_db(cfg)
        try:
            await check_binding(cfg, host, db)
        finally:
            await db.close()
    check_free(host, port, "the console" if console_enabled else "/healthz and /readyz", CONSOLE_PORT_HOW)
    if cfg.metrics.port:
        check_free(cfg.metrics.host, cfg.metrics.port, "metrics", "metrics.port (LLM4SWEAT_METRICS__PORT)")
    if demo:
        model_path, is_demo, general = demo_model(cfg, offline)
    else:
        (model_path, is_demo), general = resolve_model(cfg, demo), None
    service = Service(cfg, demo=is_demo, model_path=model_path, general_model=general)
    service.sole_instance = True  # this process holds the data directory's lock (bot/instance.py)
    service.add_platform(LocalPlatform())
    runners: list[Any] = []
    doctor: asyncio.Task[Any] | None = None
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await service.start()
    try:
        # Each chat platform connects in its own supervised task: one that cannot start is one
        # log line and a failed health state, and the console and the others keep running.
        from bot.supervisor import supervise

        if cfg.discord.token is not None:
            from bot.discord_platform import start_discord

            supervise(service, "discord", lambda health: start_discord(service, health=health))
        if cfg.slack.bot_token is not None:
            from bot.slack_platform import start_slack

            supervise(service, "slack", lambda health: start_slack(service, health))
        if console_enabled:
            from bot.local.web import start_console

            runner, url = await start_console(service, host, port)
            runners.append(runner)
            instance.set_url(url)  # where `llm4sweat adapters …` sends its commands
            label = " (DEMO model — not medical advice)" if is_demo else ""
            if general:
                label = f" ({general}: a small general model, not fine-tuned for {service.pack.title} yet)"
            console.print(f"[bold green]LLM4Sweat is running{label}.[/bold green] Open {url}")
            console.print(f"  patient chat {url}#patient · reviewer queue {url}#reviewer · moderator panel {url}#moderator")
            await _print_sign_in(service, cfg.local.public_url + "/" if cfg.local.public_url else url, demo)
        else:  # without the console, its address still answers /healthz and /readyz
            from bot.health_http import start_health_server

            runner, url = await start_health_server(service, host, port)
            runners.append(runner)
            console.print(f"  health checks at {url}/healthz and {url}/readyz", highlight=False)
        if cfg.metrics.port is not None:
            from bot.metrics import start_metrics_server

            runner, metrics_url = await start_metrics_server(service, cfg.metrics.host, cfg.metrics.port)
            runners.append(runner)
            console.print(f"  metrics for Prometheus at {metrics_url} (this machine only)", highlight=False)
        doctor = asyncio.create_task(_startup_doctor(service), name="startup-doctor")
        await stop.wait()
    finally:
        if doctor is not None:  # cancelled and awaited: its own database connection closes first
            doctor.cancel()
            await asyncio.gather(doctor, return_exceptions=True)
        for runner in reversed(runners):
            try:
                await runner.cleanup()
            except Exception:
                log.exception("shutting down %s failed", runner)
        await service.stop()


async def _print_sign_in(service: Any, url: str, demo: bool) -> None:
    """The demo prints one-time sign-in links (as Jupyter prints its token URL); `run` says how
    to make accounts when there are none."""
    from bot.access import accounts, sessions

    if demo:
        minutes = service.settings.local.login_link_minutes
        console.print(f"  Sign in (each link works once, for {minutes:g} minutes; a new demo start prints new ones):")
        for account in await accounts.ensure_demo_accounts(service.db):
            token = await sessions.create_link(service.db, account, minutes * 60)
            console.print(f"    {account.role:<9} {url}login?token={token}", highlight=False, soft_wrap=True)
    elif await accounts.count(service.db) == 0:
        console.print("  No reviewer or moderator accounts yet. Create one, then sign in at "
                      f"{url}login:\n    llm4sweat users add NAME --role moderator   (or --role reviewer)",
                      highlight=False)


async def _startup_doctor(service: Any) -> None:
    """The doctor's checks once the service is up (logged; the result shows in /status)."""
    from bot.doctor import startup_checks

    try:
        await startup_checks(service)
    except asyncio.CancelledError:
        raise
    except Exception:
        log.exception("the start-up checks failed to run")


@app.command()
def run(
    demo: bool = typer.Option(False, help="Serve the offline demo model."),
    host: Optional[str] = typer.Option(None, help="Console host (default from settings: 127.0.0.1)."),
    port: Optional[int] = typer.Option(None, help="Console port (default from settings: 8377)."),
    no_console: bool = typer.Option(False, "--no-console", help="Do not serve the local console."),
) -> None:
    """Run the service: the local console, plus Discord and Slack when their tokens are set."""
    cfg = settings()
    run_async(_serve(cfg, demo, host or cfg.local.host, port if port is not None else cfg.local.port, not no_console,
                     offline=True))


@app.command("demo")
def demo_cmd(
    host: Optional[str] = typer.Option(None, help="Console host (default from settings: 127.0.0.1)."),
    port: Optional[int] = typer.Option(None, help="Console port (default from settings: 8377)."),
    offline: bool = typer.Option(False, "--offline", help="Use the offline demo model; download nothing."),
) -> None:
    """Try the whole service on a laptop: a small general model when online (downloaded once), else the
    offline demo model; demo accounts with one-time sign-in links. No GPU."""
    cfg = settings()
    try:
        run_async(_serve(cfg, True, host or cfg.local.host, port if port is not None else cfg.local.port, True,
                         offline=offline))
    except KeyboardInterrupt:
        err.print("Stopped. Files downloaded so far are kept; `llm4sweat demo` continues from there.")
        raise typer.Exit(130)


@app.command("serve")
def serve_cmd(
    host: Optional[str] = typer.Option(None, help="Address vLLM listens on (default from settings: 127.0.0.1)."),
    port: Optional[int] = typer.Option(None, help="vLLM port (default from settings: 8000)."),
    no_adapter: bool = typer.Option(False, "--no-adapter", help="Do not load the live adapter from the registry."),
    log_file: Optional[Path] = typer.Option(None, help="Write vLLM's output to this file instead of the terminal."),
) -> None:
    """Start a vLLM OpenAI-compatible server for the base model (LoRA on, live adapter loaded) and keep it running."""
    cfg = settings()
    from bot.vllm_server import serve_main

    code = serve_main(
        cfg, host=host, port=port, load_adapter=not no_adapter, log_path=log_file,
        say=lambda text: console.print(text, highlight=False, markup=False),
        warn=lambda text: err.print(text, highlight=False, markup=False, style="red"),
    )
    raise typer.Exit(code)


# ---------------------------------------------------------------------------- doctor


@app.command("doctor")
def doctor_cmd(
    as_json: bool = typer.Option(False, "--json", help="Print the checks as JSON."),
    min_free_gb: float = typer.Option(2.0, "--min-free-gb", min=0, help="Free space the data directory needs."),
) -> None:
    """Check everything a deployment needs (settings, database, disk, pack, Discord, Slack, model
    servers) and print ✓/✗ with the fix for each ✗; exits 1 when any check fails."""
    from bot.doctor import Report, run_checks
    from bot.doctor.local_checks import check_settings

    cfg, loaded = check_settings(_state["config"])
    report = Report([loaded])
    if cfg is not None:
        from bot.logs import setup_logging

        setup_logging("ERROR", cfg.secret_values())
        from bot.instance import running as instance_running

        running = instance_running(cfg.data_dir) is not None or asyncio.run(_service_running(cfg))
        checked = asyncio.run(run_checks(cfg, service_running=running, min_free_bytes=int(min_free_gb * 1024**3)))
        report.checks += checked.checks
    if as_json:
        console.print_json(json.dumps(report.as_json()))
    else:
        console.print(report.text(), highlight=False, markup=False)
        console.print(f"{report.summary()}" + ("" if report.passed else " — fix the ✗ lines above"),
                      highlight=False, markup=False)
    raise typer.Exit(0 if report.passed else 1)


async def _service_running(cfg: Settings) -> bool:
    """Does a service answer on this machine's console port (its /healthz)?"""
    import aiohttp

    host = "127.0.0.1" if cfg.local.host in ("0.0.0.0", "", "::") else cfg.local.host
    try:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=1.5)) as session:
            async with session.get(f"http://{host}:{cfg.local.port}/healthz") as resp:
                return resp.status == 200
    except (aiohttp.ClientError, asyncio.TimeoutError, OSError):
        return False


# ---------------------------------------------------------------------------- db, settings, model


@db_app.command("upgrade")
def db_upgrade() -> None:
    """Apply pending database migrations."""
    cfg = settings()

    async def go() -> list[Any]:
        db = Database(cfg.db_path)
        await db.open(migrate=False)
        try:
            return await db.upgrade()
        finally:
            await db.close()

    applied = run_async(go())
    if applied:
        for m in applied:
            console.print(f"applied {m.package}/{m.version:03d} {m.name}")
    else:
        console.print(f"{cfg.db_path}: up to date")


@db_app.command("backup")
def db_backup(
    file: Path = typer.Argument(..., help="Where to write the copy (a new file; owner-only)."),
    force: bool = typer.Option(False, "--force", help="Replace FILE if it exists."),
) -> None:
    """A consistent copy of the database (SQLite's online backup), also while the service runs."""
    from bot.backup import BackupError, backup

    cfg = settings()
    started = time.monotonic()
    try:
        summary = backup(cfg.db_path, file, overwrite=force)
    except BackupError as exc:
        err.print(f"llm4sweat: {exc}", highlight=False, markup=False)
        raise typer.Exit(1)
    console.print(f"Backed up {cfg.db_path} to {file} ({summary.text()}) in {time.monotonic() - started:.1f} s. "
                  "Back up the adapters folder too; keep both encrypted (patients' messages).",
                  highlight=False, markup=False)


@db_app.command("restore")
def db_restore(file: Path = typer.Argument(..., help="A backup made by `llm4sweat db backup`.")) -> None:
    """Put a backup in place of the database (refused while the service runs; the current
    database is kept beside it)."""
    from bot.backup import BackupError, restore
    from bot.instance import AlreadyRunning, Instance

    cfg = settings()
    try:
        instance = Instance(cfg.data_dir)  # no service may start while the file is swapped
    except AlreadyRunning as exc:
        err.print(f"llm4sweat: not restored: {exc}", highlight=False, markup=False)
        raise typer.Exit(1)
    try:
        summary, kept = restore(file, cfg.db_path)
    except BackupError as exc:
        err.print(f"llm4sweat: not restored: {exc}", highlight=False, markup=False)
        raise typer.Exit(1)
    finally:
        instance.release()
    console.print(f"Restored {file} into {cfg.db_path} ({summary.text()})."
                  + (f" The previous database is kept as {kept}." if kept else ""), highlight=False, markup=False)


# ---------------------------------------------------------------------------- users


def _read_password(password_stdin: bool) -> str:
    """From standard input (one line) or a hidden prompt asked twice; never a command-line argument,
    which other local users can read in the process list and which shells keep in history."""
    if password_stdin:
        line = sys.stdin.readline()
        return line[:-1] if line.endswith("\n") else line
    return typer.prompt("Password", hide_input=True, confirmation_prompt=True)


def _accounts_call(fn: Any, *args: Any) -> Any:
    cfg = settings()
    from bot.access.accounts import AccountError

    async def go() -> Any:
        db = await _open_db(cfg)
        try:
            return await fn(db, *args)
        finally:
            await db.close()

    try:
        return run_async(go())
    except AccountError as exc:
        err.print(f"[red]llm4sweat users:[/red] {escape(str(exc))}", highlight=False)
        raise typer.Exit(2)


@users_app.command("add")
def users_add(
    name: str = typer.Argument(..., help="Account name (letters, digits, '.', '_', '-')."),
    role: str = typer.Option(..., "--role", help="reviewer (reviews replies) or moderator (also runs commands)."),
    password_stdin: bool = typer.Option(False, "--password-stdin", help="Read the password from standard input."),
) -> None:
    """Create a console account; the password is asked for (or read from standard input)."""
    from bot.access import accounts

    try:
        name, role = accounts.check_name(name), accounts.check_role(role)
        password = accounts.check_password(_read_password(password_stdin))
    except accounts.AccountError as exc:
        err.print(f"[red]llm4sweat users:[/red] {escape(str(exc))}", highlight=False)
        raise typer.Exit(2)
    account = _accounts_call(accounts.add, name, role, password)
    console.print(f"account {account.name} ({account.role}) created; sign in at the console's /login page")


@users_app.command("list")
def users_list() -> None:
    """Every console account with its role."""
    from datetime import datetime

    from bot.access import accounts

    rows = _accounts_call(accounts.all_accounts)
    if not rows:
        console.print("no accounts yet: llm4sweat users add NAME --role moderator")
        return
    table = Table("name", "role", "created")
    for account in rows:
        table.add_row(account.name, account.role, datetime.fromtimestamp(account.created_at).strftime("%Y-%m-%d %H:%M"))
    console.print(table)


@users_app.command("remove")
def users_remove(name: str = typer.Argument(..., help="The account to remove.")) -> None:
    """Remove an account; its sessions end at once (its past decisions stay in the audit trail)."""
    from bot.access import accounts

    if not _accounts_call(accounts.remove, name):
        err.print(f"[red]llm4sweat users:[/red] no account named {name!r}", highlight=False)
        raise typer.Exit(1)
    console.print(f"account {name} removed; its sessions have ended")


@users_app.command("passwd")
def users_passwd(
    name: str = typer.Argument(..., help="The account."),
    password_stdin: bool = typer.Option(False, "--password-stdin", help="Read the password from standard input."),
) -> None:
    """Set a new password; every session of the account ends."""
    from bot.access import accounts

    try:
        password = accounts.check_password(_read_password(password_stdin))
    except accounts.AccountError as exc:
        err.print(f"[red]llm4sweat users:[/red] {escape(str(exc))}", highlight=False)
        raise typer.Exit(2)
    if not _accounts_call(accounts.set_password, name, password):
        err.print(f"[red]llm4sweat users:[/red] no account named {name!r}", highlight=False)
        raise typer.Exit(1)
    console.print(f"password of {name} changed; its sessions have ended")


@app.command("settings")
def show_settings() -> None:
    """Print the effective settings (secrets shown only as set / not set)."""
    console.print_json(json.dumps(settings().redacted(), default=str))


@model_app.command("download")
def model_download(
    model: Optional[str] = typer.Argument(None, help="A Hugging Face model id (default: inference.base_model)."),
) -> None:
    """Download a model into the Hugging Face cache, with progress; a dropped connection is resumed.
    Gated models (Llama) need their licence accepted on the model page and HF_TOKEN set."""
    cfg = settings()
    from bot import hub

    name = model or cfg.inference.base_model
    try:
        path = hub.download(name)
    except hub.HubError as exc:
        err.print(f"[red]Could not download {name}:[/red] {escape(str(exc))}", highlight=False)
        raise typer.Exit(1)
    except KeyboardInterrupt:
        err.print("Stopped. Files downloaded so far are kept; run the same command to continue.")
        raise typer.Exit(130)
    console.print(f"{name} is in {path}", highlight=False)


# ---------------------------------------------------------------------------- pack, dataset


@pack_app.command("check")
def pack_check(path: Path = typer.Argument(..., help="The pack folder.")) -> None:
    """Validate a condition pack."""
    from pipeline.packs import pack_check_report

    ok, report = pack_check_report(path)
    console.print(report, highlight=False)
    raise typer.Exit(0 if ok else 1)


@dataset_app.command("stats")
def dataset_stats(as_json: bool = typer.Option(False, "--json", help="Print the counts as JSON.")) -> None:
    """Examples per task and source, and per site, severity, age band and primary/secondary."""
    cfg = settings()
    from pipeline import dataset

    async def go() -> dict[str, Any]:
        db = await _open_db(cfg)
        try:
            return await dataset.stats(db, dataset.pack_or_none(cfg.pack_path))
        finally:
            await db.close()

    stats = run_async(go())
    if as_json:
        console.print_json(json.dumps(stats))
        return
    for table in dataset.stats_tables(stats):
        console.print(table)


@dataset_app.command("export")
def dataset_export(out: Path = typer.Argument(..., help="JSONL file to write.")) -> None:
    """Export the dataset as chat-format JSONL (the `messages` format of Hugging Face datasets,
    TRL and axolotl), without evaluation questions; prints the snapshot hash."""
    cfg = settings()
    from pipeline import dataset

    async def go() -> Any:
        db = await _open_db(cfg)
        try:
            return await dataset.export(db, out, dataset.pack_or_none(cfg.pack_path),
                                        min_accuracy=cfg.review.min_accuracy_for_training)
        finally:
            await db.close()

    result = run_async(go())
    console.print(f"wrote {result.count} examples to {out}; snapshot {result.hash}")
    if result.excluded:
        console.print(f"left out {len(result.excluded)} example(s) that contain evaluation questions or held-out "
                      "safety cases "
                      f"(ids {', '.join(map(str, result.excluded[:20]))})")
    if result.low_accuracy:
        console.print(f"left out {len(result.low_accuracy)} approval(s) whose accuracy score is below "
                      f"{cfg.review.min_accuracy_for_training} (ids {', '.join(map(str, result.low_accuracy[:20]))})")


@app.command("generate")
def generate_cmd(
    count: int = typer.Option(..., "--count", "-n", min=1, help="Vignettes in the plan; a re-run skips those already stored."),
    concurrency: Optional[int] = typer.Option(None, "--concurrency", "-j", min=1, max=256,
                                              help="Requests at once (default: generation.concurrency)."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Show the plan's balance without calling the API."),
) -> None:
    """Generate synthetic vignettes through an OpenAI-compatible API (settings generation.base_url, generation.model;
    key LLM4SWEAT_GENERATION__API_KEY)."""
    cfg = settings()
    from pipeline.generate import run_cli

    try:
        code = run_async(run_cli(cfg, count, concurrency, dry_run, console))
    except KeyboardInterrupt:
        err.print("interrupted: every vignette stored so far is kept; run the same command again to continue.")
        raise typer.Exit(130)
    raise typer.Exit(code)


# ---------------------------------------------------------------------------- adapters, reviews


@adapters_app.command("list")
def adapters_list() -> None:
    """Every adapter version with its status (from the running service when there is one)."""
    from pipeline import loop_cli

    listed = loop_cli.list_adapters(settings())
    if listed.problem is not None:
        err.print(f"llm4sweat: {listed.problem}", highlight=False, markup=False)
        raise typer.Exit(1)
    from bot.text import local_time

    table = Table("version", "status", "base model", "overall accuracy", "created", "last made live")
    for row in listed.rows:
        acc = (row["evaluation"] or {}).get("overall", {}).get("accuracy") if row["evaluation"] else None
        status = row["status"] + (" (serving)" if listed.service is not None and row["version"] == listed.serving else "")
        table.add_row(row["version"], status, row["base_model"], f"{acc:.3f}" if acc is not None else "-",
                      local_time(row["created_at"]), local_time(row.get("promoted_at")))
    console.print(table)
    if listed.service is not None:
        console.print(f"The running service ({listed.service.describe()}) serves {listed.serving or 'the base model'}.",
                      highlight=False, markup=False)
    else:
        console.print("No service is running: the live adapter is loaded when it next starts.",
                      highlight=False, markup=False)


@adapters_app.command("promote")
def adapters_promote(
    version: str = typer.Argument(..., help="The adapter version, e.g. v3."),
    force: bool = typer.Option(False, "--force", help="Skip the promotion gate (the adapter must still load)."),
) -> None:
    """Make VERSION live if it passes the promotion gate (hot swap when the service runs)."""
    from pipeline import loop_cli

    raise typer.Exit(_model_loop(loop_cli.promote, settings(), console, version, force=force))


@adapters_app.command("rollback")
def adapters_rollback(
    version: Optional[str] = typer.Argument(None, help="A version to return to (default: the previous live one)."),
) -> None:
    """Return to the previously live adapter (hot swap when the service runs)."""
    from pipeline import loop_cli

    raise typer.Exit(_model_loop(loop_cli.rollback, settings(), console, version))


@app.command("train")
def train_cmd(
    dataset_file: Optional[Path] = typer.Option(None, "--dataset", help="Chat JSONL to train on (default: a snapshot of the database)."),
    out: Optional[Path] = typer.Option(None, "--out", help="Adapter folder (default: the adapters folder / next version)."),
    base_model: Optional[str] = typer.Option(None, "--base-model", help="Model folder (default: the one `run` serves)."),
    register: bool = typer.Option(True, "--register/--no-register", help="Record the adapter as a candidate."),
    max_steps: Optional[int] = typer.Option(None, "--max-steps", help="Stop after this many optimizer steps."),
    val_fraction: float = typer.Option(0.1, "--val-fraction", min=0.0, max=0.5, help="Held-out validation share."),
) -> None:
    """LoRA fine-tuning on the dataset (assistant turns only), with a validation split and early stopping."""
    from pipeline import loop_cli

    raise typer.Exit(_model_loop(loop_cli.train, settings(), console, base_model=base_model, dataset_file=dataset_file,
                                 out=out, register=register, max_steps=max_steps, val_fraction=val_fraction))


eval_app = typer.Typer(help="Multiple-choice evaluation with controls; lm-evaluation-harness export.",
                       invoke_without_command=True)
app.add_typer(eval_app, name="eval")


@eval_app.callback()
def eval_cmd(
    ctx: typer.Context,
    adapter: list[str] = typer.Option([], "--adapter", "-a", help="A registry version or adapter folder; repeatable."),
    base_model: Optional[str] = typer.Option(None, "--base-model", help="Model folder (default: the one `run` serves)."),
    include_base: bool = typer.Option(True, "--base/--no-base", help="Evaluate the base model too (the baseline)."),
    limit: Optional[int] = typer.Option(None, "--limit", min=1, help="At most this many questions per task and split."),
    safety: bool = typer.Option(True, "--safety/--no-safety", help="Run the safety check (crisis routing, held-out replies)."),
    out: Optional[Path] = typer.Option(None, "--out", help="Folder for evaluation.json and evaluation.png."),
    save: bool = typer.Option(True, "--save/--no-save", help="Store results of registry versions in the registry."),
    safety_set: list[Path] = typer.Option([], "--safety-set", help="JSONL file or folder of labelled messages "
                                          "(text + label crisis|benign|red_flag|crisis_adjacent) for the safety "
                                          "check; repeatable."),
    open_book: bool = typer.Option(False, "--open-book", help="Put the pack's guidance.md in every prompt "
                                   "(closed book by default; the output says which)."),
    controls: bool = typer.Option(True, "--controls/--no-controls", help="Score the random-untrained model and "
                                  "the question-removed control (length controls are always printed)."),
) -> None:
    """Accuracy per task and split with 95% CIs: the project's score, acc, acc_norm and lettered A-D, beside
    the controls (always-longest/shortest, random-untrained model, question removed) and the experts'
    rubric scores; table, JSON and PNG."""
    if ctx.invoked_subcommand is not None:
        return
    from pipeline import loop_cli

    raise typer.Exit(_model_loop(loop_cli.evaluate, settings(), console, base_model=base_model, adapters=adapter,
                                 include_base=include_base, limit=limit, safety=safety, out=out, save=save,
                                 safety_sets=safety_set, open_book=open_book, controls=controls))


@eval_app.command("export-lm-eval")
def eval_export_lm_eval(
    out: Path = typer.Argument(..., help="Folder for the task YAML files and their JSONL data."),
    base_model: Optional[str] = typer.Option(None, "--base-model", help="Model folder whose chat template renders "
                                             "the prompts (default: the one `run` serves)."),
    open_book: bool = typer.Option(False, "--open-book", help="Put the pack's guidance.md in every prompt."),
) -> None:
    """Write the pack's questions as lm-evaluation-harness tasks (one per split and format):
    lm_eval --model hf --model_args pretrained=MODEL --tasks <pack>_test --include_path OUT."""
    from pipeline import loop_cli

    raise typer.Exit(_model_loop(loop_cli.export_lm_eval, settings(), console, out=out, base_model=base_model,
                                 open_book=open_book))


@app.command("retrain")
def retrain_cmd(
    wait: bool = typer.Option(True, "--wait/--no-wait", help="Follow the job in the running service to its end."),
    here: bool = typer.Option(False, "--here", help="Run the job in this process, not in the running service (refused while one runs on this data directory)."),
    force: bool = typer.Option(False, "--force", help="Train even when no reviewed example is new since the live "
                               "adapter was trained."),
) -> None:
    """Retrain now: snapshot, train, evaluate, gate, and go live if better (in the running service when there is one)."""
    from pipeline import loop_cli

    raise typer.Exit(_model_loop(loop_cli.retrain, settings(), console, wait=wait, here=here, force=force))


def _model_loop(command: Any, *args: Any, **kwargs: Any) -> int:
    """Run a model-loop command; expected failures end with one clear line."""
    from pipeline.packs import PackError
    from pipeline.retrain import RetrainError

    try:
        return int(command(*args, **kwargs) or 0)
    except (StorageError, RetrainError, PackError, FileExistsError, ValueError) as exc:
        err.print(f"[red]llm4sweat:[/red] {escape(str(exc))}", highlight=False)
        return 2


# ---------------------------------------------------------------------------- crisis cases


def _operator() -> Any:
    """Whoever runs the command line on the server acts as a moderator (shell access is the operator's)."""
    import getpass

    from reviewers.models import MODERATOR_ROLE, Actor

    return Actor("cli", getpass.getuser(), getpass.getuser(), frozenset({MODERATOR_ROLE}))


def _cases(work: Any) -> Any:
    cfg = settings()

    async def go() -> Any:
        db = await _open_db(cfg)
        try:
            return await work(db)
        finally:
            await db.close()

    return run_async(go())


@incidents_app.command("list")
def incidents_list(
    everything: bool = typer.Option(False, "--all", help="Resolved cases too (the 50 newest)."),
    as_json: bool = typer.Option(False, "--json", help="Print the cases as JSON."),
) -> None:
    """Open crisis cases, oldest first: age, conversation, who has taken each over."""
    from bot import incidents

    cases = _cases(lambda db: incidents.all_cases(db) if everything else incidents.open_cases(db))
    if as_json:
        console.print_json(json.dumps(cases))
        return
    if not cases:
        console.print("No open crisis case." if not everything else "No crisis case yet.")
        return
    for case in cases:
        console.print(incidents.case_line(case), highlight=False)


@incidents_app.command("show")
def incidents_show(case_id: int = typer.Argument(..., help="The case number (#ID in alerts).")) -> None:
    """One crisis case: delivery of the resources, who has it, the conversation, the outcome."""
    from bot import incidents

    try:
        case = _cases(lambda db: incidents.get_case(db, case_id))
    except incidents.CaseError as exc:
        err.print(f"[red]llm4sweat:[/red] {escape(str(exc))}", highlight=False)
        raise typer.Exit(1)
    console.print(incidents.case_text(case), highlight=False, markup=False)


@incidents_app.command("resolve")
def incidents_resolve(
    case_id: int = typer.Argument(..., help="The case number (#ID in alerts)."),
    note: str = typer.Option(..., "--note", help="How the case ended (stored with who and when)."),
) -> None:
    """Resolve a crisis case: records who, when and the outcome note, and releases the conversation
    (the assistant answers the patient again). The running service sees it at once (the database)."""
    from bot import incidents

    try:
        case = _cases(lambda db: incidents.resolve_case(db, case_id, _operator(), note))
    except incidents.CaseError as exc:
        err.print(f"[red]llm4sweat:[/red] {escape(str(exc))}", highlight=False)
        raise typer.Exit(1)
    console.print(f"Resolved crisis case #{case_id}: {case['outcome_note']}", highlight=False, markup=False)


@reviews_app.command("agreement")
def reviews_agreement(as_json: bool = typer.Option(False, "--json", help="Print the figures as JSON.")) -> None:
    """Agreement per rubric axis: reviewers with each other (Cohen's kappa, quadratic-weighted for
    scores, with a bootstrap 95% CI; Fleiss' kappa) and the LLM judge with the reviewers."""
    cfg = settings()
    from reviewers.agreement import agreement_report

    async def go() -> dict[str, Any]:
        db = await _open_db(cfg)
        try:
            return await agreement_report(db)
        finally:
            await db.close()

    report = run_async(go())
    if as_json:
        console.print_json(json.dumps(report))
        return
    for table in agreement_tables(report):
        console.print(table)


def agreement_tables(report: dict[str, Any]) -> list[Table]:
    """The agreement report as two tables: reviewers with each other, the judge with the reviewers."""

    def fmt(value: Any, pattern: str = "{:.3f}") -> str:
        return "-" if value is None else pattern.format(value)

    def ci(figures: dict[str, Any]) -> str:
        return "-" if not figures["ci95"] else f"{figures['ci95'][0]:.3f} to {figures['ci95'][1]:.3f}"

    people = Table("criterion", "n", "exact agreement", "Cohen's kappa", "95% CI", "Fleiss' kappa",
                   title="Reviewers with each other (items with two or more reviewers; kappa quadratic-weighted "
                         "for scores, unweighted for the decision)")
    for name, f in report["reviewers"].items():
        people.add_row(name, str(f["n"]), fmt(f["exact"], "{:.0%}"), fmt(f["kappa"]), ci(f), fmt(f["fleiss_kappa"]))
    judge = Table("criterion", "n", "exact agreement", "weighted kappa", "95% CI",
                  title="The LLM judge with the reviewers (judge's score vs the reviewers' median per item)")
    for name, f in report["judge"].items():
        judge.add_row(name, str(f["n"]), fmt(f["exact"], "{:.0%}"), fmt(f["kappa"]), ci(f))
    return [people, judge]


# ---------------------------------------------------------------------------- triage


@app.command("triage")
def triage_cmd(
    path: Optional[Path] = typer.Argument(
        None, help="Messages: one per line, or JSONL with a `text` field. Omit or '-' for standard input."
    ),
    score: bool = typer.Option(False, "--score", help="Labelled input: print recall/precision to stderr at the end."),
    show_text: bool = typer.Option(False, "--show-text", help="Echo each message's text in its JSON line."),
    remote: bool = typer.Option(
        False, "--remote", help="Also ask the remote safety layers the settings configure (Llama Guard, OpenAI moderation)."
    ),
) -> None:
    """Triage messages as the bot would (crisis, red flags, out of scope, injection, action): one JSON line each.

    Without --remote: the offline layers only (rules and the learned model), as the bot runs with
    no remote layer configured."""
    from bot.safety.detector import crisis_model
    from bot.safety.remote import build_layers
    from bot.safety.scoring import Score, run_triage
    from pipeline.packs import load_pack

    cfg = settings()
    pack = load_pack(cfg.pack_path)
    crisis_model(pack, cache_dir=cfg.data_dir / "cache")
    options: dict = {
        "reply_languages": cfg.safety.reply_languages,
        "threshold": cfg.safety.crisis_threshold,
        "possible_threshold": cfg.safety.possible_crisis_threshold,
    }
    if remote:
        options["remote"] = build_layers(cfg.safety)
        options["deadline_s"] = cfg.safety.remote_deadline_s
        if not options["remote"]:
            err.print("[yellow]llm4sweat triage --remote: no remote safety layer is configured; offline only[/yellow]")
    scored = Score() if score else None
    if path is None or str(path) == "-":
        run_triage(sys.stdin, pack, score=scored, show_text=show_text, **options)
    else:
        if not path.is_file():
            err.print(f"[red]llm4sweat triage: no file at {path}[/red]", highlight=False)
            raise typer.Exit(2)
        with open(path, encoding="utf-8", errors="replace") as fh:
            run_triage(fh, pack, score=scored, show_text=show_text, **options)
    if scored is not None:
        print(scored.summary(), file=sys.stderr)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(app())
