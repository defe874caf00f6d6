"""The availability timeline: the channel's stock now, plus its inbound as each ETA comes."""

from __future__ import annotations

from datetime import date, timedelta

from hypothesis import given
from hypothesis import strategies as st

from atp_service.domain import (
    ChannelPolicy,
    ItemSitePosition,
    atp_for_channel,
    availability_timeline,
)

TODAY = date(2026, 12, 4)
WEB = ChannelPolicy(
    sites=("DC-EAST", "DC-WEST"), include_in_transit=True, in_transit_horizon_days=7
)


def day(n: int) -> date:
    return TODAY + timedelta(days=n)


def test_without_inbound_there_is_one_point_the_atp() -> None:
    positions = [("DC-EAST", ItemSitePosition(on_hand=7)), ("DC-WEST", ItemSitePosition(on_hand=3))]

    assert availability_timeline(positions, WEB, TODAY, 30) == [(TODAY, 10)]


def test_each_eta_adds_its_units_and_the_last_point_is_the_atp() -> None:
    east = ItemSitePosition(on_hand=5, in_transit_by_eta={day(2): 4, day(6): 1, day(9): 50})
    west = ItemSitePosition(on_hand=2, in_transit_by_eta={day(2): 3, day(-1): 1})
    positions = [("DC-EAST", east), ("DC-WEST", west)]

    points = availability_timeline(positions, WEB, TODAY, 7)

    # day 9 is past the horizon (7 days): the channel may not promise it, so it never comes
    assert points == [(TODAY, 8), (day(2), 15), (day(6), 16)]
    assert points[-1][1] == atp_for_channel(positions, WEB, TODAY)


def test_a_shorter_window_stops_early_and_sites_outside_the_channel_count_nothing() -> None:
    east = ItemSitePosition(on_hand=5, in_transit_by_eta={day(2): 4, day(6): 1})
    positions = [("DC-EAST", east), ("STORE-1", ItemSitePosition(on_hand=100))]

    assert availability_timeline(positions, WEB, TODAY, 3) == [(TODAY, 5), (day(2), 9)]


def test_units_the_site_owes_come_out_of_the_first_inbound() -> None:
    east = ItemSitePosition(on_hand=1, reserved=3, in_transit_by_eta={day(1): 2, day(3): 5})

    assert availability_timeline([("DC-EAST", east)], WEB, TODAY, 7) == [(TODAY, 0), (day(3), 5)]


@given(
    st.lists(
        st.builds(
            ItemSitePosition,
            on_hand=st.integers(min_value=0, max_value=50),
            reserved=st.integers(min_value=0, max_value=20),
            in_transit_by_eta=st.dictionaries(
                st.integers(min_value=-3, max_value=12).map(day),
                st.integers(min_value=1, max_value=30),
                max_size=3,
            ),
        ),
        max_size=3,
    ),
    st.integers(min_value=0, max_value=10),
)
def test_the_timeline_rises_to_the_atp_once_every_eta_is_inside_the_window(
    positions: list[ItemSitePosition], horizon: int
) -> None:
    policy = ChannelPolicy(include_in_transit=True, in_transit_horizon_days=horizon)
    named = [(f"S{i}", p) for i, p in enumerate(positions)]

    window = horizon or 30  # the route's default: the channel's horizon, or 30 days

    points = availability_timeline(named, policy, TODAY, window)

    dates = [d for d, _ in points]
    units = [u for _, u in points]
    assert dates[0] == TODAY and dates == sorted(set(dates))
    assert all(d <= day(window) for d in dates)
    assert units == sorted(units)
    assert units[-1] == atp_for_channel(named, policy, TODAY)
