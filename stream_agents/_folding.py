"""A batch of inbound messages: decode, fold the good ones in one round trip, dead-letter the rest.

Knows nothing of Faust: the agents hand it plain ``InboundMessage`` values and only ack
the batch once ``handle`` returns. ``handle`` returns only when every message is either
folded into Redis or acknowledged by the broker on the dead-letter topic; while Redis or
Kafka is down it retries with backoff (the fold is idempotent by ``event_id``, so
repeating a half-done pipeline is harmless).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol, TypeVar

from redis.exceptions import RedisClusterException, RedisError, ResponseError

from atp_service import metrics
from atp_service.domain import Bucket, ChannelPolicy, Source
from atp_service.store import FoldOutcome, PolicyBook, RedisStore
from atp_service.store.applied import AppliedOffsets, Origin, StoreBehind
from atp_service.store.keys import partition_field
from atp_service.store.redis_store import FOLD_BEHIND, FOLD_ERROR, PreparedFold
from atp_service.store.replay_marks import ReplayMarks
from stream_agents.records import (
    TOPIC_SOURCES,
    DecodeError,
    ErrorCode,
    InboundEvent,
    dead_letter_record,
    decode,
)

log = logging.getLogger(__name__)

T = TypeVar("T")

#: How often, at most, the folder asks Redis whether the channel policies changed.
POLICY_REFRESH_SECONDS = 0.5
#: ``prepare_yielding`` lets the event loop run after decoding this many messages.
_YIELD_EVERY = 250

#: Redis answers that mean "not now" rather than "this event is bad".
_TRANSIENT_REPLIES = (
    "LOADING", "BUSY", "OOM", "READONLY", "MASTERDOWN", "TRYAGAIN", "CLUSTERDOWN", "NOSCRIPT",
)  # fmt: skip


@dataclass(frozen=True, slots=True)
class InboundMessage:
    """One consumed Kafka record, as raw as it came."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    #: ``"<partition>:<offset>"`` of the dead letter `atp dlq replay` sent this from, if so.
    replayed_from: str | None = None

    @property
    def origin(self) -> Origin:
        return Origin(partition_field(self.topic, self.partition), self.offset)


@dataclass(frozen=True, slots=True)
class Rejected:
    message: InboundMessage
    code: ErrorCode
    detail: str


@dataclass(frozen=True, slots=True)
class PreparedBatch:
    """A batch decoded and encoded for the store (``prepare``), not yet folded."""

    messages: Sequence[InboundMessage]
    good: Sequence[tuple[InboundMessage, InboundEvent]]
    rejected: Sequence[Rejected]
    fold: PreparedFold

    @property
    def size(self) -> int:
        return len(self.messages)


class DeadLetterSink(Protocol):
    async def send(self, records: Sequence[tuple[bytes | None, bytes]]) -> None:
        """Send (key, value) records to the dead-letter topic; return once all are acked."""


class FoldWatcher(Protocol):
    """Told what the folder did, for the operators' figures (stream_agents/report.py)."""

    def folded(self, source: str, outcome: str, n: int) -> None:
        """``n`` inbound events of ``source`` were folded with ``outcome``."""

    def dead_lettered(self, entries: Sequence[Mapping[str, Any]]) -> None:
        """These dead letters were acknowledged by the broker (``dead_letter_summary``)."""

    def drifted(self, entry: Mapping[str, Any]) -> None:
        """A snapshot disagreed with the folded position (the drift record, sku and site)."""


class _Unwatched:
    def folded(self, source: str, outcome: str, n: int) -> None:
        return None

    def dead_lettered(self, entries: Sequence[Mapping[str, Any]]) -> None:
        return None

    def drifted(self, entry: Mapping[str, Any]) -> None:
        return None


#: Characters of a dead letter's original value kept in its summary.
SUMMARY_VALUE_CHARS = 300


def dead_letter_summary(rejected: Rejected, dead_lettered_at: datetime) -> dict[str, Any]:
    """What an operator sees of a dead letter (the topic itself keeps the whole message)."""
    message = rejected.message
    source = TOPIC_SOURCES.get(message.topic)
    return {
        "code": rejected.code,
        "detail": rejected.detail,
        "topic": message.topic,
        "partition": message.partition,
        "offset": message.offset,
        "source": source.value if source is not None else None,
        "key": _text(message.key),
        "value": _text(message.value, SUMMARY_VALUE_CHARS),
        "dead_lettered_at": dead_lettered_at.isoformat(timespec="milliseconds").replace(
            "+00:00", "Z"
        ),
    }


