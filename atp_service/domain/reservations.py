"""Reservations: holds an OMS places on ATP, their lifecycle, and what a request asks for.

The arithmetic that decides a reservation runs inside one Redis script
(``store/lua/reserve.lua``); the functions here state the same rules in Python so
they can be unit-tested and so the stateful test has a model to compare against.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from functools import lru_cache
from typing import Final

import orjson

DEFAULT_TTL_SECONDS: Final = 900
MAX_TTL_SECONDS: Final = 86_400
MAX_LINES: Final = 100
MAX_IDEMPOTENCY_KEY_LENGTH: Final = 255


def canonical_json(value: object) -> bytes:
    """``json.dumps(value, sort_keys=True, separators=(",", ":"))``, encoded: the text the
    fingerprints of stored idempotency records were made from, so it must not change.

    orjson writes the same text for printable ASCII (several times faster); it writes
    UTF-8 and a raw DEL where ``json`` writes ``\\u`` escapes, so those go to ``json``.
    """
    text = orjson.dumps(value, option=orjson.OPT_SORT_KEYS)
    if text.isascii() and b"\x7f" not in text:
        return text
    return json.dumps(value, sort_keys=True, separators=(",", ":")).encode()


class ReservationStatus(StrEnum):
    HELD = "held"
    CONFIRMED = "confirmed"
    RELEASED = "released"
    EXPIRED = "expired"
    CONSUMED = "consumed"

    @property
    def active(self) -> bool:
        """An active reservation's unallocated units count in the item-site's ``reserved``."""
        return self in (ReservationStatus.HELD, ReservationStatus.CONFIRMED)


class ReservationMode(StrEnum):
    ALL_OR_NOTHING = "all_or_nothing"
    PARTIAL = "partial"


class Transition(StrEnum):
    CONFIRM = "confirm"
    RELEASE = "release"
    EXPIRE = "expire"


# What each requested transition does from each status: the new status, ``None`` when
# the call is an idempotent repeat, or absent when it makes no sense (invalid_transition).
TRANSITIONS: Final[dict[Transition, dict[ReservationStatus, ReservationStatus | None]]] = {
    Transition.CONFIRM: {
        ReservationStatus.HELD: ReservationStatus.CONFIRMED,
        ReservationStatus.CONFIRMED: None,
    },
    Transition.RELEASE: {
        ReservationStatus.HELD: ReservationStatus.RELEASED,
        ReservationStatus.CONFIRMED: ReservationStatus.RELEASED,
        ReservationStatus.RELEASED: None,
    },
    Transition.EXPIRE: {ReservationStatus.HELD: ReservationStatus.EXPIRED},
}


@dataclass(frozen=True, slots=True)
class LineRequest:
    sku: str
    site: str
    qty: int


@dataclass(frozen=True, slots=True)
class ReservationRequest:
    channel: str
    lines: tuple[LineRequest, ...]
    order_ref: str | None = None
    ttl_seconds: int = DEFAULT_TTL_SECONDS
    mode: ReservationMode = ReservationMode.ALL_OR_NOTHING

    def fingerprint(self) -> str:
        """SHA-256 of the canonical request (defaults filled in, keys sorted).

        Two requests with the same fingerprint ask for the same thing, whatever the
        spelling of their JSON; an ``Idempotency-Key`` replayed with another fingerprint
        is an ``idempotency_conflict``.
        """
        canonical = {
            "channel": self.channel,
            "order_ref": self.order_ref,
            "ttl_seconds": self.ttl_seconds,
            "mode": self.mode.value,
            "lines": [{"sku": ln.sku, "site": ln.site, "qty": ln.qty} for ln in self.lines],
        }
        return hashlib.sha256(canonical_json(canonical)).hexdigest()

    def duplicate_line_index(self) -> int | None:
        """Index of the first line naming an item-site an earlier line already named."""
        seen: set[tuple[str, str]] = set()
        for i, line in enumerate(self.lines):
            if (line.sku, line.site) in seen:
                return i
            seen.add((line.sku, line.site))
        return None


@dataclass(frozen=True, slots=True)
class ReservationLine:
    sku: str
    site: str
    qty: int  # asked
    reserved: int  # granted when the reservation was made
    allocated: int = 0  # of ``reserved``, what the WMS has since allocated (consumption)

    @property
    def unallocated(self) -> int:
        return self.reserved - self.allocated


@dataclass(frozen=True, slots=True)
class Reservation:
    reservation_id: str
    status: ReservationStatus
    channel: str
    order_ref: str | None
    mode: ReservationMode
    lines: tuple[ReservationLine, ...]
    created_ms: int
    updated_ms: int
    expires_ms: int | None  # None once confirmed or ended
    correlation_id: str | None = None
    #: The name of the API key that made it (None: made before owners were recorded).
    owner: str | None = None

    def holding(self, sku: str, site: str) -> int:
        """Units this reservation counts in the item-site's ``reserved`` right now."""
        if not self.status.active:
            return 0
        return sum(ln.unallocated for ln in self.lines if ln.sku == sku and ln.site == site)


