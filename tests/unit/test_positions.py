"""Where a worker starts each partition, and what it records as catching up (no I/O)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import pytest
from aiokafka import TopicPartition

from atp_service.store.applied import (
    NOTHING,
    AppliedOffsets,
    FoldState,
    PartitionRecord,
    StoreBehind,
)
from stream_agents._positions import Positions

GROUPS = 3
WMS0 = TopicPartition("wms.inventory.v1", 0)
WMS1 = TopicPartition("wms.inventory.v1", 1)


class FakeRecords:
    """The applied offsets, epoch and catch-up record as Redis would hold them."""

    def __init__(self) -> None:
        self.offsets: dict[str, list[int]] = {}
        self.checkpoints: dict[str, tuple[int, str]] = {}
        self.epoch: str | None = "e0"
        self.catching_up: dict[str, int] = {}
        self.folded_before = True
        self.forgotten: list[str] = []

    async def read(self, partitions: Sequence[str]) -> dict[str, PartitionRecord]:
        return {
            p: PartitionRecord(
                list(self.offsets.get(p, [NOTHING] * GROUPS)), self.checkpoints.get(p)
            )
            for p in partitions
        }

    async def check(self, applied: AppliedOffsets) -> None:
        lost = [
            p
            for p in applied.partitions
            if any(
                self.offsets.get(p, [NOTHING] * GROUPS)[g] < applied.expected(g, p)
                for g in range(GROUPS)
            )
        ]
        if lost:
            raise StoreBehind(lost)

    async def advance(self, applied: AppliedOffsets, ends: Mapping[str, tuple[int, str]]) -> int:
        for p, (offset, fingerprint) in ends.items():
            self.offsets[p] = [max(o, offset) for o in self.offsets.get(p, [NOTHING] * GROUPS)]
            self.checkpoints[p] = (offset, fingerprint)
            for g in range(GROUPS):
                applied.note(g, p, offset)
        return GROUPS

    async def forget(self, partitions: Sequence[str]) -> None:
        for p in partitions:
            self.offsets.pop(p, None)
            self.checkpoints.pop(p, None)
            self.catching_up.pop(p, None)
            self.forgotten.append(p)

    async def state(self) -> FoldState:
        return FoldState(self.epoch, dict(self.catching_up))

    async def has_folded_before(self) -> bool:
        return self.folded_before

    async def begin_epoch(self, epoch: str, catching_up: Mapping[str, int]) -> None:
        self.epoch = epoch
        self.catching_up.update(catching_up)

    async def caught_up(self, partitions: Sequence[str]) -> None:
        for p in partitions:
            self.catching_up.pop(p, None)


class FakeProbe:
    def __init__(self, replaced: set[TopicPartition] | None = None) -> None:
        self._replaced = replaced or set()
        self.asked: list[TopicPartition] = []

    async def replaced(
        self, checkpoints: Mapping[TopicPartition, tuple[int, str]]
    ) -> set[TopicPartition]:
        self.asked.extend(checkpoints)
        return self._replaced & set(checkpoints)


class FakeConsumer:
    """Kafka's committed offsets, and where the worker was told to read from."""

    def __init__(self, committed: dict[TopicPartition, int | None]) -> None:
        self._committed = committed
        self.positions: dict[TopicPartition, int | str] = {}

    async def committed(self, tp: TopicPartition) -> int | None:
        return self._committed.get(tp)

    def seek(self, tp: TopicPartition, offset: int) -> None:
        self.positions[tp] = offset

    async def seek_to_beginning(self, *tps: TopicPartition) -> None:
        for tp in tps:
            self.positions[tp] = "beginning"


def positions_over(records: FakeRecords, probe: FakeProbe | None = None) -> Positions:
    return Positions(records, AppliedOffsets(GROUPS), probe or FakeProbe(), advance_seconds=0)


