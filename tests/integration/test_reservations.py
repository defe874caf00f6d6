"""Reservations on a real redis-server: placing, transitions, expiry, consumption, audit."""

from __future__ import annotations

import json
import uuid
from typing import Any

import pytest
from prometheus_client import REGISTRY

from atp_service.audit import audit_store
from atp_service.domain import Bucket, ChannelPolicy, InventoryDelta, ItemSite, Source
from atp_service.domain.reservations import (
    IdempotencyConflict,
    InsufficientStock,
    InvalidTransition,
    LineRequest,
    ReservationMode,
    ReservationNotFound,
    ReservationRequest,
    ReservationStatus,
    ShortLine,
)
from atp_service.store import FoldOutcome, PolicyBook, RedisStore
from atp_service.store.redis_store import outbox_records
from atp_service.store.reservation_keys import reservation_keys
from atp_service.store.reservations import EXPIRE_CHUNK, Placed, ReservationStore
from tests.random_refs import random_event_id, random_site, random_sku

pytestmark = [pytest.mark.integration, pytest.mark.both_redis_kinds]

NOW = "2026-11-23T05:00:00Z"
OPEN = PolicyBook.of({})


@pytest.fixture
def reservations(store: RedisStore) -> ReservationStore:
    return ReservationStore(store, idempotency_ttl_seconds=86_400)


async def receive(
    store: RedisStore, sku: str, site: str, qty: int, book: PolicyBook = OPEN
) -> None:
    await store.fold(
        InventoryDelta(random_event_id(), Source.WMS, sku, site, Bucket.ON_HAND, qty, NOW), book
    )


async def allocate(
    store: RedisStore, sku: str, site: str, qty: int, rid: str | None, corr: str | None = None
) -> FoldOutcome:
    """The WMS allocates; on a Cluster the record hears of a fully allocated hold at the
    sweeper's next round (the hold is in another slot), which this runs at once."""
    [outcome] = await store.fold_many(
        [
            InventoryDelta(
                random_event_id(),
                Source.WMS,
                sku,
                site,
                Bucket.ALLOCATED,
                qty,
                NOW,
                correlation_id=corr,
                reservation_id=rid,
            )
        ],
        OPEN,
    )
    assert outcome.status == "folded"
    await ReservationStore(store, idempotency_ttl_seconds=86_400).apply_consumed()
    return outcome


async def reserved(store: RedisStore, sku: str, site: str) -> int:
    [pos] = await store.read_positions([ItemSite(sku, site)])
    return pos.reserved


async def allocated(store: RedisStore, sku: str, site: str) -> int:
    [pos] = await store.read_positions([ItemSite(sku, site)])
    return pos.allocated


def request(
    *lines: tuple[str, str, int],
    mode: ReservationMode = ReservationMode.ALL_OR_NOTHING,
    channel: str = "web",
    ttl: int = 900,
) -> ReservationRequest:
    return ReservationRequest(
        channel=channel,
        lines=tuple(LineRequest(*ln) for ln in lines),
        order_ref="ord-1",
        ttl_seconds=ttl,
        mode=mode,
    )


async def place(
    reservations: ReservationStore,
    req: ReservationRequest,
    *,
    key: str | None = None,
    principal: str = "oms",
    corr: str = "corr-1",
    book: PolicyBook = OPEN,
) -> Placed:
    key = key or uuid.uuid4().hex
    return await reservations.reserve(
        req,
        reservation_id=reservations.new_reservation_id(principal, key),
        principal=principal,
        idempotency_key_value=key,
        correlation_id=corr,
        book=book,
    )


async def reservation_events(store: RedisStore, rid: str) -> list[dict[str, Any]]:
    stream = reservation_keys(store.keys, rid).outbox
    entries = await store.redis.xrange(stream)
    return [json.loads(v) for _, f in entries for k, v in outbox_records(f) if k == rid]


async def availability_events(store: RedisStore, sku: str, site: str) -> list[dict[str, Any]]:
    stream = store.keys.item_site(sku, site).outbox
    entries = await store.redis.xrange(stream)
    return [json.loads(v) for _, f in entries for k, v in outbox_records(f) if k == f"{sku}@{site}"]


async def force_due(store: RedisStore, rid: str) -> None:
    """Make the reservation's TTL have passed (as if its time had come)."""
    keys = reservation_keys(store.keys, rid)
    await store.redis.hset(keys.record, "ex", "1")
    await store.redis.zadd(keys.expiry, {rid: 1})


