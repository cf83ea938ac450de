"""Generation against reasoning models (GPT-5, o-series) and 400s told apart by their message,
through the real openai client against the local fake (tests/openai_fake.py, reasoning mode)."""

from __future__ import annotations

import json
import logging
from collections import Counter

import pytest

from bot.settings import GenerationSettings
from pipeline import generate as gen
from pipeline.generation_requests import classify_bad_request, is_reasoning_model
from pipeline.packs import load_pack
from tests.openai_fake import FakeOpenAI, Reply, vignette_responder

session_loop = pytest.mark.asyncio(loop_scope="session")


@pytest.fixture(scope="module")
def pack():
    return load_pack("hyperhidrosis")


def settings_for(server: FakeOpenAI, model: str, **overrides) -> GenerationSettings:
    values = {"base_url": server.base_url, "model": model, "max_retries": 0, "timeout_s": 5.0,
              "attempts_per_slot": 1, "concurrency": 1}
    values.update(overrides)
    return GenerationSettings(**values)


async def stored(db) -> int:
    return await db.fetchval("SELECT COUNT(*) FROM dataset_examples WHERE source = 'synthetic'")


# ------------------------------------------------------------------------------------- the rule


def test_reasoning_models_are_named_by_patterns():
    defaults = GenerationSettings().reasoning_models
    for name in ("gpt-5", "gpt-5-mini", "GPT-5.1", "o1", "o3-mini", "o4-mini-2025-04-16", "openai/gpt-5"):
        assert is_reasoning_model(name, defaults), name
    for name in ("gpt-4o", "gpt-4.1-mini", "meta-llama/Llama-3.2-3B-Instruct", "omni-moderation", "gpt-4o-mini"):
        assert not is_reasoning_model(name, defaults), name
    assert is_reasoning_model("my-reasoner-v2", ["my-reasoner*"])


@pytest.mark.parametrize("message, param, code, kind, name", [
    ("Unsupported parameter: 'max_tokens' is not supported with this model. Use 'max_completion_tokens' instead.",
     "max_tokens", "unsupported_parameter", "unsupported_parameter", "max_tokens"),
    ("Unsupported value: 'temperature' does not support 0.9 with this model. Only the default (1) value is supported.",
     "temperature", "unsupported_value", "unsupported_parameter", "temperature"),
    # a server that names the parameter only in its message
    ("Unsupported parameter: 'top_p' is not supported with this model.", None, None, "unsupported_parameter", "top_p"),
    ("Invalid parameter: 'response_format' of type 'json_schema' is not supported with this model.",
     "response_format", None, "structured_output", "response_format"),
    ("guided decoding: json_schema is not supported by this backend", None, None, "structured_output",
     "response_format"),
    ("This model's maximum context length is 8192 tokens. However, your messages resulted in 9100 tokens.",
     "messages", "context_length_exceeded", "context_length", "messages"),
    ("Invalid prompt: your prompt was flagged as potentially violating our usage policy.", None, "invalid_prompt",
     "content_policy", None),
    ("The model `gpt-7` does not exist or you do not have access to it.", "model", "model_not_found",
     "invalid_model", "model"),
    ("something else went wrong", None, None, "other", None),
])
def test_a_400_is_told_apart_by_its_message(message, param, code, kind, name):
    bad = classify_bad_request(message, param, code)
    assert bad.kind == kind and bad.param == name
    if param is None and code is None and kind != "other":  # the message alone is enough
        assert classify_bad_request(message).kind == kind


# ------------------------------------------------------------------------------------- reasoning models


@session_loop
async def test_a_reasoning_model_gets_max_completion_tokens_and_no_sampling_parameters(db, pack):
    async with FakeOpenAI(vignette_responder(pack), reasoning=True, reasoning_tokens=900) as server:
        summary = await gen.generate(db, pack, settings_for(server, "gpt-5-mini", max_completion_tokens=4000,
                                                            concurrency=3), 6)
    assert summary.generated == 6 and not summary.rejected and not summary.failed
    assert server.statuses == [200] * 6  # nothing refused: the first request was already right
    for body in server.requests:
        assert body["max_completion_tokens"] == 4000
        assert not {"temperature", "top_p", "max_tokens", "reasoning_effort"} & set(body)
        assert body["response_format"]["type"] == "json_schema"
    assert summary.reasoning_tokens == 6 * 900 and not summary.notes


@session_loop
async def test_reasoning_effort_is_sent_only_when_set(db, pack):
    async with FakeOpenAI(vignette_responder(pack), reasoning=True) as server:
        await gen.generate(db, pack, settings_for(server, "o4-mini", reasoning_effort="low"), 2)
    assert all(body["reasoning_effort"] == "low" for body in server.requests)


@session_loop
async def test_an_ordinary_model_keeps_temperature_and_max_tokens(db, pack):
    async with FakeOpenAI(vignette_responder(pack)) as server:
        summary = await gen.generate(db, pack, settings_for(server, "gpt-4o", reasoning_effort="low"), 2)
    assert summary.generated == 2 and server.statuses == [200, 200]
    body = server.requests[0]
    assert body["temperature"] == 0.9 and body["max_tokens"] == 1200
    assert "max_completion_tokens" not in body and "reasoning_effort" not in body


