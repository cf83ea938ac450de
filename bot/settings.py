"""All settings of LLM4Sweat in one object.

Sources, highest priority first: explicit arguments, environment variables with the prefix
``LLM4SWEAT_`` (nested with ``__``, e.g. ``LLM4SWEAT_INFERENCE__BACKEND=openai``), then an
optional TOML file (``LLM4SWEAT_CONFIG`` or ``--config``). Secrets are accepted from the
environment only: a secret in the TOML file is refused, so a config file can be shared or
committed without leaking a token.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, field_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from bot.chat_format import DEFAULT_TEMPLATE_DATE

ENV_PREFIX = "LLM4SWEAT_"
DEFAULT_BASE_MODEL = "meta-llama/Llama-3.2-1B-Instruct"
DEFAULT_DEMO_MODEL = "Qwen/Qwen2.5-0.5B-Instruct"  # Apache-2.0, about 1 GB
PACKS_DIR = Path(__file__).resolve().parent.parent / "pipeline" / "packs"


class Section(BaseModel):
    """Base for setting sections: unknown keys are errors, not silently ignored."""

    model_config = ConfigDict(extra="forbid")


class InferenceSettings(Section):
    backend: Literal["local", "openai", "fixed"] = "local"
    base_model: str = DEFAULT_BASE_MODEL
    # What `llm4sweat demo` serves when the Hugging Face Hub is reachable: a small instruct model
    # with a permissive licence (no licence to accept, no token) that runs on a laptop CPU.
    # Empty: always the offline demo model. Why this one: docs/models.md.
    demo_model: str = DEFAULT_DEMO_MODEL
    # Served model name for the openai backend when no adapter is live (vLLM: the base model).
    openai_base_url: str = "http://127.0.0.1:8000/v1"
    # Extra replica URLs for the openai backend (vLLM replicas): requests go to the healthy
    # ones; an adapter reload loads on all of them before switching.
    openai_replica_urls: list[str] = Field(default_factory=list)
    # Seconds between health checks of each replica (0: no background checks).
    openai_health_interval_s: float = Field(5.0, ge=0)
    openai_api_key: SecretStr | None = None
    timeout_s: float = Field(60.0, gt=0)
    # Seconds a patient waits for the model before being told the answer is coming (the call goes
    # on in the background). A message claimed for answering longer ago than this plus a margin
    # is taken as abandoned by a crashed process and answered again.
    deadline_s: float = Field(20.0, gt=0)
    # Conversations answered at once when the retry loop works through a backlog (after an
    # outage, a pause or a restart); about the model server's batch size.
    max_concurrency: int = Field(8, ge=1, le=256)
    # Seconds between rounds of the retry loop (answers what waits after an outage, a pause or a
    # crash; expires old reviews). Short in benchmarks that must see many rounds.
    retry_interval_s: float = Field(15.0, gt=0)
    max_retries: int = Field(2, ge=0, le=10)
    max_new_tokens: int = Field(256, ge=1, le=8192)
    temperature: float = Field(0.3, ge=0.0, le=2.0)
    # Local backend: how many requests are generated together, and how long to wait to fill a batch.
    max_batch_size: int = Field(8, ge=1, le=256)
    batch_window_ms: float = Field(5.0, ge=0)
    device: Literal["auto", "cpu", "cuda"] = "auto"
    # Fixed backend (tests, benchmarks): a reply after a known delay, no model.
    fixed_delay_s: float = Field(0.0, ge=0)


class ReviewSettings(Section):
    mode: Literal["immediate", "gated"] = "immediate"
    quorum: int = Field(1, ge=1, le=20)
    # Items nobody decided within this many hours are marked expired.
    expire_after_hours: float = Field(24 * 7, gt=0)
    # An approved reply enters training only if its reviewers' accuracy score (1-5) is at least
    # this (the lowest score among approving reviewers counts); checked at every dataset export.
    min_accuracy_for_training: int = Field(3, ge=1, le=5)
    # Chat platforms whose reviewer channel gets review cards ("discord", "slack"); unset: every
    # connected one; []: none (reviewers use the console). Patients are told which (bot/consent.py):
    # a patient's words are posted on each platform listed, whichever platform they wrote on.
    platforms: list[Literal["discord", "slack"]] | None = None


class PrivacySettings(Section):
    """How long patients' conversations are kept: stated in the consent notice, and done."""

    # A conversation is deleted this many days after its last message (its messages, replies and
    # review items; posted cards are redacted). Training examples made from it with the patient's
    # agreement stay until the patient uses /forget-me. 0: kept until the patient deletes it.
    retention_days: int = Field(0, ge=0, le=36500)


