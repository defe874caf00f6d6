"""What the fold applied, per inbound Kafka partition and hash-tag group: a record that lets a
worker start from what Redis holds and notice when Redis comes back holding less.

Each group keeps, per partition, the highest offset folded into it (``keys.applied_offsets``):
fold.lua writes it in the same call as the positions the events moved, and skips an event
at or below it (a re-read is harmless, even past the event-id de-duplication window). A
worker brings every group's offset up to where its batches ended (advance.lua), once those
batches were folded and their rejects dead-lettered, so that groups no event of a partition
reached for a long time do not hold the partition's start back; and it commits to Kafka
only offsets it advanced that way. Redis keeps the order of writes in its persistence and
replication: a state that holds an offset holds the folds before it.

This worker knows what it recorded (``AppliedOffsets``); both scripts refuse to write when
Redis holds less than that (``StoreBehind``): Redis restarted from an older RDB or AOF, or
a replica was promoted before it had the last writes. The worker then reads the partitions
again from what Redis holds (stream_agents/_positions.py).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from hashlib import blake2b
from typing import TYPE_CHECKING, Any, NamedTuple

import orjson

from atp_service.store import keys as k

if TYPE_CHECKING:
    from atp_service.store.redis_store import RedisStore

#: The offset recorded for a partition nothing of which was folded into a group.
NOTHING = -1
#: The reply of fold.lua and advance.lua when Redis holds less than the worker recorded.
BEHIND = "behind"


class Origin(NamedTuple):
    """Where an inbound event was read: its partition (``keys.partition_field``), its offset.
    A named tuple: one is made per event folded (a frozen dataclass costs about 1 µs more)."""

    partition: str
    offset: int


class StoreBehind(Exception):
    """Redis holds less of these partitions than this worker recorded there: it lost writes."""

    def __init__(self, partitions: Iterable[str]) -> None:
        self.partitions = frozenset(partitions)
        super().__init__(f"Redis lost folds of {', '.join(sorted(self.partitions))}")


def record_fingerprint(value: bytes | None) -> str:
    """The fingerprint of a Kafka record's value kept with a checkpoint (16 hex digits)."""
    return blake2b(value or b"", digest_size=8).hexdigest()


class AppliedOffsets:
    """Per partition and group: the offset this worker knows Redis recorded as folded (no I/O).

    Only the partitions this worker is assigned are here; what it knows only grows, except by
    ``reset`` (after reading Redis again).
    """

    def __init__(self, groups: int) -> None:
        self.groups = groups
        self._known: dict[str, list[int]] = {}

    def expected(self, group: int, partition: str) -> int:
        known = self._known.get(partition)
        return NOTHING if known is None else known[group]

    def note(self, group: int, partition: str, offset: int) -> None:
        known = self._known.get(partition)
        if known is not None and offset > known[group]:
            known[group] = offset

    def reset(self, partition: str, offsets: Sequence[int]) -> None:
        if len(offsets) != self.groups:
            raise ValueError(f"{len(offsets)} offsets for {self.groups} groups")
        self._known[partition] = list(offsets)

    def forget(self, partitions: Iterable[str]) -> None:
        for partition in partitions:
            self._known.pop(partition, None)

    def tracks(self, partition: str) -> bool:
        return partition in self._known

    @property
    def partitions(self) -> list[str]:
        return list(self._known)

    def highest(self, partition: str) -> int:
        """The last offset of the partition this worker knows folded (into some group)."""
        known = self._known.get(partition)
        return NOTHING if known is None else max(known)

    def lowest(self, partition: str) -> int:
        """Every offset up to this one is folded into every group."""
        known = self._known.get(partition)
        return NOTHING if known is None else min(known)


@dataclass(frozen=True, slots=True)
class PartitionRecord:
    """What Redis holds of one partition: each group's offset, the latest checkpoint."""

    offsets: list[int]
    checkpoint: tuple[int, str] | None  # (offset, record fingerprint)

    @property
    def start(self) -> int:
        """The first offset some group has not folded."""
        return min(self.offsets) + 1


@dataclass(frozen=True, slots=True)
class FoldState:
    """What /readyz reads: whether a worker tracks this dataset, and what is being re-read."""

    epoch: str | None
    catching_up: dict[str, int]  # partition -> the offset it must be re-read up to


