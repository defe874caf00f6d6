"""ATP arithmetic of contract section 2, by example and by its invariants."""

from __future__ import annotations

from datetime import date, timedelta

from hypothesis import given
from hypothesis import strategies as st

from atp_service.domain import (
    ChannelPolicy,
    ItemSitePosition,
    atp_for_channel,
    atp_for_site,
    inbound_within_horizon,
)

TODAY = date(2026, 11, 23)
QTY = st.integers(min_value=0, max_value=10**9)


def position(**kw: object) -> ItemSitePosition:
    return ItemSitePosition(**kw)  # type: ignore[arg-type]


def test_atp_is_sellable_units_when_the_channel_has_no_restriction() -> None:
    pos = position(on_hand=40, allocated=5, quarantined=3, reserved=2)
    assert atp_for_site(pos, ChannelPolicy(), TODAY) == 30


def test_safety_stock_is_held_back_from_each_item_site() -> None:
    pos = position(on_hand=10)
    assert atp_for_site(pos, ChannelPolicy(safety_stock=4), TODAY) == 6


def test_share_floors_the_channels_percentage() -> None:
    pos = position(on_hand=9)
    assert atp_for_site(pos, ChannelPolicy(share=50), TODAY) == 4


def test_share_and_safety_stock_combine_as_in_the_contract() -> None:
    pos = position(on_hand=101)
    # floor(min(101, 101 * 30 / 100)) - 5 = 30 - 5
    assert atp_for_site(pos, ChannelPolicy(share=30, safety_stock=5), TODAY) == 25


def test_atp_is_never_negative_when_picks_arrive_before_receipts() -> None:
    pos = position(on_hand=2, allocated=7)
    assert pos.sellable == -5
    assert atp_for_site(pos, ChannelPolicy(), TODAY) == 0


def test_item_site_safety_stock_override_beats_the_channels() -> None:
    pos = position(on_hand=10, safety_stock_override=1)
    assert atp_for_site(pos, ChannelPolicy(safety_stock=8), TODAY) == 9


def test_an_override_of_zero_still_beats_the_channel() -> None:
    pos = position(on_hand=10, safety_stock_override=0)
    assert atp_for_site(pos, ChannelPolicy(safety_stock=8), TODAY) == 10


def test_in_transit_counts_only_when_the_channel_allows_it() -> None:
    pos = position(on_hand=5, in_transit_by_eta={TODAY + timedelta(days=3): 20})
    assert atp_for_site(pos, ChannelPolicy(), TODAY) == 5
    assert atp_for_site(pos, ChannelPolicy(include_in_transit=True), TODAY) == 25


def test_horizon_counts_inbound_due_within_it_including_late_but_not_unknown_etas() -> None:
    pos = position(
        in_transit_by_eta={
            TODAY - timedelta(days=2): 1,  # late
            TODAY + timedelta(days=7): 10,  # on the horizon's last day
            TODAY + timedelta(days=8): 100,  # beyond it
            None: 1000,  # unknown ETA
        }
    )
    policy = ChannelPolicy(include_in_transit=True, in_transit_horizon_days=7)
    assert inbound_within_horizon(pos, policy, TODAY) == 11


def test_no_horizon_counts_every_inbound_unit() -> None:
    pos = position(in_transit_by_eta={TODAY + timedelta(days=90): 10, None: 5})
    assert inbound_within_horizon(pos, ChannelPolicy(include_in_transit=True), TODAY) == 15


def test_channel_atp_sums_only_the_channels_sites() -> None:
    positions = [("DC-EAST", position(on_hand=5)), ("DC-WEST", position(on_hand=7))]
    assert atp_for_channel(positions, ChannelPolicy(), TODAY) == 12
    assert atp_for_channel(positions, ChannelPolicy(sites=("DC-WEST",)), TODAY) == 7


def test_inbound_units_once_reserved_are_not_promised_again() -> None:
    # Issue 14: 0 on hand and 10 inbound; a reservation of the 10 left the ATP at 10.
    policy = ChannelPolicy(include_in_transit=True)
    inbound = {TODAY + timedelta(days=3): 10}
    assert atp_for_site(position(in_transit_by_eta=inbound), policy, TODAY) == 10
    held = position(reserved=10, in_transit_by_eta=inbound)
    assert atp_for_site(held, policy, TODAY) == 0


def test_units_a_site_owes_come_out_of_its_inbound() -> None:
    # A pick reported before its receipt: 4 allocated, 0 on hand, 10 inbound.
    pos = position(allocated=4, in_transit_by_eta={TODAY + timedelta(days=1): 10})
    assert atp_for_site(pos, ChannelPolicy(include_in_transit=True), TODAY) == 6


def test_safety_stock_is_not_promised_through_the_inbound() -> None:
    policy = ChannelPolicy(include_in_transit=True, safety_stock=3)
    inbound = {TODAY + timedelta(days=1): 2}
    assert atp_for_site(position(on_hand=10, in_transit_by_eta=inbound), policy, TODAY) == 9
    # The 9 reserved took the 7 units above the safety line and the 2 inbound ones.
    held = position(on_hand=10, reserved=9, in_transit_by_eta=inbound)
    assert atp_for_site(held, policy, TODAY) == 0


def test_policy_rejects_a_share_above_one_hundred() -> None:
    try:
        ChannelPolicy(share=101)
    except ValueError as exc:
        assert "share" in str(exc)
    else:
        raise AssertionError("share=101 was accepted")


