"""The audit: does every item-site's ``reserved`` equal its active reservation lines?

For every item-site, ``reserved`` (position field ``rs``) must equal the sum, over the
held and confirmed reservations, of each line's reserved units not yet allocated by the
WMS. `atp audit` prints each difference, sets ``atp_reservation_audit_mismatches`` and
exits 1 when there is one (0 when all agree, 2 when Redis cannot be reached). While the
workers are reading again from Kafka what Redis lost (store/applied.py), it says so: the
positions are not whole yet.

Every worker also runs ``audit_periodically``: one of them (whichever takes the interval's
lock) audits every ``ATP_WORKER_AUDIT_INTERVAL_SECONDS`` and stores the result in Redis;
every worker shows the last stored result on its /metrics (mismatches, when, reservations
by status), so the gauge is scraped where Prometheus looks.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sys
import time
from collections.abc import Mapping
from typing import Any

from atp_service import metrics
from atp_service.config import Settings
from atp_service.domain.reservations import ReservationStatus, iso_from_ms
from atp_service.store import KeySpace, RedisStore, connect
from atp_service.store.applied import AppliedStore
from atp_service.store.ops import OpsStore
from atp_service.store.redis_store import UNAVAILABLE_ERRORS
from atp_service.store.reservations import AuditDifference, ReservationStore

log = logging.getLogger(__name__)

#: Differences kept in the stored result (the count is always whole).
STORED_DIFFERENCES = 20
#: How often a worker looks for a newer stored result, at most.
LOOK_EVERY_SECONDS = 5.0


async def audit_store(reservations: ReservationStore) -> list[AuditDifference]:
    """The differences found (also published as the mismatch gauge)."""
    differences = await reservations.audit()
    metrics.RESERVATION_AUDIT_MISMATCHES.set(len(differences))
    return differences


async def audit_once(reservations: ReservationStore) -> dict[str, Any]:
    """Audit now; the result as stored (``OpsStore.save_audit``)."""
    statuses: dict[str, int] = {}
    started = time.monotonic()
    differences = await reservations.audit(statuses)
    at_ms = int(time.time() * 1000)
    return {
        "at": iso_from_ms(at_ms),
        "at_ms": at_ms,
        "seconds": round(time.monotonic() - started, 3),
        "mismatches": len(differences),
        "differences": [
            {"sku": d.sku, "site": d.site, "reserved": d.reserved, "expected": d.expected}
            for d in differences[:STORED_DIFFERENCES]
        ],
        "by_status": {s.value: statuses.get(s.value, 0) for s in ReservationStatus},
    }


def show_audit(result: Mapping[str, Any]) -> None:
    """Set the audit's gauges from a stored result."""
    metrics.RESERVATION_AUDIT_MISMATCHES.set(int(result.get("mismatches", 0)))
    metrics.RESERVATION_AUDIT_TIME.set(int(result.get("at_ms", 0)) / 1000)
    for status, n in dict(result.get("by_status") or {}).items():
        metrics.RESERVATIONS_BY_STATUS.labels(str(status)).set(int(n))


async def audit_periodically(
    reservations: ReservationStore,
    ops: OpsStore,
    *,
    every_seconds: float,
    holder: str,
    stop: asyncio.Event,
) -> None:
    """Until ``stop``: audit when this process takes the interval's lock, and show the last
    stored result; survives Redis outages."""
    every_ms = max(1, int(every_seconds * 1000))
    failing = False
    while not stop.is_set():
        try:
            if await ops.claim_audit(holder, every_ms):
                result = await audit_once(reservations)
                await ops.save_audit(result)
                if result["mismatches"]:
                    log.warning("audit: %d item-site(s) disagree", result["mismatches"])
            stored = await ops.last_audit()
            if stored is not None:
                show_audit(stored)
            failing = False
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            metrics.REDIS_ERRORS.labels("audit").inc()
            if not failing:
                log.warning("audit: not run (%r); retrying", exc)
            failing = True
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), min(every_seconds, LOOK_EVERY_SECONDS))


async def _run(settings: Settings) -> int:
    client = connect(
        settings.redis_url,
        timeout=max(settings.redis_timeout_seconds, 5.0),  # scans are long calls
        max_connections=4,
        cluster=settings.redis_cluster,
    )
    try:
        store = RedisStore(
            client,
            KeySpace(settings.key_groups),
            dedup_window_seconds=settings.dedup_window_seconds,
            dedup_chunks=settings.dedup_chunks,
        )
        reservations = ReservationStore(
            store, idempotency_ttl_seconds=settings.idempotency_ttl_seconds
        )
        try:
            differences = await audit_store(reservations)
            catching_up = (await AppliedStore(store).state()).catching_up
        except UNAVAILABLE_ERRORS as exc:
            print(f"atp audit: Redis at {settings.redis_url} unreachable: {exc}", file=sys.stderr)
            return 2
    finally:
        await client.aclose()
    if catching_up:
        print(
            f"atp audit: the store is catching up ({len(catching_up)} inbound partition(s) "
            "being read again from Kafka after Redis came back holding less): positions are "
            "not whole yet",
            file=sys.stderr,
        )
    for d in differences:
        print(
            f"MISMATCH {d.sku}@{d.site}: reserved {d.reserved}, active reservation lines "
            f"{d.expected} (difference {d.reserved - d.expected:+d})"
        )
    if differences:
        print(f"atp audit: {len(differences)} item-site(s) disagree")
        return 1
    print("atp audit: reserved matches the active reservations on every item-site")
    return 0


def run_audit(settings: Settings) -> int:
    """Exit code of `atp audit`: 0 all agree, 1 a mismatch, 2 Redis unreachable."""
    return asyncio.run(_run(settings))