class AppliedStore:
    """The Redis side of the applied offsets, the epoch and the catch-up record."""

    def __init__(self, store: RedisStore) -> None:
        self.store = store
        self.redis = store.redis
        self.keys = store.keys
        self._advance = store.register_script("advance.lua")

    async def read(self, partitions: Sequence[str]) -> dict[str, PartitionRecord]:
        """Every group's offset and checkpoint of ``partitions``, in one round trip."""
        if not partitions:
            return {}
        fields = [f for p in partitions for f in (p, f"{p}#")]
        pipe = self.redis.pipeline(transaction=False)
        for key in self.keys.applied:
            pipe.hmget(key, fields)
        replies = await pipe.execute()
        out: dict[str, PartitionRecord] = {}
        for i, partition in enumerate(partitions):
            offsets: list[int] = []
            checkpoint: tuple[int, str] | None = None
            for reply in replies:
                raw, mark = reply[2 * i], reply[2 * i + 1]
                offsets.append(NOTHING if raw is None else int(raw))
                if mark:
                    at, _, fingerprint = str(mark).partition(":")
                    if checkpoint is None or int(at) > checkpoint[0]:
                        checkpoint = (int(at), fingerprint)
            out[partition] = PartitionRecord(offsets, checkpoint)
        return out

    async def check(self, applied: AppliedOffsets) -> None:
        """Raise ``StoreBehind`` if Redis holds less than ``applied`` knows it recorded."""
        partitions = applied.partitions
        records = await self.read(partitions)
        lost: list[str] = []
        for partition in partitions:
            for group, offset in enumerate(records[partition].offsets):
                if offset < applied.expected(group, partition):
                    lost.append(partition)
                    break
                applied.note(group, partition, offset)  # another worker went further
        if lost:
            raise StoreBehind(lost)

    async def advance(self, applied: AppliedOffsets, ends: Mapping[str, tuple[int, str]]) -> int:
        """Record in every group that each partition was folded up to ``ends`` (offset, record
        fingerprint), where the group's offset is lower; returns the groups written. Raises
        ``StoreBehind`` (after noting what the others recorded) if Redis lost writes."""
        calls: list[tuple[int, list[str], bytes]] = []
        for group in range(self.keys.groups):
            rows: list[list[Any]] = []
            for partition, (offset, fingerprint) in ends.items():
                expected = applied.expected(group, partition)
                if expected < offset:
                    rows.append([partition, expected, offset, fingerprint])
            if rows:
                calls.append((group, [row[0] for row in rows], orjson.dumps(rows)))
        if not calls:
            return 0
        replies = await self.store.run_scripts_or_raise(
            [(self._advance, [self.keys.applied[group]], [rows]) for group, _, rows in calls]
        )
        lost: set[str] = set()
        for (group, partitions, _), reply in zip(calls, replies, strict=True):
            status, *recorded = reply
            if status == BEHIND:
                lost.update(partitions)
                continue
            for partition, offset in zip(partitions, recorded, strict=True):
                applied.note(group, partition, int(offset))
        if lost:
            raise StoreBehind(lost)
        return len(calls)

    async def forget(self, partitions: Sequence[str]) -> None:
        """Drop what every group recorded of ``partitions`` (their log was replaced)."""
        if not partitions:
            return
        fields = [f for p in partitions for f in (p, f"{p}#")]
        pipe = self.redis.pipeline(transaction=False)
        for key in self.keys.applied:
            pipe.hdel(key, *fields)
        pipe.hdel(k.FOLD_CATCHUP, *partitions)
        await pipe.execute()

    # -- the epoch and the catch-up record -------------------------------------------------

    async def state(self) -> FoldState:
        pipe = self.redis.pipeline(transaction=True)
        pipe.get(k.FOLD_EPOCH)
        pipe.hgetall(k.FOLD_CATCHUP)
        epoch, catching_up = await pipe.execute()
        return FoldState(
            None if epoch is None else str(epoch),
            {str(p): int(offset) for p, offset in catching_up.items()},
        )

    async def has_folded_before(self) -> bool:
        """Whether anything was ever folded into this dataset (the set of sites it holds)."""
        return bool(await self.redis.exists(k.SITES))

    async def begin_epoch(self, epoch: str, catching_up: Mapping[str, int]) -> None:
        """Mark the dataset as tracked by ``epoch`` (a new one after a loss was found), with
        the partitions to re-read up to an offset, in one step."""
        pipe = self.redis.pipeline(transaction=True)
        pipe.set(k.FOLD_EPOCH, epoch)
        if catching_up:
            pipe.hset(k.FOLD_CATCHUP, mapping={p: str(o) for p, o in catching_up.items()})
        await pipe.execute()

    async def ensure_epoch(self, epoch: str) -> None:
        await self.redis.set(k.FOLD_EPOCH, epoch, nx=True)

    async def caught_up(self, partitions: Sequence[str]) -> None:
        if partitions:
            await self.redis.hdel(k.FOLD_CATCHUP, *partitions)


__all__ = [
    "BEHIND",
    "NOTHING",
    "AppliedOffsets",
    "AppliedStore",
    "FoldState",
    "Origin",
    "PartitionRecord",
    "StoreBehind",
    "record_fingerprint",
]
