"""ATP arithmetic: what a channel may promise from an item-site and from all its sites."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import date, timedelta

from atp_service.domain.model import ChannelPolicy, ItemSitePosition


def inbound_within_horizon(position: ItemSitePosition, policy: ChannelPolicy, today: date) -> int:
    """Inbound units the channel may promise: none unless the policy allows in-transit.

    With a horizon of 0 every inbound unit counts (the total, if positive); with a horizon
    of N days only units whose ETA is on or before today + N count (late ones included,
    unknown ETAs not), and a negative dated quantity (a receipt reported before its ASN)
    contributes nothing.
    """
    if not policy.include_in_transit:
        return 0
    horizon = policy.in_transit_horizon_days
    if horizon == 0:
        return max(0, position.in_transit)
    cutoff = today + timedelta(days=horizon)
    return sum(
        qty
        for eta, qty in position.in_transit_by_eta.items()
        if qty > 0 and eta is not None and eta <= cutoff
    )


def atp_for_site(position: ItemSitePosition, policy: ChannelPolicy, today: date) -> int:
    """atp(sku, site, channel) of the contract; never negative.

        stock = floor(min(sellable, sellable * share / 100)) - safety_stock
        owed  = max(0, -stock)
        atp   = max(0, stock) + max(0, inbound - owed)

    Units the site owes come out of the inbound first, so an inbound unit is never
    promised twice: reserving ``atp`` units leaves an ATP of 0 (with a share below 100 the
    channel may then promise its share of what stock is left, never more than exists).
    ``owed`` counts from the channel's safety line rather than from 0 (the contract's
    ``max(0, -sellable)``, the same whenever the safety stock is 0): otherwise units reserved
    below that line would be promised again from the inbound, and the safety stock with them.
    """
    stock = channel_stock(position, policy)
    owed = max(0, -stock)
    return max(0, stock) + max(0, inbound_within_horizon(position, policy, today) - owed)


def channel_stock(position: ItemSitePosition, policy: ChannelPolicy) -> int:
    """``stock`` of ``atp_for_site``: the channel's share of the sellable units less the safety
    stock (the item-site's override, else the channel's). Negative when the site owes units."""
    sellable = position.sellable
    # Integer floor division keeps the arithmetic exact for every quantity up to 10^9.
    shared = min(sellable, (sellable * policy.share) // 100)
    safety = (
        position.safety_stock_override
        if position.safety_stock_override is not None
        else policy.safety_stock
    )
    return shared - safety


def atp_for_channel(
    positions: Iterable[tuple[str, ItemSitePosition]], policy: ChannelPolicy, today: date
) -> int:
    """atp(sku, channel): the sum over the channel's sites of each site's ATP."""
    return sum(
        atp_for_site(position, policy, today)
        for site, position in positions
        if policy.sells_from(site)
    )