def _text(raw: bytes | None, limit: int = 200) -> str | None:
    if raw is None:
        return None
    text = raw.decode("utf-8", errors="replace")
    return text if len(text) <= limit else text[: limit - 3] + "..."


class BatchAbandoned(Exception):
    """The worker is stopping while the store or broker is down: the batch is not done and
    must not be acknowledged (it is consumed again after a restart)."""


def redis_is_down(exc: BaseException) -> bool:
    if isinstance(exc, ResponseError):
        return str(exc).startswith(_TRANSIENT_REPLIES)
    # A cluster client's RedisClusterException (no node serves a slot, none answers) is
    # not a RedisError.
    return isinstance(exc, RedisError | OSError | RedisClusterException)


def _any_error(exc: BaseException) -> bool:
    return isinstance(exc, Exception)


class BatchFolder:
    """Folds batches of inbound messages into the store; one per worker process."""

    def __init__(
        self,
        store: RedisStore,
        dead_letters: DeadLetterSink,
        *,
        authority: Mapping[Bucket, Source],
        initial_policies: Mapping[str, ChannelPolicy] | None = None,
        policy_refresh_seconds: float = POLICY_REFRESH_SECONDS,
        max_backoff_seconds: float = 2.0,
        should_give_up: Callable[[], bool] = lambda: False,
        replay_marks: ReplayMarks | None = None,
        watcher: FoldWatcher | None = None,
    ) -> None:
        self.store = store
        self.watcher: FoldWatcher = watcher or _Unwatched()
        self.dead_letters = dead_letters
        self.replay_marks = replay_marks
        self.authority = dict(authority)
        self.book = PolicyBook.of({})
        self._initial_policies = dict(initial_policies or {})
        self._refresh_every = policy_refresh_seconds
        self._next_refresh = 0.0
        self._max_backoff = max_backoff_seconds
        self._should_give_up = should_give_up
        self._known_sites: set[str] = set()
        #: What this worker knows Redis recorded of its partitions (store/applied.py); the
        #: inbound agent sets it up as partitions are assigned.
        self.applied = AppliedOffsets(store.keys.groups)
        self._partition_names: dict[tuple[str, int], str] = {}  # keys.partition_field's
        self._started = False
        self._start_lock = asyncio.Lock()

    async def start(self) -> None:
        """Seed the configured channel policies, load the policy book; retries until Redis is up."""
        async with self._start_lock:
            if self._started:
                return

            async def seed() -> None:
                await self.store.migrate_legacy_keys()
                await self.store.seed_channel_policies(self._initial_policies)
                self.book = await self.store.policy_book()

            await self._retry("seed policies", seed, redis_is_down, "redis")
            self._next_refresh = time.monotonic() + self._refresh_every
            self._started = True

    async def handle(self, messages: Sequence[InboundMessage]) -> None:
        """Fold or dead-letter every message; returns only when all are done (see module doc)."""
        await self.complete(self.prepare(messages))

    def prepare(self, messages: Sequence[InboundMessage]) -> PreparedBatch:
        """Decode (and encode for the store) without I/O: done while Redis folds the batch
        before this one."""
        good: list[tuple[InboundMessage, InboundEvent]] = []
        rejected: list[Rejected] = []
        self._decode(messages, good, rejected)
        return PreparedBatch(messages, good, rejected, self._prepare_fold(good))

    async def prepare_yielding(
        self, messages: Sequence[InboundMessage], every: int = _YIELD_EVERY
    ) -> PreparedBatch:
        """``prepare``, letting the event loop run every ``every`` messages. The batch before
        is being written to Redis meanwhile (a megabyte or so, more than a socket takes at
        once): without a turn of the loop the rest of it waits for the whole decode, and
        Redis with it."""
        good: list[tuple[InboundMessage, InboundEvent]] = []
        rejected: list[Rejected] = []
        for start in range(0, len(messages), every):
            self._decode(messages[start : start + every], good, rejected)
            await asyncio.sleep(0)
        return PreparedBatch(messages, good, rejected, self._prepare_fold(good))

    def _prepare_fold(self, good: Sequence[tuple[InboundMessage, InboundEvent]]) -> PreparedFold:
        names = self._partition_names
        origins = []
        for message, _ in good:
            name = names.get((message.topic, message.partition))
            if name is None:
                name = names[(message.topic, message.partition)] = message.origin.partition
            origins.append(Origin(name, message.offset))
        return self.store.prepare_fold([event for _, event in good], origins)

    def _decode(
        self,
        messages: Sequence[InboundMessage],
        good: list[tuple[InboundMessage, InboundEvent]],
        rejected: list[Rejected],
    ) -> None:
        authority = self.authority
        for message in messages:
            try:
                event = decode(message.key, message.value, message.topic, authority)
            except DecodeError as exc:
                rejected.append(Rejected(message, exc.code, exc.detail))
            except Exception as exc:  # a decoding bug must not stop the stream either
                log.exception("decoding %s@%d", message.topic, message.offset)
                rejected.append(Rejected(message, "internal_error", repr(exc)))
            else:
                good.append((message, event))

    async def complete(self, batch: PreparedBatch) -> None:
        """Fold the good events and dead-letter the rest; returns when all are done.

        Raises ``StoreBehind`` (once the rest is done) when Redis holds less of some
        partitions than this worker recorded there: their events are not folded, and must be
        read again from what Redis holds."""
        if not self._started:
            await self.start()
        rejected = list(batch.rejected)
        behind: set[str] = set()
        if batch.good:
            rejected.extend(await self._fold(batch, behind))
        if rejected:
            await self._dead_letter(rejected)
        if behind:
            raise StoreBehind(behind)

    def forget_sites(self) -> None:
        """Register sites again from now on (Redis lost what this worker registered)."""
        self._known_sites.clear()

    # -- folding -----------------------------------------------------------------------------

    async def _fold(self, batch: PreparedBatch, behind: set[str]) -> list[Rejected]:
        """Fold; returns the events refused, adds to ``behind`` the partitions Redis holds
        less of than this worker recorded (store/applied.py)."""
        good = batch.good

        async def fold_all() -> list[FoldOutcome]:
            await self._refresh_policies()
            await self._register_sites(batch.fold.sites)
            return await self.store.fold_prepared(batch.fold, self.book, self.applied)

        try:
            outcomes: list[FoldOutcome | None] = list(
                await self._retry("fold", fold_all, redis_is_down, "redis")
            )
            failed: list[Rejected] = []
        except ResponseError:
            # A script refused its batch as a whole: fold one event at a time to find the
            # culprit. The others are folded once (those done already report 'duplicate').
            outcomes, failed = await self._fold_one_by_one(good)
        counts: dict[tuple[str, str, str], int] = {}
        for (message, event), outcome in zip(good, outcomes, strict=True):
            if outcome is None:
                continue
            if outcome.status == FOLD_BEHIND:
                behind.add(message.origin.partition)
                continue
            if outcome.status == FOLD_ERROR:
                # That event's fold raised inside the script; the others went through.
                log.error(
                    "fold refused %s: %s",
                    event.event_id,
                    outcome.error,
                    extra={"correlation_id": event.correlation_id, "event_id": event.event_id},
                )
                failed.append(Rejected(message, "fold_failed", outcome.error or "fold failed"))
                continue
            key = (message.topic, event.source.value, outcome.status)
            counts[key] = counts.get(key, 0) + 1
            if outcome.drift:
                _count_drift(outcome.drift)
                self.watcher.drifted({"sku": event.sku, "site": event.site, **outcome.drift})
            if outcome.reservation_consumed:
                metrics.RESERVATIONS.labels("consumed").inc()
        for (topic, source, status), n in counts.items():
            _folded_counter(topic, source, status).inc(n)
            self.watcher.folded(source, status, n)
        return failed

    async def _fold_one_by_one(
        self, good: Sequence[tuple[InboundMessage, InboundEvent]]
    ) -> tuple[list[FoldOutcome | None], list[Rejected]]:
        outcomes: list[FoldOutcome | None] = []
        failed: list[Rejected] = []
        for message, event in good:

            async def fold_one(
                event: InboundEvent = event, origin: Origin = message.origin
            ) -> FoldOutcome:
                [outcome] = await self.store.fold_many([event], self.book, [origin], self.applied)
                return outcome

            try:
                outcomes.append(await self._retry("fold", fold_one, redis_is_down, "redis"))
            except ResponseError as exc:
                log.error(
                    "fold refused %s: %s",
                    event.event_id,
                    exc,
                    extra={"correlation_id": event.correlation_id, "event_id": event.event_id},
                )
                outcomes.append(None)
                failed.append(Rejected(message, "fold_failed", str(exc)))
        return outcomes, failed

    async def _refresh_policies(self) -> None:
        now = time.monotonic()
        if now < self._next_refresh:
            return
        if await self.store.policies_version() != self.book.version:
            self.book = await self.store.policy_book()
            log.info("channel policies now at version %d", self.book.version)
        self._next_refresh = now + self._refresh_every

    async def _register_sites(self, sites: Iterable[str]) -> None:
        new = set(sites) - self._known_sites
        if new:
            await self.store.register_sites(sorted(new))
            self._known_sites |= new

    # -- dead letters ------------------------------------------------------------------------

    async def _dead_letter(self, rejected: Sequence[Rejected]) -> None:
        now = datetime.now(UTC)
        rejected = await self._refused_again(rejected, now)
        if not rejected:
            return
        records = [
            (
                r.message.key,
                dead_letter_record(
                    key=r.message.key,
                    value=r.message.value,
                    topic=r.message.topic,
                    partition=r.message.partition,
                    offset=r.message.offset,
                    code=r.code,
                    detail=r.detail,
                    dead_lettered_at=now,
                ),
            )
            for r in rejected
        ]

        async def send() -> None:
            await self.dead_letters.send(records)

        await self._retry("dead-letter", send, _any_error, "kafka")
        self.watcher.dead_lettered([dead_letter_summary(r, now) for r in rejected])
        for r in rejected:
            metrics.EVENTS_DEAD_LETTERED.labels(r.code).inc()
            log.info(
                "dead-lettered %s[%d]@%d: %s %s",
                r.message.topic, r.message.partition, r.message.offset, r.code, r.detail,
            )  # fmt: skip

    async def _refused_again(self, rejected: Sequence[Rejected], now: datetime) -> list[Rejected]:
        """A replayed message refused again gets no new dead letter (its letter is still in
        the topic): its replay mark says it failed again, so the next replay sends it again.
        The others are returned, to be dead-lettered; so is a replayed one whose mark is gone."""
        marks = self.replay_marks
        if marks is None or all(r.message.replayed_from is None for r in rejected):
            return list(rejected)
        left: list[Rejected] = []
        for r in rejected:
            where = r.message.replayed_from
            if where is None:
                left.append(r)
                continue

            async def note(where: str = where, r: Rejected = r) -> bool:
                return await marks.failed_again(where, now, r.code, r.detail)

            if await self._retry("replay mark", note, redis_is_down, "redis"):
                log.info(
                    "replayed dead letter %s refused again: %s %s (its mark says so; "
                    "`atp dlq replay` sends it again)", where, r.code, r.detail,
                )  # fmt: skip
            else:
                left.append(r)
        return left

    # -- retrying ----------------------------------------------------------------------------

    async def _retry(
        self,
        what: str,
        operation: Callable[[], Awaitable[T]],
        transient: Callable[[BaseException], bool],
        system: str,
    ) -> T:
        return await retry_while_down(
            what, operation, transient, system, self._should_give_up, self._max_backoff
        )


