"""The model-loop subcommands of ``llm4sweat``: train, eval, retrain, adapters promote/rollback.

``bot/cli.py`` holds thin typer wrappers; the work is here so it can be tested directly.

The running service is the one source of truth for the live adapter. While ``llm4sweat run``
holds the data directory (bot/instance.py), ``retrain``, ``adapters promote``, ``adapters
rollback`` and ``adapters list`` go through its control API (the console's moderator routes
with the control token), so the running bot does the work and hot-swaps the adapter without a
restart; if it cannot be reached they change nothing. ``retrain --here`` refuses while it runs.
When nothing runs they work on the database directly; a promoted or rolled-back adapter is
then loaded when the service next starts.
"""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, Progress, TaskProgressColumn, TextColumn, TimeElapsedColumn

from bot.settings import Settings
from bot.storage import Database
from pipeline import evaluate as ev
from pipeline import dataset, jobs, registry
from pipeline import retrain as rt


def _progress(console: Console) -> Progress:
    return Progress(TextColumn("{task.description}"), BarColumn(), TaskProgressColumn(), TimeElapsedColumn(),
                    console=console, transient=False)


def base_model_for(cfg: Settings, explicit: str | None) -> str:
    """The model to train or evaluate on: the one ``llm4sweat run`` serves (or ``explicit``)."""
    if explicit:
        return explicit
    if cfg.inference.backend == "local":
        from bot.cli import resolve_model

        path, _ = resolve_model(cfg, demo=False)
        if path:
            return path
    return rt.resolve_base_model(_Shim(cfg))


class _Shim:
    def __init__(self, cfg: Settings):
        self.settings = cfg


# --------------------------------------------------------------------------------- train


def train(cfg: Settings, console: Console, *, base_model: str | None, dataset_file: Path | None, out: Path | None,
          register: bool, max_steps: int | None, val_fraction: float) -> int:
    from bot.chat_format import with_task
    from pipeline.packs import load_pack
    from pipeline.training import TrainProgress, TrainingCancelled, train_lora

    base = base_model_for(cfg, base_model)
    pack = load_pack(cfg.pack_path)

    async def prepare() -> tuple[list, str, str | None]:
        db = await Database(cfg.db_path).open()
        try:
            await dataset.import_seeds(db, pack)  # as the service does at start (idempotent)
            version = await rt.next_version(db, Path(cfg.adapters_path)) if out is None else None
            if dataset_file is not None:
                rows = [json.loads(line) for line in dataset_file.read_text(encoding="utf-8").splitlines() if line.strip()]
                # rows with a task get their task line, as the database export gives them
                examples = [with_task(r["messages"], r.get("task")) if isinstance(r, dict) else r for r in rows]
                from pipeline.packs import find_eval_leaks

                texts = ["\n".join(m["content"] for m in ex if m.get("role") != "system") for ex in examples]
                leaked = {leak.text_index for leak in find_eval_leaks(pack.eval_questions, texts)}
                if leaked:
                    console.print(f"[yellow]{len(leaked)} example(s) contain evaluation questions and are left out.[/yellow]")
                examples = [ex for i, ex in enumerate(examples) if i not in leaked]
                return examples, str(dataset_file), version
            snap = await rt.export_snapshot(db, pack, Path(cfg.data_dir) / "jobs" / "cli-train" / "dataset.jsonl",
                                            min_accuracy=cfg.review.min_accuracy_for_training)
            if snap.excluded:
                console.print(f"[yellow]{len(snap.excluded)} example(s) contain evaluation questions and are left out.[/yellow]")
            examples = [json.loads(line)["messages"] for line in snap.path.read_text().splitlines() if line.strip()]
            return examples, f"database snapshot {snap.hash[:12]}", version
        finally:
            await db.close()

    examples, source, version = asyncio.run(prepare())
    target = out or Path(cfg.adapters_path) / str(version)
    version = version or target.name
    console.print(f"Training LoRA adapter {version} on {len(examples)} examples ({source}); base model {base}")
    with _progress(console) as bar:
        task = bar.add_task("training", total=None)

        def on_progress(p: TrainProgress) -> None:
            desc = f"training epoch {p.epoch:.1f}"
            if p.train_loss is not None:
                desc += f" loss {p.train_loss:.3f}"
            if p.val_loss is not None:
                desc += f" val {p.val_loss:.3f}"
            bar.update(task, completed=p.step, total=p.total_steps, description=desc)

        try:
            result = train_lora(base, examples, target, cfg.training, val_fraction=val_fraction, progress=on_progress,
                                max_steps=max_steps, template_date=cfg.prompt.template_date)
        except KeyboardInterrupt:
            console.print("[yellow]Interrupted: no adapter was written.[/yellow]")
            return 130
        except TrainingCancelled:
            console.print("[yellow]Cancelled: no adapter was written.[/yellow]")
            return 130
    m = result.manifest["metrics"]
    fmt = lambda v: "-" if v is None else f"{v:.4f}"  # noqa: E731
    console.print(
        f"Adapter written to {result.out_dir}: {result.steps} steps in {result.seconds:.1f} s "
        f"({result.examples_per_second:.1f} examples/s); validation loss {fmt(m['initial_val_loss'])} → "
        f"{fmt(m['best_val_loss'])}"
    )
    if register:
        async def reg() -> None:
            db = await Database(cfg.db_path).open()
            try:
                await registry.register(db, version, result.out_dir, base, result.manifest, status="candidate")
            finally:
                await db.close()

        asyncio.run(reg())
        console.print(f"Registered {version} as a candidate. Next: llm4sweat eval --adapter {version}")
    return 0


