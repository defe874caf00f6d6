"""`atp status`: what is up and what is not, in a few lines.

Redis (version, outbox backlog, replayed dead letters), the brokers (topics and their
partitions), the workers (their consumer group's members and lag on the inbound topics,
which process does the relay), the API (``ATP_API_URL``'s ``/readyz`` and version) and the
dead letters. Every check has a short timeout and says why it failed; the exit code is 0
when everything is up and ready, 1 otherwise.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import sys
import urllib.error
import urllib.request
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, TextIO

from atp_service import __version__
from atp_service.config import DLQ_TOPIC, EVENTS_TOPIC, INBOUND_TOPICS, Settings
from atp_service.store import KeySpace, RedisStore, connect
from atp_service.store.keys import DLQ_REPLAYED, duty_key

#: Each check gives up after this long (a broker that is down takes the whole of it).
CHECK_TIMEOUT_SECONDS = 5.0
TOPICS = (*INBOUND_TOPICS, EVENTS_TOPIC, DLQ_TOPIC)


@dataclass
class Check:
    """One line of the report."""

    name: str
    up: bool = False
    state: str = "DOWN"
    detail: str = ""


@dataclass
class Report:
    redis: Check = field(default_factory=lambda: Check("Redis"))
    kafka: Check = field(default_factory=lambda: Check("Kafka"))
    workers: Check = field(default_factory=lambda: Check("workers"))
    api: Check = field(default_factory=lambda: Check("API"))
    dead_letters: int | None = None
    replayed: int | None = None

    @property
    def checks(self) -> list[Check]:
        return [self.redis, self.kafka, self.workers, self.api]

    @property
    def all_up(self) -> bool:
        return all(check.up for check in self.checks)

    def render(self) -> str:
        lines = [f"atp-service {__version__}"]
        lines += [f"  {c.name:<8} {c.state:<7} {c.detail}" for c in self.checks]
        if self.dead_letters is None:
            letters = "unknown (Kafka is down)"
        else:
            replayed = "?" if self.replayed is None else str(self.replayed)
            letters = f"{self.dead_letters} in {DLQ_TOPIC}, {replayed} replayed (atp dlq list)"
        lines.append(f"  {'dead letters':<16} {letters}")
        return "\n".join(lines)


def _reason(exc: BaseException) -> str:
    if isinstance(exc, TimeoutError):
        return f"no answer within {CHECK_TIMEOUT_SECONDS:g}s"
    text, kind = str(exc), type(exc).__name__
    return text if text.startswith(kind) else f"{kind}: {text}" if text else kind


async def _bounded(check: Check, where: str, probe: Callable[[], Awaitable[None]]) -> None:
    try:
        async with asyncio.timeout(CHECK_TIMEOUT_SECONDS):
            await probe()
    except Exception as exc:
        check.up, check.state, check.detail = False, "DOWN", f"{where}: {_reason(exc)}"


async def check_redis(settings: Settings, report: Report) -> None:
    check = report.redis
    client = connect(
        settings.redis_url,
        timeout=settings.redis_timeout_seconds,
        max_connections=2,
        cluster=settings.redis_cluster,
    )

    async def probe() -> None:
        info = await client.info("server")
        store = RedisStore(client, KeySpace(settings.key_groups), dedup_window_seconds=86_400)
        backlog = await store.outbox_backlog()
        report.replayed = int(await client.hlen(DLQ_REPLAYED))
        relay = await client.get(duty_key("relay"))
        holder = relay.decode() if isinstance(relay, bytes) else relay
        check.up, check.state = True, "up"
        check.detail = (
            f"{settings.redis_url}: Redis {info.get('redis_version', '?')}; outbox backlog "
            f"{backlog} entries; relay and expiry by "
            + (f"a worker ({holder})" if holder else "the API processes (no worker reported)")
        )

    try:
        await _bounded(check, settings.redis_url, probe)
    finally:
        await client.aclose()


async def check_kafka(settings: Settings, report: Report) -> None:
    """The brokers and topics, then the workers' group and its lag, and the dead letters."""
    from aiokafka import AIOKafkaConsumer, TopicPartition
    from aiokafka.admin import AIOKafkaAdminClient

    bootstrap = settings.bootstrap_servers
    timeout_ms = int(CHECK_TIMEOUT_SECONDS * 1000)
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=timeout_ms)
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap,
        group_id=settings.worker_app_id,  # only to read its committed offsets: never joins
        enable_auto_commit=False,
        request_timeout_ms=timeout_ms,
    )
    partitions: dict[str, int] = {}

    async def brokers_and_topics() -> None:
        await admin.start()
        existing = set(await admin.list_topics())
        ours = [name for name in TOPICS if name in existing]
        for topic in await admin.describe_topics(ours) if ours else []:
            partitions[str(topic["topic"])] = len(topic.get("partitions") or ())
        brokers = len((await admin.describe_cluster()).get("brokers") or ())
        missing = [name for name in TOPICS if name not in partitions]
        listed = ", ".join(f"{name} ({partitions[name]})" for name in TOPICS if name in partitions)
        report.kafka.detail = f"{bootstrap}: {brokers} broker(s); topics {listed or 'none'}"
        if missing:
            report.kafka.state = "up"
            report.kafka.detail += f"; MISSING {', '.join(missing)} (atp topics create)"
        else:
            report.kafka.up, report.kafka.state = True, "up"

    await _bounded(report.kafka, bootstrap, brokers_and_topics)
    if report.kafka.state == "DOWN":
        report.workers.state, report.workers.detail = "unknown", "(Kafka is down)"
        await _close(admin.close(), consumer.stop())
        return

    async def group_and_lag() -> None:
        [described] = await admin.describe_consumer_groups([settings.worker_app_id])
        [group] = described.groups
        members, state = len(group[5]), str(group[2])
        await consumer.start()
        lag = 0
        for topic in INBOUND_TOPICS:
            tps = [TopicPartition(topic, p) for p in range(partitions.get(topic, 0))]
            if not tps:
                continue
            ends = await consumer.end_offsets(tps)
            starts = await consumer.beginning_offsets(tps)
            for tp in tps:
                committed = await consumer.committed(tp)
                lag += max(0, ends[tp] - (starts[tp] if committed is None else committed))
        dlq = [TopicPartition(DLQ_TOPIC, p) for p in range(partitions.get(DLQ_TOPIC, 0))]
        if dlq:
            ends, starts = await consumer.end_offsets(dlq), await consumer.beginning_offsets(dlq)
            report.dead_letters = sum(ends[tp] - starts[tp] for tp in dlq)
        check = report.workers
        group_text = f"group {settings.worker_app_id}: {members} member(s) ({state})"
        check.detail = f"{group_text}; lag {lag} inbound message(s) not yet folded"
        if members:
            check.up, check.state = True, "up"
        else:
            check.detail = f"{group_text}: no worker is running; {lag} message(s) wait"

    try:
        await _bounded(report.workers, f"group {settings.worker_app_id}", group_and_lag)
    finally:
        await _close(admin.close(), consumer.stop())