async def retry_while_down(
    what: str,
    operation: Callable[[], Awaitable[T]],
    transient: Callable[[BaseException], bool],
    system: str,
    should_give_up: Callable[[], bool],
    max_backoff: float,
) -> T:
    """Run ``operation`` until it succeeds, retrying what ``transient`` says is an outage of
    ``system`` ("redis" or "kafka") with backoff; raises ``BatchAbandoned`` once the worker
    is stopping, anything else at once."""
    delay = 0.05
    while True:
        try:
            return await operation()
        except Exception as exc:
            if not transient(exc):
                raise
            errors = metrics.REDIS_ERRORS if system == "redis" else metrics.KAFKA_ERRORS
            errors.labels("worker").inc()
            if should_give_up():
                raise BatchAbandoned(f"{what}: {exc!r} while stopping") from exc
            log.warning("%s failed (%s: %s); retrying in %.2fs", what, system, exc, delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, max_backoff)


_FOLDED_COUNTERS: dict[tuple[str, str, str], Any] = {}


def _folded_counter(topic: str, source: str, status: str) -> Any:
    counter = _FOLDED_COUNTERS.get((topic, source, status))
    if counter is None:
        counter = _FOLDED_COUNTERS[(topic, source, status)] = metrics.EVENTS_FOLDED.labels(
            topic, source, status
        )
    return counter


def _count_drift(drift: Mapping[str, Any]) -> None:
    for bucket, values in drift.get("buckets", {}).items():
        metrics.DRIFT_EVENTS.labels(bucket).inc()
        folded, snapshot = values.get("folded", 0), values.get("snapshot", 0)
        metrics.DRIFT_UNITS.labels(bucket).inc(abs(int(snapshot) - int(folded)))


__all__ = [
    "BatchAbandoned",
    "BatchFolder",
    "DeadLetterSink",
    "FoldWatcher",
    "InboundMessage",
    "PreparedBatch",
    "Rejected",
]
