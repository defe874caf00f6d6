"""The worker's own Kafka producer: dead letters and the outbox relay, started on first use."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Sequence

from aiokafka import AIOKafkaProducer

from atp_service.events import KafkaPublisher


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
