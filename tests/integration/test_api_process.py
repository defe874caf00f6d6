"""`atp api` as a real uvicorn process over a real redis-server: reads, outages, recovery."""

from __future__ import annotations

import asyncio
import json
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from aiokafka import AIOKafkaConsumer

from atp_service.config import EVENTS_TOPIC
from atp_service.domain import Bucket, InventoryDelta, Source
from atp_service.embedded import (
    LOOPBACK,
    EmbeddedStack,
    ManagedProcess,
    create_topics,
    free_port,
    tansu_process,
)
from atp_service.store import KeySpace, PolicyBook, RedisStore, connect
from tests.integration._api_process import (
    ADMIN,
    READER,
    ApiProcess,
    start_api,
    stop_api,
)
from tests.random_refs import random_event_id, random_site, random_sku

pytestmark = pytest.mark.integration

#: Long enough for the service to recover by itself.
RECOVERY = 20.0


@pytest.fixture
def unreachable_kafka() -> str:
    """A bootstrap address where nothing listens: the API must serve regardless."""
    return f"{LOOPBACK}:{free_port()}"


@pytest.fixture
def api_on_stack(stack: EmbeddedStack, tmp_path: Path) -> Iterator[ApiProcess]:
    api = start_api(tmp_path / "api", stack.redis_url, stack.bootstrap)
    yield api
    stop_api(api)


@pytest.fixture
def own_redis_url(own_redis: ManagedProcess) -> str:
    return f"redis://{LOOPBACK}:{own_redis.port}/0"


@pytest.fixture
def api_on_own_redis(
    own_redis_url: str, unreachable_kafka: str, tmp_path: Path
) -> Iterator[ApiProcess]:
    channels = tmp_path / "channels.json"
    channels.write_text(json.dumps({"web": {"share": 50}}))
    api = start_api(
        tmp_path / "api", own_redis_url, unreachable_kafka, ATP_CHANNELS_FILE=str(channels)
    )
    yield api
    stop_api(api)


async def receive(redis_url: str, sku: str, site: str, qty: int) -> None:
    """Fold a receipt as the stream worker would, and make the site known."""
    client = connect(redis_url, timeout=2.0, max_connections=2)
    try:
        store = RedisStore(client, KeySpace(16), dedup_window_seconds=86_400)
        event = InventoryDelta(
            random_event_id(), Source.WMS, sku, site, Bucket.ON_HAND, qty, "2026-11-23T05:00:00Z"
        )
        await store.fold_many([event], PolicyBook.of({}))
        await store.register_sites([site])
    finally:
        await client.aclose()


async def answers(api: ApiProcess, path: str, **kw: Any) -> httpx.Response:
    async with api.client() as client:
        return await client.get(path, **kw)


async def until_status(api: ApiProcess, path: str, status: int, **kw: Any) -> httpx.Response:
    """Poll until ``path`` answers ``status`` (the service must get there by itself)."""
    deadline = time.monotonic() + RECOVERY
    async with api.client() as client:
        while True:
            response = await client.get(path, **kw)
            if response.status_code == status or time.monotonic() > deadline:
                return response
            await asyncio.sleep(0.1)


def assert_store_unavailable(response: httpx.Response) -> None:
    assert response.status_code == 503, response.text
    assert response.headers["content-type"] == "application/problem+json"
    assert response.json()["code"] == "store_unavailable"
    assert int(response.headers["retry-after"]) >= 1


