"""Outbound events: the outbox relay that moves what the store wrote to ``atp.events.v1``.

Every state change writes its events into a Redis outbox stream in the same atomic
script as the change (see ``store/lua``). A relay reads them with a consumer group,
publishes them to Kafka, waits for the broker's acknowledgement, and only then
acknowledges and deletes them. One relay at a time publishes a stream: it holds the
stream's lease (store/relay_leases.py), and the live relays share the streams out. A relay
that dies leaves its entries pending and stops renewing its leases; after ``claim_idle_ms``
another relay takes them and publishes those entries first. Publication is therefore at
least once, in order per outbox stream (so per key: a key's events all go to one stream);
consumers drop stale ``availability.changed`` by ``version``.

With ``coalesce_ms`` (``ATP_EVENTS_COALESCE_MS``) a relay holds what it reads for that long
and publishes it coalesced (coalescing.py): successive changes of one item-site-channel
as one.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import struct
from collections.abc import Sequence
from typing import Any, Protocol

from atp_service import metrics
from atp_service.coalescing import Window, coalesce
from atp_service.store import OutboxEntry, RedisStore
from atp_service.store.duty import Duty
from atp_service.store.relay_leases import RelayLeases

log = logging.getLogger(__name__)

EVENT_SCHEMA = "atp.event.v1"
EVENT_TYPES = (
    "availability.changed",
    "reservation.held",
    "reservation.confirmed",
    "reservation.released",
    "reservation.expired",
    "reservation.consumed",
    "inventory.drift_detected",
    "inventory.snapshot_requested",
)


class Publisher(Protocol):
    async def publish(self, topic: str, messages: Sequence[tuple[str, str]]) -> None:
        """Send (key, value) messages and return once the broker has acknowledged all."""


class KafkaPublisher:
    """A Publisher over an aiokafka producer the caller started (acks=all).

    Messages go out as one record batch per partition (``create_batch``/``send_batch``)
    rather than one ``send()`` each, which costs about a third of the CPU; the partition of
    a key is the one Kafka's default partitioner picks (murmur2, as the Java client), and is
    remembered, since the same item-sites come back again and again.
    """

    def __init__(self, producer: Any, *, remembered_keys: int = 200_000) -> None:
        self.producer = producer
        self._remembered_keys = remembered_keys
        self._partitions: dict[str, list[int]] = {}
        self._partition_of: dict[str, dict[bytes, int]] = {}  # topic -> key -> partition

    async def _remembered(self, topic: str) -> tuple[list[int], dict[bytes, int]]:
        known = sorted(await self.producer.partitions_for(topic))
        if self._partitions.get(topic) != known:  # first use, or partitions were added
            self._partitions[topic] = known
            self._partition_of[topic] = {}
        return known, self._partition_of[topic]

    async def publish(self, topic: str, messages: Sequence[tuple[str, str]]) -> None:
        partitions, remembered = await self._remembered(topic)
        count = len(partitions)
        by_partition: dict[int, list[tuple[bytes, bytes]]] = {}
        for key, value in messages:
            encoded = key.encode()
            partition = remembered.get(encoded)
            if partition is None:
                partition = partitions[(murmur2(encoded) & 0x7FFFFFFF) % count]
                if len(remembered) >= self._remembered_keys:
                    remembered.clear()
                remembered[encoded] = partition
            records = by_partition.get(partition)
            if records is None:
                records = by_partition[partition] = []
            records.append((encoded, value.encode()))
        producer = self.producer
        futures = []
        for partition, records in by_partition.items():
            batch = producer.create_batch()
            for key_bytes, value_bytes in records:
                if batch.append(key=key_bytes, value=value_bytes, timestamp=None) is not None:
                    continue
                # Full: send it and start another (an empty batch takes any first record).
                futures.append(await producer.send_batch(batch, topic, partition=partition))
                batch = producer.create_batch()
                batch.append(key=key_bytes, value=value_bytes, timestamp=None)
            if batch.record_count():
                batch.close()
                futures.append(await producer.send_batch(batch, topic, partition=partition))
        await asyncio.gather(*futures)


def murmur2(data: bytes) -> int:
    """Kafka's murmur2 (the Java client's ``Utils.murmur2``): aiokafka's, about twice as
    fast (words unpacked by ``struct``). tests/unit/test_kafka_publisher.py compares them."""
    m = 0x5BD1E995
    length = len(data)
    h = (0x9747B28C ^ length) & 0xFFFFFFFF
    words = length >> 2
    for k in struct.unpack_from(f"<{words}I", data):
        k = (k * m) & 0xFFFFFFFF
        k ^= k >> 24
        k = (k * m) & 0xFFFFFFFF
        h = ((h * m) & 0xFFFFFFFF) ^ k
    tail = length & 3
    if tail:
        base = words << 2
        if tail >= 3:
            h ^= data[base + 2] << 16
        if tail >= 2:
            h ^= data[base + 1] << 8
        h ^= data[base]
        h = (h * m) & 0xFFFFFFFF
    h ^= h >> 13
    h = (h * m) & 0xFFFFFFFF
    h ^= h >> 15
    return h


class PublishStalled(Exception):
    """A publish neither succeeded nor failed in time: the producer is stuck, start another.

    Seen with aiokafka 0.14 after a broker restart: a batch re-enqueued while the broker was
    away waited for metadata for ever (no error, no timeout, minutes on end), so the outbox
    waited with it. ``OutboxRelay.run`` raises this instead of retrying on the same producer.
    """


def relay_consumer_name(role: str) -> str:
    return f"{role}-{socket.gethostname()}-{os.getpid()}"


class OutboxRelay:
    """Moves outbox entries to Kafka; run one per process (API or worker), any number."""

    def __init__(
        self,
        store: RedisStore,
        publisher: Publisher,
        *,
        topic: str,
        consumer: str,
        batch: int = 500,
        claim_idle_ms: int = 10_000,
        block_ms: int = 200,
        linger_ms: int = 0,
        publish_timeout_s: float = 20.0,
        coalesce_ms: int = 0,
    ) -> None:
        self.store = store
        self.publisher = publisher
        self.topic = topic
        self.consumer = consumer
        self.batch = batch
        self.claim_idle_ms = claim_idle_ms
        self.block_ms = block_ms
        #: After a round short of a full batch, wait this long: a round's cost (its reads,
        #: acknowledgements and produce request, the broker's handling of it) is mostly per
        #: round, not per event, so a trickle costs less in fewer, larger rounds.
        self.linger = linger_ms / 1000
        #: Longer than the producers' request timeout (10 s) and its retries: past it the
        #: producer is taken for stuck (PublishStalled).
        self.publish_timeout_s = publish_timeout_s
        self._groups_ready = False
        self._retry_own_pending = True  # on start, first finish what this name left behind
        #: What it holds while it coalesces (None: each round publishes what it read).
        self.window = Window(coalesce_ms, max_entries=10 * batch) if coalesce_ms > 0 else None
        #: The streams this relay publishes; a dead relay's go to another after claim_idle_ms.
        self.leases = RelayLeases(store, consumer, claim_idle_ms)

    async def relay_once(self) -> int:
        """Publish one batch; returns how many entries went out. Raises on Redis/Kafka errors."""
        if not self._groups_ready:
            await self.store.ensure_relay_groups()
            self._groups_ready = True
        if self.leases.share_due():
            taken = await self.leases.share()
            if taken:
                # The streams' relay before this one may have read entries it never
                # acknowledged: they go out first, in their order.
                await self.store.claim_pending(taken, self.consumer)
                self._retry_own_pending = True
        streams = self.leases.held()
        if not streams:
            await asyncio.sleep(self.block_ms / 1000)  # every stream has a relay of its own
            return 0
        entries: list[OutboxEntry] = []
        if self._retry_own_pending:
            entries = await self.store.read_outbox(
                self.consumer, self.batch, None, pending=True, streams=streams
            )
            if self.window is not None:  # those it holds are pending too: not them again
                entries = [entry for entry in entries if not self.window.holds(entry)]
            if not entries:
                self._retry_own_pending = False
        window = self.window
        if window is None:
            if not entries:
                entries = await self.store.read_outbox(
                    self.consumer, self.batch, self.block_ms, streams=streams
                )
            if not entries:
                return 0
            await self._publish(entries)
            return len(entries)
        loop = asyncio.get_running_loop()
        if not entries:
            block = max(1, min(self.block_ms, int(window.left(loop.time()) * 1000)))
            entries = await self.store.read_outbox(
                self.consumer, self.batch, block, streams=streams
            )
        window.add(entries, loop.time())
        if not window.due(loop.time()):
            return 0
        held = window.entries
        await self._publish(held)  # raises: they stay held (and pending) for the next round
        window.clear()
        return len(held)

    async def _publish(self, entries: Sequence[OutboxEntry]) -> None:
        mine = [entry for entry in entries if self.leases.holds(entry.stream)]
        if len(mine) < len(entries):
            # A lease it can no longer be sure of: those entries stay pending, for this relay
            # once it renewed the lease, or for the relay that took it.
            self._retry_own_pending = True
        if not mine:
            return
        records = [record for entry in mine for record in entry.records]
        if self.window is not None:
            coalesced = coalesce(records)
            metrics.EVENTS_COALESCED.inc(len(records) - len(coalesced))
            records = coalesced
        try:
            await asyncio.wait_for(
                self.publisher.publish(self.topic, records), self.publish_timeout_s
            )
        except TimeoutError:
            self._retry_own_pending = True
            raise PublishStalled(
                f"no answer from Kafka for {self.publish_timeout_s:.0f}s on {len(mine)} entries"
            ) from None
        except Exception:
            # Not acknowledged: the entries stay pending for this consumer and go out again.
            self._retry_own_pending = True
            raise
        await self.store.ack_outbox(mine)
        metrics.OUTBOX_PUBLISHED.inc(len(records))

    async def _keep_leases(self, stop: asyncio.Event) -> None:
        """Renew the leases while the relay lives, even through a publish that takes long."""
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=self.leases.every)
            try:
                await self.leases.renew()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.debug("outbox relay: renewing leases failed: %s", exc)

    async def run(
        self, stop: asyncio.Event, *, duty: Duty | None = None, stand_by: bool = False
    ) -> None:
        """Relay until ``stop`` is set; survives Redis and Kafka outages with backoff.

        With ``duty``: report each successful round (a worker), or, ``stand_by``, relay only
        while no worker has reported one lately (an API process; store/duty.py). Raises
        ``PublishStalled`` for the caller to replace its producer; the entries stay pending.
        """
        backoff = 0.1
        renewing = asyncio.create_task(self._keep_leases(stop))
        standing_by = False
        try:
            while not stop.is_set():
                try:
                    if duty is not None and stand_by and await duty.taken():
                        if not standing_by:
                            await self.leases.release()  # the workers' relays take them
                            standing_by = True
                        with contextlib.suppress(TimeoutError):
                            await asyncio.wait_for(stop.wait(), timeout=0.5)
                        continue
                    standing_by = False
                    sent = await self.relay_once()
                    if duty is not None and not stand_by:
                        await duty.done()
                    backoff = 0.1
                    if 0 < sent < self.batch and self.linger:
                        with contextlib.suppress(TimeoutError):
                            await asyncio.wait_for(stop.wait(), timeout=self.linger)
                except (asyncio.CancelledError, PublishStalled):
                    raise
                except Exception as exc:
                    metrics.OUTBOX_RELAY_FAILURES.inc()
                    self._groups_ready = False  # Redis may have come back empty (NOGROUP)
                    log.warning("outbox relay: %s; retrying in %.1fs", exc, backoff)
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(stop.wait(), timeout=backoff)
                    backoff = min(backoff * 2, 5.0)
        finally:
            renewing.cancel()
            with contextlib.suppress(BaseException):
                await renewing
            with contextlib.suppress(Exception):
                await self.leases.release()  # the others need not wait for them to lapse