class OutboxSettings(Section):
    """Effects of decisions (patient views, review cards, dataset examples, alerts), applied after the
    decision is committed and retried with exponential backoff until done (bot/outbox.py)."""

    retry_base_s: float = Field(5.0, gt=0)
    retry_max_s: float = Field(3600.0, gt=0)
    # After this many failed attempts an effect is logged at ERROR and counted as failing in /status;
    # it is still retried every retry_max_s until done (nothing is given up).
    max_attempts: int = Field(12, ge=1, le=1000)


class JudgeSettings(Section):
    """An LLM judge as a first reader of every reply (reviewers/judge.py, bot/judging.py).

    Optional and never a decision: it scores each stored reply on the reviewers' rubric with a
    one-line reason, shown on the review card, and orders the reviewer queue. Any
    OpenAI-compatible model: the served model (default: the vLLM address and base model below)
    or a frontier one. The API key comes from the environment only."""

    enabled: bool = False
    base_url: str = "http://127.0.0.1:8000/v1"
    # None: the served base model (inference.base_model).
    model: str | None = None
    api_key: SecretStr | None = None
    # Seconds one judge request may take; a timeout is one failed attempt.
    timeout_s: float = Field(30.0, gt=0)
    # Attempts per reply before its card says "judge unavailable"; waits between them double
    # from retry_base_s.
    max_attempts: int = Field(3, ge=1, le=20)
    retry_base_s: float = Field(30.0, gt=0)
    # Replies judged at once.
    concurrency: int = Field(1, ge=1, le=16)
    # Pack facts given to the judge per reply (the most relevant to the question and reply).
    facts: int = Field(8, ge=1, le=64)
    max_tokens: int = Field(300, ge=32, le=4096)
    # json_schema: structured output; none: JSON asked for in the prompt; auto: json_schema,
    # falling back to JSON in the text when the server refuses it. Replies are validated either way.
    structured_output: Literal["auto", "json_schema", "none"] = "auto"


class MetricsSettings(Section):
    """Prometheus metrics (bot/metrics.py). Always served at /metrics on the console, for signed-in
    moderators and for the control token (a scraper on this machine reads it from
    <data_dir>/control-token). ``port`` also serves them, without sign-in, on a loopback port of
    their own — for a scraper on the same machine; off by default, so nothing unauthenticated
    listens unless asked for."""

    port: int | None = Field(None, ge=1, le=65535)
    host: str = "127.0.0.1"

    @field_validator("host")
    @classmethod
    def _loopback(cls, value: str) -> str:
        import ipaddress

        if value == "localhost":
            return value
        try:
            loopback = ipaddress.ip_address(value).is_loopback
        except ValueError:
            loopback = False
        if not loopback:
            raise ValueError("metrics without sign-in are served on a loopback address only (127.0.0.1 or ::1); "
                             "elsewhere, scrape the console's /metrics with the control token")
        return value


class PromptSettings(Section):
    # Tokens available for system prompt + guidance + history + the new message.
    token_budget: int = Field(1536, ge=64)
    max_message_chars: int = Field(4000, ge=1)
    system_prompt_extra: str = ""
    # The date chat templates print (Llama 3.x: "Today Date: ..."), the same for training,
    # evaluation and serving, so a model never sees a prompt that differs by the day
    # (bot/chat_format.py). Empty: let the template print today's date.
    template_date: str = DEFAULT_TEMPLATE_DATE


class LocalConsoleSettings(Section):
    """The web console. Reviewers and moderators sign in with accounts (``llm4sweat users``,
    docs/access.md); patients get an anonymous id kept in their own browser."""

    host: str = "127.0.0.1"
    port: int = Field(8377, ge=0, le=65535)
    # The address people open, e.g. "https://support.example.org" (behind a TLS proxy). Needed
    # to serve beyond loopback; the Host check then accepts its host name, and the session
    # cookie is marked Secure when it is https.
    public_url: str | None = None
    # A sign-in lasts this long (the session is stored hashed and can be revoked earlier).
    session_hours: float = Field(12.0, gt=0, le=24 * 30)
    # One-time sign-in links (``llm4sweat demo`` prints them) expire after this many minutes.
    login_link_minutes: float = Field(60.0, gt=0, le=24 * 60)

    @field_validator("public_url")
    @classmethod
    def _public_url(cls, value: str | None) -> str | None:
        if value is None or not value.strip():
            return None
        from urllib.parse import urlsplit

        parts = urlsplit(value.strip())
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError("must be an http:// or https:// address, e.g. https://support.example.org")
        if parts.path not in ("", "/") or parts.query or parts.fragment:
            raise ValueError("must be the site's address without a path, e.g. https://support.example.org")
        return f"{parts.scheme}://{parts.netloc}".lower()


