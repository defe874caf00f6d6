"""Supply: the units a channel may promise from an item-site, in lots by when they are there.

A site's ATP for a channel (``atp_for_site``) is its stock part, ``max(0, stock)``, plus
the inbound it may promise once the units the site owes have come out of it. The lots say
which units those are: the stock now (``on_hand``), then inbound by ETA (``in_transit``),
the owed units taken out of the earliest inbound first (a backorder is filled by the first
receipt). So the lots never sum to more than the ATP, and to exactly the ATP unless some
promisable inbound has no ETA (with a horizon of 0, every inbound unit counts, dated or
not): a unit without a date cannot be promised for a date, so no lot holds it.
"""

from __future__ import annotations

from datetime import date, timedelta
from enum import StrEnum
from typing import NamedTuple

from atp_service.domain.atp import channel_stock, inbound_within_horizon
from atp_service.domain.model import ChannelPolicy, ItemSitePosition


class SupplyKind(StrEnum):
    ON_HAND = "on_hand"
    IN_TRANSIT = "in_transit"


class SupplyLot(NamedTuple):
    """``qty`` units of one kind; inbound carries its ETA (``None`` for stock). A tuple: a
    promise makes one per item-site it looks at."""

    qty: int
    kind: SupplyKind
    eta: date | None = None


_NONE: tuple[SupplyLot, ...] = ()


def site_supply(
    position: ItemSitePosition, policy: ChannelPolicy, today: date
) -> tuple[SupplyLot, ...]:
    """The lots the channel may promise from one item-site: stock first, then inbound by ETA.

    Inbound counts only where the policy includes in-transit, within its horizon, exactly
    as ``inbound_within_horizon`` counts it. With a horizon of 0 an inbound line of negative
    quantity (a receipt reported before its ASN) reduces the total, so it comes out of the
    earliest dated inbound too, with the owed units.
    """
    stock = channel_stock(position, policy)
    lots = (SupplyLot(stock, SupplyKind.ON_HAND),) if stock > 0 else _NONE
    by_eta = position.in_transit_by_eta
    if not by_eta or not policy.include_in_transit:
        return lots
    owed = max(0, -stock)
    horizon = policy.in_transit_horizon_days
    last_eta = today + timedelta(days=horizon) if horizon else date.max
    dated: list[tuple[date, int]] = []
    for eta, qty in by_eta.items():
        if qty < 0 and not horizon:
            owed -= qty
        elif qty > 0 and eta is not None and eta <= last_eta:
            dated.append((eta, qty))
    if not dated:
        return lots
    # Never more than atp_for_site's inbound part, whatever the lines look like (with a
    # horizon, that part is the dated lines inside it: what ``dated`` holds).
    total = (
        sum(qty for _, qty in dated) if horizon else inbound_within_horizon(position, policy, today)
    )
    left = total - max(0, -stock)
    dated.sort()
    inbound: list[SupplyLot] = []
    for eta, qty in dated:
        if left <= 0:
            break
        taken = min(qty, owed)
        owed -= taken
        qty = min(qty - taken, left)
        if qty > 0:
            left -= qty
            inbound.append(SupplyLot(qty, SupplyKind.IN_TRANSIT, eta))
    return (*lots, *inbound)
