"""Reservations against a simple model: hypothesis drives reserve, confirm, release, expire,
allocate (with and without a reservation id) and receipts on a real redis-server, and
checks after every step that ``reserved`` is the sum of the active lines, never negative,
and that no reservation got more than the channel's ATP at that moment.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Coroutine
from dataclasses import dataclass, field
from typing import Any, TypeVar

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    Bundle,
    RuleBasedStateMachine,
    initialize,
    invariant,
    multiple,
    precondition,
    rule,
    run_state_machine_as_test,
)

from atp_service.domain import Bucket, ChannelPolicy, InventoryDelta, ItemSite, Source
from atp_service.domain.reservations import (
    TRANSITIONS,
    InsufficientStock,
    InvalidTransition,
    LineRequest,
    ReservationMode,
    ReservationRequest,
    ReservationStatus,
    Transition,
    grants,
)
from atp_service.embedded import EmbeddedRedisCluster, EmbeddedStack
from atp_service.store import KeySpace, PolicyBook, RedisStore, connect
from atp_service.store.reservation_keys import reservation_keys
from atp_service.store.reservations import ReservationStore
from tests.random_refs import random_event_id, random_site, random_sku

pytestmark = pytest.mark.integration

T = TypeVar("T")
SAFETY_STOCK = 1
BOOK = PolicyBook.of({"web": ChannelPolicy(safety_stock=SAFETY_STOCK)})
NOW = "2026-11-23T05:00:00Z"


@dataclass
class ModelReservation:
    status: ReservationStatus
    lines: dict[int, list[int]] = field(default_factory=dict)  # sku index -> [reserved, allocated]


def make_machine(redis_url: str, *, cluster: bool = False) -> type[RuleBasedStateMachine]:
    class ReservationMachine(RuleBasedStateMachine):
        reservations = Bundle("reservations")

        def __init__(self) -> None:
            super().__init__()
            self.loop = asyncio.new_event_loop()
            self.redis = connect(redis_url, timeout=2.0, max_connections=4, cluster=cluster)
            self.store = RedisStore(self.redis, KeySpace(16), dedup_window_seconds=86_400)
            self.res = ReservationStore(self.store, idempotency_ttl_seconds=86_400)
            self.site = random_site()
            self.skus = [random_sku(), random_sku()]
            self.on_hand = [0, 0]
            self.allocated = [0, 0]
            self.model: dict[str, ModelReservation] = {}

        def run(self, coro: Coroutine[Any, Any, T]) -> T:
            return self.loop.run_until_complete(coro)

        def teardown(self) -> None:
            self.run(self.redis.aclose())
            self.loop.close()

        # -- the model -----------------------------------------------------------------------

        def model_reserved(self, i: int) -> int:
            return sum(
                ln[0] - ln[1]
                for r in self.model.values()
                if r.status.active
                for j, ln in r.lines.items()
                if j == i
            )

        def model_atp(self, i: int) -> int:
            sellable = self.on_hand[i] - self.allocated[i] - self.model_reserved(i)
            return max(0, sellable - SAFETY_STOCK)

        def fold(self, i: int, bucket: Bucket, qty: int, rid: str | None = None) -> None:
            self.run(
                self.store.fold(
                    InventoryDelta(
                        random_event_id(), Source.WMS, self.skus[i], self.site, bucket, qty,
                        NOW, reservation_id=rid,
                    ),
                    BOOK,
                )
            )  # fmt: skip
            # On a Cluster a fully allocated hold reaches its record at the sweeper's round.
            self.run(self.res.apply_consumed())

        # -- rules ---------------------------------------------------------------------------

        @initialize(stock=st.tuples(st.integers(0, 15), st.integers(0, 15)))
        def stock_arrives(self, stock: tuple[int, int]) -> None:
            for i, qty in enumerate(stock):
                if qty:
                    self.fold(i, Bucket.ON_HAND, qty)
                    self.on_hand[i] += qty

        @rule(
            target=reservations,
            lines=st.lists(
                st.tuples(st.integers(0, 1), st.integers(1, 6)),
                min_size=1,
                max_size=2,
                unique_by=lambda ln: ln[0],
            ),
            mode=st.sampled_from(ReservationMode),
        )
        def reserve(self, lines: list[tuple[int, int]], mode: ReservationMode) -> Any:
            atps = [self.model_atp(i) for i, _ in lines]
            expected = grants([q for _, q in lines], atps, mode)
            request = ReservationRequest(
                channel="web",
                lines=tuple(LineRequest(self.skus[i], self.site, q) for i, q in lines),
                mode=mode,
            )
            rid = self.res.new_reservation_id("model", key := uuid.uuid4().hex)
            try:
                placed = self.run(
                    self.res.reserve(
                        request,
                        reservation_id=rid,
                        principal="model",
                        idempotency_key_value=key,
                        correlation_id="model",
                        book=BOOK,
                    )
                )
            except InsufficientStock as refused:
                assert expected is None
                assert [ln.atp for ln in refused.lines] == atps
                return multiple()
            assert expected is not None, f"reserved beyond ATP {atps}"
            assert [ln.reserved for ln in placed.reservation.lines] == expected
            self.model[rid] = ModelReservation(
                ReservationStatus.HELD,
                {i: [g, 0] for (i, _), g in zip(lines, expected, strict=True)},
            )
            return rid

        def _transition(self, rid: str, transition: Transition) -> None:
            model = self.model[rid]
            allowed = TRANSITIONS[transition]
            call = self.res.confirm if transition is Transition.CONFIRM else self.res.release
            try:
                got = self.run(call(rid, caller="model", correlation_id="model", book=BOOK))
            except InvalidTransition as refused:
                assert model.status not in allowed
                assert refused.reservation.status is model.status
                return
            assert model.status in allowed, f"{transition} from {model.status} was accepted"
            model.status = allowed[model.status] or model.status
            assert got.status is model.status

        @rule(rid=reservations)
        def confirm(self, rid: str) -> None:
            self._transition(rid, Transition.CONFIRM)

        @rule(rid=reservations)
        def release(self, rid: str) -> None:
            self._transition(rid, Transition.RELEASE)

        @rule(rid=reservations)
        def ttl_passes(self, rid: str) -> None:
            model = self.model[rid]
            if model.status is ReservationStatus.HELD:
                keys = reservation_keys(self.store.keys, rid)
                self.run(self.redis.hset(keys.record, "ex", "1"))
                self.run(self.redis.zadd(keys.expiry, {rid: 1}))
                model.status = ReservationStatus.EXPIRED
            self.run(self.res.expire_due())

        @rule(rid=reservations, i=st.integers(0, 1), qty=st.integers(1, 4))
        def wms_allocates_for_a_reservation(self, rid: str, i: int, qty: int) -> None:
            self.fold(i, Bucket.ALLOCATED, qty, rid)
            self.allocated[i] += qty
            model = self.model[rid]
            line = model.lines.get(i)
            if not model.status.active or line is None:
                return
            moved = min(qty, line[0] - line[1])
            if moved == 0:
                return
            line[1] += moved
            if all(a >= r for r, a in model.lines.values()):
                model.status = ReservationStatus.CONSUMED

        @rule(i=st.integers(0, 1), qty=st.integers(1, 4), with_unknown_id=st.booleans())
        def wms_allocates_for_no_known_reservation(
            self, i: int, qty: int, with_unknown_id: bool
        ) -> None:
            self.fold(
                i, Bucket.ALLOCATED, qty, f"res_{uuid.uuid4().hex}" if with_unknown_id else None
            )
            self.allocated[i] += qty

        @precondition(lambda self: sum(self.on_hand) < 40)
        @rule(i=st.integers(0, 1), qty=st.integers(1, 6))
        def stock_is_received(self, i: int, qty: int) -> None:
            self.fold(i, Bucket.ON_HAND, qty)
            self.on_hand[i] += qty

        # -- invariants ----------------------------------------------------------------------

        @invariant()
        def reserved_is_the_sum_of_the_active_lines(self) -> None:
            positions = self.run(
                self.store.read_positions([ItemSite(s, self.site) for s in self.skus])
            )
            records = [self.run(self.res.get(rid, caller=None)) for rid in self.model]
            for i, (sku, pos) in enumerate(zip(self.skus, positions, strict=True)):
                assert pos.reserved >= 0
                assert pos.reserved == self.model_reserved(i)
                assert pos.reserved == sum(r.holding(sku, self.site) for r in records)
                assert (pos.on_hand, pos.allocated) == (self.on_hand[i], self.allocated[i])
            for record in records:
                model = self.model[record.reservation_id]
                assert record.status is model.status
                for i, (r, a) in model.lines.items():
                    [line] = [ln for ln in record.lines if ln.sku == self.skus[i]]
                    assert (line.reserved, line.allocated) == (r, a)

    return ReservationMachine


def test_reservations_behave_like_the_model(stack: EmbeddedStack) -> None:
    run_state_machine_as_test(
        make_machine(stack.redis_url),
        settings=settings(
            max_examples=100,
            stateful_step_count=50,
            deadline=None,
            suppress_health_check=[HealthCheck.too_slow],
        ),
    )


def test_reservations_across_slots_behave_like_the_model(
    redis_cluster: EmbeddedRedisCluster,
) -> None:
    """The same on a Redis Cluster, where the two skus' holds and the records are in
    different slots (placed in steps; consumption told by the sweeper's round)."""
    run_state_machine_as_test(
        make_machine(redis_cluster.url, cluster=True),
        settings=settings(
            max_examples=40,
            stateful_step_count=40,
            deadline=None,
            suppress_health_check=[HealthCheck.too_slow],
        ),
    )
