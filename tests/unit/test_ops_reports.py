"""The workers' reports: sync per source from every live worker; the reporter's bookkeeping."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from typing import Any, cast

import pytest
from prometheus_client import REGISTRY

from atp_service.store.ops import (
    LIVE_WINDOW_MS,
    OpsStore,
    PartitionLag,
    SourceSync,
    Tallies,
    WorkerReport,
    merge_sync,
)
from stream_agents.report import WorkerReporter


def report(worker: str, at: int, **lags: int) -> WorkerReport:
    return {
        "worker": worker,
        "at": at,
        "sources": {s: {"lag_ms": lag, "events_per_second": 0.0} for s, lag in lags.items()},
        "partitions": [],
        "dead_letters_per_second": 0.0,
    }


def test_sync_is_the_largest_lag_of_the_live_workers_measured_at_the_oldest_of_them() -> None:
    reports = [report("a", 10_000, wms=250, erp=0), report("b", 9_500, wms=1_200)]
    assert merge_sync(reports, ["wms", "erp"]) == {
        "wms": SourceSync(1.2, 9_500),
        "erp": SourceSync(0.0, 10_000),
    }


def test_a_worker_that_stopped_reporting_is_left_out_and_a_source_nobody_reads_is_unknown() -> None:
    now = 100_000
    reports = [report("gone", now - LIVE_WINDOW_MS - 1, wms=90_000), report("live", now, wms=40)]
    assert merge_sync(reports, ["wms", "erp"]) == {
        "wms": SourceSync(0.04, now),
        "erp": SourceSync(None, None),
    }
    # With nothing live but one old report, it stands: its as_of tells how old it is.
    assert merge_sync([report("old", 5, wms=7)], ["wms"]) == {"wms": SourceSync(0.007, 5)}
    assert merge_sync([], ["wms"]) == {"wms": SourceSync(None, None)}


class FakeOps:
    def __init__(self) -> None:
        self.published: list[dict[str, Any]] = []
        self.fail = False

    async def publish(
        self,
        report: WorkerReport,
        *,
        dead_letters: Sequence[Mapping[str, Any]] = (),
        drifts: Sequence[Mapping[str, Any]] = (),
        tallies: Tallies | None = None,
    ) -> None:
        if self.fail:
            raise ConnectionError("redis is out")
        self.published.append(
            {"report": report, "dead_letters": list(dead_letters), "drifts": list(drifts),
             "tallies": tallies}
        )  # fmt: skip


def lags() -> list[PartitionLag]:
    return [
        {"topic": "wms.inventory.v1", "partition": 0, "source": "wms", "lag_ms": 30,
         "lag_messages": 2},
        {"topic": "wms.inventory.v1", "partition": 1, "source": "wms", "lag_ms": 80,
         "lag_messages": 0},
    ]  # fmt: skip


async def test_a_report_carries_the_worst_partition_per_source_and_what_was_folded() -> None:
    ops = FakeOps()
    reporter = WorkerReporter(cast(OpsStore, ops), "worker-1", lags)
    reporter.folded("wms", "folded", 5)
    reporter.folded("wms", "duplicate", 1)
    reporter.dead_lettered([{"code": "schema_violation", "detail": "x"}])
    reporter.drifted(
        {"sku": "S", "site": "D", "buckets": {"on_hand": {"folded": 10, "snapshot": 7}}}
    )
    await reporter.publish_once()
    (sent,) = ops.published
    assert sent["report"]["sources"]["wms"]["lag_ms"] == 80
    assert sent["report"]["sources"]["wms"]["events_per_second"] > 0
    assert sent["report"]["dead_letters_per_second"] > 0
    assert sent["tallies"].folded == {"wms:folded": 5, "wms:duplicate": 1}
    assert sent["tallies"].dead_letters == {"schema_violation": 1}
    assert sent["tallies"].drift == {"on_hand:events": 1, "on_hand:units": 3}
    assert [d["code"] for d in sent["dead_letters"]] == ["schema_violation"]
    await reporter.publish_once()
    assert ops.published[1]["dead_letters"] == [] and not ops.published[1]["tallies"]


async def test_a_report_redis_refused_keeps_its_counts_and_letters_for_the_next() -> None:
    ops = FakeOps()
    reporter = WorkerReporter(cast(OpsStore, ops), "worker-1", lags)
    reporter.dead_lettered([{"code": "malformed_json"}])
    ops.fail = True
    with pytest.raises(ConnectionError):
        await reporter.publish_once()
    reporter.dead_lettered([{"code": "malformed_json"}])
    ops.fail = False
    await reporter.publish_once()
    (sent,) = ops.published
    assert sent["tallies"].dead_letters == {"malformed_json": 2}
    assert len(sent["dead_letters"]) == 2


async def test_the_lags_are_measured_every_round_even_when_the_report_cannot_be_written() -> None:
    """Measuring sets the atp_sync_lag_seconds gauges (InboundAgent.partition_lags)."""
    ops = FakeOps()
    ops.fail = True
    measured: list[int] = []

    def measure() -> list[PartitionLag]:
        measured.append(1)
        return lags()

    reporter = WorkerReporter(cast(OpsStore, ops), "worker-1", measure, every_seconds=0.01)
    stop = asyncio.Event()
    task = asyncio.create_task(reporter.run(stop))
    await asyncio.sleep(0.1)
    stop.set()
    await task
    assert len(measured) >= 3 and reporter.reports == 0
    errors = REGISTRY.get_sample_value("atp_redis_errors_total", {"component": "worker_report"})
    assert errors is not None and errors >= 3
