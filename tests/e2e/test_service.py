"""The running service end to end: produce to Kafka, read over HTTP and from atp.events.v1."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from atp_service.config import EVENTS_TOPIC
from atp_service.embedded import EmbeddedStack
from tests.e2e.conftest import Service, delta, item_site, send, snapshot
from tests.random_refs import random_sku

pytestmark = pytest.mark.e2e


def channel(service: Service, prefix: str) -> str:
    return next(name for name in service.channels if name.startswith(prefix))


async def site_answer(
    http: httpx.AsyncClient, service: Service, sku: str, site: str, channel_name: str
) -> dict[str, Any]:
    response = await http.get(
        f"/v1/availability/{sku}",
        params={"channel": channel_name, "site": site},
        headers=service.headers(),
    )
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


async def test_snapshots_and_deltas_from_kafka_are_served_with_the_channels_policy(
    service: Service, http: httpx.AsyncClient, producer: AIOKafkaProducer
) -> None:
    sku, site = item_site()
    today = datetime.now(UTC).date()
    await send(
        producer,
        snapshot("wms", sku, site, {"on_hand": 50, "allocated": 5, "quarantined": 3}, seq=10),
        delta("erp", sku, site, "in_transit", 20, seq=1, eta=today + timedelta(days=3)),
        delta("erp", sku, site, "in_transit", 30, seq=2, eta=today + timedelta(days=20)),
        delta("wms", sku, site, "on_hand", -4, seq=11),
        delta("wms", sku, site, "allocated", -4, seq=12),
    )
    web, anywhere = channel(service, "web-"), channel(service, "any-")

    answer = await service.eventually(
        lambda: site_answer(http, service, sku, site, web),
        lambda body: body["sites"][0]["version"] >= 5,
        "five folds",
    )
    position = answer["sites"][0]
    assert (position["on_hand"], position["allocated"], position["quarantined"]) == (46, 1, 3)
    assert position["in_transit"] == 50
    # sellable 42; share 50% -> 21; safety stock 2 -> 19; inbound within 7 days +20.
    assert answer["atp"] == 39
    assert position["atp"] == 39
    # A channel without restrictions promises the sellable units and no inbound.
    assert (await site_answer(http, service, sku, site, anywhere))["atp"] == 42


async def test_duplicates_and_stale_source_seq_are_not_folded_twice(
    service: Service, http: httpx.AsyncClient, producer: AIOKafkaProducer
) -> None:
    sku, site = item_site()
    receipt = delta("wms", sku, site, "on_hand", 10, seq=5)
    anywhere = channel(service, "any-")
    await send(
        producer,
        receipt,
        receipt,  # redelivered as is
        delta("wms", sku, site, "on_hand", 100, seq=4),  # older than what is folded
        delta("wms", sku, site, "on_hand", 1, seq=6),  # the marker that all before is done
    )
    answer = await service.eventually(
        lambda: site_answer(http, service, sku, site, anywhere),
        lambda body: body["sites"][0]["version"] >= 2,
        "the marker event",
    )
    assert answer["sites"][0]["on_hand"] == 11
    assert answer["sites"][0]["version"] == 2


async def test_bad_input_does_not_stop_the_fold_of_what_follows(
    service: Service, http: httpx.AsyncClient, producer: AIOKafkaProducer
) -> None:
    sku, site = item_site()
    key = f"{sku}@{site}".encode()
    await producer.send_and_wait("wms.inventory.v1", b'{"schema": "inventory.delta', key=key)
    await producer.send_and_wait("wms.inventory.v1", b"\xff\xfe not utf-8", key=key)
    await send(producer, delta("wms", sku, site, "in_transit", 5))  # not the WMS's bucket
    await send(producer, delta("wms", sku, site, "on_hand", 7))
    answer = await service.eventually(
        lambda: site_answer(http, service, sku, site, channel(service, "any-")),
        lambda body: body["sites"][0]["version"] >= 1,
        "the good event behind the bad ones",
    )
    assert (answer["atp"], answer["sites"][0]["in_transit"]) == (7, 0)


async def test_a_batch_answers_every_item_in_order_and_unknown_skus_with_zero(
    service: Service, http: httpx.AsyncClient, producer: AIOKafkaProducer
) -> None:
    (first, site), (second, _) = item_site(), item_site()
    await send(
        producer,
        delta("wms", first, site, "on_hand", 12),
        delta("wms", second, site, "on_hand", 3),
    )
    anywhere = channel(service, "any-")
    await service.eventually(
        lambda: site_answer(http, service, second, site, anywhere),
        lambda body: body["atp"] == 3,
        "the second sku",
    )
    await service.eventually(
        lambda: site_answer(http, service, first, site, anywhere),
        lambda body: body["atp"] == 12,
        "the first sku",
    )
    never_seen = random_sku("never")
    items = [
        {"sku": second, "site": site},
        {"sku": never_seen, "site": site},
        {"sku": first, "site": site},
    ]
    response = await http.post(
        "/v1/availability/batch",
        json={"channel": anywhere, "items": items},
        headers=service.headers(),
    )
    assert response.status_code == 200, response.text
    answers = response.json()["items"]
    assert [(a["sku"], a["atp"]) for a in answers] == [(second, 3), (never_seen, 0), (first, 12)]


async def test_availability_changed_reaches_the_events_topic(
    service: Service, stack: EmbeddedStack, producer: AIOKafkaProducer
) -> None:
    sku, site = item_site()
    web = channel(service, "web-")
    consumer = AIOKafkaConsumer(bootstrap_servers=stack.bootstrap, enable_auto_commit=False)
    await consumer.start()
    try:
        await consumer.topics()  # fetches the metadata partitions_for_topic reads
        partitions = [
            TopicPartition(EVENTS_TOPIC, p)
            for p in sorted(consumer.partitions_for_topic(EVENTS_TOPIC) or ())
        ]
        assert partitions
        consumer.assign(partitions)
        await consumer.seek_to_end(*partitions)
        for tp in partitions:  # resolve the end offsets before producing
            await consumer.position(tp)

        await send(producer, delta("wms", sku, site, "on_hand", 30))

        async def poll() -> list[dict[str, Any]]:
            batches = await consumer.getmany(timeout_ms=200)
            return [
                json.loads(record.value)
                for records in batches.values()
                for record in records
                if record.key == f"{sku}@{site}".encode()
            ]

        seen: list[dict[str, Any]] = []

        async def collect() -> list[dict[str, Any]]:
            seen.extend(await poll())
            return seen

        events = await service.eventually(
            collect,
            lambda events: any(e.get("channel") == web for e in events),
            f"availability.changed for {web}",
        )
    finally:
        await consumer.stop()
    event = next(e for e in events if e.get("channel") == web)
    assert event["type"] == "availability.changed"
    assert (event["sku"], event["site"]) == (sku, site)
    # 30 sellable, share 50% -> 15, safety stock 2 -> 13.
    assert (event["atp"], event["previous_atp"], event["version"]) == (13, 0, 1)
    for name in ("schema", "event_id", "occurred_at", "correlation_id"):
        assert name in event


async def test_a_promise_and_a_timeline_are_answered_by_the_running_api(
    service: Service, http: httpx.AsyncClient, producer: AIOKafkaProducer
) -> None:
    east, west = (
        next(s for s in service.sites if s.startswith(p)) for p in ("E2E-EAST", "E2E-WEST")
    )
    ship = channel(service, "ship-")
    sku = f"{random_sku('e2e')}/blue"  # a sku with '/': the plain read and the timeline both work
    today = datetime.now(UTC).date()

    def on(days: int) -> str:
        return (today + timedelta(days=days)).isoformat()

    await send(
        producer,
        delta("wms", sku, west, "on_hand", 30, seq=1),
        delta("wms", sku, east, "on_hand", 5, seq=1),
        delta("erp", sku, east, "in_transit", 20, seq=1, eta=today + timedelta(days=2)),
    )
    await service.eventually(
        lambda: http.get(
            f"/v1/availability/{sku}", params={"channel": ship}, headers=service.headers()
        ),
        lambda r: r.status_code == 200 and r.json()["atp"] == 55,
        "the three folds",
    )
    body = {"channel": ship, "ship_to": "US-WEST", "lines": [{"sku": sku, "qty": 50}]}

    response = await http.post("/v1/promise", json=body, headers=service.headers())

    assert response.status_code == 200, response.text
    (line,) = response.json()["lines"]
    # East (priority 10) ships the day asked but is 4 days from US-WEST; West ships a day later,
    # one day away. 50 units: every site by the day East's inbound arrives, East first.
    assert [
        (f["site"], f["qty"], f["supply"], f["delivery_date"]) for f in line["fulfilments"]
    ] == [
        (west, 25, "on_hand", on(2)),
        (east, 5, "on_hand", on(4)),
        (east, 20, "in_transit", on(6)),
    ]
    assert response.json()["delivery_date"] == on(6)

    timeline = await http.get(
        f"/v1/availability/{sku}/timeline", params={"channel": ship}, headers=service.headers()
    )
    assert timeline.status_code == 200, timeline.text
    assert timeline.json()["points"] == [{"date": on(0), "atp": 35}, {"date": on(2), "atp": 55}]

    # West stops delivering to US-WEST: only East's 25 can be promised there
    put = await http.put(
        f"/v1/sites/{west}",
        json={"transit_days": {"US-EAST": 1}},
        headers=service.headers("admin"),
    )
    assert put.status_code == 200, put.text
    (line,) = (await http.post("/v1/promise", json=body, headers=service.headers())).json()["lines"]
    assert (line["promised"], line["shortfall"]) == (25, 25)
    assert {f["site"] for f in line["fulfilments"]} == {east}
