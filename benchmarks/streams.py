"""The Kafka side: load the catalogue, the bare-consumer ceiling, fold throughput, freshness."""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import re
import statistics
import time
import urllib.request
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import httpx
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from atp_service.simulate import sku_name
from benchmarks.catalogue import Catalogue, Popularity, delta_message, now_rfc3339

TOPIC = "wms.inventory.v1"

# -- producing the catalogue ------------------------------------------------------------------


def _producer(bootstrap: str) -> AIOKafkaProducer:
    return AIOKafkaProducer(
        bootstrap_servers=bootstrap,
        acks=1,
        linger_ms=5,
        max_batch_size=512 * 1024,
        max_request_size=4 * 1024 * 1024,
    )


@dataclass
class Produced:
    messages: int
    seconds: float

    @property
    def per_second(self) -> float:
        return self.messages / self.seconds if self.seconds else 0.0


async def produce_catalogue(bootstrap: str, catalogue: Catalogue, run_id: str) -> Produced:
    """One WMS snapshot per item-site into ``wms.inventory.v1``, acknowledged by the broker."""
    producer = _producer(bootstrap)
    await producer.start()
    started = time.perf_counter()
    occurred_at = now_rfc3339()
    try:
        pending: list[asyncio.Future[Any]] = []
        for rank in range(1, catalogue.skus + 1):
            for site in catalogue.site_codes:
                key, value = catalogue.snapshot(rank, site, run_id, occurred_at)
                pending.append(await producer.send(TOPIC, value, key=key))
            if len(pending) >= 20_000:
                await asyncio.gather(*pending)
                pending.clear()
        await asyncio.gather(*pending)
    finally:
        await producer.stop()
    return Produced(catalogue.item_sites, time.perf_counter() - started)


# -- the Kafka ceiling: a bare consumer ----------------------------------------------------------


#: Called at the start and the end of a timed span; returns the wall time it marked (the
#: CPU meter takes a sample then: benchmarks/cpu.py).
Mark = Callable[[], float]


def _no_mark() -> float:
    return time.time()


@dataclass
class Consumed:
    messages: int
    seconds: float
    #: Wall times marked at the first fetch and after the last record.
    marks: tuple[float, float] = (0.0, 0.0)

    @property
    def per_second(self) -> float:
        return self.messages / self.seconds if self.seconds else 0.0


