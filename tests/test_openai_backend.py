"""The ``openai`` backend against fake vLLM servers on 127.0.0.1 (fast).

Replicas, health checks that skip a failing replica and bring it back, all-or-nothing adapter
reload, a failed load keeping the live adapter, never reusing an adapter name, unloading the
old adapter only after its requests finished. The same behaviour against a real vLLM server:
tests/test_vllm_real.py.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from bot.inference.base import AdapterLoadError, ModelUnavailable
from bot.inference.openai_backend import OpenAIBackend
from bot.settings import InferenceSettings
from tests.vllm_fake import FakeVLLM

MESSAGES = [{"role": "user", "content": "My hands sweat all the time."}]


@pytest.fixture
def adapters(tmp_path: Path) -> dict[str, Path]:
    """Adapter folders (the fake only checks that the folder exists)."""
    dirs = {}
    for version in ("v1", "v2", "v3"):
        d = tmp_path / version
        d.mkdir()
        (d / "adapter_config.json").write_text("{}")
        (d / "adapter_model.safetensors").write_bytes(b"x")
        dirs[version] = d
    return dirs


@pytest.fixture
async def servers():
    started: list[FakeVLLM] = []

    async def make(n: int = 1, **kwargs) -> list[FakeVLLM]:
        for _ in range(n):
            started.append(await FakeVLLM(**kwargs).start())
        return started[-n:]

    yield make
    for server in started:
        await server.stop()


def backend_for(*servers: FakeVLLM, **overrides) -> OpenAIBackend:
    settings = InferenceSettings(
        backend="openai",
        openai_base_url=servers[0].url,
        openai_replica_urls=[s.url for s in servers[1:]],
        timeout_s=overrides.pop("timeout_s", 5.0),
        max_retries=overrides.pop("max_retries", 2),
        openai_health_interval_s=overrides.pop("health_interval_s", 0),
        **overrides,
    )
    return OpenAIBackend(settings, model="base")


async def test_base_model_and_adapter_chat(servers, adapters):
    (server,) = await servers()
    backend = backend_for(server)
    await backend.start()
    try:
        gen = await backend.generate(MESSAGES)
        assert gen.text.startswith("[base]") and gen.adapter_version is None and gen.completion_tokens == 5

        await backend.swap_adapter("v1", adapters["v1"])
        gen = await backend.generate(MESSAGES)
        assert gen.text.startswith("[v1]") and gen.adapter_version == "v1"
        name = backend.served_model
        assert name.startswith("v1@") and name in server.loaded  # a unique name, not the bare version
        assert backend.status().healthy and backend.status().adapter_version == "v1"
    finally:
        await backend.close()


async def test_a_name_is_never_reused(servers, adapters):
    (server,) = await servers()
    backend = backend_for(server)
    await backend.start()
    try:
        for version in ("v1", "v2", "v1", "v2", "v1"):
            await backend.swap_adapter(version, adapters[version])
            assert (await backend.generate(MESSAGES)).text.startswith(f"[{version}]")
        await backend.wait_retired()
        assert len(server.loads) == 5 and len(set(server.loads)) == 5, server.loads
        assert not [e for e in server.errors if e[0] == 400]
        assert list(server.loaded) == [backend.served_model]  # every old version was unloaded
    finally:
        await backend.close()


async def test_failed_load_keeps_the_live_adapter(servers, adapters, tmp_path):
    (server,) = await servers()
    backend = backend_for(server)
    await backend.start()
    try:
        await backend.swap_adapter("v1", adapters["v1"])
        live_name = backend.served_model
        with pytest.raises(AdapterLoadError) as info:
            await backend.swap_adapter("v2", tmp_path / "no-such-adapter")
        message = str(info.value)
        assert "404" in message and server.url in message and "v1 keeps serving" in message
        assert backend.adapter_version == "v1" and backend.served_model == live_name
        assert (await backend.generate(MESSAGES)).text.startswith("[v1]")

        # Weights the server cannot read (HTTP 500 from the worker): same outcome.
        server.fail_load_paths.add(str(adapters["v3"]))
        with pytest.raises(AdapterLoadError, match="500"):
            await backend.swap_adapter("v3", adapters["v3"])
        assert (await backend.generate(MESSAGES)).text.startswith("[v1]")
        assert list(server.loaded) == [live_name]
    finally:
        await backend.close()


async def test_adapter_that_loads_but_does_not_answer_is_unloaded(servers, adapters):
    (server,) = await servers()
    backend = backend_for(server, max_retries=0)
    await backend.start()
    try:
        await backend.swap_adapter("v1", adapters["v1"])
        original = server._chat

        async def chat(request):  # the new adapter's first request fails on the server
            body = await request.json()
            if body["model"].startswith("v2@"):
                return server._error(500, "engine error", "InternalServerError")
            return await original(request)

        server.fail_chat_models.clear()
        server._chat = chat  # type: ignore[method-assign]
        await server.stop()
        await server.start()  # re-bind with the patched handler (same port, adapters kept)
        with pytest.raises(AdapterLoadError, match="does not answer"):
            await backend.swap_adapter("v2", adapters["v2"])
        assert not [n for n in server.loaded if n.startswith("v2@")]
        assert (await backend.generate(MESSAGES)).text.startswith("[v1]")
    finally:
        await backend.close()


async def test_reload_is_all_or_nothing_across_replicas(servers, adapters):
    a, b, c = await servers(3)
    backend = backend_for(a, b, c)
    await backend.start()
    try:
        await backend.swap_adapter("v1", adapters["v1"])
        assert all(len(s.loaded) == 1 for s in (a, b, c))
        c.fail_load_paths.add(str(adapters["v2"]))
        with pytest.raises(AdapterLoadError) as info:
            await backend.swap_adapter("v2", adapters["v2"])
        assert c.url in str(info.value) and "1 of 3" in str(info.value)
        # None switched: v2 was unloaded from a and b, v1 still serves everywhere.
        for server in (a, b, c):
            assert [Path(p).name for p in server.loaded.values()] == ["v1"]
        answers = await asyncio.gather(*(backend.generate(MESSAGES) for _ in range(12)))
        assert all(g.text.startswith("[v1]") for g in answers)
        assert all(s.chats for s in (a, b, c))

        c.fail_load_paths.clear()
        await backend.swap_adapter("v2", adapters["v2"])
        await backend.wait_retired()
        for server in (a, b, c):
            assert [Path(p).name for p in server.loaded.values()] == ["v2"]
        assert len(set(a.loads + b.loads + c.loads)) == len(a.loads + b.loads + c.loads)
    finally:
        await backend.close()


async def test_requests_spread_over_replicas(servers):
    a, b = await servers(2, delay_s=0.05)
    backend = backend_for(a, b)
    await backend.start()
    try:
        await asyncio.gather(*(backend.generate(MESSAGES) for _ in range(20)))
        assert a.chats["base"] >= 5 and b.chats["base"] >= 5, (a.chats, b.chats)
        detail = backend.status().detail
        assert detail["replicas_up"] == "2/2"
    finally:
        await backend.close()


async def test_unhealthy_replica_is_skipped_and_brought_back(servers, adapters):
    a, b = await servers(2)
    backend = backend_for(a, b)
    await backend.start()
    try:
        await backend.swap_adapter("v1", adapters["v1"])
        b.healthy = False  # /health answers 503 (vLLM: engine dead)
        await backend.check_health()
        status = backend.status()
        assert status.healthy and status.detail["replicas_up"] == "1/2"
        assert "503" in status.detail["replicas"][1]["error"]
        before = b.chats.total()
        await asyncio.gather(*(backend.generate(MESSAGES) for _ in range(10)))
        assert b.chats.total() == before  # all went to a

        b.healthy = True
        await backend.check_health()
        assert backend.status().detail["replicas_up"] == "2/2"
        await asyncio.gather(*(backend.generate(MESSAGES) for _ in range(10)))
        assert b.chats.total() > before
    finally:
        await backend.close()


async def test_replica_killed_mid_run_costs_no_request_and_rejoins_with_the_adapter(servers, adapters):
    a, b = await servers(2, delay_s=0.01)
    backend = backend_for(a, b, health_interval_s=0.1)
    await backend.start()
    try:
        await backend.swap_adapter("v1", adapters["v1"])
        results: list[object] = []

        async def client(n: int) -> None:
            for _ in range(n):
                try:
                    results.append((await backend.generate(MESSAGES)).text)
                except Exception as exc:  # counted, not raised: the test checks there are none
                    results.append(exc)

        load = asyncio.gather(*(client(60) for _ in range(4)))
        await asyncio.sleep(0.1)
        await b.stop()  # killed: connections refused
        for _ in range(60):  # a failed request or the next health check takes it out
            if not backend.status().detail["replicas"][1]["up"]:
                break
            await asyncio.sleep(0.05)
        assert not backend.status().detail["replicas"][1]["up"]
        await b.restart()  # back, without its runtime-loaded adapters
        await load
        failures = [r for r in results if not isinstance(r, str)]
        assert not failures and len(results) == 240
        assert all(str(r).startswith("[v1]") for r in results)

        for _ in range(50):  # the health loop (every 0.1 s) re-loads v1 on b and takes it back
            if backend.status().detail["replicas"][1]["up"]:
                break
            await asyncio.sleep(0.05)
        assert backend.status().detail["replicas_up"] == "2/2"
        assert [Path(p).name for p in b.loaded.values()] == ["v1"]
        served_before = b.chats.total()
        await asyncio.gather(*(backend.generate(MESSAGES) for _ in range(10)))
        assert b.chats.total() > served_before
    finally:
        await backend.close()


async def test_replica_that_lost_the_adapter_between_checks(servers, adapters):
    """A replica restarted between two health checks answers 404 for the adapter name: the
    request is answered by another replica, and the next check re-loads the adapter."""
    a, b = await servers(2)
    backend = backend_for(a, b)
    await backend.start()
    try:
        await backend.swap_adapter("v1", adapters["v1"])
        b.loaded.clear()
        answers = await asyncio.gather(*(backend.generate(MESSAGES) for _ in range(6)))
        assert all(g.text.startswith("[v1]") for g in answers)
        assert not backend.status().detail["replicas"][1]["up"]
        await backend.check_health()
        assert backend.status().detail["replicas_up"] == "2/2" and len(b.loaded) == 1
    finally:
        await backend.close()


async def test_old_adapter_is_unloaded_after_its_requests_finish(servers, adapters):
    (server,) = await servers(delay_s=0.4)
    backend = backend_for(server)
    await backend.start()
    try:
        await backend.swap_adapter("v1", adapters["v1"])
        old_name = backend.served_model
        slow = asyncio.create_task(backend.generate(MESSAGES))
        await asyncio.sleep(0.1)  # the v1 request is running on the server
        started = time.perf_counter()
        await backend.swap_adapter("v2", adapters["v2"])
        assert time.perf_counter() - started < 0.3  # the switch does not wait for it
        assert (await slow).text.startswith("[v1]")  # answered wholly by the old adapter
        await backend.wait_retired()
        assert old_name in server.unloads and not server.busy_unloads
        assert (await backend.generate(MESSAGES)).text.startswith("[v2]")
    finally:
        await backend.close()


async def test_back_to_the_base_model(servers, adapters):
    (server,) = await servers()
    backend = backend_for(server)
    await backend.start()
    try:
        await backend.swap_adapter("v1", adapters["v1"])
        await backend.swap_adapter(None, None)
        assert (await backend.generate(MESSAGES)).text.startswith("[base]")
        await backend.wait_retired()
        assert server.loaded == {}
    finally:
        await backend.close()


async def test_adapter_already_loaded_by_serve_is_adopted(servers, adapters):
    """``llm4sweat serve`` loads the live adapter before the bot starts: the bot adopts it."""
    (server,) = await servers()
    server.loaded["v1@fromserve"] = str(adapters["v1"])
    backend = backend_for(server)
    await backend.start()
    try:
        await backend.swap_adapter("v1", adapters["v1"])
        assert backend.served_model == "v1@fromserve" and server.loads == []
        assert (await backend.generate(MESSAGES)).text.startswith("[v1]")
    finally:
        await backend.close()


async def test_unreachable_server_raises_model_unavailable(servers, adapters):
    (server,) = await servers()
    url = server.url
    await server.stop()
    settings = InferenceSettings(backend="openai", openai_base_url=url, timeout_s=2, max_retries=0,
                                 openai_health_interval_s=0)
    backend = OpenAIBackend(settings, model="base")
    await backend.start()  # does not raise: the server may come up later
    try:
        assert not backend.status().healthy
        started = time.perf_counter()
        with pytest.raises(ModelUnavailable, match="127.0.0.1"):
            await backend.generate(MESSAGES)
        assert time.perf_counter() - started < 2
        with pytest.raises(AdapterLoadError, match="no model server is reachable"):
            await backend.swap_adapter("v1", adapters["v1"])
        assert backend.adapter_version is None
    finally:
        await backend.close()


async def test_all_replicas_down_then_one_back(servers):
    a, b = await servers(2)
    backend = backend_for(a, b, max_retries=1)
    await backend.start()
    try:
        await a.stop()
        await b.stop()
        with pytest.raises(ModelUnavailable):
            await backend.generate(MESSAGES)
        await b.start()
        # Even before the next health check, a request tries the replicas out of rotation.
        assert (await backend.generate(MESSAGES)).text.startswith("[base]")
    finally:
        await backend.close()


async def test_swap_right_after_every_replica_came_back(servers, adapters):
    """No health check ran since the servers came back: the swap checks them itself."""
    a, b = await servers(2)
    backend = backend_for(a, b)
    await backend.start()
    try:
        await a.stop()
        await b.stop()
        await backend.check_health()
        assert not backend.status().healthy
        await a.start()
        await b.start()
        await asyncio.wait_for(backend.swap_adapter("v1", adapters["v1"]), timeout=5)
        assert backend.status().detail["replicas_up"] == "2/2"
        assert all(len(s.loaded) == 1 for s in (a, b))
        assert (await backend.generate(MESSAGES)).text.startswith("[v1]")
    finally:
        await backend.close()


async def test_service_activate_adapter_through_openai_backend(servers, adapters, settings):
    """Service.activate_adapter hot-swaps on the server and marks the registry; a failed load
    keeps both the server and the registry on the live version."""
    from bot.service import Service
    from pipeline import registry

    (server,) = await servers()
    cfg = settings.model_copy(update={"inference": InferenceSettings(
        backend="openai", base_model="base", openai_base_url=server.url, openai_health_interval_s=0)})
    service = Service(cfg)
    await service.start(retry_loop=False)
    try:
        for version in ("v1", "v2"):
            await registry.register(service.db, version, adapters[version], "base")
        server.fail_load_paths.add(str(adapters["v2"]))
        await service.activate_adapter("v1")
        assert (await registry.live(service.db))["version"] == "v1"
        with pytest.raises(AdapterLoadError):
            await service.activate_adapter("v2")
        assert (await registry.live(service.db))["version"] == "v1"
        assert (await service.backend.generate(MESSAGES)).text.startswith("[v1]")
    finally:
        await service.stop()


async def test_status_command_shows_model_servers_up(tmp_path):
    """Moderators see how many vLLM replicas are up in /status."""
    from bot.inference.openai_backend import OpenAIBackend
    from bot.service import Service
    from bot.settings import load_settings
    from reviewers.models import Actor

    settings = load_settings(data_dir=tmp_path, inference={
        "backend": "openai", "openai_base_url": "http://127.0.0.1:9/v1",
        "openai_replica_urls": ["http://127.0.0.1:10/v1"]})
    backend = OpenAIBackend(settings.inference, model="base")
    service = Service(settings, backend)
    await service.db.open()
    try:
        reply = await service.commands.status(Actor("local", "m", "m", frozenset({"moderator"})))
        assert "Model servers up: " in reply.text and "/2" in reply.text
    finally:
        await backend.close()
        await service.db.close()
