"""The API through a Kafka outage: reads and reservations go on, their events wait and go out."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis
from aiokafka import AIOKafkaConsumer

from atp_service.config import EVENTS_TOPIC
from atp_service.embedded import LOOPBACK, ManagedProcess, create_topics, free_port, tansu_process
from atp_service.store.duty import Duty
from tests.integration.test_api_process import receive, start_api, stop_api
from tests.random_refs import random_site, random_sku

pytestmark = pytest.mark.integration

OMS_KEY = "it-oms-key"
OMS = {"Authorization": f"Bearer {OMS_KEY}"}
KEYS = [{"name": "oms", "key": OMS_KEY, "scopes": ["reservations:write", "availability:read"]}]


async def reservation_events(bootstrap: str, wanted: set[tuple[str, str]]) -> set[tuple[str, str]]:
    """(type, reservation_id) pairs found on the events topic, until all wanted are seen."""
    consumer = AIOKafkaConsumer(
        EVENTS_TOPIC, bootstrap_servers=bootstrap, auto_offset_reset="earliest",
        enable_auto_commit=False, group_id=None,
    )  # fmt: skip
    await consumer.start()
    seen: set[tuple[str, str]] = set()
    try:
        async with asyncio.timeout(45):
            while not wanted <= seen:
                batch = await consumer.getmany(timeout_ms=500)
                for records in batch.values():
                    for r in records:
                        event: dict[str, Any] = json.loads(r.value)
                        if str(event.get("type", "")).startswith("reservation."):
                            seen.add((event["type"], event.get("reservation_id", "")))
    finally:
        await consumer.stop()
    return seen


@contextlib.asynccontextmanager
async def relay_left_to_a_worker(redis_url: str) -> AsyncIterator[None]:
    """A worker reports relay rounds meanwhile, so the API's relay stands by (store/duty.py).

    Needed while the broker restarts empty: Tansu creates a topic on its first produce (with
    4 partitions, not the 8 ``create_topics`` then finds in place), and a relay that
    published in the moment between the broker's start and ``create_topics`` had its events
    acknowledged (the outbox emptied, nothing pending) without any consumer ever seeing
    them: 1 run in 5 to 30 on a loaded machine. A Kafka cluster keeps its topics; this is the
    test's broker, not the relay.
    """
    client = aioredis.from_url(redis_url)
    duty = Duty(client, "relay", holder="test-worker")

    async def report() -> None:
        while True:
            await client.set(duty.key, duty.holder, px=duty.lease_ms)
            await asyncio.sleep(0.5)

    reporting = asyncio.create_task(report())
    await asyncio.sleep(1.5)  # the API looks at most twice a second; a round blocks 0.2 s
    try:
        yield
    finally:
        reporting.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await reporting
        await client.delete(duty.key)
        await client.aclose()


async def test_reads_and_reservations_go_on_while_kafka_is_down_and_their_events_follow(
    own_redis: ManagedProcess, tmp_path: Path
) -> None:
    own_redis_url = f"redis://{LOOPBACK}:{own_redis.port}/0"
    kafka_port = free_port()
    bootstrap = f"{LOOPBACK}:{kafka_port}"
    kafka = tansu_process(kafka_port, tmp_path / "kafka")
    kafka.start()
    await create_topics(bootstrap)
    api = start_api(tmp_path / "api", own_redis_url, bootstrap, ATP_API_KEYS=json.dumps(KEYS))
    sku, site = random_sku(), random_site()
    await receive(own_redis_url, sku, site, 10)

    def reservation(qty: int) -> dict[str, Any]:
        return {
            "channel": "web",
            "order_ref": "ord-1",
            "lines": [{"sku": sku, "site": site, "qty": qty}],
        }

    try:
        async with api.client() as client:
            first = await client.post(
                "/v1/reservations", json=reservation(2), headers={**OMS, "Idempotency-Key": "k1"}
            )
            assert first.status_code == 201, first.text
            first_id = first.json()["reservation_id"]
            # The relay is connected: the first hold is on Kafka before the outage.
            await reservation_events(bootstrap, {("reservation.held", first_id)})

            async with relay_left_to_a_worker(own_redis_url):
                kafka.stop()
                read = await client.get(
                    f"/v1/availability/{sku}", params={"channel": "web", "site": site}, headers=OMS
                )
                second = await client.post(
                    "/v1/reservations",
                    json=reservation(3),
                    headers={**OMS, "Idempotency-Key": "k2"},
                )
                confirm = await client.post(f"/v1/reservations/{first_id}/confirm", headers=OMS)
                assert (read.status_code, read.json()["atp"]) == (200, 8)
                assert second.status_code == 201, second.text
                assert confirm.status_code == 200, confirm.text
                second_id = second.json()["reservation_id"]

                # The broker comes back (empty: Tansu keeps nothing); the waiting events go out.
                kafka.start()
                await create_topics(bootstrap)
            seen = await reservation_events(
                bootstrap,
                {("reservation.held", second_id), ("reservation.confirmed", first_id)},
            )
    finally:
        stop_api(api)
        kafka.stop()
    assert ("reservation.held", second_id) in seen
    assert ("reservation.confirmed", first_id) in seen
