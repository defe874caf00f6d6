"""Reservations whose keys span slots, on a real Redis Cluster: a process that dies between
the steps (simulated by failing one step: the steps before it ran, the ones after did not)
leaves nothing half held once the sweeper has acted; concurrent placings never oversell;
a reservation whose keys share a slot is one script."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import pytest

from atp_service.domain import Bucket, InventoryDelta, ItemSite, Source
from atp_service.domain.reservations import (
    InsufficientStock,
    InvalidTransition,
    LineRequest,
    ReservationNotFound,
    ReservationRequest,
    ReservationStatus,
)
from atp_service.store import PolicyBook, RedisStore
from atp_service.store.keys import group_of
from atp_service.store.reservation_keys import (
    hold,
    idempotency_key_and_group,
    reservation_group,
    reservation_keys,
)
from atp_service.store.reservations import Placed, ReservationBusy, ReservationStore
from tests.random_refs import random_event_id, random_site, random_sku

pytestmark = pytest.mark.integration

OPEN = PolicyBook.of({})
NOW = "2026-11-23T05:00:00Z"
DEADLINE_MS = 300


@pytest.fixture
def redis_kind() -> str:
    return "cluster"


@pytest.fixture
def reservations(store: RedisStore) -> ReservationStore:
    return ReservationStore(store, idempotency_ttl_seconds=86_400, step_deadline_ms=DEADLINE_MS)


def sku_in_group(site: str, group: int, *, not_in: set[int] = frozenset()) -> str:  # type: ignore[assignment]
    """A fresh sku whose item-site at ``site`` is in ``group`` (-1: any group not ``not_in``)."""
    while True:
        sku = random_sku()
        g = group_of(sku, site, 16)
        if (group < 0 and g not in not_in) or g == group:
            return sku


async def receive(store: RedisStore, sku: str, site: str, qty: int) -> None:
    await store.fold(
        InventoryDelta(random_event_id(), Source.WMS, sku, site, Bucket.ON_HAND, qty, NOW), OPEN
    )


async def reserved(store: RedisStore, sku: str, site: str) -> int:
    [pos] = await store.read_positions([ItemSite(sku, site)])
    return pos.reserved


def two_lines(site: str, a: str, b: str, qa: int = 2, qb: int = 1) -> ReservationRequest:
    return ReservationRequest(
        channel="web", lines=(LineRequest(a, site, qa), LineRequest(b, site, qb)), order_ref="o"
    )


async def place(
    reservations: ReservationStore, req: ReservationRequest, key: str, principal: str = "oms"
) -> Placed:
    return await reservations.reserve(
        req,
        reservation_id=reservations.new_reservation_id(principal, key),
        principal=principal,
        idempotency_key_value=key,
        correlation_id="c",
        book=OPEN,
    )


async def held_id(reservations: ReservationStore, req: ReservationRequest) -> str:
    return (await place(reservations, req, uuid.uuid4().hex)).reservation.reservation_id


class Died(Exception):
    """The process placing or ending a reservation died here."""


def die_at(
    monkeypatch: pytest.MonkeyPatch, store: RedisStore, script: str, after: int = 0
) -> list[str]:
    """From now on, the ``after``-th call of ``script`` (and every later one) never runs: the
    process died just before it. Returns the names of the scripts that did run."""
    ran: list[str] = []
    run_script, run_scripts = store.run_script, store.run_scripts
    seen = 0

    def check(name: str) -> None:
        nonlocal seen
        if name == script:
            seen += 1
            if seen > after:
                raise Died(name)
        ran.append(name)

    async def dying(s: Any, keys: Any, args: Any, **options: Any) -> Any:
        check(store.script_names[s.sha])
        return await run_script(s, keys, args, **options)

    async def dying_batch(calls: Any) -> list[Any]:
        for s, _, _ in calls:
            check(store.script_names[s.sha])
        return await run_scripts(calls)

    monkeypatch.setattr(store, "run_script", dying)
    monkeypatch.setattr(store, "run_scripts", dying_batch)
    return ran


async def sweep_after_deadline(reservations: ReservationStore) -> None:
    await asyncio.sleep(DEADLINE_MS / 1000 + 0.05)
    await reservations.sweep()


async def two_skus(store: RedisStore) -> tuple[str, str, str]:
    """A site and two skus with stock, in two different groups."""
    site = random_site()
    a = sku_in_group(site, -1)
    b = sku_in_group(site, -1, not_in={group_of(a, site, 16)})
    await receive(store, a, site, 10)
    await receive(store, b, site, 10)
    return site, a, b


# -- placing, and dying while placing ------------------------------------------------------


async def test_a_reservation_across_slots_holds_every_line_and_answers_replays(
    store: RedisStore, reservations: ReservationStore
) -> None:
    site, a, b = await two_skus(store)
    key = uuid.uuid4().hex

    placed = await place(reservations, two_lines(site, a, b), key)
    again = await place(reservations, two_lines(site, a, b), key)

    assert placed.reservation.status is ReservationStatus.HELD
    assert again.replayed and again.reservation == placed.reservation
    assert (await reserved(store, a, site), await reserved(store, b, site)) == (2, 1)
    got = await reservations.get(placed.reservation.reservation_id, caller=None)
    assert [(ln.sku, ln.reserved) for ln in got.lines] == [(a, 2), (b, 1)]
    assert not [d for d in await reservations.audit() if d.site == site]


async def test_a_placing_that_died_before_deciding_is_rolled_back_and_its_key_freed(
    store: RedisStore, reservations: ReservationStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    site, a, b = await two_skus(store)
    key = uuid.uuid4().hex
    ran = die_at(monkeypatch, store, "res_decide.lua")

    with pytest.raises(Died):
        await place(reservations, two_lines(site, a, b), key)

    assert ran.count("res_hold.lua") == 2  # both groups held...
    assert (await reserved(store, a, site), await reserved(store, b, site)) == (2, 1)
    monkeypatch.undo()
    await sweep_after_deadline(reservations)  # ...until the sweeper undid them
    assert (await reserved(store, a, site), await reserved(store, b, site)) == (0, 0)
    assert not [d for d in await reservations.audit() if d.site == site]
    # Never answered, so never a reservation; the key is free for the retry.
    retried = await place(reservations, two_lines(site, a, b), key)
    assert not retried.replayed
    assert (await reserved(store, a, site), await reserved(store, b, site)) == (2, 1)


async def test_a_placing_that_died_between_its_holds_is_rolled_back_and_a_late_hold_holds_nothing(
    store: RedisStore, reservations: ReservationStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    site, a, b = await two_skus(store)
    key = uuid.uuid4().hex
    rid = reservations.new_reservation_id("oms", key)
    die_at(monkeypatch, store, "res_hold.lua", after=1)  # the first hold ran, not the second

    with pytest.raises(Died):
        await reservations.reserve(
            two_lines(site, a, b), reservation_id=rid, principal="oms",
            idempotency_key_value=key, correlation_id="c", book=OPEN,
        )  # fmt: skip

    assert await reserved(store, a, site) + await reserved(store, b, site) in (1, 2)
    monkeypatch.undo()
    await sweep_after_deadline(reservations)
    assert (await reserved(store, a, site), await reserved(store, b, site)) == (0, 0)
    with pytest.raises(ReservationNotFound):
        await reservations.get(rid, caller=None)
    # The dead process's second hold, arriving at last, holds nothing.
    for sku in (a, b):
        g = group_of(sku, site, 16)
        state = await store.redis.hget(hold(g, rid), "st")
        assert state in ("released", "void")
    assert not [d for d in await reservations.audit() if d.site == site]


async def test_a_refusal_that_died_before_releasing_its_holds_is_released_and_stays_a_409(
    store: RedisStore, reservations: ReservationStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    site, a, b = await two_skus(store)
    key = uuid.uuid4().hex
    die_at(monkeypatch, store, "res_unhold.lua")

    with pytest.raises(Died):  # b has 10: asking 11 refuses; a's hold was made
        await place(reservations, two_lines(site, a, b, 2, 11), key)

    monkeypatch.undo()
    await reservations.sweep()  # a refusal is due at once
    assert (await reserved(store, a, site), await reserved(store, b, site)) == (0, 0)
    with pytest.raises(InsufficientStock) as replayed:
        await place(reservations, two_lines(site, a, b, 2, 11), key)
    assert [(ln.sku, ln.atp) for ln in replayed.value.lines] == [(a, 10), (b, 10)]
    assert not [d for d in await reservations.audit() if d.site == site]


async def test_a_409_across_slots_holds_nothing_when_it_is_answered(
    store: RedisStore, reservations: ReservationStore
) -> None:
    site, a, b = await two_skus(store)

    with pytest.raises(InsufficientStock):
        await place(reservations, two_lines(site, a, b, 2, 11), uuid.uuid4().hex)

    assert (await reserved(store, a, site), await reserved(store, b, site)) == (0, 0)


async def test_a_retry_while_the_first_placing_is_under_way_gets_the_same_reservation(
    store: RedisStore, reservations: ReservationStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    site, a, b = await two_skus(store)
    key = uuid.uuid4().hex
    die_at(monkeypatch, store, "res_decide.lua")
    with pytest.raises(Died):
        await place(reservations, two_lines(site, a, b), key)
    monkeypatch.undo()

    # The retry (before the deadline) resumes the placing under the first id.
    resumed = await place(reservations, two_lines(site, a, b), key)

    assert resumed.reservation.status is ReservationStatus.HELD
    assert (await reserved(store, a, site), await reserved(store, b, site)) == (2, 1)
    await sweep_after_deadline(reservations)  # nothing to undo: it was decided
    assert (await reserved(store, a, site), await reserved(store, b, site)) == (2, 1)
    assert (await reservations.get(resumed.reservation.reservation_id, caller=None)).status is (
        ReservationStatus.HELD
    )


async def test_a_retry_past_the_deadline_of_a_dead_placing_is_told_to_wait(
    store: RedisStore, reservations: ReservationStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    site, a, b = await two_skus(store)
    key = uuid.uuid4().hex
    die_at(monkeypatch, store, "res_decide.lua")
    with pytest.raises(Died):
        await place(reservations, two_lines(site, a, b), key)
    monkeypatch.undo()
    await asyncio.sleep(DEADLINE_MS / 1000 + 0.05)

    with pytest.raises(ReservationBusy):  # the sweeper has not undone it yet: a 503
        await place(reservations, two_lines(site, a, b), key)
    await reservations.sweep()
    assert not (await place(reservations, two_lines(site, a, b), key)).replayed


# -- ending, and dying while ending --------------------------------------------------------


@pytest.mark.parametrize("step", ["res_unhold.lua", "res_finish.lua"])
async def test_a_release_that_died_half_way_is_rolled_forward(
    store: RedisStore, reservations: ReservationStore, monkeypatch: pytest.MonkeyPatch, step: str
) -> None:
    site, a, b = await two_skus(store)
    rid = (
        await place(reservations, two_lines(site, a, b), uuid.uuid4().hex)
    ).reservation.reservation_id
    die_at(monkeypatch, store, step)

    with pytest.raises(Died):
        await reservations.release(rid, caller="oms", correlation_id="c-rel", book=OPEN)

    monkeypatch.undo()
    await sweep_after_deadline(reservations)
    got = await reservations.get(rid, caller=None)
    assert got.status is ReservationStatus.RELEASED
    assert (await reserved(store, a, site), await reserved(store, b, site)) == (0, 0)
    # And a release asked again is the idempotent answer.
    again = await reservations.release(rid, caller="oms", correlation_id="c-rel-2", book=OPEN)
    assert again.status is ReservationStatus.RELEASED
    assert not [d for d in await reservations.audit() if d.site == site]


async def test_a_release_left_half_way_is_finished_by_whoever_comes_next(
    store: RedisStore, reservations: ReservationStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    site, a, b = await two_skus(store)
    rid = (
        await place(reservations, two_lines(site, a, b), uuid.uuid4().hex)
    ).reservation.reservation_id
    die_at(monkeypatch, store, "res_unhold.lua")
    with pytest.raises(Died):
        await reservations.release(rid, caller="oms", correlation_id="c", book=OPEN)
    monkeypatch.undo()
    # A confirm finds it being released: it finishes the release, and is refused.
    with pytest.raises(InvalidTransition) as refused:
        await reservations.confirm(rid, caller="oms", correlation_id="c", book=OPEN)
    assert refused.value.reservation.status is ReservationStatus.RELEASED

    released = await reservations.release(rid, caller="oms", correlation_id="c", book=OPEN)

    assert released.status is ReservationStatus.RELEASED
    assert (await reserved(store, a, site), await reserved(store, b, site)) == (0, 0)


async def test_an_expiry_sweep_that_died_half_way_is_rolled_forward(
    store: RedisStore, reservations: ReservationStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    site, a, b = await two_skus(store)
    rid = (
        await place(reservations, two_lines(site, a, b), uuid.uuid4().hex)
    ).reservation.reservation_id
    keys = reservation_keys(store.keys, rid)
    await store.redis.hset(keys.record, "ex", "1")
    await store.redis.zadd(keys.expiry, {rid: 1})
    die_at(monkeypatch, store, "res_unhold.lua")

    with pytest.raises(Died):
        await reservations.expire_due()

    monkeypatch.undo()
    await sweep_after_deadline(reservations)
    assert (await reservations.get(rid, caller=None)).status is ReservationStatus.EXPIRED
    assert (await reserved(store, a, site), await reserved(store, b, site)) == (0, 0)


# -- no oversell, and one script when one slot ---------------------------------------------


async def test_concurrent_placings_across_slots_never_oversell(store: RedisStore) -> None:
    # The default deadline: 80 placings at once on a shared machine can take more than the
    # short one of the other tests (a placing past it is aborted: a 503, holding nothing).
    reservations = ReservationStore(store, idempotency_ttl_seconds=86_400)
    site = random_site()
    a = sku_in_group(site, -1)
    b = sku_in_group(site, -1, not_in={group_of(a, site, 16)})
    await receive(store, a, site, 25)
    await receive(store, b, site, 40)
    req = two_lines(site, a, b, 1, 1)

    async def attempt() -> str:
        try:
            await place(reservations, req, uuid.uuid4().hex)
        except InsufficientStock:
            return "409"
        return "201"

    answers = await asyncio.gather(*(attempt() for _ in range(80)))

    assert answers.count("201") == 25
    assert (await reserved(store, a, site), await reserved(store, b, site)) == (25, 25)
    assert not [d for d in await reservations.audit() if d.site == site]


async def test_a_reservation_whose_keys_share_a_slot_is_one_script(
    store: RedisStore, reservations: ReservationStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    key = uuid.uuid4().hex
    _, group = idempotency_key_and_group(store.keys, "oms", key)
    site = random_site()
    a, b = sku_in_group(site, group), sku_in_group(site, group)
    await receive(store, a, site, 10)
    await receive(store, b, site, 10)
    ran = die_at(monkeypatch, store, "never")

    placed = await place(reservations, two_lines(site, a, b), key)

    assert ran == ["reserve.lua"]
    rid = placed.reservation.reservation_id
    assert reservation_group(rid, 16) == group
    assert (await reserved(store, a, site), await reserved(store, b, site)) == (2, 1)