# -- placing ---------------------------------------------------------------------------------


async def test_all_or_nothing_holds_every_line_and_bumps_each_version(
    store: RedisStore, reservations: ReservationStore
) -> None:
    site, a, b = random_site(), random_sku(), random_sku()
    await receive(store, a, site, 10)
    await receive(store, b, site, 4)

    placed = await place(reservations, request((a, site, 3), (b, site, 4)))

    assert placed.reservation.status is ReservationStatus.HELD
    assert [ln.reserved for ln in placed.reservation.lines] == [3, 4]
    assert await reserved(store, a, site) == 3
    assert await reserved(store, b, site) == 4
    [pa, pb] = await store.read_positions([ItemSite(a, site), ItemSite(b, site)])
    assert (pa.version, pb.version) == (2, 2)


async def test_all_or_nothing_holds_nothing_when_one_line_is_short(
    store: RedisStore, reservations: ReservationStore
) -> None:
    site, a, b = random_site(), random_sku(), random_sku()
    await receive(store, a, site, 10)
    await receive(store, b, site, 1)

    with pytest.raises(InsufficientStock) as refused:
        await place(reservations, request((a, site, 3), (b, site, 2)))

    assert refused.value.lines == (ShortLine(a, site, 3, 10), ShortLine(b, site, 2, 1))
    assert await reserved(store, a, site) == 0
    assert await reserved(store, b, site) == 0


async def test_partial_gives_each_line_what_is_there(
    store: RedisStore, reservations: ReservationStore
) -> None:
    site, a, b, c = random_site(), random_sku(), random_sku(), random_sku()
    await receive(store, a, site, 10)
    await receive(store, b, site, 1)

    placed = await place(
        reservations,
        request((a, site, 3), (b, site, 2), (c, site, 5), mode=ReservationMode.PARTIAL),
    )

    assert [ln.reserved for ln in placed.reservation.lines] == [3, 1, 0]
    assert [await reserved(store, s, site) for s in (a, b, c)] == [3, 1, 0]


async def test_the_check_uses_the_channels_atp_with_its_policy(
    store: RedisStore, reservations: ReservationStore
) -> None:
    site, other, sku = random_site(), random_site(), random_sku()
    book = PolicyBook.of(
        {
            "web": ChannelPolicy(safety_stock=2, share=50),
            "store": ChannelPolicy(sites=(other,)),
        }
    )
    await receive(store, sku, site, 10, book)

    # web: floor(10 * 50%) - 2 = 3
    with pytest.raises(InsufficientStock) as refused:
        await place(reservations, request((sku, site, 4)), book=book)
    assert refused.value.lines[0].atp == 3
    await place(reservations, request((sku, site, 3)), book=book)
    # the channel "store" does not sell from this site at all
    with pytest.raises(InsufficientStock) as elsewhere:
        await place(reservations, request((sku, site, 1), channel="store"), book=book)
    assert elsewhere.value.lines[0].atp == 0
    # a per-item-site safety stock beats the channel's: 7 sellable left, 6 held back
    await store.set_safety_stock(
        ItemSite(sku, site),
        6,
        book,
        correlation_id="c",
        change_id=random_event_id(),
        changed_by="t",
    )
    with pytest.raises(InsufficientStock):
        await place(reservations, request((sku, site, 1)), book=book)
    assert await reserved(store, sku, site) == 3


async def test_a_reservation_emits_held_and_the_availability_it_moved(
    store: RedisStore, reservations: ReservationStore
) -> None:
    site, sku = random_site(), random_sku()
    book = PolicyBook.of({"web": ChannelPolicy(), "b2b": ChannelPolicy(safety_stock=8)})
    await receive(store, sku, site, 10, book)

    placed = await place(reservations, request((sku, site, 4)), corr="ord-42", book=book)

    rid = placed.reservation.reservation_id
    [held] = await reservation_events(store, rid)
    assert held["type"] == "reservation.held"
    assert held["correlation_id"] == "ord-42"
    assert held["lines"] == [{"sku": sku, "site": site, "qty": 4, "reserved": 4, "allocated": 0}]
    changes = [e for e in await availability_events(store, sku, site) if rid in e["event_id"]]
    assert {(e["channel"], e["previous_atp"], e["atp"]) for e in changes} == {
        ("web", 10, 6),
        ("b2b", 2, 0),
        ("*", 10, 6),  # every channel without a policy of its own
    }
    assert {e["correlation_id"] for e in changes} == {"ord-42"}
    assert {e["version"] for e in changes} == {2}


