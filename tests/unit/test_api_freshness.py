"""Freshness in availability answers: `sources` per site row, `sync` per answer (fakeredis)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from atp_service.domain import Bucket, InventorySnapshot, Source
from atp_service.store import PolicyBook
from atp_service.store.ops import OpsStore, WorkerReport
from tests.random_refs import random_event_id, random_sku
from tests.unit.api_harness import READER, Api, make_settings, running_api


@pytest.fixture
async def api(tmp_path: Path) -> AsyncIterator[Api]:
    async with running_api(make_settings({}, tmp_path)) as api:
        yield api


async def page(api: Api, sku: str, **params: str) -> dict[str, Any]:
    response = await api.client.get(
        f"/v1/availability/{sku}", params={"channel": "web", **params}, headers=READER
    )
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


async def test_each_site_row_says_when_each_source_was_last_heard_from(api: Api) -> None:
    sku = random_sku()
    await api.receive(sku, "DC-1", 40, occurred_at="2026-11-23T05:00:00.250Z")
    await api.receive(sku, "DC-1", 9, Bucket.IN_TRANSIT, occurred_at="2026-11-23T07:30:00+02:00")

    (row,) = (await page(api, sku, site="DC-1"))["sites"]

    assert row["sources"] == {"wms": "2026-11-23T05:00:00.250Z", "erp": "2026-11-23T05:30:00.000Z"}


async def test_an_older_event_folded_later_does_not_make_the_row_look_staler(api: Api) -> None:
    sku = random_sku()
    await api.receive(sku, "DC-1", 40, occurred_at="2026-11-23T05:00:00Z")
    await api.receive(sku, "DC-1", 1, occurred_at="2026-11-23T04:00:00Z")  # a replay

    (row,) = (await page(api, sku, site="DC-1"))["sites"]

    assert (row["on_hand"], row["sources"]) == (41, {"wms": "2026-11-23T05:00:00.000Z"})


async def test_a_snapshot_that_changes_nothing_still_freshens_its_source_not_the_version(
    api: Api,
) -> None:
    sku = random_sku()
    await api.receive(sku, "DC-1", 40, occurred_at="2026-11-23T05:00:00Z")
    before = (await page(api, sku))["sites"][0]
    same = InventorySnapshot(
        random_event_id(), Source.WMS, sku, "DC-1", {Bucket.ON_HAND: 40}, "2026-11-23T06:00:00Z"
    )
    [outcome] = await api.store.fold_many([same], PolicyBook.of({}))
    assert outcome.status == "unchanged"

    deadline = time.monotonic() + 5
    while True:  # the product page, answered from the copy: the change is pushed to it
        after = (await page(api, sku))["sites"][0]
        if after["sources"] == {"wms": "2026-11-23T06:00:00.000Z"}:
            break
        assert time.monotonic() < deadline, f"the copy kept {after['sources']}"
        await asyncio.sleep(0.02)
    assert (after["version"], after["as_of"]) == (before["version"], before["as_of"])


def worker_report(worker: str, **lags: int) -> WorkerReport:
    return {
        "worker": worker,
        "at": int(time.time() * 1000),
        "sources": {s: {"lag_ms": lag, "events_per_second": 10.0} for s, lag in lags.items()},
        "partitions": [],
        "dead_letters_per_second": 0.0,
    }


async def sync_of(api: Api, sku: str, accept: Any, **params: str) -> dict[str, Any]:
    deadline = time.monotonic() + 5
    while True:
        sync: dict[str, Any] = (await page(api, sku, **params))["sync"]
        if accept(sync):
            return sync
        assert time.monotonic() < deadline, f"sync not as expected: {sync}"
        await asyncio.sleep(0.05)


async def test_every_answer_carries_the_workers_sync_lag_per_source(api: Api) -> None:
    sku = random_sku()
    await api.receive(sku, "DC-1", 5)
    unmeasured = (await page(api, sku))["sync"]
    assert unmeasured == {
        "wms": {"lag_seconds": None, "as_of": None},
        "erp": {"lag_seconds": None, "as_of": None},
    }

    await OpsStore(api.redis).publish(worker_report("w1", wms=1500, erp=0))
    sync = await sync_of(api, sku, lambda s: s["wms"]["lag_seconds"] == 1.5)
    assert sync["erp"]["lag_seconds"] == 0.0 and sync["wms"]["as_of"].endswith("Z")
    assert (await page(api, sku, site="DC-1"))["sync"] == sync
    batch = await api.client.post(
        "/v1/availability/batch",
        json={"channel": "web", "items": [{"sku": sku}, {"sku": sku, "site": "DC-1"}]},
        headers=READER,
    )
    assert [item["sync"] for item in batch.json()["items"]] == [sync, sync]

    # The product page's answer is kept whole; its sync still follows the workers.
    await OpsStore(api.redis).publish(worker_report("w1", wms=0, erp=0))
    await sync_of(api, sku, lambda s: s["wms"]["lag_seconds"] == 0.0)
