"""`atp audit`: does every item-site's ``reserved`` equal its active reservation lines?

For every item-site, ``reserved`` (position field ``rs``) must equal the sum, over the
held and confirmed reservations, of each line's reserved units not yet allocated by the
WMS. The audit prints each difference, sets ``atp_reservation_audit_mismatches`` and
exits 1 when there is one (0 when all agree, 2 when Redis cannot be reached).
"""

from __future__ import annotations

import asyncio
import sys

from atp_service import metrics
from atp_service.config import Settings
from atp_service.store import KeySpace, RedisStore, connect
from atp_service.store.redis_store import UNAVAILABLE_ERRORS
from atp_service.store.reservations import AuditDifference, ReservationStore


async def audit_store(reservations: ReservationStore) -> list[AuditDifference]:
    """The differences found (also published as the mismatch gauge)."""
    differences = await reservations.audit()
    metrics.RESERVATION_AUDIT_MISMATCHES.set(len(differences))
    return differences


async def _run(settings: Settings) -> int:
    client = connect(
        settings.redis_url,
        timeout=max(settings.redis_timeout_seconds, 5.0),  # scans are long calls
        max_connections=4,
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
        except UNAVAILABLE_ERRORS as exc:
            print(f"atp audit: Redis at {settings.redis_url} unreachable: {exc}", file=sys.stderr)
            return 2
    finally:
        await client.aclose()
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
