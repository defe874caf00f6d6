"""Reconciliation requests: ``inventory.snapshot_requested`` asks a source (the WMS, the ERP)
to send snapshots, whose differences with the fold the service reports as drift.

They go to ``atp.events.v1``, the topic integrators follow (a source's connector follows
it for this type), keyed by the source, so one source's requests keep their order. `atp
reconcile` publishes one (``run_reconcile``); the worker publishes one per source every
``ATP_RECONCILE_EVERY_SECONDS`` (``ReconcileSchedule``), one worker per period: the first
to set ``keys.RECONCILE_DUE`` (expiring after the period) does it.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sys
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime
from typing import Any, TextIO

import orjson

from atp_service.config import EVENTS_TOPIC, Settings
from atp_service.domain import Source, is_valid_site, is_valid_sku
from atp_service.store import keys as k
from atp_service.store.redis_store import RedisClient

log = logging.getLogger(__name__)

SNAPSHOT_REQUESTED = "inventory.snapshot_requested"
#: Skus one request may name (a larger set: several requests, or none to mean every sku).
MAX_SKUS = 1000


class BadRequest(ValueError):
    """A request that names something no source could answer (the CLI says which)."""


def snapshot_request(
    source: str,
    site: str | None = None,
    skus: Sequence[str] | None = None,
    *,
    requested_by: str,
    correlation_id: str | None = None,
    now: datetime | None = None,
) -> tuple[str, str]:
    """The (key, JSON value) of an ``inventory.snapshot_requested``: ``site`` None asks for
    every site of the source, ``skus`` None (or empty) for every sku there."""
    if source not in {s.value for s in Source}:
        raise BadRequest(f"unknown source {source!r}: one of {', '.join(s.value for s in Source)}")
    if site is not None and not is_valid_site(site):
        raise BadRequest(f"{site!r} is not a site code")
    wanted = list(dict.fromkeys(skus or ()))
    bad = [sku for sku in wanted if not is_valid_sku(sku)]
    if bad:
        raise BadRequest(f"{bad[0]!r} is not a sku")
    if len(wanted) > MAX_SKUS:
        raise BadRequest(f"{len(wanted)} skus: at most {MAX_SKUS} per request")
    at = (now or datetime.now(UTC)).astimezone(UTC)
    body: dict[str, Any] = {
        "schema": "atp.event.v1",
        "type": SNAPSHOT_REQUESTED,
        "event_id": f"snapreq-{os.urandom(12).hex()}",
        "occurred_at": at.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
        "correlation_id": correlation_id,
        "source": source,
        "site": site,
        "requested_by": requested_by,
    }
    if wanted:
        body["skus"] = wanted
    return source, orjson.dumps(body).decode()


Publish = Callable[[str, Sequence[tuple[str, str]]], Awaitable[None]]


class ReconcileSchedule:
    """The worker's periodic requests: every ``every_seconds``, one worker asks each source
    (``sources``) for snapshots of every site."""

    def __init__(
        self,
        client: RedisClient,
        publish: Publish,
        *,
        every_seconds: float,
        sources: Sequence[str],
        holder: str,
    ) -> None:
        self.redis = client
        self.publish = publish
        self.every_ms = max(1, int(every_seconds * 1000))
        self.sources = sorted(set(sources))
        self.holder = holder
        self.requests_sent = 0

    async def tick(self) -> bool:
        """Ask the sources if this period's requests are not made yet; True when this
        process made them. Raises on Redis or Kafka errors (a failed publish frees the
        period for the next tick, of any worker)."""
        if not await self.redis.set(k.RECONCILE_DUE, self.holder, nx=True, px=self.every_ms):
            return False
        messages = [snapshot_request(source, requested_by="schedule") for source in self.sources]
        try:
            await self.publish(EVENTS_TOPIC, messages)
        except BaseException:
            await self.redis.delete(k.RECONCILE_DUE)
            raise
        self.requests_sent += len(messages)
        log.info(
            "asked %s for snapshots (every %.0fs)", ", ".join(self.sources), self.every_ms / 1000
        )
        return True


def run_reconcile(
    settings: Settings,
    source: str,
    site: str | None,
    skus: Sequence[str],
    *,
    out: TextIO | None = None,
) -> int:
    """`atp reconcile`: publish one request and say what was asked (exit code 0)."""
    out = out or sys.stdout
    key, value = snapshot_request(source, site, skus, requested_by="cli")

    async def send() -> None:
        from aiokafka import AIOKafkaProducer

        producer = AIOKafkaProducer(
            bootstrap_servers=settings.bootstrap_servers, acks="all", request_timeout_ms=10_000
        )
        try:
            await producer.start()
            await producer.send_and_wait(EVENTS_TOPIC, value.encode(), key=key.encode())
        finally:
            await producer.stop()

    asyncio.run(send())
    body = orjson.loads(value)
    where = f"site {site}" if site else "every site"
    what = f"{len(body['skus'])} skus" if "skus" in body else "every sku"
    print(
        f"asked {source} for snapshots of {what} at {where}: {SNAPSHOT_REQUESTED} "
        f"{body['event_id']} on {EVENTS_TOPIC}",
        file=out,
    )
    return 0
