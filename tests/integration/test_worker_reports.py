"""A real worker's figures for operators: sync lag in seconds (moving through a Redis outage),
its report and dead letters in Redis, the periodic audit on its /metrics."""

from __future__ import annotations

import json
import re
import signal
from pathlib import Path

import httpx
import pytest
from aiokafka import AIOKafkaProducer

from atp_service.domain import ItemSite
from atp_service.embedded import EmbeddedStack, ManagedProcess, free_port
from atp_service.store import KeySpace, RedisStore, connect
from atp_service.store.ops import OpsStore
from tests.integration._worker_process import WorkerProcess, eventually
from tests.random_refs import random_event_id, random_site, random_sku

pytestmark = pytest.mark.integration

_SAMPLE = re.compile(r"^(\w+)\{([^}]*)\} (\S+)$")


def samples(text: str, name: str) -> list[tuple[dict[str, str], float]]:
    out = []
    for line in text.splitlines():
        match = _SAMPLE.match(line)
        if match and match.group(1) == name:
            labels = dict(re.findall(r'(\w+)="([^"]*)"', match.group(2)))
            out.append((labels, float(match.group(3))))
    return out


async def test_the_sync_lag_keeps_growing_while_redis_is_out_and_falls_back_after(
    stack: EmbeddedStack, own_redis: ManagedProcess, tmp_path: Path
) -> None:
    item = ItemSite(random_sku(), random_site())
    url = f"redis://127.0.0.1:{own_redis.port}/0"
    client = connect(url, timeout=2.0, max_connections=4)
    store = RedisStore(client, KeySpace(16), dedup_window_seconds=86_400)
    producer = AIOKafkaProducer(bootstrap_servers=stack.bootstrap, acks="all")
    await producer.start()
    metrics_port = free_port()
    worker = WorkerProcess(stack, tmp_path)
    worker.env.update(
        ATP_REDIS_URL=url,
        ATP_WORKER_METRICS_PORT=str(metrics_port),
        ATP_WORKER_AUDIT_INTERVAL_SECONDS="1",
    )
    metrics_url = f"http://127.0.0.1:{metrics_port}/metrics"

    async def send(*values: bytes) -> None:
        for value in values:
            await producer.send_and_wait(
                "wms.inventory.v1", key=item.kafka_key.encode(), value=value
            )

    def delta() -> bytes:
        body = {
            "schema": "inventory.delta.v1", "event_id": random_event_id("wms"), "source": "wms",
            "occurred_at": "2026-11-23T05:00:00Z", "sku": item.sku, "site": item.site,
            "bucket": "on_hand", "delta": 1,
        }  # fmt: skip
        return json.dumps(body).encode()

    async def scrape() -> str:
        try:
            async with httpx.AsyncClient(timeout=2.0) as http:
                return (await http.get(metrics_url)).text
        except httpx.TransportError:
            return ""  # not listening yet

    async def wms_lag() -> float:
        text = await scrape()
        lags = [
            v for labels, v in samples(text, "atp_sync_lag_seconds") if labels["source"] == "wms"
        ]
        return max(lags, default=-1.0)

    async def on_hand() -> int:
        [pos] = await store.read_positions([item])
        return pos.on_hand

    try:
        worker.start()
        await send(delta(), delta(), delta())

        async def caught_up() -> bool:
            return await on_hand() == 3 and await wms_lag() == 0.0

        await eventually(caught_up, worker)
        [report] = [r for r in await OpsStore(client).worker_reports() if r["sources"].get("wms")]
        assert report["sources"]["wms"]["lag_ms"] == 0

        own_redis.signal(signal.SIGSTOP)
        try:
            await send(delta(), delta())
            lags: list[float] = []

            async def still_growing() -> bool:
                lags.append(await wms_lag())
                return len(lags) >= 3 and lags[-1] >= 3.0 and lags[-1] > lags[-2] > lags[-3]

            await eventually(still_growing, worker, patience=30.0, every=1.0)
        finally:
            own_redis.signal(signal.SIGCONT)

        async def folded_and_caught_up() -> bool:
            return await on_hand() == 5 and await wms_lag() == 0.0

        await eventually(folded_and_caught_up, worker)

        # Bad input: on the dead-letter list and counted by code, for /dashboard.
        await send(b"{not json")
        ops = OpsStore(client)

        async def dead_letter_listed() -> bool:
            snapshot = await ops.snapshot()
            return any(d["key"] == item.kafka_key for d in snapshot.dead_letters)

        await eventually(dead_letter_listed, worker)
        snapshot = await ops.snapshot()
        [letter] = [d for d in snapshot.dead_letters if d["key"] == item.kafka_key]
        assert (letter["code"], letter["source"], letter["value"]) == (
            "malformed_json", "wms", "{not json"
        )  # fmt: skip
        assert snapshot.dead_letter_counts["malformed_json"] >= 1
        assert snapshot.folded_counts["wms:folded"] >= 5

        # The audit runs by itself; every worker shows its last result.
        async def audited() -> bool:
            text = await scrape()
            return "atp_reservation_audit_last_run_timestamp_seconds 0.0" not in text and bool(
                samples(text, "atp_reservations_by_status")
            )

        await eventually(audited, worker)
        audit = await ops.last_audit()
        assert audit is not None and audit["mismatches"] == 0
    finally:
        worker.stop()
        await producer.stop()
        await client.aclose()