# -- idempotency -----------------------------------------------------------------------------


async def test_the_same_key_and_body_gives_the_first_answer_and_holds_once(
    store: RedisStore, reservations: ReservationStore
) -> None:
    site, sku = random_site(), random_sku()
    await receive(store, sku, site, 10)
    req = request((sku, site, 3))

    first = await place(reservations, req, key="k")
    again = await place(reservations, req, key="k")

    assert again.replayed and not first.replayed
    assert again.reservation == first.reservation
    assert await reserved(store, sku, site) == 3


async def test_the_same_key_with_another_body_is_a_conflict(
    store: RedisStore, reservations: ReservationStore
) -> None:
    site, sku = random_site(), random_sku()
    await receive(store, sku, site, 10)
    await place(reservations, request((sku, site, 3)), key="k2")

    with pytest.raises(IdempotencyConflict):
        await place(reservations, request((sku, site, 4)), key="k2")
    assert await reserved(store, sku, site) == 3


async def test_idempotency_keys_belong_to_one_api_key(
    store: RedisStore, reservations: ReservationStore
) -> None:
    site, sku = random_site(), random_sku()
    await receive(store, sku, site, 10)

    await place(reservations, request((sku, site, 3)), key="shared", principal="oms-eu")
    await place(reservations, request((sku, site, 3)), key="shared", principal="oms-us")

    assert await reserved(store, sku, site) == 6


async def test_a_refusal_is_replayed_too_even_once_stock_arrived(
    store: RedisStore, reservations: ReservationStore
) -> None:
    site, sku = random_site(), random_sku()
    req = request((sku, site, 3))
    with pytest.raises(InsufficientStock):
        await place(reservations, req, key="short")
    await receive(store, sku, site, 10)

    with pytest.raises(InsufficientStock) as again:
        await place(reservations, req, key="short")

    assert again.value.lines == (ShortLine(sku, site, 3, 0),)
    assert await reserved(store, sku, site) == 0


async def test_the_idempotency_record_lives_at_least_a_day(
    store: RedisStore, reservations: ReservationStore
) -> None:
    from atp_service.store.reservation_keys import idempotency_key

    site, sku = random_site(), random_sku()
    await receive(store, sku, site, 10)
    await place(reservations, request((sku, site, 1)), key="ttl-check", principal="ttl")

    ttl = await store.redis.pttl(idempotency_key(store.keys, "ttl", "ttl-check"))
    assert 86_400_000 - 60_000 < ttl <= 86_400_000


# -- transitions -----------------------------------------------------------------------------


async def test_confirm_stops_the_clock_and_is_idempotent(
    store: RedisStore, reservations: ReservationStore
) -> None:
    site, sku = random_site(), random_sku()
    await receive(store, sku, site, 10)
    rid = (await place(reservations, request((sku, site, 2)))).reservation.reservation_id

    first = await reservations.confirm(rid, caller=None, correlation_id="c-confirm", book=OPEN)
    second = await reservations.confirm(rid, caller=None, correlation_id="c-confirm-2", book=OPEN)

    assert first.status is second.status is ReservationStatus.CONFIRMED
    assert first.expires_ms is None
    await force_due(store, rid)
    await reservations.expire_due()
    assert (await reservations.get(rid, caller=None)).status is ReservationStatus.CONFIRMED
    assert await reserved(store, sku, site) == 2
    types = [(e["type"], e["correlation_id"]) for e in await reservation_events(store, rid)]
    assert types == [("reservation.held", "corr-1"), ("reservation.confirmed", "c-confirm")]


async def test_release_gives_the_units_back_once(
    store: RedisStore, reservations: ReservationStore
) -> None:
    site, a, b = random_site(), random_sku(), random_sku()
    await receive(store, a, site, 10)
    await receive(store, b, site, 10)
    rid = (
        await place(reservations, request((a, site, 2), (b, site, 5)))
    ).reservation.reservation_id
    await reservations.confirm(rid, caller=None, correlation_id="c", book=OPEN)

    await reservations.release(rid, caller=None, correlation_id="c-rel", book=OPEN)
    again = await reservations.release(rid, caller=None, correlation_id="c-rel-2", book=OPEN)

    assert again.status is ReservationStatus.RELEASED
    assert (await reserved(store, a, site), await reserved(store, b, site)) == (0, 0)
    released = [
        e for e in await reservation_events(store, rid) if e["type"] == "reservation.released"
    ]
    assert [e["correlation_id"] for e in released] == ["c-rel"]


