"""The availability timeline: what a channel could ship of a sku by each coming date."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import date, timedelta

from atp_service.domain.model import ChannelPolicy, ItemSitePosition
from atp_service.domain.supply import site_supply


def availability_timeline(
    positions: Iterable[tuple[str, ItemSitePosition]],
    policy: ChannelPolicy,
    today: date,
    days: int,
) -> list[tuple[date, int]]:
    """(date, units) on ``today`` and on each later date up to ``today + days`` on which the
    units change: the stock part of the channel's ATP at its sites, plus the inbound it may
    promise whose ETA has come (overdue inbound counts from today). Inbound without an ETA
    never comes, so it is in no point; when every promisable inbound unit has an ETA inside
    the window, the last point is the channel's ATP (``atp_for_channel``).
    """
    last = today + timedelta(days=days)
    arriving: dict[date, int] = {}
    for site, position in positions:
        if not policy.sells_from(site):
            continue
        for lot in site_supply(position, policy, today):
            day = today if lot.eta is None or lot.eta < today else lot.eta
            if day <= last:
                arriving[day] = arriving.get(day, 0) + lot.qty
    points = [(today, arriving.pop(today, 0))]
    for day in sorted(arriving):
        points.append((day, points[-1][1] + arriving[day]))
    return points
