"""Site attributes: where a site delivers, and its calendar (cutoff, handling, closed days)."""

from __future__ import annotations

from datetime import UTC, date, datetime, time

import pytest

from atp_service.domain import DEFAULT_SITE, SiteAttributes, SiteBook

FRIDAY = date(2026, 12, 4)
SATURDAY, SUNDAY, MONDAY, TUESDAY = (date(2026, 12, d) for d in (5, 6, 7, 8))


def at(day: date, hh: int, mm: int = 0, ss: int = 0) -> datetime:
    return datetime(day.year, day.month, day.day, hh, mm, ss, tzinfo=UTC)


def test_a_site_nobody_described_ships_today_and_delivers_everywhere_at_once() -> None:
    assert DEFAULT_SITE.priority == 100
    assert DEFAULT_SITE.ship_date(DEFAULT_SITE.release_day(at(FRIDAY, 23, 59))) == FRIDAY
    assert DEFAULT_SITE.transit_to("ANYWHERE") == 0
    assert SiteBook().of("DC-NOWHERE") is DEFAULT_SITE


def test_an_order_after_the_cutoff_is_released_the_next_day() -> None:
    site = SiteAttributes(cutoff=time(15, 0))

    assert site.release_day(at(FRIDAY, 14, 59, 59)) == FRIDAY
    assert site.release_day(at(FRIDAY, 15, 0, 0)) == FRIDAY  # at the cutoff is not after it
    assert site.release_day(at(FRIDAY, 15, 0, 1)) == SATURDAY


def test_handling_days_are_shipping_days_so_closed_days_are_skipped() -> None:
    site = SiteAttributes(handling_days=1, closed_weekdays=frozenset({6, 7}))

    assert site.ship_date(FRIDAY) == MONDAY
    assert site.ship_date(SATURDAY) == TUESDAY  # released Monday, shipped a day later
    assert SiteAttributes(handling_days=2).ship_date(FRIDAY) == SUNDAY


def test_a_release_on_a_closed_day_waits_for_the_next_shipping_day() -> None:
    site = SiteAttributes(closed_weekdays=frozenset({7}), cutoff=time(12, 0))

    assert site.ship_date(site.release_day(at(SATURDAY, 13, 0))) == MONDAY
    assert site.ship_date(site.release_day(at(SUNDAY, 9, 0))) == MONDAY


def test_transit_days_are_per_zone_with_a_default_and_null_means_no_delivery() -> None:
    site = SiteAttributes(transit_days={"US-EAST": 1, "US-WEST": 4}, default_transit_days=None)

    assert site.transit_to("US-EAST") == 1
    assert site.transit_to("US-WEST") == 4
    assert site.transit_to("EU") is None and not site.delivers_to("EU")
    assert site.transit_to(None) == 0  # no ship-to: delivered when shipped
    assert SiteAttributes(default_transit_days=3).transit_to("EU") == 3


@pytest.mark.parametrize(
    ("attributes", "complaint"),
    [
        ({"handling_days": -1}, "handling_days"),
        ({"closed_weekdays": frozenset({0})}, "closed_weekdays"),
        ({"closed_weekdays": frozenset(range(1, 8))}, "at least one shipping day"),
        ({"transit_days": {"US-EAST": -2}}, "transit_days of US-EAST"),
        ({"default_transit_days": -1}, "default_transit_days"),
        ({"priority": -5}, "priority"),
    ],
)
def test_impossible_attributes_are_refused_naming_the_field(
    attributes: dict[str, object], complaint: str
) -> None:
    with pytest.raises(ValueError, match=complaint):
        SiteAttributes(**attributes)  # type: ignore[arg-type]


def test_attributes_survive_their_mapping() -> None:
    site = SiteAttributes(
        priority=10,
        handling_days=1,
        cutoff=time(15, 30),
        closed_weekdays=frozenset({7, 6}),
        transit_days={"US-WEST": 4, "US-EAST": 1},
        default_transit_days=None,
    )

    mapping = site.to_mapping()

    assert mapping == {
        "priority": 10,
        "handling_days": 1,
        "cutoff": "15:30",
        "closed_weekdays": [6, 7],
        "transit_days": {"US-EAST": 1, "US-WEST": 4},
        "default_transit_days": None,
    }
    assert SiteAttributes.from_mapping(mapping) == site