# --------------------------------------------------------------------------------- eval


def load_safety_sets(paths: list[Path]) -> list[ev.SafetyCase] | None:
    """Safety cases from JSONL files or folders of them (``text`` + ``label``/``kind``)."""
    if not paths:
        return None
    cases: list[ev.SafetyCase] = []
    for path in paths:
        files = sorted(path.glob("*.jsonl")) if path.is_dir() else [path]
        for file in files:
            cases += ev.load_safety_cases(file)
    return cases


def evaluate(cfg: Settings, console: Console, *, base_model: str | None, adapters: list[str], include_base: bool,
             limit: int | None, safety: bool, out: Path | None, save: bool,
             safety_sets: list[Path] | None = None, open_book: bool = False, controls: bool = True) -> int:
    from pipeline.packs import load_pack

    pack = load_pack(cfg.pack_path)
    cases = load_safety_sets(list(safety_sets or []))
    if cases is not None:
        kinds = {k: sum(c.kind == k for c in cases) for k in ("crisis", "benign", "red_flag")}
        console.print(f"Safety set: {kinds['crisis']} crisis, {kinds['benign']} benign, {kinds['red_flag']} red-flag cases")
    base = base_model_for(cfg, base_model)

    async def lookup() -> tuple[list[ev.Subject], dict[str, Any] | None, dict[str, Any]]:
        from pipeline.rubric import rubric_by_version

        db = await Database(cfg.db_path).open()
        try:
            subjects: list[ev.Subject] = []
            for name in adapters:
                row = await registry.get(db, name)
                if row is not None:
                    subjects.append(ev.Subject(row["version"], row["version"], Path(row["path"])))
                elif Path(name).is_dir():
                    subjects.append(ev.Subject(Path(name).name, None, Path(name)))
                else:
                    raise SystemExit(f"{name!r} is neither an adapter version in the registry nor a folder")
            live = await registry.live(db)
            return subjects, live, await rubric_by_version(db)
        finally:
            await db.close()

    try:
        subjects, live, rubric = asyncio.run(lookup())
    except SystemExit as exc:
        console.print(f"[red]{escape(str(exc))}[/red]")
        return 2
    for s in subjects:
        problem = registry.adapter_problem(s.path) if s.path else None
        if problem:
            console.print(f"[red]{escape(s.label)}: {escape(problem)}[/red]")
            return 2
    lead: list[ev.Subject] = []
    if include_base:
        lead.append(ev.Subject(ev.BASE_LABEL))
    if live and adapters and live["version"] not in [s.label for s in subjects]:
        lead.append(ev.Subject(live["version"], live["version"], Path(live["path"])))  # the reference for the gate
    subjects = lead + subjects
    if not subjects:
        console.print("[red]Nothing to evaluate.[/red]")
        return 2
    cfg_eval = ev.EvalConfig(limit_per_task=limit, safety=safety, prompt_budget=cfg.prompt.token_budget,
                             open_book=open_book, controls=controls, template_date=cfg.prompt.template_date)
    console.print(f"Evaluating {', '.join(s.label for s in subjects)} on {base} "
                  f"({'OPEN book: guidance.md in every prompt' if open_book else 'closed book'})")
    with _progress(console) as bar:
        task = bar.add_task("loading", total=None)

        def on_progress(phase: str, done: int, total: int) -> None:
            bar.update(task, description=phase, completed=done, total=total)

        report = ev.evaluate(base, subjects, pack, cfg_eval, progress=on_progress, safety_cases=cases)
    if rubric:
        report["rubric"] = rubric
    order = report["order"]
    reference = live["version"] if live and live["version"] in order else (ev.BASE_LABEL if ev.BASE_LABEL in order else None)
    delta = (reference, order[-1]) if reference and order[-1] != reference else None
    out_dir = out or Path(cfg.data_dir) / "evaluations" / time.strftime("eval-%Y%m%d-%H%M%S")
    paths = ev.write_outputs(report, out_dir, order, delta)
    console.print(ev.default_title(report))
    console.print(ev.rich_table(report, order, delta))
    console.print(ev.scores_table(report, order))
    bias = ev.bias_line(report)
    if bias:
        console.print(bias, highlight=False, markup=False)
    if rubric:
        console.print(ev.rubric_text(rubric), highlight=False, markup=False)
    first = report["runs"][order[0]].get("safety")
    if first:
        c = first["crisis"]
        console.print(f"Crisis routing: {c['routed']}/{c['crisis_cases']} routed (recall {c['recall']:.3f}), "
                      f"{len(c['false_alarms'])}/{c['benign_cases']} benign messages routed as crisis", highlight=False)
    console.print(f"JSON: {paths['json']}\nChart: {paths['png']}")
    if save and reference:
        from pipeline import gate

        async def store() -> None:
            db = await Database(cfg.db_path).open()
            try:
                for s in subjects:
                    if s.version is None or s.label == reference or await registry.get(db, s.version) is None:
                        continue
                    decision = gate.decide_from_settings(report["runs"][s.label], report["runs"][reference], cfg.training,
                                                         candidate_name=s.label)
                    record = rt.registry_record(report, s.label, decision, {k: str(v) for k, v in paths.items()})
                    await registry.set_evaluation(db, s.version, record)
                    if decision.passed:
                        await registry.mark_gate_passed(db, s.version)
                    console.print(decision.text(), highlight=False, markup=False)
            finally:
                await db.close()

        asyncio.run(store())
    return 0