class DiscordSettings(Section):
    token: SecretStr | None = None
    guild_ids: list[int] = Field(default_factory=list)
    support_channel_ids: list[int] = Field(default_factory=list)
    # Categories whose text channels all count as support channels.
    support_category_ids: list[int] = Field(default_factory=list)
    reviewer_channel_id: int | None = None
    # Where alerts go (crisis, model outage); default: the reviewer channel.
    alert_channel_id: int | None = None
    # Role names (or role ids) that grant the reviewer / moderator roles.
    reviewer_role: str = "reviewer"
    moderator_role: str = "moderator"
    allow_dms: bool = False
    # Minimum seconds between two edits of review cards in one channel (Discord rate limits).
    card_edit_interval_s: float = Field(1.0, ge=0)
    # How often a long job's progress message is refreshed.
    progress_interval_s: float = Field(15.0, gt=0)
    # Patient threads archive after this many minutes without activity (60, 1440, 4320 or 10080).
    thread_archive_minutes: Literal[60, 1440, 4320, 10080] = 1440


class SlackSettings(Section):
    bot_token: SecretStr | None = None
    app_token: SecretStr | None = None
    signing_secret: SecretStr | None = None
    mode: Literal["socket", "http"] = "socket"
    http_port: int = Field(3000, ge=0, le=65535)
    support_channel_ids: list[str] = Field(default_factory=list)
    reviewer_channel_id: str | None = None
    reviewer_usergroup_id: str | None = None
    reviewer_user_ids: list[str] = Field(default_factory=list)
    moderator_user_ids: list[str] = Field(default_factory=list)
    allow_dms: bool = False
    api_base_url: str | None = None
    # HTTP mode: where the Events / Interactivity / Slash command Request URL is served. Loopback
    # by default: put a TLS reverse proxy in front, or set "0.0.0.0" deliberately (docs/slack.md).
    http_host: str = "127.0.0.1"
    http_path: str = "/slack/events"
    # Slash commands are /<command_prefix><name> (/sweat-status …); command_names overrides single
    # names, e.g. {"status" = "/clinic-status", "forget-me" = "/forget-me"}.
    command_prefix: str = "sweat-"
    command_names: dict[str, str] = Field(default_factory=dict)


class TrainingSettings(Section):
    lora_rank: int = Field(8, ge=1)
    lora_alpha: int = Field(16, ge=1)
    lora_dropout: float = Field(0.05, ge=0, lt=1)
    target_modules: list[str] = Field(
        default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    )
    learning_rate: float = Field(2e-4, gt=0)
    epochs: float = Field(3.0, gt=0)
    batch_size: int = Field(8, ge=1)
    max_length: int = Field(1024, ge=16)
    retrain_min_new_examples: int = Field(20, ge=1)
    retrain_interval_hours: float = Field(24.0, gt=0)
    # Scheduled retraining (every retrain_interval_hours, when retrain_min_new_examples expert
    # examples are new): "request" tells moderators a round is due and how to run the GPU trainer
    # job (deploy/README.md) — nothing trains in the serving process; "in_service" trains inside
    # the serving process (its CPU unless it has a GPU: fine for small models and the demo);
    # "off" schedules nothing. A moderator's /retrain always trains in the service.
    retrain_schedule: Literal["request", "in_service", "off"] = "request"
    # The promotion gate (pipeline/gate.py) decides on the pack's dev questions: a candidate
    # must gain at least gate_min_gain_points (percentage points of gate_metric accuracy) with an
    # exact McNemar p below gate_alpha; held-out safety replies must reach gate_safety_floor.
    gate_alpha: float = Field(0.05, gt=0, lt=1)
    gate_min_gain_points: float = Field(2.0, ge=0, le=100)
    gate_metric: Literal["mean_token", "acc", "acc_norm", "lettered"] = "mean_token"
    gate_safety_floor: float = Field(0.75, ge=0, le=1)