@pytest.mark.parametrize(
    ("end", "then", "status"),
    [
        ("release", "confirm", ReservationStatus.RELEASED),
        ("expire", "confirm", ReservationStatus.EXPIRED),
        ("expire", "release", ReservationStatus.EXPIRED),
        ("consume", "release", ReservationStatus.CONSUMED),
        ("consume", "confirm", ReservationStatus.CONSUMED),
    ],
)
async def test_transitions_that_make_no_sense_are_refused(
    store: RedisStore,
    reservations: ReservationStore,
    end: str,
    then: str,
    status: ReservationStatus,
) -> None:
    site, sku = random_site(), random_sku()
    await receive(store, sku, site, 10)
    rid = (await place(reservations, request((sku, site, 2)))).reservation.reservation_id
    if end == "release":
        await reservations.release(rid, caller=None, correlation_id="c", book=OPEN)
    elif end == "expire":
        await force_due(store, rid)
        await reservations.expire_due()
    else:
        await allocate(store, sku, site, 2, rid)

    with pytest.raises(InvalidTransition) as refused:
        await getattr(reservations, then)(rid, caller=None, correlation_id="c", book=OPEN)

    assert refused.value.reservation.status is status
    assert await reserved(store, sku, site) == 0


async def test_unknown_reservations_are_not_found(reservations: ReservationStore) -> None:
    rid = f"res_{uuid.uuid4().hex}"
    for call in (reservations.confirm, reservations.release):
        with pytest.raises(ReservationNotFound):
            await call(rid, caller=None, correlation_id="c", book=OPEN)
    with pytest.raises(ReservationNotFound):
        await reservations.get(rid, caller=None)


# -- ownership -------------------------------------------------------------------------------


async def test_another_keys_reservation_is_not_found_by_any_call_and_stays_as_it_was(
    store: RedisStore, reservations: ReservationStore
) -> None:
    site, sku = random_site(), random_sku()
    await receive(store, sku, site, 10)
    rid = (await place(reservations, request((sku, site, 4)), principal="oms-eu")).reservation
    rid_text = rid.reservation_id
    unknown = f"res_{uuid.uuid4().hex}"

    refusals = []
    for reservation_id in (rid_text, unknown):
        for call in (reservations.confirm, reservations.release):
            with pytest.raises(ReservationNotFound) as refused:
                await call(reservation_id, caller="oms-us", correlation_id="c", book=OPEN)
            refusals.append(str(refused.value).replace(reservation_id, "<id>"))
        with pytest.raises(ReservationNotFound) as refused:
            await reservations.get(reservation_id, caller="oms-us")
        refusals.append(str(refused.value).replace(reservation_id, "<id>"))

    assert refusals[:3] == refusals[3:]  # told exactly as an unknown id is
    mine = await reservations.get(rid_text, caller="oms-eu")
    assert (mine.status, mine.owner) == (ReservationStatus.HELD, "oms-eu")
    assert await reserved(store, sku, site) == 4
    assert [e["type"] for e in await reservation_events(store, rid_text)] == ["reservation.held"]
    released = await reservations.release(rid_text, caller="oms-eu", correlation_id="c", book=OPEN)
    assert released.status is ReservationStatus.RELEASED


