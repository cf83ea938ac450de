"""Soak: the real running service under patients, reviewers, retry ticks and kill -9.

How it is measured, as an outsider would: ``llm4sweat run`` is started as a subprocess on a
fresh data directory (console on 127.0.0.1, the ``fixed`` backend — a reply after a known
delay, no model —, a short retry tick so the run spans many rounds of the retry loop, quorum 2).
Reviewer accounts are made with ``llm4sweat users add --password-stdin`` and sign in through
``/api/login`` as a browser does; each patient is a browser with its own anonymous cookie
writing through ``/api/patient/messages``. Then:

1. load: every patient sends a message as soon as the previous one is answered, while the
   reviewers decide pending items (approve, edit, reject, with rubric scores), across several
   retry ticks; the service is killed with SIGKILL in the middle of it and started again;
2. a burst of decisions (every reviewer decides every pending item at once); SIGKILL when a
   third of the answers have come back; started again;
3. load again across a few ticks, then the run settles (every stored message answered, every
   effect applied) and is checked.

What is counted (each message and decision carries a tag, so nothing is guessed):
sent (requests made), acked (HTTP 200), cut (no answer: the kill), stored (in the database),
replied (a reply the patient sees in their conversation), **lost** (an acked message not
stored, a stored message never replied, an acked decision not recorded), **duplicated** (a
message stored twice, a second reply, review item or dataset example for one message, a second
decision of one reviewer on one item), **half-applied** decisions (a closed review item without
its dataset example, its reply's delivery, the patient's view, or with an effect — patient view,
card update, dataset example — not done), and the recovery time after each kill (from SIGKILL
until every stored message has its reply and no effect is pending). When ``llm4sweat db backup``
exists, a backup is taken during the last load and restored into a fresh data directory, and
every reviewed example must be in it. The last line is ``lost 0, duplicated 0, half-applied 0``
when all hold (exit 0), else the counts (exit 1).

Run: python bench/bench_soak.py [--quick] [--patients N] [--reviewers N] [--load-s S]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import re
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

ROOT = Path(__file__).resolve().parent.parent
TAG = re.compile(r"\[soak p(\d+) m(\d+)\]")
PASSWORD = "soak-password-0123456789"
SCORES = ("accuracy", "appropriateness", "empathy")


@dataclass
class Profile:
    patients: int
    reviewers: int
    load_s: float  # seconds of load before the first kill (several retry ticks)
    final_load_s: float
    burst_items: int  # pending items decided at once in the burst (the queue shows at most 50)
    retry_tick_s: float
    model_delay_s: float
    deadline_s: float
    settle_timeout_s: float


QUICK = Profile(patients=16, reviewers=3, load_s=6.0, final_load_s=4.0, burst_items=40, retry_tick_s=1.0,
                model_delay_s=0.05, deadline_s=2.0, settle_timeout_s=75.0)
FULL = Profile(patients=60, reviewers=4, load_s=20.0, final_load_s=10.0, burst_items=50, retry_tick_s=1.0,
               model_delay_s=0.05, deadline_s=2.0, settle_timeout_s=150.0)


# ---------------------------------------------------------------------------- the service


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ServiceProcess:
    """``llm4sweat run`` in a subprocess, from this checkout, on its own data directory."""

    def __init__(self, data_dir: Path, profile: Profile):
        self.data_dir = data_dir
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = data_dir.parent / f"{data_dir.name}-service.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.env = {
            **os.environ,
            "PYTHONPATH": str(ROOT),
            "LLM4SWEAT_DATA_DIR": str(data_dir),
            "LLM4SWEAT_INFERENCE__BACKEND": "fixed",
            "LLM4SWEAT_INFERENCE__FIXED_DELAY_S": str(profile.model_delay_s),
            "LLM4SWEAT_INFERENCE__DEADLINE_S": str(profile.deadline_s),
            "LLM4SWEAT_INFERENCE__RETRY_INTERVAL_S": str(profile.retry_tick_s),
            "LLM4SWEAT_SAFETY__RATE_LIMIT_MESSAGES": "10000",
            "LLM4SWEAT_REVIEW__QUORUM": "2",
            "LLM4SWEAT_LOG_LEVEL": "WARNING",
        }
        for key in [k for k in self.env if k.startswith(("LLM4SWEAT_DISCORD", "LLM4SWEAT_SLACK", "LLM4SWEAT_JUDGE"))]:
            del self.env[key]  # this run serves the console only
        self.env.pop("LLM4SWEAT_CONFIG", None)

    def cli(self, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "bot.cli", *args], input=stdin, text=True, capture_output=True,
                              env=self.env, cwd=ROOT, timeout=120)

    def start(self) -> None:
        log = open(self.log_path, "ab")
        self.proc = subprocess.Popen([sys.executable, "-m", "bot.cli", "run", "--port", str(self.port)],
                                     env=self.env, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
        log.close()

    async def wait_ready(self, http: aiohttp.ClientSession, timeout_s: float = 120.0) -> float:
        """Seconds until /healthz answers 200."""
        started = time.perf_counter()
        while time.perf_counter() - started < timeout_s:
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(f"the service exited with {self.proc.returncode}; see {self.log_path}:\n"
                                   + self.log_tail())
            try:
                async with http.get(self.url + "/healthz", timeout=aiohttp.ClientTimeout(total=2)) as r:
                    if r.status == 200:
                        return time.perf_counter() - started
            except (aiohttp.ClientError, asyncio.TimeoutError):
                pass
            await asyncio.sleep(0.1)
        raise RuntimeError(f"the service did not become ready in {timeout_s:.0f} s:\n{self.log_tail()}")

    def kill9(self) -> None:
        assert self.proc is not None
        os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait()

    def stop(self) -> int | None:
        if self.proc is None or self.proc.poll() is not None:
            return None if self.proc is None else self.proc.returncode
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            return None

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"


# ---------------------------------------------------------------------------- clients


@dataclass
class Sent:
    patient: int
    n: int
    acked: bool = False
    http_status: int | None = None
    reply_status: str | None = None


@dataclass
class DecisionSent:
    reviewer: str
    item_id: int
    action: str
    acked: bool = False
    recorded: bool | None = None


@dataclass
class Tally:
    messages: list[Sent] = field(default_factory=list)
    decisions: list[DecisionSent] = field(default_factory=list)
    errors: Counter[str] = field(default_factory=Counter)


class Browser:
    """One browser: its own cookies, and the Origin header the console wants on every POST."""

    def __init__(self, url: str):
        self.url = url
        self.http = aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True),
                                          timeout=aiohttp.ClientTimeout(total=60))
        self.headers = {"Origin": url}

    async def get(self, path: str) -> tuple[int, Any]:
        async with self.http.get(self.url + path) as r:
            return r.status, (await r.json() if r.content_type == "application/json" else await r.text())

    async def post(self, path: str, body: dict[str, Any]) -> tuple[int, Any]:
        async with self.http.post(self.url + path, json=body, headers=self.headers) as r:
            return r.status, (await r.json() if r.content_type == "application/json" else await r.text())

    async def close(self) -> None:
        await self.http.close()


class Run:
    """Shared state of one soak: whether the service is up, and the tallies."""

    def __init__(self, service: ServiceProcess, profile: Profile, seed: int = 0):
        self.service = service
        self.profile = profile
        self.up = asyncio.Event()
        self.load = asyncio.Event()  # patients and reviewers work while set
        self.tally = Tally()
        self.rng = random.Random(seed)
        self.patients: dict[int, Browser] = {}

    async def patient(self, i: int, stop: asyncio.Event) -> None:
        browser = self.patients[i] = Browser(self.service.url)
        await self.up.wait()
        await browser.get("/")  # the browser gets its anonymous id with the page, as a person's does
        n = 0
        while not stop.is_set():
            await self.load.wait()
            await self.up.wait()
            if stop.is_set():
                break
            sent = Sent(i, n)
            n += 1
            self.tally.messages.append(sent)
            text = (f"My palms and feet sweat a lot when I hold a pen or walk, what treatment could help? "
                    f"[soak p{i} m{sent.n}]")
            try:
                status, data = await browser.post("/api/patient/messages", {"text": text})
                sent.http_status = status
                if status == 200:
                    sent.acked = True
                    sent.reply_status = data.get("status")
                else:
                    self.tally.errors[f"patient HTTP {status}"] += 1
            except (aiohttp.ClientError, asyncio.TimeoutError, ConnectionError):
                await self.up.wait()  # the kill cut this request: the patient tries again once it is back
            await asyncio.sleep(self.rng.uniform(0.1, 0.5))  # reading the answer, typing the next

    async def views(self, out: "Outcome") -> dict[tuple[int, int], int]:
        """What each patient sees in their conversation (the console's patient API): replies per
        message; a closed review whose reply the patient does not see as decided is half-applied."""
        seen: dict[tuple[int, int], int] = {}
        expected = {"approved": "reviewed", "edited": "reviewed", "rejected": "withdrawn"}
        for i, browser in self.patients.items():
            status, data = await browser.get("/api/patient/conversation")
            if status != 200:
                out.problem("lost", f"patient {i} cannot read their conversation: HTTP {status}")
                continue
            tags: dict[int, tuple[int, int]] = {}
            for entry in data["entries"]:
                if entry["type"] == "message":
                    m = TAG.search(entry["text"])
                    if m:
                        tags[entry["id"]] = (int(m.group(1)), int(m.group(2)))
                elif entry["type"] == "reply" and entry["message_id"] in tags:
                    key = tags[entry["message_id"]]
                    seen[key] = seen.get(key, 0) + 1
                    want = expected.get(entry.get("state") or "")
                    if want and entry["kind"] != want:
                        out.problem("half_applied", f"patient {i} sees a {entry['state']} reply as {entry['kind']}")
        return seen

    async def close(self) -> None:
        for browser in self.patients.values():
            await browser.close()

    async def sign_in(self, name: str) -> Browser:
        browser = Browser(self.service.url)
        status, data = await browser.post("/api/login", {"name": name, "password": PASSWORD})
        if status != 200:
            raise RuntimeError(f"sign-in of {name} failed: {status} {data}")
        return browser

    async def decide(self, browser: Browser, name: str, item: dict[str, Any]) -> None:
        roll = self.rng.random()
        action = "approve" if roll < 0.6 else "edit" if roll < 0.8 else "reject"
        body: dict[str, Any] = {"action": action, **{s: self.rng.randint(3, 5) for s in SCORES}}
        if action == "edit":
            body["text"] = item["reply_text"] + " (A specialist adds: see a dermatologist about iontophoresis.)"
        decision = DecisionSent(name, int(item["item_id"]), action)
        self.tally.decisions.append(decision)
        try:
            status, data = await browser.post(f"/api/reviews/{item['item_id']}/decision", body)
        except (aiohttp.ClientError, asyncio.TimeoutError, ConnectionError):
            return
        if status == 200:
            decision.acked, decision.recorded = True, bool(data.get("recorded"))
        else:
            self.tally.errors[f"decision HTTP {status}"] += 1

    async def pending(self, browser: Browser) -> list[dict[str, Any]]:
        try:
            status, data = await browser.get("/api/reviews")
        except (aiohttp.ClientError, asyncio.TimeoutError, ConnectionError):
            return []
        return data.get("items", []) if status == 200 else []

    async def reviewer(self, name: str, browser: Browser, stop: asyncio.Event) -> None:
        """Decides a few pending items at a time while the load runs (as a person clicking)."""
        decided: set[int] = set()
        while not stop.is_set():
            await self.load.wait()
            await self.up.wait()
            items = [it for it in await self.pending(browser) if it["item_id"] not in decided]
            for item in self.rng.sample(items, min(3, len(items))):
                decided.add(item["item_id"])
                await self.decide(browser, name, item)
            await asyncio.sleep(0.3)

    async def burst(self, reviewers: dict[str, Browser]) -> tuple[int, int]:
        """Every reviewer decides up to ``burst_items`` pending items (as many as the queue shows)
        at once; SIGKILL once a third of the answers have come back. Returns (decisions sent,
        answered before the kill)."""
        first = next(iter(reviewers.values()))
        items = (await self.pending(first))[: self.profile.burst_items]
        kill_after = max(1, len(items) * len(reviewers) // 3)
        answered = 0
        killed = asyncio.Event()

        async def one(name: str, browser: Browser, item: dict[str, Any]) -> None:
            nonlocal answered
            await self.decide(browser, name, item)
            if not killed.is_set():
                answered += 1
                if answered >= kill_after:
                    killed.set()

        jobs = [asyncio.ensure_future(one(name, browser, item)) for item in items for name, browser in reviewers.items()]
        waiter = asyncio.ensure_future(killed.wait())
        await asyncio.wait([waiter, asyncio.ensure_future(asyncio.gather(*jobs))], return_when=asyncio.FIRST_COMPLETED)
        self.up.clear()
        self.service.kill9()
        waiter.cancel()
        await asyncio.gather(*jobs, return_exceptions=True)
        return len(jobs), answered


# ---------------------------------------------------------------------------- reading the outcome


def read_db(db_path: Path) -> sqlite3.Connection:
    conn = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True, timeout=30)
    conn.row_factory = sqlite3.Row
    return conn


def settled(db_path: Path) -> tuple[bool, str]:
    """Every stored soak message has its reply and no effect waits; else what is still open."""
    conn = read_db(db_path)
    try:
        open_messages = conn.execute(
            "SELECT COUNT(*) FROM messages m WHERE m.text LIKE '%[soak p%' AND NOT EXISTS"
            " (SELECT 1 FROM replies r WHERE r.message_id = m.id)").fetchone()[0]
        effects = conn.execute("SELECT COUNT(*) FROM outbox WHERE status IN ('pending', 'applying')").fetchone()[0]
    finally:
        conn.close()
    return open_messages == 0 and effects == 0, f"{open_messages} unanswered, {effects} effects pending"


async def wait_settled(db_path: Path, since: float, timeout_s: float) -> tuple[float | None, str]:
    """Seconds from ``since`` (perf_counter) until settled, or None on timeout, with the last state."""
    state = ""
    deadline = time.perf_counter() + timeout_s
    while time.perf_counter() < deadline:
        try:
            done, state = settled(db_path)
        except sqlite3.Error as exc:  # the file may be mid-checkpoint; read again
            done, state = False, f"database busy: {exc}"
        if done:
            return time.perf_counter() - since, state
        await asyncio.sleep(0.25)
    return None, state


@dataclass
class Outcome:
    sent: int = 0
    acked: int = 0
    cut: int = 0
    stored: int = 0
    replied: int = 0
    lost: int = 0
    duplicated: int = 0
    half_applied: int = 0
    decisions_sent: int = 0
    decisions_acked: int = 0
    decisions_stored: int = 0
    items_closed: int = 0
    examples: int = 0
    problems: list[str] = field(default_factory=list)

    def problem(self, kind: str, text: str) -> None:
        setattr(self, kind, getattr(self, kind) + 1)
        if len(self.problems) < 20:
            self.problems.append(f"{kind}: {text}")


def check_database(db_path: Path, tally: Tally, seen: dict[tuple[int, int], int], out: Outcome) -> set[int]:
    """Counts from the database after the run settled; returns the ids of reviewed-in examples."""
    conn = read_db(db_path)
    try:
        stored: Counter[tuple[int, int]] = Counter()
        message_ids: dict[tuple[int, int], int] = {}
        for row in conn.execute("SELECT id, text FROM messages WHERE text LIKE '%[soak p%'"):
            m = TAG.search(row["text"])
            if m:
                key = (int(m.group(1)), int(m.group(2)))
                stored[key] += 1
                message_ids[key] = row["id"]
        sent_keys = {(s.patient, s.n): s for s in tally.messages}
        out.sent, out.acked = len(tally.messages), sum(s.acked for s in tally.messages)
        out.cut = out.sent - out.acked
        out.stored = sum(1 for key in sent_keys if stored[key])
        for key, s in sent_keys.items():
            if s.acked and not stored[key]:
                out.problem("lost", f"message p{key[0]} m{key[1]} acked but not stored")
            if stored[key] > 1:
                out.problem("duplicated", f"message p{key[0]} m{key[1]} stored {stored[key]} times")
        replies = Counter(row[0] for row in conn.execute("SELECT message_id FROM replies"))
        out.replied = sum(1 for key in sent_keys if stored[key] and seen.get(key, 0) >= 1)
        for key in sent_keys:
            if not stored[key]:
                continue
            if seen.get(key, 0) == 0:
                out.problem("lost", f"message p{key[0]} m{key[1]} stored, never answered in the patient's view")
            extra = max(replies[message_ids[key]], seen.get(key, 0)) - 1
            if extra > 0:
                out.problem("duplicated", f"message p{key[0]} m{key[1]} answered {extra + 1} times")
        for row in conn.execute("SELECT reply_id, COUNT(*) n FROM review_items GROUP BY reply_id HAVING n > 1"):
            out.problem("duplicated", f"reply {row['reply_id']} has {row['n']} review items")
        for row in conn.execute("SELECT review_item_id, COUNT(*) n FROM dataset_examples WHERE review_item_id IS NOT NULL"
                                " GROUP BY review_item_id HAVING n > 1"):
            out.problem("duplicated", f"review item {row['review_item_id']} has {row['n']} dataset examples")
        # Decisions: every acked one recorded, none twice.
        decisions = Counter((row[0], row[1]) for row in conn.execute(
            "SELECT item_id, reviewer_id FROM review_decisions WHERE reviewer_platform = 'console'"))
        out.decisions_sent = len(tally.decisions)
        out.decisions_acked = sum(d.acked for d in tally.decisions)
        out.decisions_stored = sum(decisions.values())
        for d in tally.decisions:
            if d.acked and d.recorded and not decisions[(d.item_id, d.reviewer)]:
                out.problem("lost", f"decision of {d.reviewer} on item {d.item_id} acked as recorded, not stored")
        for (item_id, reviewer), n in decisions.items():
            if n > 1:
                out.problem("duplicated", f"{reviewer} decided item {item_id} {n} times")
        # A closed item and every one of its effects: dataset example, the reply's delivery, the
        # patient's view and the cards (outbox rows done).
        effects_by_key = {row["idempotency_key"]: row["status"] for row in conn.execute(
            "SELECT idempotency_key, status FROM outbox")}
        examples: set[int] = set()
        for item in conn.execute(
                "SELECT i.id, i.state, i.reply_id, r.delivery, r.shown_text, i.final_text,"
                " (SELECT COUNT(*) FROM dataset_examples d WHERE d.review_item_id = i.id) AS examples"
                " FROM review_items i JOIN replies r ON r.id = i.reply_id"
                " WHERE i.state IN ('approved', 'edited', 'rejected')"):
            out.items_closed += 1
            accepted = item["state"] in ("approved", "edited")
            what = f"item {item['id']} ({item['state']})"
            if accepted and item["examples"] == 0:
                out.problem("half_applied", f"{what}: no dataset example")
            if accepted:
                examples.add(item["id"])
            if item["delivery"] != ("reviewed" if accepted else "withdrawn"):
                out.problem("half_applied", f"{what}: reply delivery is {item['delivery']}")
            if f"view:{item['reply_id']}:closed" not in effects_by_key:
                out.problem("half_applied", f"{what}: no patient-view effect recorded")
            n_decisions = conn.execute("SELECT COUNT(*) FROM review_decisions WHERE item_id = ?",
                                       (item["id"],)).fetchone()[0]
            if f"card:{item['id']}:local:d{n_decisions}" not in effects_by_key:
                out.problem("half_applied", f"{what}: no card update recorded for its last decision")
        for row in conn.execute("SELECT idempotency_key, status, last_error FROM outbox WHERE status != 'done'"):
            out.problem("half_applied", f"effect {row['idempotency_key']} is {row['status']} ({row['last_error']})")
        out.examples = len(examples)
        return examples
    finally:
        conn.close()


# ---------------------------------------------------------------------------- the soak


async def soak(profile: Profile, keep: bool) -> int:
    tmp = Path(tempfile.mkdtemp(prefix="llm4sweat-soak-"))
    data_dir = tmp / "data"
    service = ServiceProcess(data_dir, profile)
    wall = time.perf_counter()
    reviewers: dict[str, Browser] = {}
    run = Run(service, profile)
    stop = asyncio.Event()
    recoveries: list[tuple[str, float | None, str]] = []
    probe = aiohttp.ClientSession()
    patient_tasks: list[asyncio.Task[None]] = []
    try:
        for r in range(profile.reviewers):
            made = service.cli("users", "add", f"soak-reviewer-{r}", "--role", "reviewer", "--password-stdin",
                               stdin=PASSWORD + "\n")
            if made.returncode != 0:
                raise RuntimeError(f"llm4sweat users add failed: {made.stderr or made.stdout}")
        service.start()
        ready_s = await service.wait_ready(probe)
        run.up.set()
        print(f"service up in {ready_s:.1f} s at {service.url} (data dir {data_dir}); {profile.patients} patients, "
              f"{profile.reviewers} reviewers, quorum 2, model {profile.model_delay_s * 1000:.0f} ms, "
              f"retry tick {profile.retry_tick_s:g} s", flush=True)
        for r in range(profile.reviewers):
            reviewers[f"soak-reviewer-{r}"] = await run.sign_in(f"soak-reviewer-{r}")

        # 1. load across several retry ticks, killed in the middle of it
        run.load.set()
        patient_tasks = [asyncio.create_task(run.patient(i, stop)) for i in range(profile.patients)]
        reviewer_tasks = [asyncio.create_task(run.reviewer(name, b, stop)) for name, b in reviewers.items()]
        await asyncio.sleep(profile.load_s)
        run.up.clear()
        service.kill9()
        killed_at = time.perf_counter()
        print(f"kill -9 during load after {profile.load_s:g} s: {len(run.tally.messages)} messages sent so far",
              flush=True)
        run.load.clear()  # patients and reviewers wait for the restart, then stop for the burst
        service.start()
        await service.wait_ready(probe)
        recovery, state = await wait_settled(service.data_dir / "llm4sweat.db", killed_at, profile.settle_timeout_s)
        recoveries.append(("load", recovery, state))
        run.up.set()

        # 2. a burst of decisions, killed when a third of the answers are back
        total, answered = await run.burst(reviewers)
        killed_at = time.perf_counter()
        print(f"kill -9 during a burst of {total} decisions, {answered} answered before it", flush=True)
        service.start()
        await service.wait_ready(probe)
        recovery, state = await wait_settled(service.data_dir / "llm4sweat.db", killed_at, profile.settle_timeout_s)
        recoveries.append(("decision burst", recovery, state))
        run.up.set()

        # 3. load again across a few ticks, with a backup taken in the middle of it; then settle
        run.load.set()
        await asyncio.sleep(profile.final_load_s / 2)
        backup = await take_backup(service, tmp)
        await asyncio.sleep(profile.final_load_s / 2)
        stop.set()
        await asyncio.gather(*patient_tasks, *reviewer_tasks)
        final, state = await wait_settled(service.data_dir / "llm4sweat.db", time.perf_counter(),
                                          profile.settle_timeout_s)
        if final is None:
            print(f"WARNING: the service did not settle within {profile.settle_timeout_s:.0f} s: {state}")

        # What each patient sees: their conversation through the console, as their browser shows it.
        out = Outcome()
        seen = await run.views(out)
        examples = check_database(service.data_dir / "llm4sweat.db", run.tally, seen, out)
        code = service.stop()
        backup_line = await asyncio.to_thread(restore_and_check, service, tmp, backup, out)
        if run.tally.errors:
            print("errors     " + ", ".join(f"{what}: {n}" for what, n in sorted(run.tally.errors.items())))
        print_outcome(out, recoveries, backup_line, time.perf_counter() - wall, code)
        ok = out.lost == 0 and out.duplicated == 0 and out.half_applied == 0
        return 0 if ok else 1
    except Exception:
        print(f"the soak failed; service log tail ({service.log_path}):\n{service.log_tail()}", file=sys.stderr)
        raise
    finally:
        stop.set()
        for task in patient_tasks:
            task.cancel()
        for browser in reviewers.values():
            await browser.close()
        await run.close()
        await probe.close()
        service.stop()
        if not keep:
            import shutil

            shutil.rmtree(tmp, ignore_errors=True)


def print_outcome(out: Outcome, recoveries: list[tuple[str, float | None, str]], backup_line: str, wall: float,
                  code: int | None) -> None:
    print(f"messages   sent {out.sent}, acked {out.acked}, cut by a kill {out.cut}, stored {out.stored}, "
          f"replied {out.replied}")
    print(f"decisions  sent {out.decisions_sent}, acked {out.decisions_acked}, stored {out.decisions_stored}; "
          f"items closed {out.items_closed}, expert examples {out.examples}")
    for name, seconds, state in recoveries:
        shown = f"{seconds:.1f} s" if seconds is not None else f"NOT within the timeout ({state})"
        print(f"recovery   after kill -9 during {name}: {shown} (kill to every message answered, no effect pending)")
    print(f"backup     {backup_line}")
    print(f"run        {wall:.0f} s wall; service stopped with exit code {code}; load average "
          f"{' '.join(f'{x:.2f}' for x in os.getloadavg())}; cores {os.cpu_count()}")
    for line in out.problems:
        print(f"  {line}")
    print(f"lost {out.lost}, duplicated {out.duplicated}, half-applied {out.half_applied}")


@dataclass
class Backup:
    path: Path | None
    before: set[int]  # review items with an expert example when the backup started
    seconds: float = 0.0
    note: str = ""


def expert_examples(db_path: Path) -> set[int]:
    conn = read_db(db_path)
    try:
        return {row[0] for row in conn.execute(
            "SELECT review_item_id FROM dataset_examples WHERE review_item_id IS NOT NULL")}
    finally:
        conn.close()


async def take_backup(service: ServiceProcess, tmp: Path) -> Backup:
    """``llm4sweat db backup`` while patients and reviewers keep the service writing."""
    help_text = await asyncio.to_thread(service.cli, "db", "--help")
    if "backup" not in help_text.stdout:
        return Backup(None, set(), note="not run: this version has no `llm4sweat db backup`")
    target = tmp / "soak-backup.db"
    before = expert_examples(service.data_dir / "llm4sweat.db")
    started = time.perf_counter()
    made = await asyncio.to_thread(service.cli, "db", "backup", str(target))
    seconds = time.perf_counter() - started
    if made.returncode != 0:
        return Backup(None, before, seconds, f"FAILED: {(made.stderr or made.stdout).strip()[:300]}")
    return Backup(target, before, seconds)


def restore_and_check(service: ServiceProcess, tmp: Path, backup: Backup, out: Outcome) -> str:
    """``llm4sweat db restore`` into a fresh data directory: every expert example the service had
    when the backup began is in it, and every accepted review in it has its example or the
    effect that will make it (a consistent snapshot, never half a decision)."""
    if backup.path is None:
        if backup.note.startswith("FAILED"):
            out.problem("lost", f"backup {backup.note}")
        return backup.note
    fresh = tmp / "restored"
    env = {**service.env, "LLM4SWEAT_DATA_DIR": str(fresh)}
    restored = subprocess.run([sys.executable, "-m", "bot.cli", "db", "restore", str(backup.path)], text=True,
                              capture_output=True, env=env, cwd=ROOT, timeout=120)
    if restored.returncode != 0:
        out.problem("lost", f"restore failed: {(restored.stderr or restored.stdout).strip()[:300]}")
        return "restore FAILED"
    db_path = fresh / "llm4sweat.db"
    present = expert_examples(db_path)
    for item_id in sorted(backup.before - present):
        out.problem("lost", f"expert example of review item {item_id} is missing from the restored backup")
    conn = read_db(db_path)
    try:
        for row in conn.execute(
                "SELECT i.id FROM review_items i WHERE i.state IN ('approved', 'edited') AND NOT EXISTS"
                " (SELECT 1 FROM dataset_examples d WHERE d.review_item_id = i.id) AND NOT EXISTS"
                " (SELECT 1 FROM outbox o WHERE o.idempotency_key = 'dataset:' || i.id AND o.status != 'done')"):
            out.problem("half_applied", f"restored backup: review item {row[0]} accepted, no example and none due")
        messages = conn.execute("SELECT COUNT(*) FROM messages WHERE text LIKE '%[soak p%'").fetchone()[0]
    finally:
        conn.close()
    return (f"taken during load in {backup.seconds:.1f} s, restored into a fresh data dir: {messages} messages, "
            f"{len(present)} expert examples ({len(backup.before)} existed when it began, "
            f"{len(backup.before - present)} missing)")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="the CI size: under 3 minutes on 2 cores")
    parser.add_argument("--patients", type=int)
    parser.add_argument("--reviewers", type=int)
    parser.add_argument("--load-s", type=float)
    parser.add_argument("--keep", action="store_true", help="keep the data directory and the service log")
    args = parser.parse_args()
    profile = QUICK if args.quick else FULL
    if args.patients:
        profile.patients = args.patients
    if args.reviewers:
        profile.reviewers = args.reviewers
    if args.load_s:
        profile.load_s = args.load_s
    return asyncio.run(soak(profile, args.keep))


if __name__ == "__main__":
    sys.exit(main())