def export_lm_eval(cfg: Settings, console: Console, *, out: Path, base_model: str | None, open_book: bool) -> int:
    """Write the pack's questions as lm-evaluation-harness tasks (see pipeline/lm_eval_export.py)."""
    from pipeline.lm_eval_export import export_lm_eval as export
    from pipeline.packs import load_pack

    pack = load_pack(cfg.pack_path)
    base = base_model_for(cfg, base_model)
    info = export(out, pack, base, open_book=open_book, template_date=cfg.prompt.template_date)
    console.print(f"Wrote {len(info['files'])} files to {out} ({info['book']} book, prompts rendered with the chat "
                  f"template of {base}).", highlight=False, markup=False)
    console.print(f"Run: lm_eval --model hf --model_args pretrained=MODEL --tasks {','.join(info['tasks'])} "
                  f"--include_path {out}", highlight=False, markup=False)
    return 0


# --------------------------------------------------------------------------------- the running service


async def service_call(cfg: Settings, method: str, path: str, body: dict[str, Any] | None = None,
                       timeout: float = 120.0) -> dict[str, Any] | None:
    """A call to the service running with this data directory (bot/instance.py), or None when
    none runs. When one runs, the answer is never None, even if it cannot be reached: the
    caller must then not act on the database behind the service's back.

    Sends the control token the service wrote to the data directory (bot/access/control.py)
    as a bearer token: the command line acts as ``cli:operator``, never as a typed name."""
    import aiohttp

    from bot.access.control import read_token, token_path
    from bot.instance import running

    found = running(cfg.data_dir)
    if found is None:
        return None
    if not found.url:
        return {"ok": False, "error": f"a service is running with this data directory ({found.describe()}) and "
                                      "serves no console (still starting, or run with --no-console), so it takes no "
                                      "commands from here: try again once it has started, use the moderator commands "
                                      "on Discord or Slack, or stop it first. Nothing was changed."}
    base = _control_url(cfg, found.url)
    token = read_token(cfg.data_dir)
    if token is None:
        return {"ok": False, "error": f"a service is running ({found.describe()}), but its control token "
                                      f"({token_path(cfg.data_dir)}) cannot be read: run this as the user running "
                                      "the service, with its data directory. Nothing was changed."}
    try:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=timeout)) as session:
            async with session.request(method, base + path, json=body,
                                       headers={"Authorization": f"Bearer {token}"}) as resp:
                reply = await resp.json(content_type=None)
    except (aiohttp.ClientError, asyncio.TimeoutError, OSError, ValueError) as exc:
        return {"ok": False, "error": f"the running service ({found.describe()}) did not answer "
                                      f"({type(exc).__name__}: {exc}); nothing was changed here: try again"}
    if not isinstance(reply, dict):
        return {"ok": False, "error": f"the running service ({found.describe()}) gave an unexpected answer"}
    if "error" in reply and "ok" not in reply:
        reply = {**reply, "ok": False}
    return reply