async def test_a_partition_starts_after_what_every_group_folded_not_at_kafkas_commit() -> None:
    records = FakeRecords()
    records.offsets["wms.inventory.v1:0"] = [40, 12, 33]
    consumer = FakeConsumer({WMS0: 10, WMS1: None})
    positions = positions_over(records)

    await positions.place(consumer, [WMS0, WMS1])

    assert consumer.positions == {WMS0: 13, WMS1: "beginning"}
    assert positions.catching_up == {}
    assert records.catching_up == {}


async def test_a_store_behind_kafkas_commit_is_caught_up_until_the_re_read_gets_there() -> None:
    records = FakeRecords()
    records.offsets["wms.inventory.v1:0"] = [20, 20, 20]  # restored while no worker ran
    consumer = FakeConsumer({WMS0: 50})
    positions = positions_over(records)

    await positions.place(consumer, [WMS0])

    assert consumer.positions == {WMS0: 21}
    assert records.catching_up == {"wms.inventory.v1:0": 50}
    await positions.folded({WMS0: (40, "f")})
    assert records.catching_up == {"wms.inventory.v1:0": 50}
    await positions.folded({WMS0: (49, "f")})
    assert records.catching_up == {} and positions.catching_up == {}


async def test_a_loss_found_while_folding_is_read_again_up_to_where_this_worker_had_been() -> None:
    records = FakeRecords()
    consumer = FakeConsumer({WMS0: None})
    positions = positions_over(records)
    await positions.place(consumer, [WMS0])
    await positions.folded({WMS0: (99, "f")})
    await positions.advance()

    records.offsets["wms.inventory.v1:0"] = [30, 30, 30]  # Redis came back from an older RDB
    with pytest.raises(StoreBehind):
        await positions.check()
    await positions.place(consumer, [WMS0], lost=True)

    assert consumer.positions == {WMS0: 31}
    assert records.catching_up == {"wms.inventory.v1:0": 100}
    assert records.epoch != "e0"  # an API that saw the store empty learns a worker noticed


async def test_a_log_that_is_not_the_one_recorded_drops_the_record_and_reads_from_the_commit() -> (
    None
):
    records = FakeRecords()
    records.offsets["wms.inventory.v1:0"] = [39, 39, 39]
    records.checkpoints["wms.inventory.v1:0"] = (39, "old")
    records.catching_up["wms.inventory.v1:0"] = 45
    consumer = FakeConsumer({WMS0: None})  # the broker came back empty
    positions = positions_over(records, FakeProbe(replaced={WMS0}))

    await positions.place(consumer, [WMS0])

    assert consumer.positions == {WMS0: "beginning"}
    assert records.forgotten == ["wms.inventory.v1:0"]
    assert records.catching_up == {}


async def test_a_dataset_of_the_release_before_starts_from_kafkas_commit() -> None:
    records = FakeRecords()
    records.epoch = None  # folded by a release that kept no offsets
    consumer = FakeConsumer({WMS0: 70})
    positions = positions_over(records)

    await positions.place(consumer, [WMS0])

    assert consumer.positions == {WMS0: 70}
    assert records.epoch is not None and records.catching_up == {}


async def test_an_emptied_store_is_read_from_the_beginning_and_caught_up() -> None:
    records = FakeRecords()
    records.epoch, records.folded_before = None, False
    consumer = FakeConsumer({WMS0: 70})
    positions = positions_over(records)

    await positions.place(consumer, [WMS0])

    assert consumer.positions == {WMS0: "beginning"}
    assert records.catching_up == {"wms.inventory.v1:0": 70}


async def test_a_catch_up_the_worker_before_finished_is_cleared_on_placing() -> None:
    records = FakeRecords()
    records.offsets["wms.inventory.v1:0"] = [80, 80, 80]
    records.catching_up["wms.inventory.v1:0"] = 60  # it died before saying it got there
    positions = positions_over(records)

    await positions.place(FakeConsumer({WMS0: 81}), [WMS0])

    assert records.catching_up == {}