@session_loop
async def test_an_unlisted_reasoning_model_is_learned_from_its_400s_once_per_run(db, pack, caplog):
    """A model the patterns do not name: the first request is refused for max_tokens, the retry
    for temperature; after that every request is right, for the rest of the run."""
    caplog.set_level(logging.WARNING, logger="pipeline.generate")
    async with FakeOpenAI(vignette_responder(pack), reasoning=True, reasoning_tokens=300) as server:
        summary = await gen.generate(db, pack, settings_for(server, "acme-thinker", max_completion_tokens=3000), 5)
    assert summary.generated == 5 and not summary.failed
    assert Counter(server.statuses) == Counter({400: 2, 200: 5})
    assert server.statuses[:2] == [400, 400]
    first, second, third = server.requests[:3]
    assert "max_tokens" in first and "temperature" in first
    assert "max_tokens" not in second and second["max_completion_tokens"] == 3000 and "temperature" in second
    assert "temperature" not in third and third["max_completion_tokens"] == 3000
    assert all("temperature" not in b and "max_tokens" not in b for b in server.requests[2:])
    assert summary.notes == ["the server refused max_tokens: max_completion_tokens sent instead",
                             "the server refused temperature: sent without it"]
    assert any("note: the server refused temperature" in line for line in summary.lines())
    assert "refused max_tokens" in caplog.text
    # listing the model in the setting avoids the two refusals altogether
    async with FakeOpenAI(vignette_responder(pack), reasoning=True) as server:
        summary = await gen.generate(db, pack, settings_for(server, "acme-thinker",
                                                            reasoning_models=["acme-think*"]), 7)
    assert summary.generated == 2 and server.statuses == [200, 200]


@session_loop
async def test_concurrent_requests_adapt_without_a_storm(db, pack):
    async with FakeOpenAI(vignette_responder(pack), reasoning=True, delay=0.02) as server:
        summary = await gen.generate(db, pack, settings_for(server, "acme-thinker", concurrency=4), 12)
    assert summary.generated == 12 and not summary.failed
    # at most one refusal per parameter per worker in flight, never one per slot
    assert server.statuses.count(400) <= 8 and server.statuses.count(200) == 12


@session_loop
async def test_an_empty_reply_after_reasoning_is_asked_again_with_a_larger_budget(db, pack):
    async with FakeOpenAI(vignette_responder(pack), reasoning=True, reasoning_tokens=2500) as server:
        summary = await gen.generate(db, pack, settings_for(server, "gpt-5", max_completion_tokens=2000), 4)
    assert summary.generated == 4 and not summary.rejected
    budgets = [b["max_completion_tokens"] for b in server.requests]
    assert budgets == [2000, 4000, 4000, 4000, 4000]  # raised once, then kept for the run
    assert summary.notes == ["replies were empty after reasoning: max_completion_tokens raised to 4000"]


@session_loop
async def test_a_budget_that_never_suffices_is_reported_clearly(db, pack, caplog):
    caplog.set_level(logging.WARNING, logger="pipeline.generate")
    async with FakeOpenAI(vignette_responder(pack), reasoning=True, reasoning_tokens=10**6) as server:
        summary = await gen.generate(db, pack, settings_for(server, "gpt-5", max_completion_tokens=1000), 3)
    assert summary.generated == 0 and summary.rejected == Counter({"reasoning_budget": 3})
    assert max(b["max_completion_tokens"] for b in server.requests) == 4000  # at most 4x the setting
    assert "raise generation.max_completion_tokens" in caplog.text
    assert await stored(db) == 0


# ------------------------------------------------------------------------------------- other 400s


@session_loop
@pytest.mark.parametrize("reply, words", [
    (Reply.error_status(400, "This model's maximum context length is 8192 tokens. However, your messages resulted "
                             "in 9100 tokens. Please reduce the length of the messages.",
                        code="context_length_exceeded", param="messages"), "context window"),
    (Reply.error_status(400, "Invalid prompt: your prompt was flagged as potentially violating our usage policy.",
                        code="invalid_prompt"), "content policy"),
    (Reply.error_status(400, "Invalid model name passed in model=gpt-7.", param="model"), "generation.model"),
])
async def test_context_policy_and_model_errors_stop_the_run_with_one_clear_message(db, pack, reply, words):
    async with FakeOpenAI(lambda body, i: reply) as server:
        with pytest.raises(gen.GenerationError, match=words) as info:
            await gen.generate(db, pack, settings_for(server, "gpt-4o", concurrency=4), 20)
    assert len(server.requests) <= 4  # the run stops; no fallback, no retry per slot
    assert all(r["response_format"]["type"] == "json_schema" for r in server.requests)  # no silent downgrade
    assert info.value.summary is not None and info.value.summary.generated == 0


@session_loop
async def test_an_unknown_400_fails_the_slot_without_downgrading_structured_output(db, pack):
    async with FakeOpenAI(lambda body, i: Reply.error_status(400, "something odd about this request")) as server:
        summary = await gen.generate(db, pack, settings_for(server, "gpt-4o"), 3)
    assert summary.failed == Counter({"bad_request": 3}) and summary.remaining == 3
    assert summary.structured_output == "json_schema"
    assert [r["response_format"]["type"] for r in server.requests] == ["json_schema"] * 3


@session_loop
async def test_the_fake_answers_like_the_real_api(pack):
    """The error bodies the fake sends are OpenAI's (message, type, param, code)."""
    import openai

    async with FakeOpenAI(vignette_responder(pack), reasoning=True) as server:
        client = openai.AsyncOpenAI(base_url=server.base_url, api_key="x", max_retries=0)
        with pytest.raises(openai.BadRequestError) as info:
            await client.chat.completions.create(model="gpt-5", messages=[{"role": "user", "content": "hi"}],
                                                 max_tokens=10)
        assert info.value.code == "unsupported_parameter" and info.value.param == "max_tokens"
        assert info.value.type == "invalid_request_error"
        assert "Use 'max_completion_tokens' instead" in json.dumps(info.value.body)
        with pytest.raises(openai.BadRequestError) as info:
            await client.chat.completions.create(model="gpt-5", messages=[{"role": "user", "content": "hi"}],
                                                 temperature=0.2)
        assert info.value.code == "unsupported_value" and info.value.param == "temperature"
        await client.close()
