"""Reconciliation requests: their shape, their validation, and one worker per period."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Sequence
from datetime import UTC, datetime

import fakeredis
import pytest

from atp_service.cli import build_parser
from atp_service.config import EVENTS_TOPIC
from atp_service.reconcile import BadRequest, ReconcileSchedule, snapshot_request


def test_a_request_names_the_source_the_site_and_the_skus_keyed_by_the_source() -> None:
    key, value = snapshot_request(
        "wms", "DC-EAST", ["SKU-1", "SKU-2", "SKU-1"], requested_by="cli",
        now=datetime(2026, 12, 4, 10, 0, tzinfo=UTC),
    )  # fmt: skip
    body = json.loads(value)
    assert key == "wms"
    assert body["type"] == "inventory.snapshot_requested" and body["schema"] == "atp.event.v1"
    assert (body["source"], body["site"], body["skus"]) == ("wms", "DC-EAST", ["SKU-1", "SKU-2"])
    assert body["occurred_at"] == "2026-12-04T10:00:00.000Z"
    assert body["event_id"].startswith("snapreq-") and body["correlation_id"] is None


def test_without_site_or_skus_a_request_asks_for_everything() -> None:
    body = json.loads(snapshot_request("erp", requested_by="schedule")[1])
    assert body["site"] is None and "skus" not in body


@pytest.mark.parametrize(
    ("source", "site", "skus", "says"),
    [
        ("sap", None, [], "unknown source 'sap'"),
        ("wms", "DC EAST", [], "'DC EAST' is not a site code"),
        ("wms", None, ["SKU 1"], "'SKU 1' is not a sku"),
        ("wms", None, [f"S{n}" for n in range(1001)], "at most 1000"),
    ],
)
def test_a_request_no_source_could_answer_is_refused_saying_why(
    source: str, site: str | None, skus: list[str], says: str
) -> None:
    with pytest.raises(BadRequest, match=says):
        snapshot_request(source, site, skus, requested_by="cli")


def test_atp_reconcile_takes_a_source_a_site_and_several_skus() -> None:
    args = build_parser().parse_args(
        ["reconcile", "--source", "wms", "--site", "DC-1", "--sku", "A", "B", "--sku", "C"]
    )
    assert (args.source, args.site, args.skus) == ("wms", "DC-1", ["A", "B", "C"])


class Recorder:
    def __init__(self, fail: bool = False) -> None:
        self.sent: list[tuple[str, Sequence[tuple[str, str]]]] = []
        self.fail = fail

    async def publish(self, topic: str, messages: Sequence[tuple[str, str]]) -> None:
        if self.fail:
            raise ConnectionError("broker unreachable")
        self.sent.append((topic, messages))


async def test_one_worker_per_period_asks_every_source() -> None:
    redis = fakeredis.FakeAsyncRedis(decode_responses=True)
    a, b = Recorder(), Recorder()
    first = ReconcileSchedule(
        redis, a.publish, every_seconds=0.3, sources=["wms", "erp", "wms"], holder="w1"
    )
    second = ReconcileSchedule(
        redis, b.publish, every_seconds=0.3, sources=["wms", "erp"], holder="w2"
    )
    assert await first.tick()
    assert not await second.tick()  # this period's requests are made
    [(topic, messages)] = a.sent
    assert topic == EVENTS_TOPIC and [key for key, _ in messages] == ["erp", "wms"]
    await asyncio.sleep(0.35)
    assert await second.tick() and not await first.tick()
    assert len(b.sent) == 1


async def test_a_request_that_could_not_be_sent_leaves_the_period_to_the_next_tick() -> None:
    redis = fakeredis.FakeAsyncRedis(decode_responses=True)
    broken, working = Recorder(fail=True), Recorder()
    with pytest.raises(ConnectionError):
        await ReconcileSchedule(
            redis, broken.publish, every_seconds=60, sources=["wms"], holder="w1"
        ).tick()
    assert await ReconcileSchedule(
        redis, working.publish, every_seconds=60, sources=["wms"], holder="w2"
    ).tick()