class GenerationSettings(Section):
    """Synthetic vignette generation (``llm4sweat generate``) against an OpenAI-compatible API."""

    base_url: str = "https://api.openai.com/v1"
    model: str = "gpt-4o"
    api_key: SecretStr | None = None
    concurrency: int = Field(4, ge=1, le=256)
    # Seconds one request may take; a timed-out request is retried by the client like a 429/5xx.
    timeout_s: float = Field(120.0, gt=0)
    # Retries by the openai client itself (exponential backoff, honours Retry-After).
    max_retries: int = Field(4, ge=0, le=20)
    # Sampling and length for ordinary chat models (gpt-4o, vLLM-served models ...).
    temperature: float = Field(0.9, ge=0.0, le=2.0)
    max_tokens: int = Field(1200, ge=64, le=32768)
    # Reasoning models (GPT-5, o-series) refuse temperature/top_p/max_tokens: they get
    # max_completion_tokens (reasoning and reply together) and no sampling parameters. A model is
    # one when its name, after any "provider/" prefix, matches one of these shell-style patterns
    # (case-insensitive). Any other model that answers "unsupported parameter" is adapted to at
    # run time (see pipeline/generate.py).
    reasoning_models: list[str] = Field(default_factory=lambda: ["gpt-5*", "o1*", "o3*", "o4*"])
    max_completion_tokens: int = Field(8000, ge=256, le=128000)
    # Sent to reasoning models only when set; unset leaves the model's own default.
    reasoning_effort: Literal["minimal", "low", "medium", "high"] | None = None
    # json_schema: structured output; json_object: JSON mode; none: the prompt alone;
    # auto: json_schema, falling back when the server refuses it. Replies are validated either way.
    structured_output: Literal["auto", "json_schema", "json_object", "none"] = "auto"
    # Requests per plan slot within one run when a vignette is rejected (a re-run tries again).
    attempts_per_slot: int = Field(2, ge=1, le=10)
    # Patient questions this similar (character-shingle Jaccard) to a stored one are near-duplicates.
    near_duplicate_threshold: float = Field(0.6, gt=0.0, le=1.0)


class LlamaGuardSettings(Section):
    """Llama Guard 3 served by vLLM (deploy/compose.yaml, profile ``llama-guard``): a second opinion
    on patient messages and, with ``check_replies``, on model replies. Off while base_url is empty."""

    base_url: str = ""  # e.g. http://llama-guard:8000/v1
    model: str = "meta-llama/Llama-Guard-3-1B"
    timeout_s: float = Field(3.0, gt=0, le=60)
    # The environment variable holding the server's API key (vLLM --api-key); the key itself never
    # goes in a settings file.
    api_key_env: str = "LLAMA_GUARD_API_KEY"
    check_replies: bool = True


class ModerationSettings(Section):
    """OpenAI moderation (omni-moderation-latest), used when the variable api_key_env names is set."""

    enabled: bool = True
    api_key_env: str = "OPENAI_API_KEY"
    model: str = "omni-moderation-latest"
    base_url: str = ""  # empty: OpenAI's own
    timeout_s: float = Field(3.0, gt=0, le=60)
    # "violence" flagged counts as a crisis (harm to others); off: only noted.
    violence_is_crisis: bool = True
    check_replies: bool = False


