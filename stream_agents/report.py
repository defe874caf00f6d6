"""The worker's report for operators, about once a second: sync lag, fold rates, dead letters.

``WorkerReporter`` watches the folder (``FoldWatcher``): it counts the inbound events folded
per source and outcome, keeps the dead letters and drifts seen since its last report, and
every ``every`` seconds measures the sync lag of every assigned partition (which sets the
``atp_sync_lag_seconds`` gauges whether or not Redis answers), then writes its report and
what it kept to Redis in one pipeline (store/ops.py). While Redis is out the gauges keep
moving and what was kept waits (bounded) for the next report that gets through.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from atp_service import metrics
from atp_service.store.ops import (
    LATEST_KEPT,
    OpsStore,
    PartitionLag,
    SourceFigures,
    Tallies,
    WorkerReport,
)
from stream_agents.lag import wall_ms

log = logging.getLogger(__name__)

REPORT_EVERY_SECONDS = 1.0
PRUNE_EVERY_SECONDS = 60.0


class WorkerReporter:
    def __init__(
        self,
        ops: OpsStore,
        worker: str,
        partition_lags: Callable[[], list[PartitionLag]],
        *,
        every_seconds: float = REPORT_EVERY_SECONDS,
        clock_ms: Callable[[], int] = wall_ms,
    ) -> None:
        self.ops = ops
        self.worker = worker
        self.partition_lags = partition_lags
        self.every = every_seconds
        self._clock_ms = clock_ms
        self._events: dict[str, int] = {}  # per source, since the last report
        self._dead_letters = 0  # since the last report
        self._since = time.monotonic()
        #: Not yet written to Redis (a failed report keeps them for the next).
        self._tallies = Tallies()
        self._latest_dead_letters: deque[Mapping[str, Any]] = deque(maxlen=LATEST_KEPT)
        self._latest_drifts: deque[Mapping[str, Any]] = deque(maxlen=LATEST_KEPT)
        self.reports = 0

    # -- FoldWatcher ---------------------------------------------------------------------

    def folded(self, source: str, outcome: str, n: int) -> None:
        self._events[source] = self._events.get(source, 0) + n
        name = f"{source}:{outcome}"
        self._tallies.folded[name] = self._tallies.folded.get(name, 0) + n

    def dead_lettered(self, entries: Sequence[Mapping[str, Any]]) -> None:
        self._dead_letters += len(entries)
        counts = self._tallies.dead_letters
        for entry in entries:
            code = str(entry.get("code"))
            counts[code] = counts.get(code, 0) + 1
        self._latest_dead_letters.extend(entries)

    def drifted(self, entry: Mapping[str, Any]) -> None:
        counts = self._tallies.drift
        for bucket, values in dict(entry.get("buckets") or {}).items():
            units = abs(int(values.get("snapshot", 0)) - int(values.get("folded", 0)))
            counts[f"{bucket}:events"] = counts.get(f"{bucket}:events", 0) + 1
            counts[f"{bucket}:units"] = counts.get(f"{bucket}:units", 0) + units
        self._latest_drifts.append(entry)

    # -- reporting -----------------------------------------------------------------------

    def report(self) -> WorkerReport:
        """Measure now (the lag gauges too) and start counting the next interval."""
        now = time.monotonic()
        elapsed = max(now - self._since, 1e-3)
        self._since = now
        partitions = self.partition_lags()
        sources: dict[str, SourceFigures] = {}
        for p in partitions:
            figures = sources.setdefault(p["source"], {"lag_ms": 0, "events_per_second": 0.0})
            figures["lag_ms"] = max(figures["lag_ms"], p["lag_ms"])
        for source, n in self._events.items():
            figures = sources.setdefault(source, {"lag_ms": 0, "events_per_second": 0.0})
            figures["events_per_second"] = round(n / elapsed, 1)
        report: WorkerReport = {
            "worker": self.worker,
            "at": self._clock_ms(),
            "sources": sources,
            "partitions": partitions,
            "dead_letters_per_second": round(self._dead_letters / elapsed, 2),
        }
        self._events = {}
        self._dead_letters = 0
        return report

    async def publish_once(self) -> WorkerReport:
        report = self.report()
        tallies, self._tallies = self._tallies, Tallies()
        dead_letters = list(self._latest_dead_letters)
        drifts = list(self._latest_drifts)
        try:
            await self.ops.publish(
                report, dead_letters=dead_letters, drifts=drifts, tallies=tallies
            )
        except BaseException:
            tallies.add(self._tallies)  # counted while the write was in flight
            self._tallies = tallies
            raise
        for kept, sent in (
            (self._latest_dead_letters, dead_letters),
            (self._latest_drifts, drifts),
        ):
            for _ in range(min(len(sent), len(kept))):
                kept.popleft()
        self.reports += 1
        return report

    async def run(self, stop: asyncio.Event) -> None:
        """Report every ``every`` seconds until ``stop``; survives Redis outages."""
        failing = False
        next_prune = 0.0
        while not stop.is_set():
            try:
                await self.publish_once()
                if time.monotonic() >= next_prune:
                    await self.ops.prune_reports(self._clock_ms())
                    next_prune = time.monotonic() + PRUNE_EVERY_SECONDS
                if failing:
                    log.info("worker report: Redis reachable again")
                failing = False
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                metrics.REDIS_ERRORS.labels("worker_report").inc()
                if not failing:
                    log.warning("worker report: not written (%r); the lag gauges go on", exc)
                failing = True
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), self.every)
