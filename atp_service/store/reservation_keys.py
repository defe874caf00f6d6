"""Redis key names of reservations: the record, its expiry index, its outbox, idempotency.

A reservation lives in the hash-tag group of its id (``crc32(id) % groups``): its record,
the expiry index of that group and the outbox its events go to share one slot. The lines
of a reservation touch item-sites of other groups; on Redis Cluster that is the
cross-slot problem ``docs/reservations.md`` solves. Idempotency records live in the group
of their own key, since they must be found before the reservation id is known.
"""

from __future__ import annotations

import hashlib
import zlib
from dataclasses import dataclass

from atp_service.store.keys import PREFIX, KeySpace, tag


def reservation_group(reservation_id: str, groups: int) -> int:
    return zlib.crc32(reservation_id.encode()) % groups


@dataclass(frozen=True, slots=True)
class ReservationKeys:
    record: str  # hash: st ch or md cr ex up co ln (see store/reservations.py)
    expiry: str  # zset of the group: reservation id -> expires_at (epoch ms), held only
    outbox: str  # outbox stream of the group: reservation.* events

    def as_list(self) -> list[str]:
        return [self.record, self.expiry, self.outbox]


def reservation_keys(keys: KeySpace, reservation_id: str) -> ReservationKeys:
    group = reservation_group(reservation_id, keys.groups)
    t = tag(group)
    return ReservationKeys(
        record=f"{PREFIX}:{t}:r:{reservation_id}",
        expiry=expiry_index(group),
        outbox=keys.outboxes[group],
    )


def expiry_index(group: int) -> str:
    return f"{PREFIX}:{tag(group)}:rx"


def record_pattern() -> str:
    """SCAN pattern matching every reservation record."""
    return f"{PREFIX}:{{g*}}:r:*"


def idempotency_key(keys: KeySpace, principal: str, idempotency_key: str) -> str:
    """Per API key name and ``Idempotency-Key``; hashed so any header text makes a safe key."""
    digest = hashlib.sha256(f"{principal}\x00{idempotency_key}".encode()).hexdigest()
    group = int(digest[:8], 16) % keys.groups
    return f"{PREFIX}:{tag(group)}:idem:{digest}"
