"""The `atp` command: up (the whole thing on one machine), api, worker, simulate, topics,
status, audit, dlq, reconcile."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ctypes
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

from atp_service.config import (
    DLQ_TOPIC,
    EMBEDDED_API_PORT,
    EMBEDDED_KAFKA_PORT,
    EMBEDDED_REDIS_PORT,
    EVENTS_TOPIC,
    INBOUND_TOPICS,
    Settings,
)
from atp_service.embedded import CLUSTER_BUS_OFFSET, TOPIC_PARTITIONS

LOOPBACK = "127.0.0.1"
DEFAULT_WORKER_METRICS_PORT: int = Settings.model_fields["worker_metrics_port"].default
EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
DEMO_CHANNELS_FILE = EXAMPLES / "channels.json"
DEMO_SITES_FILE = EXAMPLES / "sites.json"
#: How often the demo's worker asks the simulated sources for snapshots (reconciliation).
DEMO_RECONCILE_EVERY_SECONDS = "60"

#: The dev keys `atp up` makes: name -> scopes.
DEV_KEY_SCOPES: dict[str, list[str]] = {
    "storefront": ["availability:read"],
    "oms": ["reservations:write", "availability:read"],
    "admin": ["availability:read", "reservations:write", "admin"],
}


class CliError(Exception):
    """A problem to report in one line and exit non-zero, without a traceback."""


# -- argument parsing -------------------------------------------------------------------------


def _port(text: str) -> int:
    value = int(text)
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"{value} is not a TCP port")
    return value


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} is not a positive integer")
    return value


def _non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"{value} is negative")
    return value


def _positive_float(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"{value:g} is not positive")
    return value


def _non_negative_float(text: str) -> float:
    value = float(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"{value:g} is negative")
    return value


def _add_simulation_options(parser: argparse.ArgumentParser, *, prefix: str = "") -> None:
    parser.add_argument(
        f"--{prefix}rate", type=_positive_float, default=200.0, help="events per second"
    )
    parser.add_argument(f"--{prefix}skus", type=_positive_int, default=1000, help="distinct skus")
    parser.add_argument(f"--{prefix}sites", type=_positive_int, default=4, help="distinct sites")
    parser.add_argument(
        f"--{prefix}seed", type=int, default=None, help="fix the random choices (repeatable runs)"
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="atp",
        description="Available-to-promise inventory: WMS/ERP streams folded into Redis, "
        "served over HTTP. Configuration comes from ATP_* environment variables (or .env).",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    up = sub.add_parser(
        "up",
        help="the whole thing on one machine: broker, Redis, worker, API",
        description="Start a Kafka-compatible broker (Tansu) and a redis-server on loopback, "
        "create the topics, run the stream worker and the API with fresh dev API keys, and "
        "stop everything on Ctrl-C.",
    )
    up.add_argument(
        "--demo", action="store_true", help="demo channel policies, site attributes and traffic"
    )
    up.add_argument("--redis-port", type=_port, default=EMBEDDED_REDIS_PORT)
    up.add_argument("--kafka-port", type=_port, default=EMBEDDED_KAFKA_PORT)
    up.add_argument("--api-port", type=_port, default=EMBEDDED_API_PORT)
    up.add_argument(
        "--worker-metrics-port",
        type=_port,
        default=DEFAULT_WORKER_METRICS_PORT,
        help="the worker's /metrics (0: off)",
    )
    up.add_argument(
        "--workdir", type=Path, default=Path(".atp"), help="logs and server files (default .atp)"
    )
    up.add_argument(
        "--channels-file",
        type=Path,
        default=None,
        help="initial channel policies (JSON or TOML); --demo uses examples/channels.json",
    )
    up.add_argument(
        "--sites-file",
        type=Path,
        default=None,
        help="initial site attributes for the promise (JSON or TOML); --demo uses "
        "examples/sites.json",
    )
    up.add_argument(
        "--ready-timeout", type=_positive_float, default=90.0, help="seconds to wait for /readyz"
    )
    up.add_argument(
        "--redis-cluster",
        type=_non_negative_int,
        default=0,
        metavar="N",
        help="a Redis Cluster of N primaries (at least 3) instead of one Redis, its nodes on "
        "consecutive ports from --redis-port (each also uses its port + 10000)",
    )
    up.add_argument(
        "--replicas",
        type=_non_negative_int,
        default=0,
        metavar="R",
        help="replicas of each primary of --redis-cluster",
    )
    up.add_argument(
        "--workers",
        type=_positive_int,
        default=1,
        metavar="W",
        help="stream worker processes (one consumer group; their /metrics on consecutive "
        "ports from --worker-metrics-port)",
    )
    up.add_argument(
        "--api-workers", type=_positive_int, default=1, metavar="A", help="API worker processes"
    )
    up.add_argument(
        "--partitions",
        type=_positive_int,
        default=TOPIC_PARTITIONS[INBOUND_TOPICS[0]],
        metavar="P",
        help="partitions of each inbound topic (at most P workers share them)",
    )
    _add_simulation_options(up, prefix="demo-")

    api = sub.add_parser("api", help="the HTTP service alone")
    api.add_argument("--host", default=LOOPBACK)
    api.add_argument("--port", type=_port, default=EMBEDDED_API_PORT)
    api.add_argument("--workers", type=_positive_int, default=1, help="uvicorn worker processes")

    sub.add_parser("worker", help="the stream agents alone (a Faust worker)")

    simulate = sub.add_parser("simulate", help="realistic WMS/ERP traffic into the inbound topics")
    _add_simulation_options(simulate)
    simulate.add_argument(
        "--duration",
        type=_non_negative_float,
        default=0.0,
        help="seconds to run (0: until Ctrl-C)",
    )

    topics = sub.add_parser(
        "topics",
        help="create the service's four topics on a Kafka that `atp up` did not start",
        description="Create wms.inventory.v1, erp.inventory.v1, atp.events.v1 and "
        "inventory.dlq.v1 on the brokers of ATP_KAFKA_BROKERS. Topics that exist are kept "
        "as they are (their partitions are shown, never changed).",
    )
    topics.add_argument("action", choices=("create",))
    topics.add_argument(
        "--partitions",
        type=_positive_int,
        default=TOPIC_PARTITIONS[EVENTS_TOPIC],
        help="partitions of the inbound and events topics (the inbound ones cap the useful "
        "workers; default %(default)s)",
    )
    topics.add_argument(
        "--dlq-partitions",
        type=_positive_int,
        default=TOPIC_PARTITIONS[DLQ_TOPIC],
        help="partitions of inventory.dlq.v1 (default %(default)s)",
    )
    topics.add_argument(
        "--replication-factor", type=_positive_int, default=1, help="default %(default)s"
    )

    sub.add_parser(
        "status",
        help="what is up: Redis, Kafka, workers, API; versions, lag, outbox, dead letters",
        description="Check Redis (ATP_REDIS_URL), the brokers (ATP_KAFKA_BROKERS), the "
        "workers' consumer group (ATP_WORKER_APP_ID) and the API (ATP_API_URL), and say in "
        "a few lines what is up, what is down and why. Exit code 0 when everything is up, "
        "1 otherwise.",
    )

    sub.add_parser("audit", help="check reserved units against the active reservations")

    from atp_service.dlq import SINCE_FORMS, columns_help

    dlq = sub.add_parser(
        "dlq",
        help="list or replay the dead-letter topic",
        description="`list` shows what inventory.dlq.v1 holds; `replay` re-submits each "
        "letter's original message to its topic, once: it marks what it sent (in Redis), "
        "so a second replay sends nothing again.",
        epilog="Columns of `atp dlq list`:\n" + columns_help(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    dlq.add_argument("action", choices=("list", "replay"))
    dlq.add_argument("--code", default=None, help="only dead letters with this error code")
    dlq.add_argument(
        "--since",
        default=None,
        metavar="T",
        help=f"only dead letters from T on: {SINCE_FORMS}",
    )
    dlq.add_argument("--json", action="store_true", help="list as JSON lines")
    dlq.add_argument(
        "--dry-run", action="store_true", help="replay: show what would be sent, send nothing"
    )

    reconcile = sub.add_parser(
        "reconcile",
        help="ask a source (wms, erp) for snapshots, to reconcile the fold with it",
        description="Publish inventory.snapshot_requested on atp.events.v1 (key: the source): "
        "the source answers with inventory.snapshot.v1 messages, and every bucket that "
        "disagrees with the fold is reported as inventory.drift_detected. Without --site, "
        "every site of the source; without --sku, every sku there.",
    )
    reconcile.add_argument("--source", required=True, help="wms or erp")
    reconcile.add_argument("--site", default=None, help="only this site")
    reconcile.add_argument(
        "--sku",
        dest="skus",
        nargs="+",
        action="extend",
        default=[],
        metavar="SKU",
        help="only these skus (at most 1000)",
    )
    return parser


# -- the single-purpose commands ----------------------------------------------------------------


def _settings() -> Settings:
    from pydantic import ValidationError

    try:
        return Settings()
    except ValidationError as exc:
        problems = "; ".join(
            f"ATP_{'_'.join(str(p) for p in err['loc'][:1]).upper()}: {err['msg']}"
            for err in exc.errors()
        )
        raise CliError(f"invalid configuration: {problems}") from None


def _lazy(module: str, attribute: str) -> Any:
    """Import ``module.attribute`` when the command runs (it may not be installed yet)."""
    import importlib

    try:
        loaded = importlib.import_module(module)
    except ModuleNotFoundError as exc:
        if exc.name is not None and module.startswith(exc.name):
            raise CliError(f"{module} is not available in this installation") from None
        raise
    try:
        return getattr(loaded, attribute)
    except AttributeError:
        raise CliError(f"{module} has no {attribute}() in this installation") from None


def cmd_api(args: argparse.Namespace) -> int:
    serve: Callable[..., None] = _lazy("atp_service.api.server", "serve")
    serve(_settings(), host=args.host, port=args.port, workers=args.workers)
    return 0


def cmd_worker(args: argparse.Namespace) -> int:
    run_worker: Callable[[Settings], None] = _lazy("stream_agents.app", "run_worker")
    run_worker(_settings())
    return 0


def cmd_simulate(args: argparse.Namespace) -> int:
    from aiokafka.errors import KafkaError

    from atp_service.simulate import run_simulation

    settings = _settings()
    try:
        run_simulation(
            settings,
            rate=args.rate,
            skus=args.skus,
            sites=args.sites,
            duration=args.duration or None,
            seed=args.seed,
        )
    except KafkaError as exc:
        raise CliError(f"Kafka at {settings.bootstrap_servers}: {exc!r}") from None
    return 0


def cmd_audit(args: argparse.Namespace) -> int:
    run_audit: Callable[[Settings], int] = _lazy("atp_service.audit", "run_audit")
    return int(run_audit(_settings()))


def cmd_dlq(args: argparse.Namespace) -> int:
    run_dlq: Callable[..., int] = _lazy("atp_service.dlq", "run_dlq")
    return int(
        run_dlq(
            _settings(),
            args.action,
            code=args.code,
            since=args.since,
            as_json=args.json,
            dry_run=args.dry_run,
        )
    )


def cmd_topics(args: argparse.Namespace) -> int:
    from aiokafka.errors import KafkaError

    from atp_service.embedded import create_topics, topic_partitions

    settings = _settings()
    wanted = topic_partitions(args.partitions, args.dlq_partitions)
    try:
        states = asyncio.run(
            create_topics(
                settings.bootstrap_servers, wanted, replication_factor=args.replication_factor
            )
        )
    except KafkaError as exc:
        raise CliError(f"Kafka at {settings.bootstrap_servers}: {exc!r}") from None
    width = max(len(name) for name in wanted)
    for state in states:
        if state.created:
            print(f"{state.name:<{width}}  created, {state.partitions} partitions")
        else:
            differs = state.partitions != wanted[state.name]
            note = f" (not {wanted[state.name]}: an existing topic is kept)" if differs else ""
            print(f"{state.name:<{width}}  exists, {state.partitions} partitions{note}")
    return 0


def cmd_reconcile(args: argparse.Namespace) -> int:
    from aiokafka.errors import KafkaError

    from atp_service.reconcile import BadRequest, run_reconcile

    settings = _settings()
    try:
        return run_reconcile(settings, args.source, args.site, args.skus)
    except BadRequest as exc:
        raise CliError(str(exc)) from None
    except KafkaError as exc:
        raise CliError(f"Kafka at {settings.bootstrap_servers}: {exc!r}") from None


def cmd_status(args: argparse.Namespace) -> int:
    run_status: Callable[[Settings], int] = _lazy("atp_service.status", "run_status")
    return int(run_status(_settings()))


# -- atp up ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class DevKey:
    name: str
    key: str
    scopes: list[str]


def dev_key_variable(role: str) -> str:
    """Where `.atp/env` puts a role's dev key: ``ATP_STOREFRONT_KEY``, ``ATP_OMS_KEY``, ..."""
    return f"ATP_{role.upper()}_KEY"