async def test_the_transition_script_itself_refuses_another_keys_reservation_untouched(
    store: RedisStore, reservations: ReservationStore
) -> None:
    # The store reads through read_reservation.lua first; the script checks again, so a
    # route that reached it without that read still could not act for another key.
    site, sku = random_site(), random_sku()
    await receive(store, sku, site, 10)
    rid = (await place(reservations, request((sku, site, 2), ttl=1))).reservation.reservation_id
    await force_due(store, rid)
    res = reservation_keys(store.keys, rid)
    libraries = ("_lib.lua", "_holds.lua")
    if store.cluster:  # the first step of a transition across slots
        transition = store.register_script("res_transition.lua", libraries)
        keys = [res.record, res.expiry, res.recovery, res.outbox, res.record]
        args: list[Any] = ["release", "c", "1000", "1", "someone-else", rid, ""]
        expected: list[Any] = ["missing", [], 0]
    else:
        transition = store.register_script("transition.lua", libraries)
        lines = await store.redis.hget(res.record, "ln")
        keys, n_lines = reservations._transition_keys(rid, lines)
        args = ["release", OPEN.lua_json, "c", "1000", "1", "someone-else", rid, n_lines]
        expected = ["", "missing", [], 0, "[]"]

    reply = await transition(keys=keys, args=args)

    assert reply == expected
    assert (await reservations.get(rid, caller=None)).status is ReservationStatus.HELD
    assert await store.redis.zscore(res.expiry, rid) is not None  # still due for the sweeper
    assert await reserved(store, sku, site) == 2


async def test_a_record_made_before_owners_were_recorded_is_any_writers(
    store: RedisStore, reservations: ReservationStore
) -> None:
    site, sku = random_site(), random_sku()
    await receive(store, sku, site, 10)
    rid = (await place(reservations, request((sku, site, 1)))).reservation.reservation_id
    await store.redis.hdel(reservation_keys(store.keys, rid).record, "ow")

    seen = await reservations.get(rid, caller="anyone")
    confirmed = await reservations.confirm(rid, caller="anyone", correlation_id="c", book=OPEN)

    assert seen.owner is None and confirmed.status is ReservationStatus.CONFIRMED
    [_, event] = await reservation_events(store, rid)
    assert event["type"] == "reservation.confirmed" and event["owner"] is None


async def test_every_reservation_event_names_the_owner(
    store: RedisStore, reservations: ReservationStore
) -> None:
    site, sku = random_site(), random_sku()
    await receive(store, sku, site, 10)
    kept = (await place(reservations, request((sku, site, 2)), principal="oms-eu")).reservation
    freed = (await place(reservations, request((sku, site, 1)), principal="oms-eu")).reservation
    due = (
        await place(reservations, request((sku, site, 1), ttl=1), principal="oms-eu")
    ).reservation
    await reservations.confirm(kept.reservation_id, caller="oms-eu", correlation_id="c", book=OPEN)
    await allocate(store, sku, site, 2, kept.reservation_id)
    await reservations.release(freed.reservation_id, caller=None, correlation_id="c", book=OPEN)
    await force_due(store, due.reservation_id)
    assert await reservations.expire_due(OPEN) >= 1

    events = [
        e for r in (kept, freed, due) for e in await reservation_events(store, r.reservation_id)
    ]
    assert sorted(e["type"] for e in events) == sorted(
        ["reservation.held"] * 3
        + ["reservation.confirmed", "reservation.consumed", "reservation.released"]
        + ["reservation.expired"]
    )
    assert {e["owner"] for e in events} == {"oms-eu"}  # also when admin or the sweeper acted


# -- expiry ----------------------------------------------------------------------------------


async def test_a_due_reservation_expires_once_and_returns_its_units(
    store: RedisStore, reservations: ReservationStore
) -> None:
    site, sku = random_site(), random_sku()
    await receive(store, sku, site, 10)
    rid = (
        await place(reservations, request((sku, site, 4)), corr="ord-7")
    ).reservation.reservation_id
    await force_due(store, rid)

    await reservations.expire_due()
    await reservations.expire_due()

    assert (await reservations.get(rid, caller=None)).status is ReservationStatus.EXPIRED
    assert await reserved(store, sku, site) == 0
    expired = [
        e for e in await reservation_events(store, rid) if e["type"] == "reservation.expired"
    ]
    assert [e["correlation_id"] for e in expired] == ["ord-7"]
    assert await store.redis.zscore(reservation_keys(store.keys, rid).expiry, rid) is None


