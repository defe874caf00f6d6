"""Supply lots: the ATP of an item-site for a channel, by when its units are there."""

from __future__ import annotations

from datetime import date, timedelta

from hypothesis import given
from hypothesis import strategies as st

from atp_service.domain import (
    ChannelPolicy,
    ItemSitePosition,
    SupplyKind,
    SupplyLot,
    atp_for_site,
    site_supply,
)

TODAY = date(2026, 12, 4)
INBOUND = ChannelPolicy(include_in_transit=True, in_transit_horizon_days=7)


def day(n: int) -> date:
    return TODAY + timedelta(days=n)


def test_stock_comes_first_then_inbound_by_eta() -> None:
    position = ItemSitePosition(on_hand=10, in_transit_by_eta={day(5): 3, day(2): 4})

    assert site_supply(position, INBOUND, TODAY) == (
        SupplyLot(10, SupplyKind.ON_HAND),
        SupplyLot(4, SupplyKind.IN_TRANSIT, day(2)),
        SupplyLot(3, SupplyKind.IN_TRANSIT, day(5)),
    )


def test_inbound_is_no_supply_unless_the_policy_includes_it_within_its_horizon() -> None:
    position = ItemSitePosition(on_hand=1, in_transit_by_eta={day(2): 4, day(8): 6})

    assert site_supply(position, ChannelPolicy(), TODAY) == (SupplyLot(1, SupplyKind.ON_HAND),)
    assert [lot.eta for lot in site_supply(position, INBOUND, TODAY)] == [None, day(2)]


def test_owed_units_come_out_of_the_earliest_inbound() -> None:
    # 3 on hand, 5 reserved: the site owes 2, so the first 2 arriving are not supply
    position = ItemSitePosition(on_hand=3, reserved=5, in_transit_by_eta={day(1): 2, day(3): 4})

    assert site_supply(position, INBOUND, TODAY) == (SupplyLot(4, SupplyKind.IN_TRANSIT, day(3)),)
    assert atp_for_site(position, INBOUND, TODAY) == 4


def test_a_safety_stock_the_stock_cannot_cover_is_owed_too() -> None:
    position = ItemSitePosition(on_hand=1, in_transit_by_eta={day(1): 5})
    policy = ChannelPolicy(safety_stock=3, include_in_transit=True)

    assert site_supply(position, policy, TODAY) == (SupplyLot(3, SupplyKind.IN_TRANSIT, day(1)),)


def test_inbound_without_an_eta_cannot_be_dated_so_it_is_no_lot() -> None:
    everything = ChannelPolicy(include_in_transit=True)  # horizon 0: every inbound unit
    position = ItemSitePosition(in_transit_by_eta={None: 5, day(40): 2})

    assert atp_for_site(position, everything, TODAY) == 7
    assert site_supply(position, everything, TODAY) == (
        SupplyLot(2, SupplyKind.IN_TRANSIT, day(40)),
    )


def test_a_receipt_before_its_asn_takes_from_the_earliest_inbound_without_a_horizon() -> None:
    everything = ChannelPolicy(include_in_transit=True)
    position = ItemSitePosition(in_transit_by_eta={day(1): 4, day(2): 4, None: -3})

    assert site_supply(position, everything, TODAY) == (
        SupplyLot(1, SupplyKind.IN_TRANSIT, day(1)),
        SupplyLot(4, SupplyKind.IN_TRANSIT, day(2)),
    )


QTY = st.integers(min_value=0, max_value=1000)
ETAS = st.one_of(st.none(), st.integers(min_value=-5, max_value=40).map(day))
POSITIONS = st.builds(
    ItemSitePosition,
    on_hand=QTY,
    allocated=QTY,
    quarantined=QTY,
    reserved=QTY,
    in_transit_by_eta=st.dictionaries(ETAS, st.integers(min_value=-50, max_value=1000)),
    safety_stock_override=st.one_of(st.none(), QTY),
)
POLICIES = st.builds(
    ChannelPolicy,
    safety_stock=st.integers(min_value=0, max_value=100),
    share=st.integers(min_value=0, max_value=100),
    include_in_transit=st.booleans(),
    in_transit_horizon_days=st.integers(min_value=0, max_value=30),
)


@given(POSITIONS, POLICIES)
def test_the_lots_never_sum_to_more_than_the_atp(
    position: ItemSitePosition, policy: ChannelPolicy
) -> None:
    lots = site_supply(position, policy, TODAY)

    assert sum(lot.qty for lot in lots) <= atp_for_site(position, policy, TODAY)
    assert all(lot.qty > 0 for lot in lots)
    assert all(lot.kind is SupplyKind.IN_TRANSIT for lot in lots[1:])  # stock first
    etas = [lot.eta for lot in lots if lot.eta is not None]
    assert etas == sorted(etas)


@given(POSITIONS, POLICIES)
def test_the_lots_are_the_whole_atp_when_every_inbound_unit_is_dated(
    position: ItemSitePosition, policy: ChannelPolicy
) -> None:
    dated = {eta: qty for eta, qty in position.in_transit_by_eta.items() if eta and qty > 0}
    position = ItemSitePosition(
        on_hand=position.on_hand,
        reserved=position.reserved,
        in_transit_by_eta=dated,
        safety_stock_override=position.safety_stock_override,
    )

    lots = site_supply(position, policy, TODAY)

    assert sum(lot.qty for lot in lots) == atp_for_site(position, policy, TODAY)