def _control_url(cfg: Settings, recorded: str) -> str:
    """The address the service recorded, except that a host named in the settings wins over a
    loopback one: another container on the same data volume (the trainer job) reaches the bot
    by its name (``LLM4SWEAT_LOCAL__HOST=bot``), at the port the bot recorded."""
    from urllib.parse import urlsplit

    host = cfg.local.host
    if host in ("", "0.0.0.0", "::", "127.0.0.1", "::1", "localhost"):
        return recorded
    port = urlsplit(recorded).port or cfg.local.port
    return f"http://{host}:{port}"


async def console_command(cfg: Settings, command: str, argument: str | None = None) -> dict[str, Any] | None:
    """Run a moderator command in the running service; None when no service runs."""
    return await service_call(cfg, "POST", "/api/moderator/command", {"command": command, "argument": argument or ""})


def _say_service(console: Console, reply: dict[str, Any]) -> int:
    """What the running service answered; a failure to reach it is ours to say, not the service's."""
    if reply.get("ok"):
        console.print(f"(the running service) {reply.get('text')}", highlight=False, markup=False)
        return 0
    said = reply.get("text") if reply.get("text") and not reply.get("error") else None
    console.print(f"(the running service) {said}" if said else f"llm4sweat: {reply.get('error') or reply.get('text')}",
                  highlight=False, markup=False)
    return 1


# --------------------------------------------------------------------------------- retrain


def retrain(cfg: Settings, console: Console, *, wait: bool, here: bool, force: bool = False) -> int:
    from bot.instance import running

    if here:
        found = running(cfg.data_dir)
        if found is not None:  # a job here could make an adapter live that the service does not serve
            console.print(f"A service is running with this data directory ({found.describe()}): retrain in it "
                          "(`llm4sweat retrain` without --here) or stop it first.", highlight=False, markup=False)
            return 1
    else:
        reply = asyncio.run(console_command(cfg, "retrain", "force" if force else None))
        if reply is not None:
            code = _say_service(console, reply)
            if wait and (reply.get("data") or {}).get("job_id"):
                return asyncio.run(_wait_for_job(cfg, console, int(reply["data"]["job_id"])))
            return code
    return asyncio.run(_retrain_here(cfg, console, force))


async def _wait_for_job(cfg: Settings, console: Console, job_id: int) -> int:
    db = await Database(cfg.db_path).open()
    try:
        last = ""
        while True:
            row = await jobs.get(db, job_id)
            if row is None:
                console.print(f"[red]job #{job_id} disappeared[/red]")
                return 1
            if row["progress"] and row["progress"] != last:
                last = row["progress"]
                console.print(f"  {last}", highlight=False, markup=False)
            if row["status"] not in ("queued", "running"):
                break
            await asyncio.sleep(1.0)
        if row["status"] == "succeeded":
            result = json.loads(row["result"] or "{}")
            console.print(result.get("summary", "done"), highlight=False, markup=False)
            return 0
        console.print(f"[red]job #{job_id} {row['status']}: {escape(str(row['error']))}[/red]")
        return 1
    finally:
        await db.close()