async def test_a_sweep_expires_many_together_and_a_broken_record_alone_stays_held(
    store: RedisStore, reservations: ReservationStore
) -> None:
    site, sku_a, sku_b = random_site(), random_sku(), random_sku()
    await receive(store, sku_a, site, 1000)
    await receive(store, sku_b, site, 1000)
    n = 2 * EXPIRE_CHUNK + 7  # three script calls
    rids = [
        (
            await place(reservations, request((sku_a, site, 1), (sku_b, site, 2)))
        ).reservation.reservation_id
        for _ in range(n)
    ]
    for rid in rids:
        await force_due(store, rid)
    # Readable by the sweep (it needs only the item-sites), not by the script: its
    # expiry fails in Redis, alone, before it writes anything.
    broken, unreadable = rids[EXPIRE_CHUNK + 3], rids[5]
    good_lines = await store.redis.hget(reservation_keys(store.keys, broken).record, "ln")
    lines = json.loads(good_lines)
    lines[0]["r"] = "one"
    await store.redis.hset(reservation_keys(store.keys, broken).record, "ln", json.dumps(lines))
    await store.redis.hset(reservation_keys(store.keys, unreadable).record, "ln", "{not json")
    entries_before = await store.redis.xlen(store.keys.item_site(sku_a, site).outbox)

    assert await reservations.expire_due() >= n - 2

    for rid in rids:
        status = await store.redis.hget(reservation_keys(store.keys, rid).record, "st")
        assert status == ("held" if rid in (broken, unreadable) else "expired"), rid
    assert await reserved(store, sku_a, site) == 2  # what the two left held hold
    assert await reserved(store, sku_b, site) == 4
    for rid in (broken, unreadable):
        assert await store.redis.zscore(reservation_keys(store.keys, rid).expiry, rid) == 1
    expired_events = {
        e["reservation_id"]
        for rid in rids
        for e in await reservation_events(store, rid)
        if e["type"] == "reservation.expired"
    }
    assert expired_events == set(rids) - {broken, unreadable}
    # Every expiry moved sku_a's ATP up by one, each announced in order, in a few entries.
    changes = [
        e for e in await availability_events(store, sku_a, site) if ":expired:" in e["event_id"]
    ]
    assert [e["atp"] for e in changes] == list(range(1000 - n + 1, 1000 - 2 + 1))
    entries = await store.redis.xlen(store.keys.item_site(sku_a, site).outbox) - entries_before
    # One entry per script call and stream; across slots the records' endings (the expired
    # events of those whose record shares the item-site's group) are calls of their own.
    assert entries <= (4 if store.cluster else 3)

    # Mended, they expire at the next sweep (and leave nothing for the other tests' audit).
    for rid in (broken, unreadable):
        await store.redis.hset(reservation_keys(store.keys, rid).record, "ln", good_lines)
    await reservations.expire_due()
    assert await reserved(store, sku_a, site) == 0


async def test_a_reservation_is_expired_by_whoever_notices_its_ttl_passed_first(
    store: RedisStore, reservations: ReservationStore
) -> None:
    site, sku = random_site(), random_sku()
    await receive(store, sku, site, 10)
    rid = (await place(reservations, request((sku, site, 4)))).reservation.reservation_id
    await force_due(store, rid)

    with pytest.raises(InvalidTransition):
        await reservations.confirm(rid, caller=None, correlation_id="c", book=OPEN)

    assert await reserved(store, sku, site) == 0
    events = [e["type"] for e in await reservation_events(store, rid)]
    assert events == ["reservation.held", "reservation.expired"]


async def test_a_real_ttl_passes_without_any_call_but_the_sweep(
    store: RedisStore, reservations: ReservationStore
) -> None:
    site, sku = random_site(), random_sku()
    await receive(store, sku, site, 10)
    rid = (await place(reservations, request((sku, site, 4), ttl=1))).reservation.reservation_id
    expires = (await reservations.get(rid, caller=None)).expires_ms
    assert expires is not None

    while (await reservations.get(rid, caller=None)).status is ReservationStatus.HELD:
        await reservations.expire_due()

    now_s, now_us = await store.redis.time()
    assert now_s * 1000 + now_us // 1000 >= expires
    assert await reserved(store, sku, site) == 0


# -- consumption -----------------------------------------------------------------------------