positions_st = st.builds(
    ItemSitePosition,
    on_hand=st.integers(min_value=-(10**9), max_value=10**9),
    allocated=QTY,
    quarantined=QTY,
    reserved=QTY,
    in_transit_by_eta=st.dictionaries(
        st.none()
        | st.dates(min_value=TODAY - timedelta(days=30), max_value=TODAY + timedelta(days=60)),
        st.integers(min_value=-(10**6), max_value=10**9),
        max_size=4,
    ),
    safety_stock_override=st.none() | QTY,
)
policies_st = st.builds(
    ChannelPolicy,
    safety_stock=QTY,
    share=st.integers(min_value=0, max_value=100),
    include_in_transit=st.booleans(),
    in_transit_horizon_days=st.integers(min_value=0, max_value=60),
)


@given(positions_st, policies_st)
def test_atp_is_never_negative(pos: ItemSitePosition, policy: ChannelPolicy) -> None:
    assert atp_for_site(pos, policy, TODAY) >= 0


@given(positions_st, policies_st)
def test_atp_never_exceeds_sellable_plus_allowed_inbound(
    pos: ItemSitePosition, policy: ChannelPolicy
) -> None:
    inbound = inbound_within_horizon(pos, policy, TODAY)
    assert atp_for_site(pos, policy, TODAY) <= max(0, pos.sellable) + inbound


@given(positions_st, policies_st, st.integers(min_value=0, max_value=100))
def test_a_larger_share_never_promises_less(
    pos: ItemSitePosition, policy: ChannelPolicy, other_share: int
) -> None:
    low, high = sorted((policy.share, other_share))
    at_low = atp_for_site(pos, ChannelPolicy(share=low, safety_stock=policy.safety_stock), TODAY)
    at_high = atp_for_site(pos, ChannelPolicy(share=high, safety_stock=policy.safety_stock), TODAY)
    assert at_low <= at_high


@given(positions_st, QTY, QTY)
def test_more_safety_stock_never_promises_more(pos: ItemSitePosition, a: int, b: int) -> None:
    pos = ItemSitePosition(
        on_hand=pos.on_hand, allocated=pos.allocated, quarantined=pos.quarantined,
        reserved=pos.reserved, in_transit_by_eta=pos.in_transit_by_eta,
    )  # fmt: skip
    low, high = sorted((a, b))
    assert atp_for_site(pos, ChannelPolicy(safety_stock=high), TODAY) <= atp_for_site(
        pos, ChannelPolicy(safety_stock=low), TODAY
    )


@given(positions_st, policies_st, st.integers(min_value=0, max_value=10**6))
def test_more_units_on_hand_never_promise_less(
    pos: ItemSitePosition, policy: ChannelPolicy, extra: int
) -> None:
    more = ItemSitePosition(
        on_hand=pos.on_hand + extra, allocated=pos.allocated, quarantined=pos.quarantined,
        reserved=pos.reserved, in_transit_by_eta=pos.in_transit_by_eta,
        safety_stock_override=pos.safety_stock_override,
    )  # fmt: skip
    assert atp_for_site(more, policy, TODAY) >= atp_for_site(pos, policy, TODAY)


def _with_reserved(pos: ItemSitePosition, more: int) -> ItemSitePosition:
    return ItemSitePosition(
        on_hand=pos.on_hand, allocated=pos.allocated, quarantined=pos.quarantined,
        reserved=pos.reserved + more, in_transit_by_eta=pos.in_transit_by_eta,
        safety_stock_override=pos.safety_stock_override,
    )  # fmt: skip


@given(positions_st, policies_st)
def test_reserving_the_whole_atp_leaves_nothing_to_promise_at_full_share(
    pos: ItemSitePosition, policy: ChannelPolicy
) -> None:
    full = ChannelPolicy(
        safety_stock=policy.safety_stock, share=100,
        include_in_transit=policy.include_in_transit,
        in_transit_horizon_days=policy.in_transit_horizon_days,
    )  # fmt: skip
    atp = atp_for_site(pos, full, TODAY)
    assert atp_for_site(_with_reserved(pos, atp), full, TODAY) == 0


SMALL = st.integers(min_value=0, max_value=2_000)
#: Quantities small enough to reserve one unit at a time (a share of 0 with inbound does).
small_positions_st = st.builds(
    ItemSitePosition,
    on_hand=st.integers(min_value=-2_000, max_value=2_000),
    allocated=SMALL,
    quarantined=SMALL,
    reserved=SMALL,
    in_transit_by_eta=st.dictionaries(
        st.none()
        | st.dates(min_value=TODAY - timedelta(days=30), max_value=TODAY + timedelta(days=60)),
        st.integers(min_value=-100, max_value=2_000),
        max_size=4,
    ),
    safety_stock_override=st.none() | SMALL,
)


@given(small_positions_st, policies_st)
def test_reserving_the_atp_again_and_again_never_promises_a_unit_twice(
    pos: ItemSitePosition, policy: ChannelPolicy
) -> None:
    # With a share below 100 the channel may promise its share of what stock is left after
    # each reservation, so the ATP need not reach 0 at once; but all the reservations
    # together never take more than the units above the safety line plus the inbound.
    safety = (
        pos.safety_stock_override if pos.safety_stock_override is not None else policy.safety_stock
    )
    supply = max(0, pos.sellable - safety + inbound_within_horizon(pos, policy, TODAY))
    total = 0
    # Each round reserves at least one unit: more rounds than units would be an oversell.
    for _ in range(supply + 1):
        atp = atp_for_site(pos, policy, TODAY)
        if atp == 0:
            break
        pos = _with_reserved(pos, atp)
        total += atp
    assert atp_for_site(pos, policy, TODAY) == 0
    assert total <= supply