class SafetySettings(Section):
    """Abuse limits and language support of the safety layer (bot/safety/)."""

    # Remote layers (both optional; the offline rules and learned model always run). All remote
    # layers are asked at once; one that has not answered within remote_deadline_s, fails or
    # answers something unreadable counts as "possible crisis", never "safe".
    llama_guard: LlamaGuardSettings = Field(default_factory=LlamaGuardSettings)
    moderation: ModerationSettings = Field(default_factory=ModerationSettings)
    remote_deadline_s: float = Field(4.0, gt=0, le=60)

    # Per-patient rate limit: at most rate_limit_messages within rate_limit_window_s seconds.
    rate_limit_messages: int = Field(8, ge=1, le=10_000)
    rate_limit_window_s: float = Field(60.0, gt=0)
    # Model calls one patient may have in flight at once (fairness: a flood cannot starve others).
    per_patient_concurrency: int = Field(1, ge=1, le=64)
    # Languages the model may answer in besides the pack's own language (ISO 639-1 codes);
    # messages in other languages get a clear statement, in their language, of what is supported.
    reply_languages: list[str] = Field(default_factory=list)
    # Thresholds on the learned model's crisis probability (rules fire regardless); lower = more
    # recall. At or above crisis_threshold: crisis. Between the two: the reply is held for a human
    # first. Unset: the values chosen by cross-validation (bot/safety/detector.py, docs/safety.md).
    crisis_threshold: float | None = Field(None, gt=0, lt=1)
    possible_crisis_threshold: float | None = Field(None, gt=0, lt=1)
    # A crisis case nobody has taken over is alerted again after this many minutes (and again
    # after as many more, until someone acts); 0 = never again.
    crisis_realert_minutes: float = Field(15.0, ge=0, le=24 * 60)
    # Regions the patients are in (keys or aliases of the pack's crisis_resources.toml, e.g.
    # ["US", "UK"]): `llm4sweat doctor` checks the pack has local crisis resources for each.
    regions: list[str] = Field(default_factory=list)
    # The offline triage (rules + learned model, 1-2 ms of CPU per message) in a process of its
    # own beside the service (bot/triage_worker.py); its verdicts are the same, and when it is not
    # ready, fails or is late the service triages the message itself. Off by default: measured
    # with bench/bench_core_overhead.py (100 conversations, 2 cores, the database work on the
    # loop's thread), in-process triage is faster at quiet and at heavy load alike -- 1 s model
    # time, load 1.4-1.7: p50 3.7-4.2 ms / p99 8.6-10.0 ms in-process vs 6.3-7.3 / 16.2-28.2 with
    # the child; 0.25 s model time (400 messages/s), load 1.5-2.2: p50 21-104 / p99 46-272 vs
    # 40-295 / 219-583. The round trip (pipe write waking the child, which then preempts the
    # loop on a shared core, and the child's cold ~2 ms per triage vs ~1.05 ms warm) costs more
    # than the CPU it moves off the loop. Turn it on only where a measurement on that machine
    # (e.g. with a heavier safety model) says it helps.
    triage_process: bool = False

    @property
    def use_triage_process(self) -> bool:
        return self.triage_process


class ServeSettings(Section):
    """``llm4sweat serve``: a vLLM OpenAI-compatible server for the base model, LoRA enabled.

    vLLM runs in its own environment (``scripts/install-vllm.sh`` makes ``.venv-vllm``)."""

    # Python of the vLLM environment; default: ./.venv-vllm/bin/python, else this Python if
    # it can import vllm.
    python: str | None = None
    host: str = "127.0.0.1"
    port: int = Field(8000, ge=1, le=65535)
    # The model to load (default: inference.base_model); served under inference.base_model.
    model: str | None = None
    tensor_parallel_size: int = Field(1, ge=1, le=64)
    # Highest LoRA rank accepted (must be >= training.lora_rank); adapters served at once.
    max_lora_rank: int = Field(16, ge=1, le=512)
    max_loras: int = Field(2, ge=1, le=64)
    max_model_len: int | None = Field(None, ge=16)
    dtype: str = "auto"
    # GPU: fraction of memory vLLM may take. CPU build: GiB of KV cache (VLLM_CPU_KVCACHE_SPACE).
    gpu_memory_utilization: float | None = Field(None, gt=0, le=1)
    cpu_kvcache_space_gb: int | None = Field(None, ge=1)
    # More vLLM command-line arguments, passed as they are.
    extra_args: list[str] = Field(default_factory=list)
    # Seconds to wait for the server to answer /health.
    startup_timeout_s: float = Field(900.0, gt=0)


SECRET_KEYS = {
    ("inference", "openai_api_key"),
    ("discord", "token"),
    ("slack", "bot_token"),
    ("slack", "app_token"),
    ("slack", "signing_secret"),
    ("generation", "api_key"),
    ("judge", "api_key"),
}


def default_data_dir() -> Path:
    return Path(os.environ.get("XDG_DATA_HOME", Path.home() / ".local" / "share")) / "llm4sweat"