async def test_allocation_for_a_reservation_moves_reserved_to_allocated(
    store: RedisStore, reservations: ReservationStore
) -> None:
    site, a, b = random_site(), random_sku(), random_sku()
    await receive(store, a, site, 10)
    await receive(store, b, site, 10)
    rid = (
        await place(reservations, request((a, site, 3), (b, site, 2)))
    ).reservation.reservation_id

    assert not (await allocate(store, a, site, 2, rid)).reservation_consumed
    assert (await reserved(store, a, site), await allocated(store, a, site)) == (1, 2)
    assert (await reservations.get(rid, caller=None)).status is ReservationStatus.HELD

    assert not (await allocate(store, a, site, 1, rid)).reservation_consumed
    # The allocation of the last line consumes the reservation, and says so (the worker
    # counts it in atp_reservations_total{status="consumed"}); across slots the sweeper
    # tells the record, and counts it.
    last = await allocate(store, b, site, 2, rid, corr="wms-pick-9")
    assert last.reservation_consumed is not store.cluster

    consumed = await reservations.get(rid, caller=None)
    assert consumed.status is ReservationStatus.CONSUMED
    assert [ln.allocated for ln in consumed.lines] == [3, 2]
    assert (await reserved(store, a, site), await reserved(store, b, site)) == (0, 0)
    assert (await allocated(store, a, site), await allocated(store, b, site)) == (3, 2)
    [event] = [
        e for e in await reservation_events(store, rid) if e["type"] == "reservation.consumed"
    ]
    assert event["correlation_id"] == "wms-pick-9"
    assert await store.redis.zscore(reservation_keys(store.keys, rid).expiry, rid) is None


async def test_allocation_beyond_the_line_moves_only_what_the_line_holds(
    store: RedisStore, reservations: ReservationStore
) -> None:
    site, sku = random_site(), random_sku()
    await receive(store, sku, site, 10)
    mine = (await place(reservations, request((sku, site, 3)))).reservation.reservation_id
    await place(reservations, request((sku, site, 4)))

    await allocate(store, sku, site, 5, mine)

    assert (await reserved(store, sku, site), await allocated(store, sku, site)) == (4, 5)
    assert (await reservations.get(mine, caller=None)).status is ReservationStatus.CONSUMED


@pytest.mark.parametrize("ended_by", ["release", "expire", "unknown"])
async def test_allocation_for_an_ended_reservation_is_a_plain_allocation(
    store: RedisStore, reservations: ReservationStore, ended_by: str
) -> None:
    site, sku = random_site(), random_sku()
    await receive(store, sku, site, 10)
    rid = (await place(reservations, request((sku, site, 3)))).reservation.reservation_id
    other = (await place(reservations, request((sku, site, 2)))).reservation.reservation_id
    if ended_by == "release":
        await reservations.release(rid, caller=None, correlation_id="c", book=OPEN)
    elif ended_by == "expire":
        await force_due(store, rid)
        await reservations.expire_due()
    else:
        rid = f"res_{uuid.uuid4().hex}"

    await allocate(store, sku, site, 3, rid)

    still_held = 2 if ended_by != "unknown" else 2 + 3
    assert (await reserved(store, sku, site), await allocated(store, sku, site)) == (still_held, 3)
    assert (await reservations.get(other, caller=None)).lines[0].allocated == 0
    if ended_by != "unknown":
        assert (await reservations.get(rid, caller=None)).status is not ReservationStatus.CONSUMED


async def test_a_redelivered_allocation_is_consumed_once(
    store: RedisStore, reservations: ReservationStore
) -> None:
    site, sku = random_site(), random_sku()
    await receive(store, sku, site, 10)
    rid = (await place(reservations, request((sku, site, 3)))).reservation.reservation_id
    pick = InventoryDelta(
        random_event_id(), Source.WMS, sku, site, Bucket.ALLOCATED, 1, NOW, reservation_id=rid
    )

    outcomes = await store.fold_many([pick, pick], OPEN)

    assert [o.status for o in outcomes] == ["folded", "duplicate"]
    assert (await reserved(store, sku, site), await allocated(store, sku, site)) == (2, 1)


# -- audit -----------------------------------------------------------------------------------


async def test_the_audit_finds_reserved_units_no_reservation_explains(
    store: RedisStore, reservations: ReservationStore
) -> None:
    site, sku, clean = random_site(), random_sku(), random_sku()
    await receive(store, sku, site, 10)
    await receive(store, clean, site, 10)
    await place(reservations, request((sku, site, 3), (clean, site, 1)))
    assert not [d for d in await reservations.audit() if d.site == site]

    await store.redis.hincrby(store.keys.position(sku, site), "rs", 2)

    found = [d for d in await audit_store(reservations) if d.site == site]
    assert [(d.sku, d.reserved, d.expected) for d in found] == [(sku, 5, 3)]
    assert (REGISTRY.get_sample_value("atp_reservation_audit_mismatches") or 0) >= 1
    await store.redis.hincrby(store.keys.position(sku, site), "rs", -2)  # leave the store sane