async def bare_consume(
    bootstrap: str, expected: int, within: float = 120.0, mark: Mark = _no_mark
) -> Consumed:
    """Read ``expected`` messages of the inbound topic from the beginning, doing nothing with
    them: aiokafka's own speed on this broker. Timed from the first fetch to the last record
    (the connection and the metadata are not counted; the first fetch's wait is)."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap, group_id=None, enable_auto_commit=False
    )
    await consumer.start()
    try:
        partitions = consumer.partitions_for_topic(TOPIC) or set()
        tps = [TopicPartition(TOPIC, p) for p in sorted(partitions)]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        seen = 0
        marked = mark()
        first = time.perf_counter()
        deadline = time.monotonic() + within
        while seen < expected and time.monotonic() < deadline:
            batches = await consumer.getmany(timeout_ms=500, max_records=10_000)
            seen += sum(len(records) for records in batches.values())
        seconds = time.perf_counter() - first
        return Consumed(seen, seconds, (marked, mark()))
    finally:
        await consumer.stop()


# -- fold throughput, from the worker's own counters -----------------------------------------------

_FOLDED = re.compile(r"^atp_events_folded_total\{[^}]*\} ([0-9.e+]+)$", re.MULTILINE)
_DEAD = re.compile(r"^atp_events_dead_lettered_total\{[^}]*\} ([0-9.e+]+)$", re.MULTILINE)


def worker_counts(metrics_url: str) -> tuple[int, int]:
    """(events folded or skipped by the fold, events dead-lettered) so far."""
    with urllib.request.urlopen(metrics_url, timeout=2.0) as response:
        text = response.read().decode()
    folded = sum(float(v) for v in _FOLDED.findall(text))
    dead = sum(float(v) for v in _DEAD.findall(text))
    return int(folded), int(dead)


@dataclass
class Folded:
    events: int
    dead_lettered: int
    seconds: float
    #: Wall time marked when the first fold was seen.
    first_seen: float = 0.0

    @property
    def per_second(self) -> float:
        return self.events / self.seconds if self.seconds else 0.0


def wait_folded(
    metrics_url: str,
    expected: int,
    check_alive: Callable[[], None],
    timeout: float,
    poll: float | None = None,
    mark: Mark = _no_mark,
) -> Folded:
    """Wait until the worker has handled ``expected`` events; timed from its first fold.

    Each look is a scrape of the worker's /metrics, which costs the worker CPU (its process
    collector reads /proc): every 0.1 s on small data, every 0.25 s on a long fold (a few
    per cent of the worker's time otherwise; the error is then under 1 % of the time)."""
    if poll is None:
        poll = 0.1 if expected < 100_000 else 0.25
    deadline = time.monotonic() + timeout
    first = 0.0
    first_seen = 0.0
    base, _ = worker_counts(metrics_url)
    while True:
        done, dead = worker_counts(metrics_url)
        done -= base
        now = time.perf_counter()
        if done and not first:
            first = now - poll / 2  # it started during the last interval
            first_seen = mark()
        if done + dead >= expected:
            return Folded(done, dead, now - first, first_seen)
        check_alive()
        if time.monotonic() > deadline:
            raise TimeoutError(f"the worker folded {done} of {expected} events in {timeout:g}s")
        time.sleep(poll)


# -- freshness ----------------------------------------------------------------------------------


@dataclass
class Freshness:
    rate_asked: float
    rate_sent: float
    seconds: float
    latencies_ms: list[float]
    sent_at_s: list[float]
    timeouts: int
    kafka_latencies_ms: list[float]

    def percentile(self, q: float, *, kafka: bool = False) -> float | None:
        return percentile(self.kafka_latencies_ms if kafka else self.latencies_ms, q)


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    if len(values) == 1:
        return values[0]
    return statistics.quantiles(values, n=1000, method="inclusive")[round(q * 10) - 1]


async def _tail_consumer(bootstrap: str) -> AIOKafkaConsumer:
    """A bare consumer at the end of the inbound topic (aiokafka's default fetch settings)."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=None)
    await consumer.start()
    tps = [TopicPartition(TOPIC, p) for p in sorted(consumer.partitions_for_topic(TOPIC) or ())]
    consumer.assign(tps)
    await consumer.seek_to_end(*tps)
    for tp in tps:
        await consumer.position(tp)  # resolve "end" now, before anything is produced
    return consumer


async def measure_freshness(
    bootstrap: str,
    api_url: str,
    read_key: str,
    catalogue: Catalogue,
    *,
    rate: float,
    seconds: float,
    probes_per_second: float = 20.0,
    poll_seconds: float = 0.002,
) -> Freshness:
    """Background WMS deltas at ``rate`` events/s; among them probes on reserved item-sites
    whose change is awaited over HTTP. Latency: from handing the probe to the producer to the
    first GET that shows it. A bare consumer tailing the topic times the same probes up to
    their delivery by the broker (the floor under the worker's freshness)."""
    probe_count = max(8, int(probes_per_second * 2))
    probe_ranks = list(range(catalogue.skus - probe_count + 1, catalogue.skus + 1))
    probe_site = catalogue.site_codes[-1]
    background_skus = max(1, catalogue.skus - probe_count)
    popularity = Popularity(background_skus, random.Random(7))
    sites = catalogue.site_codes
    run = uuid.uuid4().hex[:8]
    producer = _producer(bootstrap)
    await producer.start()
    headers = {"Authorization": f"Bearer {read_key}"}
    latencies: list[float] = []
    sent_at: list[float] = []
    timeouts = 0
    busy: set[int] = set()
    tasks: set[asyncio.Task[None]] = set()
    probe_keys = {f"{sku_name(rank)}@{probe_site}".encode() for rank in probe_ranks}
    probe_sent: dict[str, float] = {}
    kafka_latencies: list[float] = []
    tail = await _tail_consumer(bootstrap)

    async def tail_probes() -> None:
        while True:
            batches = await tail.getmany(timeout_ms=100)
            now = time.perf_counter()
            for records in batches.values():
                for record in records:
                    if record.key in probe_keys and record.value is not None:
                        sent = probe_sent.pop(json.loads(record.value)["event_id"], None)
                        if sent is not None:
                            kafka_latencies.append((now - sent) * 1000)

    tailing = asyncio.create_task(tail_probes())

    async with httpx.AsyncClient(base_url=api_url, headers=headers, timeout=5.0) as http:

        async def on_hand(rank: int) -> int:
            r = await http.get(
                f"/v1/availability/{sku_name(rank)}", params={"channel": "web", "site": probe_site}
            )
            r.raise_for_status()
            return int(r.json()["sites"][0]["on_hand"])

        expected = {rank: await on_hand(rank) for rank in probe_ranks}

        async def probe(rank: int, n: int) -> None:
            nonlocal timeouts
            expected[rank] += 1
            event_id = f"bench-probe-{run}-{n}"
            key, value = delta_message(sku_name(rank), probe_site, 1, event_id)
            sent = probe_sent[event_id] = time.perf_counter()
            await producer.send(TOPIC, value, key=key)
            deadline = sent + 10.0
            try:
                while time.perf_counter() < deadline:
                    if await on_hand(rank) >= expected[rank]:
                        latencies.append((time.perf_counter() - sent) * 1000)
                        sent_at.append(sent - started)
                        return
                    await asyncio.sleep(poll_seconds)
                timeouts += 1
            finally:
                busy.discard(rank)

        started = time.perf_counter()
        sent_events = 0
        next_probe = started
        probe_n = 0
        while (elapsed := time.perf_counter() - started) < seconds:
            due = int(elapsed * rate) - sent_events
            for _ in range(max(0, due)):
                sent_events += 1
                qty = 1 if sent_events % 2 else -1
                key, value = delta_message(
                    sku_name(popularity.rank()),
                    random.choice(sites),
                    qty,
                    f"bench-fresh-{run}-{sent_events}",
                )
                await producer.send(TOPIC, value, key=key)
            if time.perf_counter() >= next_probe:
                next_probe += 1.0 / probes_per_second
                rank = probe_ranks[probe_n % len(probe_ranks)]
                probe_n += 1
                if rank not in busy:
                    busy.add(rank)
                    sent_events += 1
                    task = asyncio.create_task(probe(rank, probe_n))
                    tasks.add(task)
                    task.add_done_callback(tasks.discard)
            await asyncio.sleep(0.005)
        duration = time.perf_counter() - started
        if tasks:
            await asyncio.gather(*tasks)
    await asyncio.sleep(0.5)  # the tail's last probes
    tailing.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await tailing
    await tail.stop()
    await producer.stop()
    return Freshness(
        rate, sent_events / duration, duration, latencies, sent_at, timeouts, kafka_latencies
    )
