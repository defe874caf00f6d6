"""The reservation vocabulary: request fingerprints, grants, transitions, times, keys."""

from __future__ import annotations

import hashlib
import json
from datetime import UTC, datetime

import pytest

from atp_service.domain.reservations import (
    TRANSITIONS,
    LineRequest,
    Reservation,
    ReservationLine,
    ReservationMode,
    ReservationRequest,
    ReservationStatus,
    Transition,
    canonical_json,
    grants,
    iso_from_ms,
)
from atp_service.store.keys import KeySpace, tag
from atp_service.store.reservation_keys import (
    idempotency_key,
    reservation_group,
    reservation_keys,
)


def req(*lines: tuple[str, str, int], **kw: object) -> ReservationRequest:
    return ReservationRequest(
        channel="web",
        lines=tuple(LineRequest(*ln) for ln in lines),
        **kw,  # type: ignore[arg-type]
    )


def test_defaults_spelled_out_give_the_same_fingerprint() -> None:
    implicit = req(("A", "S", 1))
    explicit = req(
        ("A", "S", 1), order_ref=None, ttl_seconds=900, mode=ReservationMode.ALL_OR_NOTHING
    )
    assert implicit.fingerprint() == explicit.fingerprint()


@pytest.mark.parametrize(
    "other",
    [
        req(("A", "S", 2)),
        req(("A", "S", 1), ttl_seconds=60),
        req(("A", "S", 1), mode=ReservationMode.PARTIAL),
        req(("A", "S", 1), order_ref="ord-2"),
        req(("A", "S", 1), ("B", "S", 1)),
    ],
)
def test_any_difference_changes_the_fingerprint(other: ReservationRequest) -> None:
    assert other.fingerprint() != req(("A", "S", 1)).fingerprint()


def test_a_second_line_for_the_same_item_site_is_found() -> None:
    assert req(("A", "S", 1), ("B", "S", 1), ("A", "S", 2)).duplicate_line_index() == 2
    assert req(("A", "S", 1), ("A", "T", 1)).duplicate_line_index() is None


def test_all_or_nothing_grants_every_line_or_none() -> None:
    assert grants([2, 3], [5, 3], ReservationMode.ALL_OR_NOTHING) == [2, 3]
    assert grants([2, 3], [5, 2], ReservationMode.ALL_OR_NOTHING) is None


def test_partial_grants_what_each_line_can_have() -> None:
    assert grants([2, 3, 4], [5, 2, 0], ReservationMode.PARTIAL) == [2, 2, 0]


def test_only_held_and_confirmed_reservations_hold_units() -> None:
    assert {s for s in ReservationStatus if s.active} == {
        ReservationStatus.HELD,
        ReservationStatus.CONFIRMED,
    }


def test_repeats_are_idempotent_and_ended_reservations_stay_ended() -> None:
    assert TRANSITIONS[Transition.CONFIRM][ReservationStatus.CONFIRMED] is None
    assert TRANSITIONS[Transition.RELEASE][ReservationStatus.RELEASED] is None
    for ended in (ReservationStatus.EXPIRED, ReservationStatus.CONSUMED):
        assert all(ended not in allowed for allowed in TRANSITIONS.values())
    assert ReservationStatus.RELEASED not in TRANSITIONS[Transition.CONFIRM]


def test_a_reservation_holds_what_its_lines_have_not_had_allocated() -> None:
    lines = (ReservationLine("A", "S", 5, 4, 1), ReservationLine("B", "S", 2, 2, 0))
    held = Reservation("r", ReservationStatus.CONFIRMED, "web", None,
                       ReservationMode.PARTIAL, lines, 0, 0, None)  # fmt: skip
    assert held.holding("A", "S") == 3
    assert held.holding("C", "S") == 0
    released = Reservation("r", ReservationStatus.RELEASED, "web", None,
                           ReservationMode.PARTIAL, lines, 0, 0, None)  # fmt: skip
    assert released.holding("A", "S") == 0


@pytest.mark.parametrize("ms", [0, 999, 1_795_400_000_123, 951_782_400_000])
def test_times_read_like_rfc3339_utc_with_milliseconds(ms: int) -> None:
    text = iso_from_ms(ms)
    assert text.endswith("Z") and len(text) == 24
    parsed = datetime.fromisoformat(text.replace("Z", "+00:00"))
    assert parsed == datetime.fromtimestamp(ms / 1000, tz=UTC)


def test_a_reservation_its_expiry_index_and_its_outbox_share_a_hash_tag() -> None:
    keys = KeySpace(16)
    res = reservation_keys(keys, "res_abc")
    t = tag(reservation_group("res_abc", 16))
    assert t in res.record and t in res.expiry and t in res.outbox


def test_idempotency_keys_are_per_api_key_and_safe_whatever_the_header() -> None:
    keys = KeySpace(16)
    a = idempotency_key(keys, "oms-eu", "order 1 / {weird}")
    b = idempotency_key(keys, "oms-us", "order 1 / {weird}")
    assert a != b
    assert "weird" not in a and " " not in a


@pytest.mark.parametrize(
    "order_ref",
    [None, "ORD-1", "".join(chr(c) for c in range(128)), "commande-été-№5", "emoji-\U0001f600"],
)
def test_the_fingerprint_text_is_the_one_stored_records_were_made_from(
    order_ref: str | None,
) -> None:
    """Idempotency records keep the fingerprint: its canonical text must never change."""
    request = req(("SKU-1", "DC-EAST", 2), ("SKU-2", "DC-WEST", 1), order_ref=order_ref)
    canonical = {
        "channel": "web",
        "order_ref": order_ref,
        "ttl_seconds": 900,
        "mode": "all_or_nothing",
        "lines": [
            {"sku": "SKU-1", "site": "DC-EAST", "qty": 2},
            {"sku": "SKU-2", "site": "DC-WEST", "qty": 1},
        ],
    }
    text = json.dumps(canonical, sort_keys=True, separators=(",", ":"))
    assert canonical_json(canonical) == text.encode()
    assert request.fingerprint() == hashlib.sha256(text.encode()).hexdigest()
