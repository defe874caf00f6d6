"""Sites as ship nodes: their attributes and the shipping calendar those attributes make.

Dates are UTC calendar days. A shipping day is a day not in the site's ``closed_weekdays``.
An order is released on the day it is placed, or the next day when it is placed after the
site's cutoff; stock ships ``handling_days`` shipping days after the first shipping day on or
after the release (inbound: after the later of its ETA and the release); it is delivered
``transit_days`` calendar days later (the carrier's days, not the site's).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import date, datetime, time, timedelta
from typing import Any, Final

DEFAULT_PRIORITY: Final = 100
#: Handling and transit beyond a year are typos; refusing them keeps dates in range.
MAX_DAYS: Final = 365
MAX_PRIORITY: Final = 10**9
WEEKDAYS: Final = range(1, 8)  # ISO: 1 = Monday
_DAY: Final = timedelta(days=1)


@dataclass(frozen=True, slots=True)
class SiteAttributes:
    """What the promise needs to know of a site (contract section 4, Promising).

    ``default_transit_days`` holds for ship-to zones not in ``transit_days``; ``None``: the
    site does not deliver there.
    """

    priority: int = DEFAULT_PRIORITY
    handling_days: int = 0
    cutoff: time | None = None
    closed_weekdays: frozenset[int] = frozenset()
    transit_days: Mapping[str, int] = field(default_factory=dict)
    default_transit_days: int | None = 0

    def __post_init__(self) -> None:
        if not 0 <= self.priority <= MAX_PRIORITY:
            raise ValueError(f"priority must be between 0 and {MAX_PRIORITY}")
        if not 0 <= self.handling_days <= MAX_DAYS:
            raise ValueError(f"handling_days must be between 0 and {MAX_DAYS}")
        if not self.closed_weekdays <= frozenset(WEEKDAYS):
            raise ValueError("closed_weekdays must be ISO weekdays, 1 (Monday) to 7 (Sunday)")
        if len(self.closed_weekdays) == len(WEEKDAYS):
            raise ValueError("closed_weekdays must leave at least one shipping day")
        for zone, days in self.transit_days.items():
            if not 0 <= days <= MAX_DAYS:
                raise ValueError(f"transit_days of {zone} must be between 0 and {MAX_DAYS}")
        if self.default_transit_days is not None and not 0 <= self.default_transit_days <= MAX_DAYS:
            raise ValueError(f"default_transit_days must be between 0 and {MAX_DAYS}, or null")

    # -- where it delivers ---------------------------------------------------------------------

    def transit_to(self, ship_to: str | None) -> int | None:
        """Days from shipment to delivery in ``ship_to``; None: no delivery there. Without a
        ship-to zone the answer is 0 (the delivery date is the ship date)."""
        if ship_to is None:
            return 0
        days = self.transit_days.get(ship_to)
        return days if days is not None else self.default_transit_days

    def delivers_to(self, ship_to: str | None) -> bool:
        return self.transit_to(ship_to) is not None

    # -- the calendar --------------------------------------------------------------------------

    def is_shipping_day(self, day: date) -> bool:
        return day.isoweekday() not in self.closed_weekdays

    def release_day(self, now: datetime) -> date:
        """The day an order placed at ``now`` (UTC) is released: today, or tomorrow once the
        cutoff has passed (the first shipping day from there is when handling starts)."""
        today = now.date()
        if self.cutoff is not None and now.time() > self.cutoff:
            return today + _DAY
        return today

    def ship_date(self, ready: date) -> date:
        """``handling_days`` shipping days after the first shipping day on or after ``ready``."""
        day = ready
        while not self.is_shipping_day(day):
            day += _DAY
        if not self.closed_weekdays:
            return day + timedelta(days=self.handling_days)
        for _ in range(self.handling_days):
            day += _DAY
            while not self.is_shipping_day(day):
                day += _DAY
        return day

    # -- as stored and shown -------------------------------------------------------------------

    def to_mapping(self) -> dict[str, Any]:
        """The attributes as the API shows them and the store keeps them (JSON-ready)."""
        return {
            "priority": self.priority,
            "handling_days": self.handling_days,
            "cutoff": self.cutoff.strftime("%H:%M") if self.cutoff is not None else None,
            "closed_weekdays": sorted(self.closed_weekdays),
            "transit_days": dict(sorted(self.transit_days.items())),
            "default_transit_days": self.default_transit_days,
        }

    @classmethod
    def from_mapping(cls, body: Mapping[str, Any]) -> SiteAttributes:
        """The inverse of ``to_mapping`` (every member present, values already checked)."""
        cutoff = body["cutoff"]
        return cls(
            priority=int(body["priority"]),
            handling_days=int(body["handling_days"]),
            cutoff=time.fromisoformat(cutoff) if cutoff is not None else None,
            closed_weekdays=frozenset(int(d) for d in body["closed_weekdays"]),
            transit_days={str(z): int(d) for z, d in body["transit_days"].items()},
            default_transit_days=(
                int(body["default_transit_days"])
                if body["default_transit_days"] is not None
                else None
            ),
        )


#: The attributes of a site nobody described: first-come priority, ships today, everywhere.
DEFAULT_SITE: Final = SiteAttributes()


@dataclass(frozen=True, slots=True)
class SiteBook:
    """Every described site's attributes; a site not in it has ``DEFAULT_SITE``'s."""

    sites: Mapping[str, SiteAttributes] = field(default_factory=dict)
    version: int = 0

    def of(self, site: str) -> SiteAttributes:
        return self.sites.get(site, DEFAULT_SITE)
