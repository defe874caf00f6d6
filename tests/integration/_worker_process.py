"""`python -m stream_agents` as a separate process, and Kafka/Redis helpers for its tests."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import uuid
from collections import defaultdict
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from atp_service.domain import ItemSite
from atp_service.embedded import EmbeddedStack
from atp_service.store import RedisStore
from tests.random_refs import random_event_id

#: How long a test waits for the worker to get somewhere (a worker joins its group in ~5 s).
PATIENCE_SECONDS = 90.0


class WorkerProcess:
    """One stream worker with its own consumer group, started like `atp worker` would be."""

    def __init__(self, stack: EmbeddedStack, workdir: Path, app_id: str | None = None) -> None:
        self.app_id = app_id or f"test-worker-{uuid.uuid4().hex[:8]}"
        self.workdir = workdir
        self.log_path = workdir / f"{self.app_id}.log"
        self.env = {
            **os.environ,
            "ATP_REDIS_URL": stack.redis_url,
            "ATP_KAFKA_BROKERS": stack.bootstrap,
            "ATP_WORKER_APP_ID": self.app_id,
            "ATP_WORKER_METRICS_PORT": "0",
            # A killed worker's unacknowledged outbox entries are claimed quickly.
            "ATP_RELAY_CLAIM_IDLE_MS": "500",
        }
        self.env.pop("ATP_CHANNELS_FILE", None)
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "stream_agents"],
                cwd=self.workdir,  # no stray .env from the repository
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )

    def kill(self) -> None:
        """SIGKILL: no shutdown, no final commit."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)

    def pause(self) -> None:
        """SIGSTOP: the worker neither folds nor notices anything until ``resume``."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGCONT)

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGCONT)  # a paused worker cannot honour SIGTERM
        self.proc.terminate()
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.kill()

    def assert_alive(self) -> None:
        assert self.proc is not None
        assert self.proc.poll() is None, f"worker exited:\n{self.log_tail()}"

    def assigned(self) -> bool:
        """Whether the last assignment of partitions this worker logged gave it some."""
        if not self.log_path.exists():
            return False
        lines = [
            line
            for line in self.log_path.read_text(errors="replace").splitlines()
            if "Setting newly assigned partitions" in line
        ]
        return bool(lines) and "TopicPartition" in lines[-1]

    def log_tail(self, lines: int = 40) -> str:
        if not self.log_path.exists():
            return ""
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])


async def eventually(
    check: Callable[[], Awaitable[bool]],
    worker: WorkerProcess | None = None,
    patience: float = PATIENCE_SECONDS,
    every: float = 0.1,
) -> None:
    """Wait until ``check()`` holds (the worker is asynchronous); fail after ``patience``."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + patience
    while not await check():
        if worker is not None:
            worker.assert_alive()
        if loop.time() > deadline:
            tail = worker.log_tail() if worker is not None else ""
            raise AssertionError(f"not reached within {patience}s\n{tail}")
        await asyncio.sleep(every)


async def read_topic(
    stack: EmbeddedStack,
    topic: str,
    keep: Callable[[Any], bool],
    done: Callable[[list[Any]], bool],
    patience: float = PATIENCE_SECONDS,
) -> list[Any]:
    """Records of ``topic`` that ``keep`` selects, read from the start until ``done`` says
    enough *and* every partition is read to its end (so an extra record shows up too)."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=stack.bootstrap, enable_auto_commit=False, group_id=None
    )
    await consumer.start()
    found: list[Any] = []
    loop = asyncio.get_running_loop()
    deadline = loop.time() + patience
    try:
        partitions = [TopicPartition(topic, p) for p in consumer.partitions_for_topic(topic) or ()]
        consumer.assign(partitions)
        await consumer.seek_to_beginning(*partitions)
        while True:
            ends = await consumer.end_offsets(partitions)
            while True:  # past the reported ends and nothing more (dlq.read_dead_letters)
                batch = await consumer.getmany(*partitions, timeout_ms=200, max_records=5000)
                found.extend(r for records in batch.values() for r in records if keep(r))
                if not batch and await _caught_up(consumer, ends):
                    break
            if done(found):
                return found
            if loop.time() > deadline:
                raise AssertionError(f"{topic}: only {len(found)} matching records: {found[:5]}")
            await asyncio.sleep(0.1)
    finally:
        await consumer.stop()


async def _caught_up(consumer: AIOKafkaConsumer, ends: dict[TopicPartition, int]) -> bool:
    for tp, end in ends.items():
        if await consumer.position(tp) < end:
            return False
    return True


def json_value(record: Any) -> Any:
    return json.loads(record.value)


async def produce_receipts(producer: AIOKafkaProducer, stream: list[tuple[ItemSite, int]]) -> None:
    """WMS receipts (on_hand deltas) to ``wms.inventory.v1``, one per (item-site, quantity)."""
    sends = []
    for item, qty in stream:
        body = {
            "schema": "inventory.delta.v1",
            "event_id": random_event_id("wms"),
            "source": "wms",
            "occurred_at": "2026-11-23T05:00:00Z",
            "sku": item.sku,
            "site": item.site,
            "bucket": "on_hand",
            "delta": qty,
        }
        key = f"{item.sku}@{item.site}".encode()
        sends.append(
            await producer.send("wms.inventory.v1", key=key, value=json.dumps(body).encode())
        )
    await asyncio.gather(*sends)


async def versions_folded(store: RedisStore, items: list[ItemSite]) -> int:
    """Events folded so far into ``items``, when each event bumps its item-site's version."""
    return sum(pos.version for pos in await store.read_positions(items))


def in_order_for_a_consumer(records: list[Any]) -> dict[bytes, list[int]]:
    """Per key, the versions a consumer that drops what is not newer than what it has keeps:
    with every event published in its order, that is every version, each in turn (a
    redelivery of what it has is dropped, harmlessly)."""
    newest: dict[bytes, int] = defaultdict(int)
    kept: dict[bytes, list[int]] = defaultdict(list)
    for record in records:
        version = json_value(record)["version"]
        if version > newest[record.key]:
            newest[record.key] = version
            kept[record.key].append(version)
    return kept


async def forget_event_ids(store: RedisStore) -> None:
    """As if the de-duplication window had passed: every remembered event id is gone, and
    only the applied offsets stand between a re-read and a second fold."""
    for key in await store.scan_keys("atp:{g*}:d:*"):  # every primary of a Cluster
        await store.redis.delete(key)
