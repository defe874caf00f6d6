"""Where each inbound partition a worker is assigned starts, and what it must read again.

The fold records, per partition and hash-tag group, the highest offset it folded
(atp_service/store/applied.py). This module keeps that record useful:

- **Start from Redis.** A partition assigned to this worker is read from the first offset some
  group has not folded (not only from Kafka's committed offset, which lags it, and which a
  Redis that lost writes leaves ahead of it).
- **Advance.** Once a batch is folded and its rejects dead-lettered, every group's offset is
  brought up to where the batch ended, at most every ``advance_seconds`` (and before the
  partitions go to another worker, or the worker stops): a group that no event of a partition
  reached for a long time would otherwise make a restart read the whole partition again.
  Kafka's committed offsets follow the advanced ones, so that, in a Redis that kept what it
  wrote, they are never ahead of every group's record.
- **Notice a Redis that came back holding less**, without a restart: the fold and the
  advance refuse to write when a group holds less than this worker recorded there, and every
  ``check_seconds`` the worker compares what Redis holds with what it knows. It then reads
  the partitions again from what Redis holds, and records them as *catching up* to where
  it had been (``keys.FOLD_CATCHUP``, with a new ``keys.FOLD_EPOCH``) until the re-read
  got there; the API's /readyz says so meanwhile. A partition assigned with its groups'
  offsets below Kafka's committed offset (Redis restored while no worker ran) is caught up
  the same way.
- **A log that is not the one recorded** (a topic deleted and made again, a broker that came
  back empty): the checkpoint kept with each group's advanced offset (an offset and the
  fingerprint of the record there) is compared with the log on assignment; when it differs,
  what Redis recorded of that partition is dropped and it is read from Kafka's committed
  offset (or its beginning).
- **A dataset no worker tracked yet** (no ``keys.FOLD_EPOCH``) that holds folds (its sites
  set) was folded by a release that kept no offsets: its partitions start from Kafka's
  committed offsets, as then. An empty one starts from what it recorded: nothing, the
  beginning.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Awaitable, Callable, Collection, Mapping, Sequence
from typing import Protocol, TypeVar

from aiokafka import TopicPartition
from aiokafka.errors import KafkaError

from atp_service import metrics
from atp_service.store.applied import (
    NOTHING,
    AppliedOffsets,
    FoldState,
    PartitionRecord,
)
from atp_service.store.keys import partition_field
from stream_agents._folding import redis_is_down, retry_while_down

log = logging.getLogger(__name__)

T = TypeVar("T")

ADVANCE_SECONDS = 1.0
CHECK_SECONDS = 1.0


def field_of(tp: TopicPartition) -> str:
    return partition_field(tp.topic, tp.partition)


class AppliedRecords(Protocol):
    """What Redis holds of the fold's offsets (``atp_service.store.applied.AppliedStore``)."""

    async def read(self, partitions: Sequence[str]) -> dict[str, PartitionRecord]: ...
    async def check(self, applied: AppliedOffsets) -> None: ...
    async def advance(
        self, applied: AppliedOffsets, ends: Mapping[str, tuple[int, str]]
    ) -> int: ...
    async def forget(self, partitions: Sequence[str]) -> None: ...
    async def state(self) -> FoldState: ...
    async def has_folded_before(self) -> bool: ...
    async def begin_epoch(self, epoch: str, catching_up: Mapping[str, int]) -> None: ...
    async def caught_up(self, partitions: Sequence[str]) -> None: ...


class Seekable(Protocol):
    """The part of the worker's consumer (``AIOKafkaConsumer``) that placing needs."""

    async def committed(self, partition: TopicPartition) -> int | None: ...
    def seek(self, partition: TopicPartition, offset: int) -> None: ...
    async def seek_to_beginning(self, *partitions: TopicPartition) -> None: ...


class LogCheck(Protocol):
    """Which partitions' logs are not the ones recorded (``stream_agents._kafka.LogProbe``)."""

    async def replaced(
        self, checkpoints: Mapping[TopicPartition, tuple[int, str]]
    ) -> set[TopicPartition]: ...