async def _retrain_here(cfg: Settings, console: Console, force: bool = False) -> int:
    from pipeline.packs import load_pack

    pack = load_pack(cfg.pack_path)
    base = await asyncio.to_thread(base_model_for, cfg, None)
    db = await Database(cfg.db_path).open()
    try:
        await dataset.import_seeds(db, pack)  # as the service does at start (idempotent)
        await jobs.mark_interrupted(db)
        request = await jobs.request(db, "retrain", "cli", {"force": True} if force else None)
        if not request.created:
            console.print(f"A retraining job (#{request.job_id}) is already {request.status}.")
            return 1
        service = rt.HeadlessService(cfg, db, pack, base)
        console.print(f"Retraining job #{request.job_id} (no service is running: working here)")
        last = [0.0]

        def echo(text: str) -> None:
            t = time.monotonic()
            if "\n" in text or t - last[0] > 2.0:
                last[0] = t
                console.print(text if "\n" in text else f"  {text}", highlight=False, markup=False)

        result = await rt.run_retrain_job(service, request.job_id, echo=echo)
        return 1 if result.get("status") == "failed" else 0
    finally:
        await db.close()


# --------------------------------------------------------------------------------- promote, rollback


def promote(cfg: Settings, console: Console, version: str, *, force: bool) -> int:
    async def go() -> int:
        from pipeline.packs import load_pack

        # The running service promotes (its gate check and hot swap; --force is passed on).
        reply = await console_command(cfg, "promote", f"{version} force" if force else version)
        if reply is not None:
            return _say_service(console, reply)
        db = await Database(cfg.db_path).open()
        try:
            service = rt.HeadlessService(cfg, db, load_pack(cfg.pack_path), await asyncio.to_thread(_maybe_base, cfg))
            check = await rt.check_promotion(service, version, force=force)
            if not check.ok:
                console.print(check.text, highlight=False, markup=False)
                return 1
            if check.text:
                console.print(check.text, highlight=False, markup=False)
            outcome = await rt.promote(service, version, force=True)
            text = (f"{version} is recorded as live; the service loads it when it next starts." if outcome.ok
                    else outcome.text)
            console.print(text, highlight=False, markup=False)
            return 0 if outcome.ok else 1
        finally:
            await db.close()

    return asyncio.run(go())


def rollback(cfg: Settings, console: Console, version: str | None) -> int:
    async def go() -> int:
        reply = await console_command(cfg, "rollback", version)
        if reply is not None:
            return _say_service(console, reply)
        from pipeline.packs import load_pack

        db = await Database(cfg.db_path).open()
        try:
            try:
                target = await registry.resolve_rollback(db, version)
            except registry.RegistryError as exc:
                console.print(str(exc), highlight=False, markup=False)
                return 1
            name = target or "the base model"
            service = rt.HeadlessService(cfg, db, load_pack(cfg.pack_path))
            try:
                await service.activate_adapter(target)
            except Exception as exc:
                console.print(f"Rollback to {name} failed: {exc}. The live adapter is unchanged.",
                              highlight=False, markup=False)
                return 1
            console.print(f"Rolled back: {name} is recorded as live; the service loads it when it next starts.")
            return 0
        finally:
            await db.close()

    return asyncio.run(go())


@dataclass
class AdapterList:
    """What ``llm4sweat adapters list`` shows: the registry, and while a service runs, the
    adapter it is serving (``serving``; None: the base model) — or why it could not be asked."""

    rows: list[dict[str, Any]]
    service: Any = None  # bot.instance.Running, when a service runs
    serving: str | None = None
    problem: str | None = None


def list_adapters(cfg: Settings) -> AdapterList:
    """The registry as the running service sees it (it is the source of truth for what it
    serves), or from the database when no service runs."""
    from bot.instance import running

    async def go() -> AdapterList:
        found = running(cfg.data_dir)
        if found is not None:
            reply = await service_call(cfg, "GET", "/api/moderator/adapters", timeout=30.0)
            if reply is not None:
                if "adapters" not in reply:
                    return AdapterList([], found, problem=str(reply.get("error") or reply.get("text")))
                return AdapterList(list(reply["adapters"]), found, reply.get("serving"))
        db = await Database(cfg.db_path).open()
        try:
            return AdapterList(await registry.all_versions(db))
        finally:
            await db.close()

    return asyncio.run(go())


def _maybe_base(cfg: Settings) -> str | None:
    try:
        return rt.resolve_base_model(_Shim(cfg))
    except rt.RetrainError:
        return None
