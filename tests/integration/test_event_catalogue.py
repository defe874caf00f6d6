"""What the service really writes to its outbox, and to Kafka, matches docs/asyncapi.yaml:
every script that emits, run on a real redis-server; a snapshot request through the broker."""

from __future__ import annotations

import asyncio
import io
import json
import uuid
from typing import Any

import pytest

from atp_service.config import EVENTS_TOPIC, Settings
from atp_service.domain import (
    Bucket,
    ChannelPolicy,
    InventoryDelta,
    InventorySnapshot,
    ItemSite,
    Source,
)
from atp_service.domain.reservations import LineRequest, ReservationRequest
from atp_service.embedded import EmbeddedStack
from atp_service.reconcile import run_reconcile
from atp_service.store import PolicyBook, RedisStore
from atp_service.store.redis_store import outbox_records
from atp_service.store.reservations import ReservationStore
from tests.catalogue import assert_in_catalogue
from tests.integration._worker_process import json_value, read_topic
from tests.random_refs import random_event_id, random_site, random_sku

pytestmark = pytest.mark.integration

NOW = "2026-11-23T05:00:00Z"
BOOK = PolicyBook.of({"web": ChannelPolicy(safety_stock=1), "store": ChannelPolicy(share=50)})


async def outbox_bodies(store: RedisStore, keys: set[str]) -> list[dict[str, Any]]:
    found = []
    for stream in store.keys.outboxes:
        for _, fields in await store.redis.xrange(stream):
            found += [json.loads(v) for key, v in outbox_records(fields) if key in keys]
    return found


def delta(sku: str, site: str, bucket: Bucket, qty: int, **kw: Any) -> InventoryDelta:
    source = Source.ERP if bucket is Bucket.IN_TRANSIT else Source.WMS
    return InventoryDelta(random_event_id(), source, sku, site, bucket, qty, NOW, **kw)


async def test_every_event_the_scripts_write_matches_the_catalogue(store: RedisStore) -> None:
    sku, site = random_sku(), random_site()
    item = f"{sku}@{site}"
    reservations = ReservationStore(store, idempotency_ttl_seconds=86_400)

    async def place(qty: int, ttl: int = 900) -> str:
        rid = f"res_{uuid.uuid4().hex}"
        lines = (LineRequest(sku, site, qty),)
        await reservations.reserve(
            ReservationRequest("web", lines, order_ref="o-1", ttl_seconds=ttl),
            reservation_id=rid, principal="oms", idempotency_key_value=rid,
            correlation_id="corr-1", book=BOOK,
        )  # fmt: skip
        return rid

    # The fold: deltas (with an ETA too) and a snapshot that disagrees (drift).
    await store.fold_many(
        [
            delta(sku, site, Bucket.ON_HAND, 40),
            delta(sku, site, Bucket.IN_TRANSIT, 10, eta=None),
            InventorySnapshot(random_event_id("snap"), Source.WMS, sku, site,
                              {Bucket.ON_HAND: 37, Bucket.ALLOCATED: 0}, NOW),
        ],
        BOOK,
    )  # fmt: skip
    # Reservations: held, confirmed, released; one that expires; one the WMS consumes.
    confirmed = await place(2)
    await reservations.confirm(confirmed, caller="oms", correlation_id="c-2", book=BOOK)
    await reservations.release(confirmed, caller="oms", correlation_id="c-3", book=BOOK)
    await place(1, ttl=1)
    consumed = await place(3)
    await asyncio.sleep(1.1)
    await reservations.expire_due(BOOK)
    await store.fold_many([delta(sku, site, Bucket.ALLOCATED, 3, reservation_id=consumed)], BOOK)
    # An admin's safety-stock change.
    await store.set_safety_stock(
        ItemSite(sku, site), 4, BOOK, correlation_id="c-4", change_id="ss-1", changed_by="ops"
    )

    rids = {confirmed, consumed}
    bodies = await outbox_bodies(store, {item} | rids)
    bodies += [b for b in await all_reservation_events(store) if b["lines"][0]["sku"] == sku]
    types = {b["type"] for b in bodies}
    assert types == {
        "availability.changed", "inventory.drift_detected", "reservation.held",
        "reservation.confirmed", "reservation.released", "reservation.expired",
        "reservation.consumed",
    }  # fmt: skip
    for body in bodies:
        assert_in_catalogue(body)


async def all_reservation_events(store: RedisStore) -> list[dict[str, Any]]:
    out = []
    for stream in store.keys.outboxes:
        for _, fields in await store.redis.xrange(stream):
            out += [json.loads(v) for _, v in outbox_records(fields) if '"reservation.' in v]
    return out


async def test_a_snapshot_request_on_kafka_matches_the_catalogue(stack: EmbeddedStack) -> None:
    settings = Settings(_env_file=None, kafka_brokers=[stack.bootstrap])  # type: ignore[call-arg]
    site = random_site()
    out = io.StringIO()
    await asyncio.to_thread(run_reconcile, settings, "erp", site, ["SKU-1"], out=out)
    assert f"asked erp for snapshots of 1 skus at site {site}" in out.getvalue()
    [record] = await read_topic(
        stack, EVENTS_TOPIC,
        keep=lambda r: r.key == b"erp" and site.encode() in r.value,
        done=lambda found: len(found) >= 1, patience=30,
    )  # fmt: skip
    body = json_value(record)
    assert (body["source"], body["site"], body["skus"]) == ("erp", site, ["SKU-1"])
    assert_in_catalogue(body)