class Positions:
    """The applied offsets of one worker's partitions: placing, advancing, checking them."""

    def __init__(
        self,
        store: AppliedRecords,
        applied: AppliedOffsets,
        probe: LogCheck,
        *,
        advance_seconds: float = ADVANCE_SECONDS,
        check_seconds: float = CHECK_SECONDS,
        should_give_up: Callable[[], bool] = lambda: False,
    ) -> None:
        self.store = store
        self.applied = applied
        self.probe = probe
        self.advance_seconds = advance_seconds
        self.check_seconds = check_seconds
        self._should_give_up = should_give_up
        #: Where the folded batches ended, per partition, not yet advanced in every group:
        #: (last offset, fingerprint of that record).
        self._ends: dict[TopicPartition, tuple[int, str]] = {}
        #: Partitions being read again, and the offset up to which they must be.
        self.catching_up: dict[TopicPartition, int] = {}
        self._next_advance = time.monotonic() + advance_seconds
        self._next_check = time.monotonic() + check_seconds

    # -- placing -------------------------------------------------------------------------

    async def place(
        self, consumer: Seekable, tps: Collection[TopicPartition], *, lost: bool = False
    ) -> None:
        """Seek each of ``tps`` to the first offset some group has not folded. ``lost``: Redis
        was found holding less than this worker recorded, which it read up to before."""
        tps = sorted(tps)
        if not tps:
            return
        fields = {tp: field_of(tp) for tp in tps}
        had = {tp: self.applied.highest(f) + 1 for tp, f in fields.items()} if lost else {}
        records = await self._redis(
            "read applied offsets", lambda: self.store.read(list(fields.values()))
        )
        state = await self._redis("read the fold state", self.store.state)
        checkpoints = {
            tp: record.checkpoint
            for tp, record in ((tp, records[f]) for tp, f in fields.items())
            if record.checkpoint is not None
        }
        # A loss found while folding is Redis' doing, not the log's: no need to look.
        replaced = set() if lost else await self.probe.replaced(checkpoints)
        if replaced:
            log.warning(
                "inbound: %s hold other records than the fold recorded (a topic made again, "
                "or a broker that came back empty): read from the committed offsets",
                ", ".join(sorted(fields[tp] for tp in replaced)),
            )
            await self._redis(
                "drop applied offsets", lambda: self.store.forget([fields[tp] for tp in replaced])
            )
            for tp in replaced:
                records[fields[tp]] = PartitionRecord([NOTHING] * self.applied.groups, None)
                state.catching_up.pop(fields[tp], None)
                had.pop(tp, None)
        legacy = (
            state.epoch is None
            and not lost
            and all(o == NOTHING for r in records.values() for o in r.offsets)
            and await self._redis("look for folds", self.store.has_folded_before)
        )
        committed = {tp: await _committed(consumer, tp) for tp in tps}
        catching: dict[str, int] = {}
        done: list[str] = []  # recorded as catching up, and re-read already
        for tp in tps:
            f = fields[tp]
            record = records[f]
            self.applied.reset(f, record.offsets)
            self._ends.pop(tp, None)
            self.catching_up.pop(tp, None)
            start = record.start
            if legacy or tp in replaced:
                # No record of this log: where the consumer group got to, as before.
                offset = committed[tp]
                if offset is None:
                    await consumer.seek_to_beginning(tp)
                else:
                    consumer.seek(tp, offset)
                continue
            target = max(committed[tp] or 0, state.catching_up.get(f, 0), had.get(tp, 0))
            if target > start:
                self.catching_up[tp] = target
                catching[f] = target
            elif f in state.catching_up:
                done.append(f)  # the worker before this one got there and died
            if start == 0:
                await consumer.seek_to_beginning(tp)
            else:
                consumer.seek(tp, start)
        changed = any(state.catching_up.get(f) != target for f, target in catching.items())
        if lost or state.epoch is None or changed:
            # A new epoch when this worker found the loss: an API process that saw the store
            # come back empty learns that a worker noticed.
            epoch = uuid.uuid4().hex if lost or state.epoch is None else state.epoch
            await self._redis(
                "record the catch-up", lambda: self.store.begin_epoch(epoch, catching)
            )
        if done:
            await self._redis("record a catch-up done", lambda: self.store.caught_up(done))
        if catching:
            log.warning(
                "inbound: Redis holds less than was folded; reading again %s",
                ", ".join(f"{f} up to {o}" for f, o in sorted(catching.items())),
            )
        metrics.FOLD_CATCHING_UP.set(len(self.catching_up))

    async def left_behind(self, tps: Collection[TopicPartition]) -> None:
        """Redis was found holding less while ``tps`` go to another worker (or this one
        stops): record that they must be read again up to where this worker had folded, for
        whoever reads them next."""
        catching = {
            field_of(tp): self.applied.highest(field_of(tp)) + 1
            for tp in tps
            if self.applied.tracks(field_of(tp))
        }
        await self._redis(
            "record the catch-up", lambda: self.store.begin_epoch(uuid.uuid4().hex, catching)
        )

    def forget_all(self) -> None:
        """A new consumer: nothing is placed yet."""
        self.applied.forget(self.applied.partitions)
        self._ends.clear()
        self.catching_up.clear()
        metrics.FOLD_CATCHING_UP.set(0)

    def revoked(self, tps: Collection[TopicPartition]) -> None:
        self.applied.forget(field_of(tp) for tp in tps)
        for tp in tps:
            self._ends.pop(tp, None)
            self.catching_up.pop(tp, None)
        metrics.FOLD_CATCHING_UP.set(len(self.catching_up))

    # -- after each batch ------------------------------------------------------------------

    async def folded(self, ends: Mapping[TopicPartition, tuple[int, str]]) -> None:
        """A batch is folded and its rejects dead-lettered: it ended at ``ends``."""
        self._ends.update(ends)
        done = [
            tp
            for tp, target in self.catching_up.items()
            if tp in ends and ends[tp][0] + 1 >= target
        ]
        if done:
            await self._redis(
                "record a catch-up done",
                lambda: self.store.caught_up([field_of(tp) for tp in done]),
            )
            for tp in done:
                del self.catching_up[tp]
            log.info("inbound: caught up on %s", ", ".join(field_of(tp) for tp in done))
            metrics.FOLD_CATCHING_UP.set(len(self.catching_up))

    def advance_due(self) -> bool:
        return bool(self._ends) and _now() >= self._next_advance

    async def advance(
        self, only: Collection[TopicPartition] | None = None
    ) -> dict[TopicPartition, int]:
        """Record in every group where the folded batches ended; returns the offsets Kafka may
        now commit (the next to read). Raises ``StoreBehind`` if Redis lost writes."""
        tps = [tp for tp in self._ends if only is None or tp in only]
        self._next_advance = _now() + self.advance_seconds
        if not tps:
            return {}
        ends = {field_of(tp): self._ends[tp] for tp in tps}
        await self._redis("advance applied offsets", lambda: self.store.advance(self.applied, ends))
        for tp in tps:
            del self._ends[tp]
        return {tp: ends[field_of(tp)][0] + 1 for tp in tps}

    def check_due(self) -> bool:
        return _now() >= self._next_check

    async def check(self) -> None:
        """Raise ``StoreBehind`` if Redis holds less than this worker recorded there."""
        self._next_check = _now() + self.check_seconds
        await self._redis("check applied offsets", lambda: self.store.check(self.applied))

    async def _redis(self, what: str, operation: Callable[[], Awaitable[T]]) -> T:
        return await retry_while_down(
            what, operation, redis_is_down, "redis", self._should_give_up, 2.0
        )


def _now() -> float:
    return time.monotonic()


async def _committed(consumer: Seekable, tp: TopicPartition) -> int | None:
    """Kafka's committed offset of ``tp`` (None when there is none, or the broker is away)."""
    try:
        offset: int | None = await consumer.committed(tp)
    except KafkaError as exc:
        log.warning("inbound: committed offset of %s unavailable (%r)", tp, exc)
        return None
    return offset