class Settings(BaseSettings):
    """Everything the service reads at start-up."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        env_nested_delimiter="__",
        extra="forbid",
        validate_default=True,
    )

    data_dir: Path = Field(default_factory=default_data_dir)
    database_path: Path | None = None  # default: data_dir / "llm4sweat.db"
    adapters_dir: Path | None = None  # default: data_dir / "adapters"
    pack: str = "hyperhidrosis"  # a pack name under pipeline/packs, or a path
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    log_message_text: bool = False  # logs never carry patient text unless asked

    inference: InferenceSettings = Field(default_factory=InferenceSettings)
    review: ReviewSettings = Field(default_factory=ReviewSettings)
    privacy: PrivacySettings = Field(default_factory=PrivacySettings)
    outbox: OutboxSettings = Field(default_factory=OutboxSettings)
    judge: JudgeSettings = Field(default_factory=JudgeSettings)
    metrics: MetricsSettings = Field(default_factory=MetricsSettings)
    prompt: PromptSettings = Field(default_factory=PromptSettings)
    local: LocalConsoleSettings = Field(default_factory=LocalConsoleSettings)
    discord: DiscordSettings = Field(default_factory=DiscordSettings)
    slack: SlackSettings = Field(default_factory=SlackSettings)
    training: TrainingSettings = Field(default_factory=TrainingSettings)
    generation: GenerationSettings = Field(default_factory=GenerationSettings)
    safety: SafetySettings = Field(default_factory=SafetySettings)
    serve: ServeSettings = Field(default_factory=ServeSettings)

    _toml_file: Path | None = None

    @field_validator("database_path", "adapters_dir", "data_dir")
    @classmethod
    def _path_is_text(cls, value: Path | None) -> Path | None:
        if value is None:
            return value
        text = str(value)
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:
            raise ValueError("path is not valid UTF-8 text") from None
        if "\x00" in text:
            raise ValueError("path contains a NUL byte")
        return value

    @property
    def db_path(self) -> Path:
        return self.database_path or self.data_dir / "llm4sweat.db"

    @property
    def adapters_path(self) -> Path:
        return self.adapters_dir or self.data_dir / "adapters"

    @property
    def pack_path(self) -> Path:
        candidate = Path(self.pack)
        if candidate.is_dir():
            return candidate
        return PACKS_DIR / self.pack

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        toml_path = _CONFIG_FILE_OVERRIDE or os.environ.get(ENV_PREFIX + "CONFIG")
        if toml_path:
            sources.append(_SecretFreeToml(settings_cls, Path(toml_path)))
        return tuple(sources)

    def redacted(self) -> dict[str, Any]:
        """A dict safe to print or log: secrets shown only as set / not set."""
        data = self.model_dump(mode="json")
        for section, key in SECRET_KEYS:
            value = getattr(getattr(self, section), key)
            data[section][key] = "(set)" if value is not None else None
        return data

    def redact(self, text: str) -> str:
        """``text`` without any configured secret or token-shaped string (see bot.redact)."""
        from bot.redact import redact

        return redact(text, self.secret_values())

    def secret_values(self) -> list[str]:
        values = []
        for section, key in SECRET_KEYS:
            value = getattr(getattr(self, section), key)
            if value is not None and value.get_secret_value():
                values.append(value.get_secret_value())
        return values


_CONFIG_FILE_OVERRIDE: str | None = None


class SettingsError(Exception):
    """A setting is wrong; the message is one line meant for the operator."""


class _SecretFreeToml(TomlConfigSettingsSource):
    def __init__(self, settings_cls: type[BaseSettings], path: Path):
        if not path.is_file():
            raise SettingsError(f"settings file {path}: not found")
        try:
            super().__init__(settings_cls, toml_file=path)
        except Exception as exc:  # tomllib.TOMLDecodeError and friends
            raise SettingsError(f"settings file {path}: not valid TOML ({exc})") from None
        for section, key in SECRET_KEYS:
            block = self.toml_data.get(section)
            if isinstance(block, dict) and key in block:
                raise SettingsError(
                    f"settings file {path}: [{section}] {key} is a secret; set it in the environment "
                    f"as {ENV_PREFIX}{section.upper()}__{key.upper()} instead"
                )


def _describe(error: dict[str, Any]) -> str:
    loc = [str(part) for part in error.get("loc", ())]
    env_name = ENV_PREFIX + "__".join(part.upper() for part in loc)
    dotted = ".".join(loc)
    message = error.get("msg", "invalid")
    if error.get("type") == "extra_forbidden":
        message = "unknown setting"
    return f"setting {dotted} ({env_name}): {message}"


def load_settings(config_file: str | Path | None = None, **overrides: Any) -> Settings:
    """Load settings, turning any validation problem into one readable SettingsError line."""
    global _CONFIG_FILE_OVERRIDE
    _CONFIG_FILE_OVERRIDE = str(config_file) if config_file else None
    try:
        return Settings(**overrides)
    except ValidationError as exc:
        lines = [_describe(err) for err in exc.errors()]
        raise SettingsError("; ".join(lines)) from None
    finally:
        _CONFIG_FILE_OVERRIDE = None
