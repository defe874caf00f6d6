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
from atp_service.store.ops import PartitionLag
from atp_service.store.replay_marks import replayed_from
from stream_agents._folding import BatchAbandoned, BatchFolder, InboundMessage, PreparedBatch
from stream_agents.lag import LagMeter
from stream_agents.records import TOPIC_SOURCES

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
    ) -> None:
        self.folder = folder
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
        #: The batch Redis is folding: its task, the offsets to commit once it is done, and
        #: its number for the lag meter.
        self._in_flight: tuple[asyncio.Future[None], dict[TopicPartition, int], int] | None = None
        #: Offsets of folded batches not yet committed (a commit may fail; it is retried).
        self._uncommitted: dict[TopicPartition, int] = {}
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
                consumer.subscribe(self.topics, listener=_SettleOnRevoke(self))
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
                records = await consumer.getmany(
                    timeout_ms=0 if self._in_flight else _POLL_MS, max_records=self.batch
                )
                prepared: PreparedBatch | None = None
                offsets: dict[TopicPartition, int] = {}
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
                    offsets = {tp: batch[-1].offset + 1 for tp, batch in records.items()}
                    # CPU work, while Redis still folds the batch before this one (and
                    # its pipeline is still being written: the loop gets turns).
                    prepared = await self.folder.prepare_yielding(messages)
                async with self._lock:
                    if self._abandoned is not None:
                        raise self._abandoned
                    await self._settle(consumer, commit=False)
                    if prepared is not None:
                        prepared, offsets = self._still_assigned(consumer, prepared, offsets)
                        task = asyncio.ensure_future(self._fold(prepared))
                        self._in_flight = (task, offsets, number)
                        await asyncio.sleep(0)  # let it send its pipeline first
                    # The batch before is folded: commit it while Redis folds this one.
                    await self._commit(consumer)
                if records:
                    self._record_lag(consumer, offsets)
                # Let the fold task send its pipeline before the next batch is decoded.
                await asyncio.sleep(0)
        finally:
            async with self._lock:
                await self._settle(consumer)

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

    async def _settle(self, consumer: AIOKafkaConsumer, *, commit: bool = True) -> None:
        """Wait for the batch in flight; once folded, its offsets are committed (``commit``)
        or left for the next ``_commit``."""
        if self._in_flight is not None:
            task, offsets, number = self._in_flight
            self._in_flight = None
            await task  # BatchAbandoned: not folded, so not committed
            self.lag.folded(number)
            self._uncommitted.update(offsets)
            self.folded_batches += 1
        if commit:
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
        self,
        consumer: AIOKafkaConsumer,
        prepared: PreparedBatch,
        offsets: dict[TopicPartition, int],
    ) -> tuple[PreparedBatch, dict[TopicPartition, int]]:
        """Drop what a rebalance took away while the batch was being decoded."""
        assigned = consumer.assignment()
        if all(tp in assigned for tp in offsets):
            return prepared, offsets
        kept = [m for m in prepared.messages if TopicPartition(m.topic, m.partition) in assigned]
        return self.folder.prepare(kept), {tp: o for tp, o in offsets.items() if tp in assigned}

    def _record_lag(self, consumer: AIOKafkaConsumer, offsets: dict[TopicPartition, int]) -> None:
        for tp, next_offset in offsets.items():
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
    """Before partitions go to another worker: finish the batch in flight and commit it."""

    def __init__(self, agent: InboundAgent) -> None:
        self.agent = agent

    async def on_partitions_revoked(self, revoked: Sequence[TopicPartition]) -> None:
        consumer = self.agent._consumer
        if consumer is None:
            return
        async with self.agent._lock:
            try:
                await self.agent._settle(consumer)
            except BatchAbandoned as exc:
                self.agent._abandoned = exc  # the main loop stops on it
            self.agent.lag.forget(revoked)
            for tp in revoked:  # another worker's to report now
                gauge = self.agent._sync_gauges.pop(tp, None)
                if gauge is not None:
                    gauge.set(0)

    async def on_partitions_assigned(self, assigned: Sequence[TopicPartition]) -> None:
        return None


async def _stop_quietly(consumer: AIOKafkaConsumer) -> None:
    with contextlib.suppress(Exception):
        await consumer.stop()