async def _close(*closing: Awaitable[Any]) -> None:
    for awaitable in closing:
        # A client that never started, or a broker gone meanwhile.
        with contextlib.suppress(Exception):
            await awaitable


def _get_json(url: str) -> tuple[int, dict[str, Any]]:
    try:
        with urllib.request.urlopen(url, timeout=CHECK_TIMEOUT_SECONDS) as response:
            return int(response.status), json.loads(response.read() or b"{}")
    except urllib.error.HTTPError as exc:
        try:
            body = json.loads(exc.read() or b"{}")
        except ValueError:
            body = {}
        return exc.code, body if isinstance(body, dict) else {}


async def check_api(settings: Settings, report: Report) -> None:
    base = settings.api_url.rstrip("/")
    check = report.api

    async def probe() -> None:
        health_status, health = await asyncio.to_thread(_get_json, f"{base}/healthz")
        ready_status, ready = await asyncio.to_thread(_get_json, f"{base}/readyz")
        version = health.get("version", "?") if health_status == 200 else "?"
        if ready_status == 200:
            check.up, check.state = True, "ready"
            kafka = ready.get("kafka", "?")
            check.detail = f"{base}: atp-service {version}; Kafka {kafka}"
        else:
            check.state = "UNREADY"
            why = ready.get("detail") or f"/readyz answered {ready_status}"
            check.detail = f"{base}: atp-service {version}; {why}"

    await _bounded(check, base, probe)


async def gather_status(settings: Settings) -> Report:
    report = Report()
    await asyncio.gather(
        check_redis(settings, report), check_kafka(settings, report), check_api(settings, report)
    )
    return report


def run_status(settings: Settings, out: TextIO | None = None) -> int:
    # The clients' own complaints about a broker that is down: the report says it once.
    kafka_log = logging.getLogger("aiokafka")
    level = kafka_log.level
    kafka_log.setLevel(logging.CRITICAL)
    try:
        report = asyncio.run(gather_status(settings))
    finally:
        kafka_log.setLevel(level)
    (out or sys.stdout).write(report.render() + "\n")
    return 0 if report.all_up else 1
