"""The worker's own Kafka clients besides its consumer: the producer of dead letters and of
the outbox relay, started on first use, and the probe of the inbound logs."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Mapping, Sequence

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.errors import KafkaError, OffsetOutOfRangeError

from atp_service.events import KafkaPublisher
from atp_service.store.applied import record_fingerprint

log = logging.getLogger(__name__)


class LazyProducer:
    """An aiokafka producer (acks=all) that starts when first needed and again after a
    failed start, so a broker that is down at boot or goes away later only delays sends."""

    def __init__(self, bootstrap_servers: str, *, client_id: str, request_timeout_ms: int = 10_000):
        self._bootstrap = bootstrap_servers
        self._client_id = client_id
        self._request_timeout_ms = request_timeout_ms
        self._producer: AIOKafkaProducer | None = None
        self._publisher: KafkaPublisher | None = None
        self._lock = asyncio.Lock()

    async def started(self) -> AIOKafkaProducer:
        async with self._lock:
            if self._producer is None:
                producer = AIOKafkaProducer(
                    bootstrap_servers=self._bootstrap,
                    client_id=self._client_id,
                    acks="all",
                    linger_ms=2,
                    request_timeout_ms=self._request_timeout_ms,
                )
                try:
                    await producer.start()
                except BaseException:
                    await producer.stop()
                    raise
                self._producer = producer
            return self._producer

    async def publish(self, topic: str, messages: Sequence[tuple[str, str]]) -> None:
        """``atp_service.events.Publisher``: returns once the broker acknowledged every message."""
        producer = await self.started()
        publisher = self._publisher
        if publisher is None or publisher.producer is not producer:  # kept per producer
            publisher = self._publisher = KafkaPublisher(producer)
        await publisher.publish(topic, messages)

    async def send_raw(self, topic: str, records: Sequence[tuple[bytes | None, bytes]]) -> None:
        """Send (key, value) bytes; returns once the broker acknowledged every record."""
        producer = await self.started()
        futures = [await producer.send(topic, key=key, value=value) for key, value in records]
        await asyncio.gather(*futures)

    async def stop(self) -> None:
        async with self._lock:
            if self._producer is not None:
                producer, self._producer = self._producer, None
                await producer.stop()

    async def drop(self, stop_seconds: float = 5.0) -> None:
        """Forget a stuck producer (the next send starts a new one); stopping it may hang."""
        async with self._lock:
            producer, self._producer = self._producer, None
        if producer is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(producer.stop(), stop_seconds)


class DeadLetterTopic:
    """``DeadLetterSink`` writing to one topic through a ``LazyProducer``."""

    def __init__(self, producer: LazyProducer, topic: str) -> None:
        self._producer = producer
        self.topic = topic

    async def send(self, records: Sequence[tuple[bytes | None, bytes]]) -> None:
        await self._producer.send_raw(self.topic, records)


class LogProbe:
    """Reads single records of the inbound partitions beside the worker's consumer (no group),
    to tell whether a partition's log is the one the fold recorded (stream_agents/_positions.py).
    """

    def __init__(self, bootstrap_servers: str, *, client_id: str, wait_seconds: float = 2.0):
        self._bootstrap = bootstrap_servers
        self._client_id = client_id
        self.wait_seconds = wait_seconds
        self._consumer: AIOKafkaConsumer | None = None

    async def _started(self) -> AIOKafkaConsumer:
        if self._consumer is None:
            consumer = AIOKafkaConsumer(
                bootstrap_servers=self._bootstrap,
                client_id=self._client_id,
                group_id=None,
                enable_auto_commit=False,
                auto_offset_reset="none",
            )
            try:
                await consumer.start()
            except BaseException:
                await consumer.stop()
                raise
            self._consumer = consumer
        return self._consumer

    async def replaced(
        self, checkpoints: Mapping[TopicPartition, tuple[int, str]]
    ) -> set[TopicPartition]:
        """The partitions whose record at the checkpoint's offset is not the one recorded (its
        fingerprint differs, or it is gone from a log that ends before it). A record the broker
        no longer keeps (retention) cannot tell, nor can a broker that does not answer: those
        count as the same log."""
        if not checkpoints:
            return set()
        try:
            return await self._replaced(checkpoints)
        except KafkaError as exc:
            log.warning("log probe: broker did not answer (%r); trusting the recorded offsets", exc)
            return set()

    async def _replaced(
        self, checkpoints: Mapping[TopicPartition, tuple[int, str]]
    ) -> set[TopicPartition]:
        consumer = await self._started()
        tps = list(checkpoints)
        consumer.assign(tps)
        firsts = await consumer.beginning_offsets(tps)
        ends = await consumer.end_offsets(tps)
        open_: dict[TopicPartition, int] = {}
        for tp, (offset, _) in checkpoints.items():
            if offset >= firsts[tp]:
                consumer.seek(tp, offset)
                open_[tp] = offset
        replaced: set[TopicPartition] = set()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.wait_seconds
        while open_ and loop.time() < deadline:
            try:
                batches = await consumer.getmany(*open_, timeout_ms=200, max_records=len(open_))
            except OffsetOutOfRangeError as exc:  # past the end of a shorter log (Kafka)
                gone = [tp for tp in exc.args[0] if tp in open_] if exc.args else list(open_)
                replaced.update(gone)
                for tp in gone:
                    open_.pop(tp, None)
                continue
            for tp, records in batches.items():
                if tp not in open_ or not records:
                    continue
                first = records[0]
                _, fingerprint = checkpoints[tp]
                if first.offset != open_[tp] or record_fingerprint(first.value) != fingerprint:
                    replaced.add(tp)
                del open_[tp]
        # Nothing at the offset: gone if the log ends before it (Tansu may report an end that
        # is short, so both must say so).
        replaced.update(tp for tp, offset in open_.items() if ends[tp] <= offset)
        return replaced

    async def stop(self) -> None:
        if self._consumer is not None:
            consumer, self._consumer = self._consumer, None
            with contextlib.suppress(Exception):
                await consumer.stop()
