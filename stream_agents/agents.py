"""The inbound agent: the worker's consumer group reads both inbound topics in bulk, folds batch
after batch, and commits a batch's offsets only once every message in it is folded or
dead-lettered (at least once; the fold is idempotent, so a redelivery is harmless).

Not a Faust ``@app.agent``: Faust hands an agent each message through its conductor, a
channel, a stream and an event, with two tasks and an ``asyncio.wait`` per message. On the
2-core benchmark machine that caps a worker at 8,000-12,000 messages/s with an agent that
does nothing at all, whatever ``take_events``' batch size or the buffer settings, while
aiokafka's ``getmany`` hands over 200,000+ (docs/worker.md has the figures). So the worker's
``faust.App`` keeps the process (signals, logging, the outbox relay, timers) and this task
reads the topics itself, with the same consumer group the Faust agents used.

Order per item-site holds: an item-site lives on one partition, a batch keeps each
partition's records in order, and a batch is sent to Redis only after the one before it
was folded. While Redis folds a batch, the next one is fetched and decoded.

Where each assigned partition starts, and what happens when Redis is found holding less than
this worker folded into it, is _positions.py's: a partition assigned is paused until it is
placed there, and a batch that finds Redis behind is dropped, and the partitions read again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Sequence
from typing import Any

from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener, TopicPartition
from aiokafka.errors import KafkaError

from atp_service import metrics
from atp_service.store.applied import AppliedStore, StoreBehind, record_fingerprint
from atp_service.store.ops import PartitionLag
from atp_service.store.replay_marks import replayed_from
from stream_agents._folding import BatchAbandoned, BatchFolder, InboundMessage, PreparedBatch
from stream_agents._kafka import LogProbe
from stream_agents._positions import ADVANCE_SECONDS, Positions
from stream_agents.lag import LagMeter
from stream_agents.records import TOPIC_SOURCES

#: Where a partition's batch ended: its last offset and that record's fingerprint.
Ends = dict[TopicPartition, tuple[int, str]]

log = logging.getLogger(__name__)

_START_RETRY_MAX_SECONDS = 5.0
_POLL_MS = 500


class InboundAgent:
    """Consumes ``topics`` as ``group_id`` and folds what it reads; ``run`` until ``stop``."""

    def __init__(
        self,
        folder: BatchFolder,
        *,
        bootstrap_servers: str,
        group_id: str,
        topics: Sequence[str],
        batch: int,
        fetch_max_wait_ms: int,
        session_timeout_ms: int,
        rebalance_timeout_ms: int,
        group_instance_id: str | None = None,
        should_give_up: Callable[[], bool] = lambda: False,
        advance_seconds: float = ADVANCE_SECONDS,
    ) -> None:
        self.folder = folder
        self.probe = LogProbe(bootstrap_servers, client_id=f"{group_id}-probe")
        self.positions = Positions(
            AppliedStore(folder.store),
            folder.applied,
            self.probe,
            advance_seconds=advance_seconds,
            should_give_up=should_give_up,
        )
        self._consumer_options: dict[str, Any] = {
            "bootstrap_servers": bootstrap_servers,
            "group_id": group_id,
            "client_id": f"{group_id}-inbound",
            "enable_auto_commit": False,
            "auto_offset_reset": "earliest",
            "max_poll_records": batch,
            "fetch_max_wait_ms": fetch_max_wait_ms,
            "session_timeout_ms": session_timeout_ms,
            "rebalance_timeout_ms": rebalance_timeout_ms,
            "heartbeat_interval_ms": max(100, session_timeout_ms // 3),
            "group_instance_id": group_instance_id,
        }
        self.topics = list(topics)
        self.batch = batch
        self._should_give_up = should_give_up
        self._stopping = asyncio.Event()
        self._stopped = asyncio.Event()
        self._lock = asyncio.Lock()
        self._consumer: AIOKafkaConsumer | None = None
        #: The batch Redis is folding: its task, where it ends on each partition, and its
        #: number for the lag meter.
        self._in_flight: tuple[asyncio.Future[None], Ends, int] | None = None
        #: Offsets folded and advanced (_positions.py) not yet committed (a commit may fail;
        #: it is retried).
        self._uncommitted: dict[TopicPartition, int] = {}
        #: Partitions assigned and paused until they are placed where the fold stands.
        self._unplaced: set[TopicPartition] = set()
        self._lag_gauges: dict[TopicPartition, Any] = {}
        self._sync_gauges: dict[TopicPartition, Any] = {}
        #: Sync lag in seconds per partition (stream_agents/lag.py).
        self.lag = LagMeter()
        #: Set when a batch was abandoned outside the main loop (in a rebalance).
        self._abandoned: BatchAbandoned | None = None
        self.folded_batches = 0

    # -- lifecycle -----------------------------------------------------------------------

    async def run(self) -> None:
        """Consume until ``stop()``; survives a broker that is down at start or goes away."""
        self._stopping.clear()
        self._stopped.clear()
        backoff = 0.2
        try:
            while not self._stopping.is_set():
                consumer = AIOKafkaConsumer(**self._consumer_options)
                consumer.subscribe(self.topics, listener=_SettleOnRevoke(self, consumer))
                # start() returns once the first assignment is made: nothing is placed yet.
                self._unplaced.clear()
                self.positions.forget_all()
                try:
                    await consumer.start()
                except KafkaError as exc:
                    await _stop_quietly(consumer)
                    metrics.KAFKA_ERRORS.labels("worker").inc()
                    log.warning("inbound: broker unreachable (%r); retrying in %.1fs", exc, backoff)
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._stopping.wait(), backoff)
                    backoff = min(backoff * 2, _START_RETRY_MAX_SECONDS)
                    continue
                backoff = 0.2
                self.lag.reset()
                self._consumer = consumer
                try:
                    await self._consume(consumer)
                except BatchAbandoned as exc:
                    log.warning("stopping with messages not folded (%s); redelivered later", exc)
                    return
                finally:
                    self._consumer = None
                    await _stop_quietly(consumer)
        finally:
            await self.probe.stop()
            self._stopped.set()

    async def stop(self, grace_seconds: float = 10.0) -> None:
        """Finish the batch in flight (unless Redis is out), commit, leave the group."""
        self._stopping.set()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stopped.wait(), grace_seconds)

    # -- consuming -----------------------------------------------------------------------

    async def _consume(self, consumer: AIOKafkaConsumer) -> None:
        try:
            while not self._stopping.is_set():
                if self._unplaced:
                    await self._place(consumer)
                    continue
                records = await consumer.getmany(
                    timeout_ms=0 if self._in_flight else _POLL_MS, max_records=self.batch
                )
                prepared: PreparedBatch | None = None
                ends: Ends = {}
                number = 0
                if records:
                    number = self.lag.fetched(records)
                    messages = [
                        InboundMessage(
                            tp.topic,
                            tp.partition,
                            r.offset,
                            r.key,
                            r.value,
                            replayed_from(r.headers) if r.headers else None,
                        )
                        for tp, batch in records.items()
                        for r in batch
                    ]
                    ends = {
                        tp: (batch[-1].offset, record_fingerprint(batch[-1].value))
                        for tp, batch in records.items()
                    }
                    # CPU work, while Redis still folds the batch before this one (and
                    # its pipeline is still being written: the loop gets turns).
                    prepared = await self.folder.prepare_yielding(messages)
                async with self._lock:
                    if self._abandoned is not None:
                        raise self._abandoned
                    if self._unplaced:
                        continue  # reassigned meanwhile: read again from where placed
                    try:
                        # The batch before is folded: advance and commit when due.
                        await self._settle(consumer)
                        if self.positions.check_due():
                            await self.positions.check()
                    except StoreBehind as exc:
                        await self._rewind(consumer, exc)
                        continue
                    if prepared is not None:
                        prepared, ends = self._still_assigned(consumer, prepared, ends)
                        task = asyncio.ensure_future(self._fold(prepared))
                        self._in_flight = (task, ends, number)
                        await asyncio.sleep(0)  # let it send its pipeline first
                if records:
                    self._record_lag(consumer, ends)
                # Let the fold task send its pipeline before the next batch is decoded.
                await asyncio.sleep(0)
        finally:
            async with self._lock:
                try:
                    await self._settle(consumer, final=True)
                except StoreBehind:
                    await self.positions.left_behind(consumer.assignment())

    async def _place(self, consumer: AIOKafkaConsumer) -> None:
        """Seek the partitions assigned to where the fold stands, then read them."""
        async with self._lock:
            tps = self._unplaced & consumer.assignment()
            try:
                await self.positions.place(consumer, tps)
            except (BatchAbandoned, asyncio.CancelledError):
                raise
            except Exception:
                log.exception("inbound: placing %d partitions failed; retrying", len(tps))
                await asyncio.sleep(1.0)
                return
            self._unplaced.clear()
            consumer.resume(*tps)

    async def _rewind(self, consumer: AIOKafkaConsumer, behind: StoreBehind) -> None:
        """Redis holds less than this worker folded: read every partition again from what it
        holds (the batch read meanwhile is dropped)."""
        metrics.FOLD_REWINDS.inc()
        log.warning("inbound: %s; reading the partitions again from what Redis holds", behind)
        self._uncommitted.clear()
        self.folder.forget_sites()
        self.lag.forget(consumer.assignment())  # what it had fetched is read again
        await self.positions.place(consumer, consumer.assignment(), lost=True)

    async def _fold(self, prepared: PreparedBatch) -> None:
        """complete() retries outages itself; anything else escaping it is a bug. Never let it
        end the agent (a dead agent looks like a silently stopped consumer): log, try again."""
        delay = 0.5
        while True:
            try:
                await self.folder.complete(prepared)
                return
            except (BatchAbandoned, asyncio.CancelledError):
                raise
            except Exception:
                log.exception("batch of %d failed; retrying in %.1fs", prepared.size, delay)
                if self._should_give_up():
                    raise BatchAbandoned("a batch kept failing while stopping") from None
                await asyncio.sleep(delay)
                delay = min(delay * 2, 10.0)

    async def _settle(self, consumer: AIOKafkaConsumer, *, final: bool = False) -> None:
        """Wait for the batch in flight; once folded, record where it ended in every group
        when due (or ``final``: the partitions go, or the worker stops) and commit that."""
        if self._in_flight is not None:
            task, ends, number = self._in_flight
            self._in_flight = None
            await task  # BatchAbandoned, StoreBehind: not folded, so not committed
            self.lag.folded(number)
            await self.positions.folded(ends)
            self.folded_batches += 1
        if final or self.positions.advance_due():
            self._uncommitted.update(await self.positions.advance())
        await self._commit(consumer)

    async def _commit(self, consumer: AIOKafkaConsumer) -> None:
        if not self._uncommitted:
            return
        assigned = consumer.assignment()
        offsets = {tp: o for tp, o in self._uncommitted.items() if tp in assigned}
        if not offsets:
            self._uncommitted.clear()  # revoked: their new owner reads from the last commit
            return
        try:
            await consumer.commit(offsets)
        except KafkaError as exc:
            # Folded but not committed: after a crash these are consumed again and skipped
            # as duplicates. The next commit carries them (offsets only grow).
            metrics.KAFKA_ERRORS.labels("worker").inc()
            log.warning("inbound: commit failed (%r); retried with the next batch", exc)
            return
        self._uncommitted.clear()

    def _still_assigned(
        self, consumer: AIOKafkaConsumer, prepared: PreparedBatch, ends: Ends
    ) -> tuple[PreparedBatch, Ends]:
        """Drop what a rebalance took away while the batch was being decoded."""
        assigned = consumer.assignment()
        if all(tp in assigned for tp in ends):
            return prepared, ends
        kept = [m for m in prepared.messages if TopicPartition(m.topic, m.partition) in assigned]
        return self.folder.prepare(kept), {tp: e for tp, e in ends.items() if tp in assigned}

    def _record_lag(self, consumer: AIOKafkaConsumer, ends: Ends) -> None:
        for tp, (last, _) in ends.items():
            next_offset = last + 1
            highwater = consumer.highwater(tp)
            if highwater is not None:
                self._message_lag_gauge(tp).set(max(0, highwater - next_offset))

    def _message_lag_gauge(self, tp: TopicPartition) -> Any:
        gauge = self._lag_gauges.get(tp)
        if gauge is None:
            gauge = self._lag_gauges[tp] = metrics.CONSUMER_LAG.labels(tp.topic, str(tp.partition))
        return gauge

    def partition_lags(self) -> list[PartitionLag]:
        """Sync lag of every partition assigned now (also set on ``atp_sync_lag_seconds``); none
        while the worker has no consumer (the broker is unreachable at start)."""
        consumer = self._consumer
        if consumer is None:
            return []
        out: list[PartitionLag] = []
        for tp in sorted(consumer.assignment()):
            lag_ms, behind = self.lag.lag(tp, consumer.highwater(tp))
            source = TOPIC_SOURCES.get(tp.topic)
            source_name = source.value if source is not None else tp.topic
            gauge = self._sync_gauges.get(tp)
            if gauge is None:
                gauge = self._sync_gauges[tp] = metrics.SYNC_LAG.labels(
                    tp.topic, str(tp.partition), source_name
                )
            gauge.set(lag_ms / 1000)
            if behind is not None:
                self._message_lag_gauge(tp).set(behind)
            out.append(
                {
                    "topic": tp.topic,
                    "partition": tp.partition,
                    "source": source_name,
                    "lag_ms": lag_ms,
                    "lag_messages": behind,
                }
            )
        return out


class _SettleOnRevoke(ConsumerRebalanceListener):  # type: ignore[misc]
    """Before partitions go to another worker: finish the batch in flight, record where it
    ended and commit it. Partitions assigned are paused until placed (_positions.py)."""

    def __init__(self, agent: InboundAgent, consumer: AIOKafkaConsumer) -> None:
        self.agent = agent
        self.consumer = consumer

    async def on_partitions_revoked(self, revoked: Sequence[TopicPartition]) -> None:
        agent, consumer = self.agent, self.consumer
        async with agent._lock:
            try:
                await agent._settle(consumer, final=True)
            except BatchAbandoned as exc:
                agent._abandoned = exc  # the main loop stops on it
            except StoreBehind:
                with contextlib.suppress(BatchAbandoned):
                    await agent.positions.left_behind(revoked)
            agent.positions.revoked(revoked)
            agent._unplaced.difference_update(revoked)
            agent.lag.forget(revoked)
            for tp in revoked:  # another worker's to report now
                gauge = agent._sync_gauges.pop(tp, None)
                if gauge is not None:
                    gauge.set(0)

    async def on_partitions_assigned(self, assigned: Sequence[TopicPartition]) -> None:
        agent, consumer = self.agent, self.consumer
        if not assigned:
            return
        consumer.pause(*assigned)
        agent._unplaced.update(assigned)


async def _stop_quietly(consumer: AIOKafkaConsumer) -> None:
    with contextlib.suppress(Exception):
        await consumer.stop()