def make_dev_keys() -> list[DevKey]:
    """Fresh random keys, one per role; `dev-` marks them (refused in production)."""
    return [
        DevKey(name, f"dev-{secrets.token_hex(16)}", scopes)
        for name, scopes in DEV_KEY_SCOPES.items()
    ]


def keys_json(keys: Sequence[DevKey]) -> str:
    return json.dumps([{"name": k.name, "key": k.key, "scopes": k.scopes} for k in keys])


def port_is_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((LOOPBACK, port))
        except OSError:
            return False
    return True


def check_ports(ports: dict[str, tuple[int, str]]) -> None:
    """Refuse to start when a port is taken, naming it and the flag that moves it."""
    seen: dict[int, str] = {}
    for role, (port, flag) in ports.items():
        if port == 0:
            continue
        if port in seen:
            raise CliError(f"{role} and {seen[port]} would both listen on port {port}; see {flag}")
        seen[port] = role
        if not port_is_free(port):
            raise CliError(
                f"port {port} ({role}) is already in use on {LOOPBACK}: stop what holds it "
                f"(another `atp up`?) or choose another port with {flag}"
            )


def _die_with_parent() -> None:
    """In the child: get SIGTERM if `atp up` itself dies, so nothing is orphaned (Linux)."""
    with contextlib.suppress(Exception):
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