def may_act_on(caller: str | None, owner: str | None) -> bool:
    """Whether ``caller`` may see and act on a reservation made by ``owner``.

    ``caller`` is the name of the API key asking, or None for one that acts on any
    reservation (a key with ``admin``; the expiry sweeper; operators' tools). A reservation
    belongs to the key that made it: any other key is told it does not exist. One made
    before owners were recorded (``owner`` None) is any writer's, as every one was then.
    ``owned_by`` in ``store/lua/_lib.lua`` is the same rule, for the scripts.
    """
    return caller is None or owner is None or caller == owner


@dataclass(frozen=True, slots=True)
class ShortLine:
    """A line of a refused all_or_nothing reservation: what was asked and what was there."""

    sku: str
    site: str
    qty: int
    atp: int


class ReservationError(Exception):
    """Base of the reservation outcomes the API turns into problem responses."""


class ReservationNotFound(ReservationError):
    def __init__(self, reservation_id: str) -> None:
        super().__init__(f"no reservation {reservation_id!r}")
        self.reservation_id = reservation_id


class InsufficientStock(ReservationError):
    def __init__(self, lines: Sequence[ShortLine]) -> None:
        super().__init__("not every line can be reserved")
        self.lines = tuple(lines)


class InvalidTransition(ReservationError):
    def __init__(self, reservation: Reservation, transition: Transition) -> None:
        super().__init__(
            f"cannot {transition.value} reservation {reservation.reservation_id!r}: "
            f"it is {reservation.status.value}"
        )
        self.reservation = reservation
        self.transition = transition


class IdempotencyConflict(ReservationError):
    def __init__(self, idempotency_key: str) -> None:
        super().__init__(
            f"Idempotency-Key {idempotency_key!r} was used before with a different request body"
        )
        self.idempotency_key = idempotency_key


def grants(
    asked: Sequence[int], available: Sequence[int], mode: ReservationMode
) -> list[int] | None:
    """Units each line gets, or ``None`` when an all_or_nothing request cannot be met."""
    granted = [min(q, max(0, a)) for q, a in zip(asked, available, strict=True)]
    if mode is ReservationMode.ALL_OR_NOTHING and granted != list(asked):
        return None
    return granted


@lru_cache(maxsize=4096)
def _second_text(seconds: int) -> str:
    return datetime.fromtimestamp(seconds, tz=UTC).strftime("%Y-%m-%dT%H:%M:%S.")


def iso_from_ms(ms: int) -> str:
    """RFC 3339 UTC with milliseconds, the same text as ``iso8601`` in ``_lib.lua``."""
    return f"{_second_text(ms // 1000)}{ms % 1000:03d}Z"
