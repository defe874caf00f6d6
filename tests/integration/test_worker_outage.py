"""A Redis outage stalls the worker; it never skips, drops or commits past unfolded events."""

from __future__ import annotations

import json
import signal
from pathlib import Path

import pytest
from aiokafka import AIOKafkaProducer

from atp_service.domain import ItemSite
from atp_service.embedded import EmbeddedStack, ManagedProcess
from atp_service.store import KeySpace, RedisStore, connect
from tests.integration._worker_process import WorkerProcess, eventually
from tests.random_refs import random_event_id, random_site, random_sku

pytestmark = pytest.mark.integration


async def test_events_sent_while_redis_is_down_are_folded_after_it_returns_even_across_a_restart(
    stack: EmbeddedStack, own_redis: ManagedProcess, tmp_path: Path
) -> None:
    item = ItemSite(random_sku(), random_site())
    client = connect(f"redis://127.0.0.1:{own_redis.port}/0", timeout=2.0, max_connections=4)
    store = RedisStore(client, KeySpace(16), dedup_window_seconds=86_400)
    producer = AIOKafkaProducer(bootstrap_servers=stack.bootstrap, acks="all")
    await producer.start()
    worker = WorkerProcess(stack, tmp_path)
    worker.env["ATP_REDIS_URL"] = f"redis://127.0.0.1:{own_redis.port}/0"

    async def receive(n: int) -> None:
        for _ in range(n):
            body = {
                "schema": "inventory.delta.v1", "event_id": random_event_id("wms"),
                "source": "wms", "occurred_at": "2026-11-23T05:00:00Z",
                "sku": item.sku, "site": item.site, "bucket": "on_hand", "delta": 1,
            }  # fmt: skip
            await producer.send_and_wait(
                "wms.inventory.v1", key=item.kafka_key.encode(), value=json.dumps(body).encode()
            )

    async def on_hand() -> int:
        [pos] = await store.read_positions([item])
        return pos.on_hand

    try:
        worker.start()
        await receive(5)

        async def first_five_folded() -> bool:
            return await on_hand() == 5

        await eventually(first_five_folded, worker)

        # Redis hangs: every call times out. The calls the worker wrote meanwhile are still in
        # Redis' socket buffers, so when it resumes it may run them: a write that timed out
        # may have happened. Each retry carries the same events, so at most one counts.
        own_redis.signal(signal.SIGSTOP)
        await receive(20)

        async def worker_is_retrying() -> bool:
            # "fold failed (redis: ...)", or the replay mark of a replayed dead letter that
            # another test left on the shared topic ("replay mark failed (redis: ...)").
            return worker.log_path.read_text(errors="replace").count(" failed (redis") >= 3

        await eventually(worker_is_retrying, worker)
        # Stopping now can finish nothing: the worker must exit without committing the
        # offsets of the 20 events it could not fold.
        worker.stop()
        assert worker.proc is not None and worker.proc.returncode == 0, worker.log_tail()

        own_redis.signal(signal.SIGCONT)
        assert 5 <= await on_hand() <= 25  # some of the 20 may have landed, each once
        worker.start()  # the same consumer group: the 20 again, uncommitted

        async def all_folded() -> bool:
            return await on_hand() >= 25

        await eventually(all_folded, worker)
        assert await on_hand() == 25
    finally:
        own_redis.signal(signal.SIGCONT)
        worker.stop()
        await producer.stop()
        await client.aclose()