@dataclass
class Child:
    """A process `atp up` started (`atp worker`, `atp api`, `atp simulate`)."""

    name: str
    argv: list[str]
    log_path: Path
    stop_timeout: float
    proc: subprocess.Popen[bytes] | None = None

    def start(self, env: dict[str, str]) -> None:
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                self.argv,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=env,
                start_new_session=True,  # Ctrl-C reaches `atp up` alone; it stops us in order
                preexec_fn=_die_with_parent if sys.platform == "linux" else None,
            )

    @property
    def exit_code(self) -> int | None:
        return None if self.proc is None else self.proc.poll()

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(self.stop_timeout)
        except subprocess.TimeoutExpired:
            print(f"  {self.name} did not stop within {self.stop_timeout:g}s; killing it")
            self.proc.kill()
            self.proc.wait(5)


def log_tail(path: Path, lines: int = 20) -> str:
    """The end of a child's log, or its last traceback when it has one (the likely cause)."""
    try:
        text = path.read_text(errors="replace").splitlines()
    except OSError:
        return "  (no log)"
    starts = [i for i, line in enumerate(text) if line.startswith("Traceback")]
    shown = text[starts[-1] : starts[-1] + 2 * lines] if starts else text[-lines:]
    return "\n".join(f"  | {line}" for line in shown)


