"""The running service: settings, database, model backend, pack, review queue, platforms.

One object wires the parts together so the CLI, the local console, the chat platforms and the
tests all start the same product the same way.
"""

from __future__ import annotations

import asyncio
import gc
import logging
from pathlib import Path
from typing import Any

from bot.commands import Commands
from bot.core import ConversationCore
from bot.inference import InferenceBackend, make_backend
from bot.inference.base import AdapterLoadError
from bot.platform import Platform, PlatformHealth
from bot.settings import Settings
from bot.storage import Database, now
from pipeline import dataset, jobs, registry
from reviewers.service import ReviewService

log = logging.getLogger(__name__)

class Service:
    def __init__(
        self,
        settings: Settings,
        backend: InferenceBackend | None = None,
        *,
        demo: bool = False,
        model_path: str | None = None,
        pack: Any = None,
        general_model: str | None = None,
    ):
        from pipeline.packs import load_pack

        self.settings = settings
        self.db = Database(settings.db_path)
        self._pack_from_settings = pack is None  # the triage process loads the same file
        self.pack = pack or load_pack(settings.pack_path)
        self.demo = demo
        self.backend = backend or make_backend(settings, model_path=model_path)
        self.reviews = ReviewService(self.db, quorum=settings.review.quorum)
        self.core = ConversationCore(settings, self.db, self.backend, self.pack, self.reviews, demo=demo,
                                     general_model=general_model)
        self.commands = Commands(self)
        self._tasks: set[asyncio.Task[Any]] = set()
        self._retry_task: asyncio.Task[Any] | None = None
        self._scheduler_task: asyncio.Task[Any] | None = None
        self._outbox_task: asyncio.Task[Any] | None = None
        self.retry_interval_s = settings.inference.retry_interval_s
        # True when this process alone serves the database (`llm4sweat run` holds the data
        # directory's lock, bot/instance.py): messages received or claimed before start then
        # belong to a process that ended, and are answered at once instead of after the claim
        # deadline. Tests that run services side by side on one database leave it False.
        self.sole_instance = False
        self._swap_lock = asyncio.Lock()
        # Each configured platform's connection health (bot.supervisor keeps those of Discord and
        # Slack, also before they connect); /readyz, `llm4sweat doctor` and /status read it.
        self.platform_health: dict[str, PlatformHealth] = {}
        self.supervisors: list[Any] = []  # bot.supervisor.PlatformSupervisor
        self.judging: Any = None  # bot.judging.JudgeWorker when settings.judge.enabled
        self._gc_frozen = False

    def add_platform(self, platform: Platform) -> None:
        self.core.platforms[platform.name] = platform
        self.core.outbox.platform_ready(platform.name)  # effects that waited for it are due now
        self.platform_health[platform.name] = platform.health

    async def start(self, retry_loop: bool = True) -> None:
        await self.db.open()
        await jobs.mark_interrupted(self.db)
        added = await dataset.import_seeds(self.db, self.pack)
        if added:
            log.info("imported %d seed examples from the %s pack", added, self.pack.name)
        await self.backend.start()
        if self.settings.safety.use_triage_process and self._pack_from_settings and self.core.triage_worker is None:
            from bot.safety.detector import crisis_model
            from bot.triage_worker import TriageWorker, worker_config

            # Starts in the background; until it is ready the service triages messages itself.
            model = crisis_model(self.pack, cache_dir=self.settings.data_dir / "cache")  # loaded by SafetyLayer
            self.core.triage_worker = TriageWorker(worker_config(self.settings), model)
            self.core.triage_worker.start()
        await self._load_live_adapter()
        if self.sole_instance:  # nobody else answers this database: what a dead process held is due now
            released = await self.core.release_claims_of_a_previous_run()
            if released:
                log.warning("%d message(s) left unanswered by the previous run are answered now", released)
        recovered = await self.core.outbox.recover()  # effects a crash left behind (decisions, deliveries)
        if recovered:
            log.info("applied %d effect(s) left pending by the last run", recovered)
        if self.settings.judge.enabled:
            # A first reader of every reply, in a worker of its own: nothing waits for it.
            from bot.judging import JudgeWorker

            self.judging = JudgeWorker(self)
            self.core.item_listeners.append(lambda item_id: self.judging.wake())
            self.judging.start()
        if retry_loop:
            from pipeline.retrain import start_scheduler

            self._outbox_task = asyncio.create_task(self.core.outbox.work_forever(), name="outbox")
            self._retry_task = asyncio.create_task(self._retry_forever(), name="retry-queued")
            self._scheduler_task = start_scheduler(self)
        # What start-up built (the pack, the safety model, settings, caches: tens of thousands of
        # objects) lives as long as the service: set aside from the garbage collector, whose full
        # passes would otherwise walk all of it again and again, pausing the event loop (one such
        # pass took 105 ms under load, measured in bench_core_overhead). Given back at stop.
        gc.freeze()
        self._gc_frozen = True

    async def _load_live_adapter(self) -> None:
        live = await registry.live(self.db)
        if live is None:
            return
        problem = registry.adapter_problem(Path(live["path"]))
        if problem is None:
            try:
                await self.backend.swap_adapter(live["version"], Path(live["path"]))
                log.info("live adapter %s loaded", live["version"])
                return
            except AdapterLoadError as exc:
                problem = str(exc)
        message = self.settings.redact(f"live adapter {live['version']} cannot be loaded ({problem}); SERVING THE BASE MODEL")
        log.error(message)
        await self.db.execute(
            "INSERT INTO incidents (kind, detail, created_at) VALUES ('adapter_load_failed', ?, ?)", (message, now())
        )

    async def activate_adapter(self, version: str | None) -> float:
        """Hot-swap the serving adapter and record it live; the old one keeps serving on failure."""
        async with self._swap_lock:
            path = None
            if version is not None:
                row = await registry.get(self.db, version)
                if row is None:
                    raise registry.RegistryError(f"no adapter version {version!r}")
                path = Path(row["path"])
                problem = registry.adapter_problem(path)
                if problem:
                    raise AdapterLoadError(problem)
            seconds = await self.backend.swap_adapter(version, path)
            await registry.mark_live(self.db, version)
            log.info("adapter %s is live (swap %.3f s)", version or "base", seconds)
            return seconds

    def start_retrain(self, job_id: int) -> None:
        """Run a retraining job in the background; the job itself runs training in a subprocess."""
        task = asyncio.create_task(self._run_retrain(job_id), name=f"retrain-{job_id}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _run_retrain(self, job_id: int) -> None:
        try:
            from pipeline.retrain import run_retrain_job
        except ImportError:
            await jobs.finish(self.db, job_id, "failed", error="the training pipeline is not available in this install")
            return
        try:
            await run_retrain_job(self, job_id)
        except Exception as exc:  # the job row must never stay 'running' after a crash
            log.exception("retraining job %s failed", job_id)
            await jobs.finish(self.db, job_id, "failed", error=self.settings.redact(str(exc))[:1000])

    async def _retry_forever(self) -> None:
        """Start-up recovery, then every ``retry_interval_s``: answer what waits, expire old reviews,
        alert again about crisis cases nobody has acted on."""
        while True:
            try:
                if not await self.core.is_paused():
                    await self.core.retry_queued()
                await self.core.expire_reviews()
                await self.core.cases.realert_due()  # crisis cases nobody has acted on
                await self.core.purge_expired_conversations()  # privacy.retention_days, as the notice says
                await self.core.outbox.prune()
            except Exception:
                log.exception("retry loop iteration failed")
            await asyncio.sleep(self.retry_interval_s)

    async def stop(self) -> None:
        for supervisor in reversed(self.supervisors):
            await supervisor.stop()
        self.supervisors.clear()
        await self.core.close()  # answers running in the background give their claims back
        running = [t for t in (self._retry_task, self._scheduler_task, self._outbox_task, *self._tasks) if t is not None]
        for task in running:
            task.cancel()
        await asyncio.gather(*running, return_exceptions=True)  # none of them touches the database after this
        if self.judging is not None:
            await self.judging.stop()
        if self.core.triage_worker is not None:
            worker, self.core.triage_worker = self.core.triage_worker, None
            await worker.close()
        await self.backend.close()
        if self._gc_frozen:  # (also frees what start-up left for the collector)
            self._gc_frozen = False
            gc.unfreeze()
        await self.db.close()