async def test_the_api_serves_what_the_fold_wrote(
    api_on_stack: ApiProcess, stack: EmbeddedStack
) -> None:
    sku, site_a, site_b = f"{random_sku()}/v", random_site(), random_site()
    await receive(stack.redis_url, sku, site_a, 12)
    await receive(stack.redis_url, sku, site_b, 5)

    one = await answers(
        api_on_stack, f"/v1/availability/{sku}", params={"channel": "web", "site": site_a},
        headers=READER,
    )  # fmt: skip
    async with api_on_stack.client() as client:
        batch = await client.post(
            "/v1/availability/batch",
            json={
                "channel": "web",
                "items": [{"sku": sku, "site": site_b}, {"sku": sku, "site": site_a}],
            },
            headers=READER,
        )

    assert one.status_code == 200, one.text
    assert one.json()["atp"] == 12 and one.json()["sites"][0]["version"] == 1
    assert [item["atp"] for item in batch.json()["items"]] == [5, 12]
    assert one.headers["x-correlation-id"]
    # One JSON line per request in the API's log, with the request's correlation id.
    wanted = one.headers["x-correlation-id"]
    deadline = time.monotonic() + 5
    while True:
        lines = [
            json.loads(line)
            for line in api_on_stack.log.read_text(errors="replace").splitlines()
            if line.startswith("{") and '"atp.access"' in line
        ]
        mine = [line for line in lines if line.get("correlation_id") == wanted]
        if mine or time.monotonic() > deadline:
            break
        await asyncio.sleep(0.1)
    assert [(x["msg"], x["status"]) for x in mine] == [("GET /v1/availability/{sku:path} 200", 200)]


async def test_a_safety_stock_change_reaches_kafka_with_the_request_correlation_id(
    own_redis_url: str, stack: EmbeddedStack, tmp_path: Path
) -> None:
    channels = tmp_path / "channels.json"
    channels.write_text(json.dumps({"web": {}}))
    api = start_api(
        tmp_path / "api", own_redis_url, stack.bootstrap, ATP_CHANNELS_FILE=str(channels)
    )
    try:
        sku, site = random_sku(), random_site()
        await receive(own_redis_url, sku, site, 10)
        correlation = f"ticket-{random_event_id()}"
        async with api.client() as client:
            response = await client.put(
                f"/v1/safety-stock/{sku}/{site}",
                json={"safety_stock": 4},
                headers={**ADMIN, "X-Correlation-ID": correlation},
            )
        assert response.status_code == 200, response.text

        event = await first_event_for(stack.bootstrap, f"{sku}@{site}")
    finally:
        stop_api(api)

    assert event["type"] == "availability.changed" and event["channel"] == "web"
    assert (event["atp"], event["previous_atp"]) == (6, 10)
    assert event["correlation_id"] == correlation


async def first_event_for(bootstrap: str, key: str, channel: str = "web") -> dict[str, Any]:
    consumer = AIOKafkaConsumer(
        EVENTS_TOPIC, bootstrap_servers=bootstrap, auto_offset_reset="earliest",
        enable_auto_commit=False, group_id=None,
    )  # fmt: skip
    await consumer.start()
    try:
        async with asyncio.timeout(45):
            async for message in consumer:
                if message.key == key.encode():
                    event: dict[str, Any] = json.loads(message.value)
                    if event.get("channel") == channel:
                        return event
    finally:
        await consumer.stop()
    raise AssertionError("unreachable")


async def test_a_paused_redis_gets_503s_not_hangs_and_the_api_recovers_by_itself(
    api_on_own_redis: ApiProcess, own_redis: ManagedProcess, own_redis_url: str
) -> None:
    api = api_on_own_redis
    sku, site, cold_sku = random_sku(), random_site(), random_sku()
    await receive(own_redis_url, sku, site, 9)
    path = f"/v1/availability/{sku}"
    params = {"channel": "web", "site": site}
    assert (await until_status(api, path, 200, params=params, headers=READER)).json()["atp"] == 4

    own_redis.signal(signal.SIGSTOP)
    try:
        async with api.client() as client:
            started = time.monotonic()
            burst = await asyncio.gather(
                *(
                    client.get(f"/v1/availability/{cold_sku}", params=params, headers=READER)
                    for _ in range(80)
                )
            )
            print(
                f"80 requests against a paused Redis answered in {time.monotonic() - started:.2f}s"
            )
            ready = await client.get("/readyz")
            health = await client.get("/healthz")
            # What the in-process copy holds is served only within its staleness bound
            # (ATP_API_POSITION_COPY_MAX_STALENESS_SECONDS, 1 s); past it, Redis is asked.
            await asyncio.sleep(1.5)
            copied = await client.get(path, params=params, headers=READER)
    finally:
        own_redis.signal(signal.SIGCONT)

    for response in burst:
        assert_store_unavailable(response)
    assert_store_unavailable(ready)
    assert_store_unavailable(copied)
    assert health.status_code == 200
    pid = api.proc.pid
    recovered = await until_status(api, path, 200, params=params, headers=READER)
    assert recovered.status_code == 200 and recovered.json()["atp"] == 4
    ready_again = await answers(api, "/readyz")
    assert ready_again.status_code == 200
    assert ready_again.json()["kafka"] == "unavailable"  # served all along without Kafka
    assert api.proc.poll() is None and api.proc.pid == pid