def http_status(url: str, timeout: float = 1.0) -> int:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return int(response.status)
    except urllib.error.HTTPError as exc:
        return exc.code
    except (urllib.error.URLError, OSError):
        return 0


@dataclass
class Up:
    """One `atp up`: start in order, watch, stop in reverse order."""

    args: argparse.Namespace
    out: Callable[[str], None] = print
    children: list[Child] = field(default_factory=list)
    keys: list[DevKey] = field(default_factory=list)
    stopping: str | None = None

    def request_stop(self, signum: int, _frame: FrameType | None) -> None:
        if self.stopping is None:
            self.stopping = signal.Signals(signum).name

    def ports(self) -> dict[str, tuple[int, str]]:
        """Every port `atp up` will listen on, with the flag that moves it."""
        args = self.args
        ports: dict[str, tuple[int, str]] = {}
        if args.redis_cluster:
            for n in range(args.redis_cluster * (1 + args.replicas)):
                port = args.redis_port + n
                ports[f"Redis Cluster node {n + 1}"] = (port, "--redis-port")
                ports[f"Redis Cluster node {n + 1}'s bus"] = (
                    port + CLUSTER_BUS_OFFSET,
                    "--redis-port",
                )
        else:
            ports["Redis"] = (args.redis_port, "--redis-port")
        ports["Kafka"] = (args.kafka_port, "--kafka-port")
        ports["API"] = (args.api_port, "--api-port")
        if args.worker_metrics_port:
            for n in range(args.workers):
                name = "worker metrics" if args.workers == 1 else f"worker {n + 1} metrics"
                ports[name] = (args.worker_metrics_port + n, "--worker-metrics-port")
        return ports

    def run(self) -> int:
        from atp_service.embedded import (
            MIN_CLUSTER_PRIMARIES,
            EmbeddedError,
            EmbeddedStack,
            ensure_topics,
        )

        args = self.args
        if args.redis_cluster and args.redis_cluster < MIN_CLUSTER_PRIMARIES:
            raise CliError(
                f"--redis-cluster {args.redis_cluster}: a Redis Cluster needs at least "
                f"{MIN_CLUSTER_PRIMARIES} primaries"
            )
        if args.replicas and not args.redis_cluster:
            raise CliError("--replicas is for --redis-cluster (replicas of its primaries)")
        check_ports(self.ports())
        channels_file = args.channels_file
        if channels_file is None and args.demo:
            channels_file = DEMO_CHANNELS_FILE
        if channels_file is not None and not channels_file.is_file():
            raise CliError(f"channel policies file {channels_file} does not exist")
        sites_file = args.sites_file
        if sites_file is None and args.demo:
            sites_file = DEMO_SITES_FILE
        if sites_file is not None and not sites_file.is_file():
            raise CliError(f"site attributes file {sites_file} does not exist")

        workdir: Path = args.workdir.resolve()
        workdir.mkdir(parents=True, exist_ok=True)
        for old in workdir.glob("*.log"):
            old.unlink()
        stack = EmbeddedStack(
            args.redis_port,
            args.kafka_port,
            workdir,
            cluster_primaries=args.redis_cluster,
            cluster_replicas=args.replicas,
        )
        keys = self.keys = make_dev_keys()
        env = {
            **os.environ,
            "PYTHONUNBUFFERED": "1",
            "ATP_REDIS_URL": stack.redis_url,
            "ATP_KAFKA_BROKERS": stack.bootstrap,
            "ATP_API_URL": f"http://{LOOPBACK}:{args.api_port}",
            "ATP_API_KEYS": keys_json(keys),
            "ATP_WORKER_METRICS_PORT": str(args.worker_metrics_port),
        }
        if args.redis_cluster:
            env["ATP_REDIS_CLUSTER"] = "true"
        if channels_file is not None:
            env["ATP_CHANNELS_FILE"] = str(channels_file.resolve())
        if sites_file is not None:
            env["ATP_SITES_FILE"] = str(sites_file.resolve())
        if args.demo:
            # The whole loop: the worker asks, the simulator answers, the fold finds drift.
            env.setdefault("ATP_RECONCILE_EVERY_SECONDS", DEMO_RECONCILE_EVERY_SECONDS)
        topics = {**TOPIC_PARTITIONS, **dict.fromkeys(INBOUND_TOPICS, args.partitions)}

        previous = {
            sig: signal.signal(sig, self.request_stop) for sig in (signal.SIGINT, signal.SIGTERM)
        }
        code = 0
        try:
            code = self._start_and_watch(
                stack, env, keys, lambda bootstrap: ensure_topics(bootstrap, topics)
            )
        except EmbeddedError as exc:
            self.out(f"atp up: {exc} (logs in {workdir})")
            code = 1
        finally:
            # A second Ctrl-C must not cut the orderly stop short.
            for sig in previous:
                signal.signal(sig, signal.SIG_IGN)
            self.out(
                "stopping: "
                + ", ".join([*(c.name for c in reversed(self.children)), "Kafka", "Redis"])
            )
            for child in reversed(self.children):
                child.stop()
            stack.kafka.stop()
            stack.stop_redis()
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            self.out("stopped")
        return code

    def _spawn(self, name: str, argv: list[str], env: dict[str, str], stop_timeout: float) -> Child:
        child = Child(name, argv, self.args.workdir.resolve() / f"{name}.log", stop_timeout)
        child.start(env)
        self.children.append(child)
        return child

    def _start_and_watch(
        self,
        stack: Any,
        env: dict[str, str],
        keys: list[DevKey],
        ensure_topics: Callable[[str], object],
    ) -> int:
        args = self.args
        atp = [sys.executable, "-m", "atp_service"]
        if stack.cluster is not None:
            self.out(
                f"starting a Redis Cluster of {args.redis_cluster} primaries with "
                f"{args.replicas} replica(s) each on {LOOPBACK}:{args.redis_port}-"
                f"{args.redis_port + len(stack.cluster.nodes) - 1} ..."
            )
        else:
            self.out(f"starting Redis on {LOOPBACK}:{args.redis_port} ...")
        stack.start_redis()
        if self.stopping:
            return 0
        self.out(f"starting Kafka-compatible broker (Tansu) on {stack.bootstrap} ...")
        stack.kafka.start()
        ensure_topics(stack.bootstrap)
        if self.stopping:
            return 0
        self.out("starting the stream worker(s) and the API ...")
        for n in range(args.workers):
            worker_env = env
            if args.worker_metrics_port:
                worker_env = {**env, "ATP_WORKER_METRICS_PORT": str(args.worker_metrics_port + n)}
            name = "worker" if args.workers == 1 else f"worker-{n + 1}"
            self._spawn(name, [*atp, "worker"], worker_env, stop_timeout=20.0)
        api = self._spawn(
            "api",
            [*atp, "api", "--host", LOOPBACK, "--port", str(args.api_port),
             "--workers", str(args.api_workers)],
            env,
            10.0,
        )  # fmt: skip
        ready_url = f"http://{LOOPBACK}:{args.api_port}/readyz"
        deadline = time.monotonic() + args.ready_timeout
        while http_status(ready_url) != 200:
            if self.stopping:
                return 0
            if (failed := self._first_dead(stack)) is not None:
                return failed
            if time.monotonic() > deadline:
                self.out(f"atp up: the API was not ready within {args.ready_timeout:g}s")
                self.out(log_tail(api.log_path))
                return 1
            time.sleep(0.2)
        if args.demo:
            self._spawn(
                "simulator",
                [
                    *atp, "simulate",
                    "--rate", str(args.demo_rate),
                    "--skus", str(args.demo_skus),
                    "--sites", str(args.demo_sites),
                    *(["--seed", str(args.demo_seed)] if args.demo_seed is not None else []),
                ],
                env,
                stop_timeout=10.0,
            )  # fmt: skip
        self.out(self.banner(stack, keys, env))
        while not self.stopping:
            if (failed := self._first_dead(stack)) is not None:
                return failed
            time.sleep(0.2)
        self.out(f"\n{self.stopping} received")
        return 0

    def _first_dead(self, stack: Any) -> int | None:
        """1 (after saying who and why) when a process we need has exited, else None."""
        for child in self.children:
            code = child.exit_code
            if code is not None:
                self.out(
                    f"atp up: the {child.name} exited with code {code}; its log ({child.log_path}):"
                )
                self.out(log_tail(child.log_path))
                return 1
        for server in stack.processes:
            if not server.running:
                self.out(f"atp up: the {server.name} server exited; its log ({server.log_path}):")
                self.out(log_tail(server.log_path))
                return 1
        return None

    def banner(self, stack: Any, keys: list[DevKey], env: dict[str, str]) -> str:
        args = self.args
        api = f"http://{LOOPBACK}:{args.api_port}"
        width = max(len(k.name) for k in keys)
        storefront = keys[0].key
        lines = [
            "",
            "ATP service is up" + (" with demo traffic" if args.demo else ""),
            f"  API            {api}   (/docs, /healthz, /readyz, /metrics)",
            f"  dashboard      {api}/dashboard   (sign in with the admin key below)",
            f"  Redis          {stack.redis_url}"
            + (
                f"   (a Cluster: {args.redis_cluster} primaries, {args.replicas} replica(s) each)"
                if stack.cluster is not None
                else ""
            ),
            f"  Kafka          {stack.bootstrap}   topics: "
            + ", ".join([*INBOUND_TOPICS, EVENTS_TOPIC, DLQ_TOPIC]),
        ]
        if args.worker_metrics_port:
            for n in range(args.workers):
                port = args.worker_metrics_port + n
                lines.append(f"  worker         http://{LOOPBACK}:{port}/metrics")
        if "ATP_CHANNELS_FILE" in env:
            lines.append(f"  channels       {env['ATP_CHANNELS_FILE']}")
        if "ATP_SITES_FILE" in env:
            lines.append(f"  sites          {env['ATP_SITES_FILE']}")
        every = float(env.get("ATP_RECONCILE_EVERY_SECONDS") or 0)
        if every > 0:
            lines.append(
                f"  reconcile      the worker asks the sources for snapshots every {every:g}s "
                "(now: atp reconcile --source wms)"
            )
        lines.append(f"  logs           {args.workdir.resolve()}/*.log")
        lines += ["", "Dev API keys (this run only):"]
        lines += [f"  {k.name:<{width}}  {k.key}  {' '.join(k.scopes)}" for k in keys]
        sku = "SKU-00001" if args.demo else "SKU-1"
        lines += [
            "",
            "Try:",
            f"  curl -s -H 'Authorization: Bearer {storefront}' "
            f"'{api}/v1/availability/{sku}?channel=web'",
            "",
            f"Environment for other `atp` commands against this stack (`atp status`, "
            f"`atp dlq list`, ...), with the keys above: source {self.write_env(env)}",
            "Ctrl-C stops everything.",
        ]
        return "\n".join(lines)

    def write_env(self, env: dict[str, str]) -> Path:
        """``.atp/env``: every setting that points at this stack (each port it listens on,
        moved or not) and this run's dev keys, one per role, for `source .atp/env`."""
        path: Path = self.args.workdir.resolve() / "env"
        names = (
            "ATP_REDIS_URL",
            "ATP_REDIS_CLUSTER",
            "ATP_KAFKA_BROKERS",
            "ATP_API_URL",
            "ATP_WORKER_METRICS_PORT",
            "ATP_API_KEYS",
            "ATP_CHANNELS_FILE",
            "ATP_SITES_FILE",
        )
        lines = [f"export {n}='{env[n]}'" for n in names if n in env]
        lines += [f"export {dev_key_variable(k.name)}='{k.key}'" for k in self.keys]
        path.write_text("".join(line + "\n" for line in lines))
        path.chmod(0o600)
        return path


def cmd_up(args: argparse.Namespace) -> int:
    return Up(args, out=lambda line: print(line, flush=True)).run()


COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {
    "up": cmd_up,
    "api": cmd_api,
    "worker": cmd_worker,
    "simulate": cmd_simulate,
    "topics": cmd_topics,
    "status": cmd_status,
    "audit": cmd_audit,
    "dlq": cmd_dlq,
    "reconcile": cmd_reconcile,
}


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return COMMANDS[args.command](args)
    except CliError as exc:
        print(f"atp {args.command}: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
