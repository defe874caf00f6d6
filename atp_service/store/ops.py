"""What the workers tell operators through Redis, and how the API reads it back.

Each worker writes, about once a second and in one pipeline, its report (sync lag per source
and partition, events folded per second per source, dead letters per second) into one hash,
a field per worker; the dead letters and drifts it saw since, onto short lists (newest
first) and into running counts. The periodic audit's last result sits beside them. The API
reads the reports in the background (the ``sync`` of every availability answer, no Redis
call on the read path) and everything at once for ``GET /v1/ops/summary``.

Everything here is a report about the service, never its state: losing it loses no stock.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypedDict, cast

import orjson

from atp_service.store import keys as k
from atp_service.store.redis_store import RedisClient

log = logging.getLogger(__name__)

#: Dead letters and drifts kept on their lists (the newest).
LATEST_KEPT = 50
#: A worker report older than this is deleted (the worker is gone).
REPORT_KEPT_MS = 600_000
#: Reports this much older than the newest are a worker that stopped reporting: left out of
#: the sync figures (its partitions went to another worker, or nothing reports at all, in
#: which case the newest report stands, with its old ``as_of``).
LIVE_WINDOW_MS = 10_000


class PartitionLag(TypedDict):
    topic: str
    partition: int
    source: str
    #: How long the oldest inbound event of the partition not yet folded has waited.
    lag_ms: int
    #: Messages between the worker's position and the partition's end (None: not known yet).
    lag_messages: int | None


class SourceFigures(TypedDict):
    lag_ms: int  # the largest of the source's partitions
    events_per_second: float  # inbound events handled (every outcome) over the last report


class WorkerReport(TypedDict):
    worker: str
    at: int  # epoch ms of the measure
    sources: dict[str, SourceFigures]
    partitions: list[PartitionLag]
    dead_letters_per_second: float


@dataclass(frozen=True, slots=True)
class SourceSync:
    """The ``sync`` of one source in an answer: None when no worker has measured it."""

    lag_seconds: float | None
    as_of_ms: int | None


def merge_sync(reports: Iterable[WorkerReport], sources: Sequence[str]) -> dict[str, SourceSync]:
    """Per source, the largest lag any live worker reports and the oldest of those measures.

    Live: reported within ``LIVE_WINDOW_MS`` of the newest report. A source no live worker
    consumes (no partition of its topic assigned, no worker at all) has no measure.
    """
    reports = list(reports)
    newest = max((r["at"] for r in reports), default=0)
    live = [r for r in reports if r["at"] >= newest - LIVE_WINDOW_MS]
    out: dict[str, SourceSync] = {}
    for source in sources:
        lags = [(r["sources"][source]["lag_ms"], r["at"]) for r in live if source in r["sources"]]
        if not lags:
            out[source] = SourceSync(None, None)
            continue
        out[source] = SourceSync(
            round(max(lag for lag, _ in lags) / 1000, 3), min(at for _, at in lags)
        )
    return out


@dataclass
class Tallies:
    """Running counts a worker adds to Redis with its report (field -> increment)."""

    folded: dict[str, int] = field(default_factory=dict)  # "<source>:<outcome>"
    dead_letters: dict[str, int] = field(default_factory=dict)  # code
    drift: dict[str, int] = field(default_factory=dict)  # "<bucket>:events" / ":units"

    def add(self, other: Tallies) -> None:
        for mine, theirs in (
            (self.folded, other.folded),
            (self.dead_letters, other.dead_letters),
            (self.drift, other.drift),
        ):
            for name, n in theirs.items():
                mine[name] = mine.get(name, 0) + n

    def __bool__(self) -> bool:
        return bool(self.folded or self.dead_letters or self.drift)


@dataclass(frozen=True, slots=True)
class OpsSnapshot:
    """Everything the summary shows that lives in Redis, read in one round trip."""

    reports: list[WorkerReport]
    dead_letters: list[dict[str, Any]]
    dead_letter_counts: dict[str, int]
    drifts: list[dict[str, Any]]
    drift_counts: dict[str, int]
    folded_counts: dict[str, int]
    audit: dict[str, Any] | None
    outbox_backlog: int


class OpsStore:
    """The operators' side of Redis; receives its client, builds none."""

    def __init__(self, client: RedisClient, outboxes: Sequence[str] = ()) -> None:
        self.redis = client
        self.outboxes = list(outboxes)

    # -- a worker's side -------------------------------------------------------------------

    async def publish(
        self,
        report: WorkerReport,
        *,
        dead_letters: Sequence[Mapping[str, Any]] = (),
        drifts: Sequence[Mapping[str, Any]] = (),
        tallies: Tallies | None = None,
    ) -> None:
        """Write a worker's report, the dead letters and drifts it saw and its counts."""
        pipe = self.redis.pipeline(transaction=False)
        pipe.hset(k.OPS_WORKERS, report["worker"], orjson.dumps(report))
        for name, items in ((k.OPS_DEAD_LETTERS, dead_letters), (k.OPS_DRIFTS, drifts)):
            if items:
                pipe.lpush(name, *[orjson.dumps(item) for item in items])
                pipe.ltrim(name, 0, LATEST_KEPT - 1)
        if tallies:
            for name, counts in (
                (k.OPS_FOLDED_COUNTS, tallies.folded),
                (k.OPS_DEAD_LETTER_COUNTS, tallies.dead_letters),
                (k.OPS_DRIFT_COUNTS, tallies.drift),
            ):
                for counted, n in counts.items():
                    pipe.hincrby(name, counted, n)
        await pipe.execute()

    async def prune_reports(self, now_ms: int) -> int:
        """Delete the reports of workers gone for ``REPORT_KEPT_MS``; returns how many."""
        gone = [
            r["worker"] for r in await self.worker_reports() if r["at"] < now_ms - REPORT_KEPT_MS
        ]
        if gone:
            await self.redis.hdel(k.OPS_WORKERS, *gone)
        return len(gone)

    # -- the audit ---------------------------------------------------------------------------

    async def claim_audit(self, holder: str, every_ms: int) -> bool:
        """Whether this process runs the audit now: once per ``every_ms`` over all workers."""
        return bool(await self.redis.set(k.OPS_AUDIT_LOCK, holder, nx=True, px=every_ms))

    async def save_audit(self, result: Mapping[str, Any]) -> None:
        await self.redis.set(k.OPS_AUDIT, orjson.dumps(result))

    async def last_audit(self) -> dict[str, Any] | None:
        return _json_object(await self.redis.get(k.OPS_AUDIT))

    # -- reading ------------------------------------------------------------------------------

    async def worker_reports(self) -> list[WorkerReport]:
        return _reports(await self.redis.hgetall(k.OPS_WORKERS))

    async def snapshot(self) -> OpsSnapshot:
        pipe = self.redis.pipeline(transaction=False)
        pipe.hgetall(k.OPS_WORKERS)
        pipe.lrange(k.OPS_DEAD_LETTERS, 0, LATEST_KEPT - 1)
        pipe.hgetall(k.OPS_DEAD_LETTER_COUNTS)
        pipe.lrange(k.OPS_DRIFTS, 0, LATEST_KEPT - 1)
        pipe.hgetall(k.OPS_DRIFT_COUNTS)
        pipe.hgetall(k.OPS_FOLDED_COUNTS)
        pipe.get(k.OPS_AUDIT)
        for stream in self.outboxes:
            pipe.xlen(stream)
        (
            workers,
            dls,
            dl_counts,
            drifts,
            drift_counts,
            folded,
            audit,
            *backlog,
        ) = await pipe.execute()
        return OpsSnapshot(
            reports=_reports(workers),
            dead_letters=_objects(dls),
            dead_letter_counts=_counts(dl_counts),
            drifts=_objects(drifts),
            drift_counts=_counts(drift_counts),
            folded_counts=_counts(folded),
            audit=_json_object(audit),
            outbox_backlog=sum(int(n) for n in backlog),
        )


