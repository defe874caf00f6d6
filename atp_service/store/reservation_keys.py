"""Redis key names of reservations: the record, its holds, its indexes, its idempotency record.

A reservation lives in the hash-tag group of its id (``crc32(id) % groups``): its record,
the expiry and recovery indexes of that group and the outbox its events go to share one
slot. Its units are held, per group of its lines' item-sites, by a *hold* in that group
(``hold``), beside the positions it holds units of: a script of one slot can hold, release
and consume them (docs/reservations.md). Idempotency records live in the group of their
own key, since they must be found before the reservation id is known; on a Redis Cluster
a new reservation's id is chosen in that same group (``id_in_group``), so the record and
its idempotency record share a slot.
"""

from __future__ import annotations

import hashlib
import os
import zlib
from dataclasses import dataclass

from atp_service.store.keys import PREFIX, KeySpace, tag


def reservation_group(reservation_id: str, groups: int) -> int:
    return zlib.crc32(reservation_id.encode()) % groups


def new_reservation_id() -> str:
    """``res_`` and 128 random bits in hex (the form of a UUID4's hex, without its fixed bits)."""
    return "res_" + os.urandom(16).hex()


def id_in_group(group: int, groups: int) -> str:
    """A new reservation id whose group is ``group``: a random prefix, and the last 32 bits
    counted up until the id falls there (``groups`` tries on average; the prefix's CRC is
    computed once)."""
    prefix = ("res_" + os.urandom(12).hex()).encode()
    base = zlib.crc32(prefix)
    for n in range(1 << 32):
        suffix = b"%08x" % n
        if zlib.crc32(suffix, base) % groups == group:
            return (prefix + suffix).decode()
    raise AssertionError("unreachable: a crc32 falls in every group")  # pragma: no cover


@dataclass(frozen=True, slots=True)
class ReservationKeys:
    record: str  # hash: st ch rf md cr ex up co ln ... (see store/reservations.py)
    expiry: str  # zset of the group: reservation id -> expires_at (epoch ms), held only
    outbox: str  # outbox stream of the group: reservation.* events
    recovery: str  # zset of the group: reservation id -> deadline of a step in progress

    def as_list(self) -> list[str]:
        return [self.record, self.expiry, self.outbox]


def reservation_keys(keys: KeySpace, reservation_id: str) -> ReservationKeys:
    group = reservation_group(reservation_id, keys.groups)
    t = tag(group)
    return ReservationKeys(
        record=f"{PREFIX}:{t}:r:{reservation_id}",
        expiry=expiry_index(group),
        outbox=keys.outboxes[group],
        recovery=recovery_index(group),
    )


def hold(group: int, reservation_id: str) -> str:
    """The reservation's hold of its lines in ``group`` (hash: st, ln, at; _holds.lua)."""
    return f"{PREFIX}:{tag(group)}:h:{reservation_id}"


def consumed_marks(group: int) -> str:
    """Hash of the group: reservation id -> the allocation that left its hold here fully
    allocated, for the sweeper to tell the record (on a Cluster: another slot)."""
    return f"{PREFIX}:{tag(group)}:hc"


def expiry_index(group: int) -> str:
    return f"{PREFIX}:{tag(group)}:rx"


def recovery_index(group: int) -> str:
    """Zset of the group: reservation id -> when a step in progress (placing across slots,
    ending) is overdue, and the sweeper ends it."""
    return f"{PREFIX}:{tag(group)}:rp"


def record_pattern() -> str:
    """SCAN pattern matching every reservation record."""
    return f"{PREFIX}:{{g*}}:r:*"


def hold_pattern() -> str:
    """SCAN pattern matching every hold."""
    return f"{PREFIX}:{{g*}}:h:*"


def idempotency_key(keys: KeySpace, principal: str, idempotency_key: str) -> str:
    """Per API key name and ``Idempotency-Key``; hashed so any header text makes a safe key."""
    return idempotency_key_and_group(keys, principal, idempotency_key)[0]


def idempotency_key_and_group(
    keys: KeySpace, principal: str, idempotency_key: str
) -> tuple[str, int]:
    digest = hashlib.sha256(f"{principal}\x00{idempotency_key}".encode()).hexdigest()
    group = int(digest[:8], 16) % keys.groups
    return f"{PREFIX}:{tag(group)}:idem:{digest}", group
