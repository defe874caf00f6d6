"""The sync lag meter: the wait of the oldest event not yet folded, per partition, in ms."""

from __future__ import annotations

from dataclasses import dataclass

from stream_agents.lag import LagMeter

WMS0 = ("wms.inventory.v1", 0)


@dataclass
class Record:
    offset: int
    timestamp: int | None


class Clock:
    def __init__(self, now: int = 1_000_000) -> None:
        self.now = now

    def __call__(self) -> int:
        return self.now


def test_the_lag_is_the_wait_of_the_first_record_of_the_oldest_batch_not_folded() -> None:
    clock = Clock()
    meter = LagMeter(clock)
    first = meter.fetched({WMS0: [Record(10, clock.now - 300), Record(11, clock.now - 100)]})
    second = meter.fetched({WMS0: [Record(12, clock.now - 50)]})
    assert meter.lag(WMS0, 13) == (300, 0)
    meter.folded(first)
    assert meter.lag(WMS0, 13) == (50, 0)
    meter.folded(second)
    assert meter.lag(WMS0, 13) == (0, 0)


def test_the_lag_keeps_growing_while_a_batch_cannot_be_folded() -> None:
    clock = Clock()
    meter = LagMeter(clock)
    meter.fetched({WMS0: [Record(0, clock.now)]})
    seen = []
    for _ in range(3):  # Redis is out: the batch stays in flight
        clock.now += 1_000
        seen.append(meter.lag(WMS0, 1)[0])
    assert seen == [1_000, 2_000, 3_000]


def test_records_the_worker_has_not_fetched_yet_count_from_when_it_saw_them() -> None:
    clock = Clock()
    meter = LagMeter(clock)
    meter.folded(meter.fetched({WMS0: [Record(0, clock.now - 10)]}))
    assert meter.lag(WMS0, 1) == (0, 0)  # caught up
    assert meter.lag(WMS0, 5) == (0, 4)  # 4 more at the broker, seen just now
    clock.now += 700
    assert meter.lag(WMS0, 5) == (700, 4)
    meter.folded(meter.fetched({WMS0: [Record(n, clock.now) for n in range(1, 5)]}))
    assert meter.lag(WMS0, 5) == (0, 0)


def test_a_record_without_a_timestamp_has_waited_since_it_was_fetched() -> None:
    clock = Clock()
    meter = LagMeter(clock)
    meter.fetched({WMS0: [Record(0, None)]})
    clock.now += 250
    assert meter.lag(WMS0, 1)[0] == 250


def test_partitions_revoked_or_a_new_consumer_forget_what_was_held() -> None:
    clock = Clock()
    meter = LagMeter(clock)
    erp = ("erp.inventory.v1", 2)
    meter.fetched({WMS0: [Record(0, clock.now - 5)], erp: [Record(7, clock.now - 9)]})
    meter.forget([WMS0])
    assert meter.lag(WMS0, 1) == (0, None)
    assert meter.lag(erp, 8) == (9, 0)
    meter.reset()
    assert meter.lag(erp, 8) == (0, None)


def test_a_timestamp_ahead_of_the_clock_is_no_lag() -> None:
    clock = Clock()
    meter = LagMeter(clock)
    meter.fetched({WMS0: [Record(0, clock.now + 5_000)]})
    assert meter.lag(WMS0, 1) == (0, 0)