def _json_object(raw: Any) -> dict[str, Any] | None:
    if not raw:
        return None
    try:
        value = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return None
    return value if isinstance(value, dict) else None


def _objects(raws: Sequence[Any]) -> list[dict[str, Any]]:
    return [value for raw in raws if (value := _json_object(raw)) is not None]


def _counts(raw: Mapping[Any, Any]) -> dict[str, int]:
    out: dict[str, int] = {}
    for name, value in raw.items():
        try:
            out[str(name)] = int(value)
        except (TypeError, ValueError):
            continue
    return out


def _reports(raw: Mapping[Any, Any]) -> list[WorkerReport]:
    """The readable reports (a field another version wrote, or garbage, is skipped)."""
    out: list[WorkerReport] = []
    for name, text in raw.items():
        value = _json_object(text)
        if (
            value is None
            or not isinstance(value.get("at"), int)
            or not isinstance(value.get("sources"), dict)
        ):
            log.debug("unreadable worker report %r", name)
            continue
        figures = value["sources"].values()
        if not all(isinstance(f, dict) and isinstance(f.get("lag_ms"), int) for f in figures):
            continue
        value.setdefault("worker", str(name))
        value.setdefault("partitions", [])
        value.setdefault("dead_letters_per_second", 0.0)
        out.append(cast(WorkerReport, value))
    return sorted(out, key=lambda r: r["worker"])
