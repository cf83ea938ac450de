"""Scheduled retraining runs in the serving process only when asked to
(``training.retrain_schedule = "in_service"``, tested in tests/test_model_loop.py); by default
("request") a due round is announced to moderators with how to run the GPU trainer job, and
nothing trains here; "off" schedules nothing."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from bot.settings import load_settings
from bot.storage import now
from pipeline import dataset, jobs, registry
from pipeline import retrain as rt

session_loop = pytest.mark.asyncio(loop_scope="session")
REPO_EXAMPLE = Path(__file__).resolve().parent.parent / "deploy" / "llm4sweat.example.toml"


async def add_expert_examples(db, n: int, start: int = 0) -> None:
    patient = await db.execute(
        "INSERT INTO patients (platform, platform_user_id, consent, consent_at, created_at) VALUES ('local', ?, 1, ?, ?)",
        (f"p{start}", now(), now()))
    for i in range(start, start + n):
        assert await dataset.add_example(db, "treatment", "expert_approved", [
            {"role": "user", "content": f"question {i}"}, {"role": "assistant", "content": f"answer {i}"}],
            patient_id=patient)


def test_in_process_training_is_off_unless_asked():
    assert load_settings().training.retrain_schedule == "request"
    assert load_settings(REPO_EXAMPLE).training.retrain_schedule == "request"


@session_loop
async def test_a_due_round_is_requested_from_the_trainer_job_not_run_here(service, monkeypatch):
    training = service.settings.training
    monkeypatch.setattr(training, "retrain_min_new_examples", 2)
    monkeypatch.setattr(training, "retrain_interval_hours", 1.0)
    started: list[int] = []
    monkeypatch.setattr(service, "start_retrain", started.append)
    alerts = service.core.platforms["local"].alerts

    due, why = await rt.retrain_request_due(service)
    assert not due and "0 new expert examples" in why
    await add_expert_examples(service.db, 2)

    task = rt.start_scheduler(service, check_every_s=0.01)
    try:
        deadline = asyncio.get_running_loop().time() + 10
        while not any("Retraining is due" in a["text"] for a in alerts):
            assert asyncio.get_running_loop().time() < deadline, "moderators were never told"
            await asyncio.sleep(0.01)
        # Many more checks happen (counted, not timed); none trains here, and moderators are told
        # once per interval.
        checks = asyncio.Semaphore(0)
        real_due = rt.retrain_request_due

        async def counted(svc):
            checks.release()
            return await real_due(svc)

        monkeypatch.setattr(rt, "retrain_request_due", counted)
        for _ in range(10):
            await asyncio.wait_for(checks.acquire(), 10)
    finally:
        task.cancel()
    assert started == [] and await jobs.active(service.db, "retrain") is None
    told = [a["text"] for a in alerts if "Retraining is due" in a["text"]]
    assert len(told) == 1 and "2 new expert examples" in told[0] and "--profile train run --rm trainer" in told[0]
    due, why = await rt.retrain_request_due(service)
    assert not due and "interval" in why

    # After the interval the trainer job has run (a new adapter): nothing is new any more.
    await service.db.execute("UPDATE jobs SET created_at = ? WHERE kind = 'retrain_request'", (now() - 7200,))
    adapter = service.settings.adapters_path / "v1"
    await registry.register(service.db, "v1", adapter, "base", {})
    due, why = await rt.retrain_request_due(service)
    assert not due and "0 new expert examples" in why
    await add_expert_examples(service.db, 2, start=10)
    assert (await rt.retrain_request_due(service))[0]


@session_loop
async def test_off_schedules_nothing(service, monkeypatch):
    monkeypatch.setattr(service.settings.training, "retrain_schedule", "off")
    task = rt.start_scheduler(service, check_every_s=0.01)
    await asyncio.wait_for(task, 5)  # returns at once instead of looping
    assert task.done() and not task.cancelled()
