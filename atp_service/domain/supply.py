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

from dataclasses import dataclass
from datetime import date, timedelta
from enum import StrEnum

from atp_service.domain.atp import channel_stock, inbound_within_horizon
from atp_service.domain.model import ChannelPolicy, ItemSitePosition


class SupplyKind(StrEnum):
    ON_HAND = "on_hand"
    IN_TRANSIT = "in_transit"


@dataclass(frozen=True, slots=True)
class SupplyLot:
    """``qty`` units of one kind; inbound carries its ETA (``None`` for stock)."""

    qty: int
    kind: SupplyKind
    eta: date | None = None


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
    lots: list[SupplyLot] = []
    if stock > 0:
        lots.append(SupplyLot(stock, SupplyKind.ON_HAND))
    if not policy.include_in_transit:
        return tuple(lots)
    owed = max(0, -stock)
    # Never more than atp_for_site's inbound part, whatever the lines look like.
    left = inbound_within_horizon(position, policy, today) - owed
    if left <= 0:
        return tuple(lots)
    horizon = policy.in_transit_horizon_days
    last_eta = today + timedelta(days=horizon) if horizon else date.max
    dated: list[tuple[date, int]] = []
    for eta, qty in position.in_transit_by_eta.items():
        if qty < 0 and not horizon:
            owed -= qty
        elif qty > 0 and eta is not None and eta <= last_eta:
            dated.append((eta, qty))
    dated.sort()
    for eta, qty in dated:
        taken = min(qty, owed)
        owed -= taken
        qty = min(qty - taken, left)
        if qty > 0:
            left -= qty
            lots.append(SupplyLot(qty, SupplyKind.IN_TRANSIT, eta))
    return tuple(lots)