async def test_a_redis_killed_and_restarted_is_used_again_without_restarting_the_api(
    api_on_own_redis: ApiProcess, own_redis: ManagedProcess, own_redis_url: str
) -> None:
    api = api_on_own_redis
    sku, site = random_sku(), random_site()
    await receive(own_redis_url, sku, site, 9)
    assert (await until_status(api, "/readyz", 200)).status_code == 200

    params = {"channel": "web", "site": site}
    path = f"/v1/availability/{sku}"
    before = await until_status(api, path, 200, params=params, headers=READER)
    own_redis.signal(signal.SIGKILL)
    assert own_redis.proc is not None
    own_redis.proc.wait(10)
    killed = time.monotonic()
    # The in-process copy may answer until the API has seen its subscription break, and
    # never past its staleness bound (1 s); then the read is Redis' to answer: a 503.
    while (down := await answers(api, path, params=params, headers=READER)).status_code == 200:
        assert down.json() == before.json()
        assert time.monotonic() - killed < 1.0 + 1.0, "the copy answered past its bound"
        await asyncio.sleep(0.05)
    not_ready = await answers(api, "/readyz")
    own_redis.start()  # same port, empty dataset

    assert_store_unavailable(down)
    assert_store_unavailable(not_ready)
    assert (await until_status(api, "/readyz", 200)).status_code == 200
    # The seeded policies come back into the emptied store, and writes work again
    # (the safety-stock script is reloaded into the new server's script cache).
    await receive(own_redis_url, sku, site, 30)
    policies = await until_status(api, "/v1/policies/channels", 200, headers=ADMIN)
    assert policies.json()["channels"]["web"]["share"] == 50
    async with api.client() as client:
        put = await client.put(
            f"/v1/safety-stock/{sku}/{site}", json={"safety_stock": 5}, headers=ADMIN
        )
    assert put.status_code == 200, put.text
    after = await answers(api, path, params=params, headers=READER)
    assert after.json()["atp"] == 10


async def test_events_written_while_kafka_is_down_are_published_once_it_comes_up(
    own_redis_url: str, tmp_path: Path
) -> None:
    kafka_port = free_port()
    bootstrap = f"{LOOPBACK}:{kafka_port}"
    channels = tmp_path / "channels.json"
    channels.write_text(json.dumps({"web": {}}))
    api = start_api(tmp_path / "api", own_redis_url, bootstrap, ATP_CHANNELS_FILE=str(channels))
    kafka = tansu_process(kafka_port, tmp_path / "kafka")
    try:
        sku, site = random_sku(), random_site()
        await receive(own_redis_url, sku, site, 10)
        async with api.client() as client:
            put = await client.put(
                f"/v1/safety-stock/{sku}/{site}",
                json={"safety_stock": 3},
                headers={**ADMIN, "X-Correlation-ID": "while-kafka-was-down"},
            )
        assert put.status_code == 200, put.text

        kafka.start()
        await create_topics(bootstrap)
        event = await first_event_for(bootstrap, f"{sku}@{site}")
    finally:
        stop_api(api)
        kafka.stop()

    assert (event["atp"], event["correlation_id"]) == (7, "while-kafka-was-down")
