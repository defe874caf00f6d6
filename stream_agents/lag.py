"""Sync lag in seconds: how long the oldest inbound event of a partition not yet folded has waited.

The inbound agent tells the meter what it fetched (per partition, the Kafka timestamp of the
first record of each batch) and which batch is folded. Records of a partition are fetched
and folded in order, so the oldest event of a partition not yet folded is the first record
of its earliest batch not yet folded; its wait is now less its timestamp. It keeps growing
while that batch cannot be folded (Redis out) or while nothing is fetched at all: the measure
is the clock against what is held, not a count of messages that stands still.

When the worker holds nothing of a partition but the partition's end (high watermark) lies
beyond what it fetched, the records waiting have not reached the worker yet and their
timestamps are unknown: the wait is counted from when the meter first saw that (a lower
bound), and is 0 once the worker has caught up.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, Protocol

#: (topic, partition); aiokafka's TopicPartition is such a tuple.
Partition = tuple[str, int]


class _Record(Protocol):
    @property
    def offset(self) -> int: ...
    @property
    def timestamp(self) -> int | None: ...


def wall_ms() -> int:
    return int(time.time() * 1000)


class LagMeter:
    def __init__(self, clock_ms: Callable[[], int] = wall_ms) -> None:
        self._clock_ms = clock_ms
        #: Per partition, (batch number, timestamp of its first record) of every batch not
        #: yet folded, oldest first.
        self._waiting: dict[Partition, deque[tuple[int, int]]] = {}
        self._next_offset: dict[Partition, int] = {}
        self._behind_since: dict[Partition, int] = {}
        self._batches = 0

    def fetched(self, records: Mapping[Any, Sequence[_Record]]) -> int:
        """A batch was fetched (records per partition, in order); returns its number."""
        self._batches += 1
        now = self._clock_ms()
        for tp, batch in records.items():
            if not batch:
                continue
            key = (tp[0], tp[1])
            stamp = batch[0].timestamp
            # No timestamp (a very old message format): it has waited at least since now.
            first = stamp if stamp is not None and stamp > 0 else now
            self._waiting.setdefault(key, deque()).append((self._batches, first))
            self._next_offset[key] = batch[-1].offset + 1
        return self._batches

    def folded(self, batch: int) -> None:
        """Batch ``batch`` and every one before it are folded (or dead-lettered)."""
        for waiting in self._waiting.values():
            while waiting and waiting[0][0] <= batch:
                waiting.popleft()

    def forget(self, partitions: Iterable[Any]) -> None:
        """Partitions gone to another worker: what they held is that worker's now."""
        for tp in partitions:
            key = (tp[0], tp[1])
            self._waiting.pop(key, None)
            self._next_offset.pop(key, None)
            self._behind_since.pop(key, None)

    def reset(self) -> None:
        """A new consumer: it starts again from the committed offsets."""
        self._waiting.clear()
        self._next_offset.clear()
        self._behind_since.clear()

    def lag(self, tp: Any, highwater: int | None) -> tuple[int, int | None]:
        """(ms the partition's oldest event not yet folded has waited, messages between the
        worker's position and the partition's end, None while either is unknown)."""
        key = (tp[0], tp[1])
        now = self._clock_ms()
        next_offset = self._next_offset.get(key)
        behind = (
            max(0, highwater - next_offset)
            if highwater is not None and next_offset is not None
            else None
        )
        waiting = self._waiting.get(key)
        if waiting:
            self._behind_since.pop(key, None)
            return max(0, now - waiting[0][1]), behind
        if behind:
            since = self._behind_since.setdefault(key, now)
            return now - since, behind
        self._behind_since.pop(key, None)
        return 0, behind
