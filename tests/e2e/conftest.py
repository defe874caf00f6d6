"""`atp worker` and `atp api` as separate processes against the session's Redis and broker."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest
from aiokafka import AIOKafkaProducer

from atp_service.embedded import EmbeddedStack, free_port, redis_process
from tests.random_refs import random_event_id, random_site, random_sku

T = TypeVar("T")

#: Every wait in these tests is bounded by this; a healthy run needs a fraction of it.
DEADLINE_SECONDS = 30.0


@dataclass
class Process:
    name: str
    proc: subprocess.Popen[bytes]
    log_path: Path

    def log_tail(self, lines: int = 40) -> str:
        text = self.log_path.read_text(errors="replace").splitlines()
        return "\n".join(text[-lines:])

    def stop(self, timeout: float = 20.0) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


@dataclass
class Service:
    """One running service: its processes, its API address and keys, its demo channels."""

    base_url: str
    keys: dict[str, str]
    channels: dict[str, dict[str, Any]]
    sites: dict[str, dict[str, Any]] = field(default_factory=dict)
    processes: list[Process] = field(default_factory=list)

    def headers(self, role: str = "storefront") -> dict[str, str]:
        return {"Authorization": f"Bearer {self.keys[role]}"}

    def check_alive(self) -> None:
        for p in self.processes:
            if p.proc.poll() is not None:
                raise AssertionError(
                    f"`atp {p.name}` exited with {p.proc.returncode}:\n{p.log_tail()}"
                )

    async def eventually(
        self,
        probe: Callable[[], Awaitable[T]],
        accept: Callable[[T], bool],
        what: str,
        within: float = DEADLINE_SECONDS,
    ) -> T:
        """Poll ``probe`` until ``accept`` holds; fail with the last value after ``within`` s."""
        deadline = time.monotonic() + within
        while True:
            value = await probe()
            if accept(value):
                return value
            self.check_alive()
            if time.monotonic() > deadline:
                raise AssertionError(f"{what} not seen within {within:g}s; last: {value!r}")
            await asyncio.sleep(0.1)


def atp_argv(*args: str) -> list[str]:
    return [sys.executable, "-m", "atp_service", *args]


# Module scope: its worker consumes the shared inbound topics and writes the shared DLQ and
# events topics, so it must be gone before other modules' tests count what lands there.
@pytest.fixture(scope="module")
def service(stack: EmbeddedStack, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    workdir = tmp_path_factory.mktemp("e2e-service")
    suffix = uuid.uuid4().hex[:8]
    keys = {role: f"e2e-{role}-{uuid.uuid4().hex}" for role in ("storefront", "oms", "admin")}
    scopes = {
        "storefront": ["availability:read"],
        "oms": ["reservations:write", "availability:read"],
        "admin": ["availability:read", "reservations:write", "admin"],
    }
    channels = {
        f"web-{suffix}": {
            "safety_stock": 2,
            "share": 50,
            "include_in_transit": True,
            "in_transit_horizon_days": 7,
        },
        f"any-{suffix}": {},
        f"ship-{suffix}": {
            "sites": [f"E2E-EAST-{suffix}", f"E2E-WEST-{suffix}"],
            "include_in_transit": True,
            "in_transit_horizon_days": 7,
        },
    }
    channels_file = workdir / "channels.json"
    channels_file.write_text(json.dumps(channels))
    # Ship nodes of the promise: no cutoff and no closed day, so that dates follow from
    # today (UTC) alone.
    sites = {
        f"E2E-EAST-{suffix}": {"priority": 10, "transit_days": {"US-EAST": 1, "US-WEST": 4}},
        f"E2E-WEST-{suffix}": {
            "priority": 20,
            "handling_days": 1,
            "transit_days": {"US-WEST": 1, "US-EAST": 4},
        },
    }
    sites_file = workdir / "sites.json"
    sites_file.write_text(json.dumps(sites))
    port = free_port()
    # A Redis of its own: this service's outbox relays run for the whole session and would
    # otherwise drain the outbox that integration tests inspect in the shared Redis.
    redis = redis_process(free_port(), workdir / "redis")
    redis.start()
    env = {
        **os.environ,
        "PYTHONUNBUFFERED": "1",
        "ATP_REDIS_URL": f"redis://127.0.0.1:{redis.port}/0",
        "ATP_KAFKA_BROKERS": stack.bootstrap,
        "ATP_API_KEYS": json.dumps(
            [{"name": role, "key": key, "scopes": scopes[role]} for role, key in keys.items()]
        ),
        "ATP_CHANNELS_FILE": str(channels_file),
        "ATP_SITES_FILE": str(sites_file),
        "ATP_WORKER_APP_ID": f"atp-e2e-{suffix}",
        "ATP_WORKER_METRICS_PORT": "0",
    }
    svc = Service(f"http://127.0.0.1:{port}", keys, channels, sites)
    for name, argv in (
        ("worker", atp_argv("worker")),
        ("api", atp_argv("api", "--host", "127.0.0.1", "--port", str(port))),
    ):
        log_path = workdir / f"{name}.log"
        with log_path.open("wb") as log:
            proc = subprocess.Popen(
                argv, env=env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
            )
        svc.processes.append(Process(name, proc, log_path))
    try:
        _wait_ready(svc)
        yield svc
    finally:
        for p in reversed(svc.processes):
            p.stop()
        redis.stop()


def _wait_ready(svc: Service) -> None:
    deadline = time.monotonic() + DEADLINE_SECONDS
    while True:
        svc.check_alive()
        try:
            if httpx.get(f"{svc.base_url}/readyz", timeout=1.0).status_code == 200:
                return
        except httpx.TransportError:
            pass
        if time.monotonic() > deadline:
            raise AssertionError("`atp api` not ready:\n" + svc.processes[-1].log_tail())
        time.sleep(0.1)


@pytest.fixture
async def http(service: Service) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=service.base_url, timeout=5.0) as client:
        yield client


@pytest.fixture
async def producer(stack: EmbeddedStack) -> AsyncIterator[AIOKafkaProducer]:
    p = AIOKafkaProducer(bootstrap_servers=stack.bootstrap, acks="all")
    await p.start()
    yield p
    await p.stop()


# -- inbound messages ---------------------------------------------------------------------------


def now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def delta(
    source: str,
    sku: str,
    site: str,
    bucket: str,
    qty: int,
    *,
    seq: int | None = None,
    eta: date | None = None,
    event_id: str | None = None,
) -> dict[str, Any]:
    return {
        "schema": "inventory.delta.v1",
        "event_id": event_id or random_event_id(source),
        "source": source,
        "source_seq": seq,
        "occurred_at": now(),
        "correlation_id": None,
        "sku": sku,
        "site": site,
        "bucket": bucket,
        "delta": qty,
        "reason": "e2e",
        "eta": eta.isoformat() if eta else None,
        "reservation_id": None,
    }


def snapshot(
    source: str, sku: str, site: str, quantities: dict[str, int], *, seq: int | None = None
) -> dict[str, Any]:
    return {
        "schema": "inventory.snapshot.v1",
        "event_id": random_event_id(f"{source}-snap"),
        "source": source,
        "source_seq": seq,
        "occurred_at": now(),
        "sku": sku,
        "site": site,
        "quantities": quantities,
    }


async def send(producer: AIOKafkaProducer, *bodies: dict[str, Any]) -> None:
    """Produce in order and wait for the broker's acknowledgements."""
    for body in bodies:
        topic = f"{body['source']}.inventory.v1"
        key = f"{body['sku']}@{body['site']}".encode()
        await producer.send_and_wait(topic, json.dumps(body).encode(), key=key)


def item_site() -> tuple[str, str]:
    return random_sku("e2e"), random_site("e2e")
