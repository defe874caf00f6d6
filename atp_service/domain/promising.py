"""The promise: for each line, how many units, from which sites, by which delivery date.

``plan_promise`` is a pure function of the request (lines, channel policy, the sites a line
without a site may use, ship-to zone, strategy, allow_split), the item-sites' positions,
the sites' attributes and the time. It is what ``POST /v1/promise`` answers, and what a
reservation line without a site must hold: the same call at the moment of the hold.

Rules (contract section 4, "Promising"; docs/promising.md says the same with examples):

- A line's candidate sites: the one it names, or else the channel's sites; only sites the
  channel sells from and that deliver to ``ship_to`` count. Each offers its supply
  (``supply.site_supply``), every lot dated by the site's calendar (``sites``).
- ``earliest``: the earliest date D by which the whole line (or, short of supply, all
  that can be promised) can be delivered; then the fewest sites that cover it by D; then,
  among those, the sites first in priority order. ``fewest_sites``: the fewest sites, then
  the earliest D for so few, then priority. ``priority``: sites in priority order, each
  taking what it can. The chosen sites fill the line in priority order, each from its
  earliest lots. Priority order is ``priority`` ascending, then the site code.
- ``allow_split`` false: a line is served whole from one site or not at all.
- Lines are planned in the order given and share the supply: a unit promised to one line
  is not offered to the next.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from enum import StrEnum

from atp_service.domain.model import ChannelPolicy, ItemSite, ItemSitePosition
from atp_service.domain.sites import MAX_DAYS, SiteBook
from atp_service.domain.supply import SupplyKind, site_supply


class Strategy(StrEnum):
    EARLIEST = "earliest"
    PRIORITY = "priority"
    FEWEST_SITES = "fewest_sites"


@dataclass(frozen=True, slots=True)
class PromiseLine:
    """``qty`` units of ``sku``, from ``site`` alone, or from the channel's sites (None)."""

    sku: str
    qty: int
    site: str | None = None


@dataclass(frozen=True, slots=True)
class PromiseRequest:
    lines: tuple[PromiseLine, ...]
    policy: ChannelPolicy
    #: The sites a line without a site may use: the policy's, or every known site.
    channel_sites: tuple[str, ...]
    ship_to: str | None = None
    strategy: Strategy = Strategy.EARLIEST
    allow_split: bool = True

    def item_sites(self) -> list[ItemSite]:
        """Every item-site whose position the plan may read, once each, in a stable order."""
        wanted: dict[ItemSite, None] = {}
        for line in self.lines:
            for site in (line.site,) if line.site is not None else self.channel_sites:
                wanted[ItemSite(line.sku, site)] = None
        return list(wanted)


@dataclass(frozen=True, slots=True)
class Fulfilment:
    """``qty`` units from ``site``: its stock, or inbound due ``eta``."""

    site: str
    qty: int
    supply: SupplyKind
    eta: date | None
    ship_date: date
    delivery_date: date


@dataclass(frozen=True, slots=True)
class LinePromise:
    line: PromiseLine
    promised: int
    fulfilments: tuple[Fulfilment, ...] = ()

    @property
    def shortfall(self) -> int:
        return self.line.qty - self.promised

    @property
    def delivery_date(self) -> date | None:
        """When every promised unit has arrived; None when nothing is promised."""
        return max((f.delivery_date for f in self.fulfilments), default=None)

    def allocations(self) -> dict[str, int]:
        """Units per site (what a reservation holds), in the order of the fulfilments."""
        per_site: dict[str, int] = {}
        for f in self.fulfilments:
            per_site[f.site] = per_site.get(f.site, 0) + f.qty
        return per_site


@dataclass(frozen=True, slots=True)
class Promise:
    lines: tuple[LinePromise, ...]

    @property
    def delivery_date(self) -> date | None:
        """The latest line's date when every line is promised in full; else None."""
        if any(line.shortfall for line in self.lines):
            return None
        return max(
            (d for line in self.lines if (d := line.delivery_date) is not None), default=None
        )


# -- planning ------------------------------------------------------------------------------------


@dataclass(slots=True)
class _Lot:
    """A lot of one item-site, dated; ``left`` shrinks as lines take from it."""

    left: int
    supply: SupplyKind
    eta: date | None
    ship_date: date
    delivery_date: date


class _Offer:
    """One candidate site of one line: its lots (shared by every line of the same sku)."""

    __slots__ = ("lots", "rank", "site")

    def __init__(self, site: str, rank: tuple[int, str], lots: list[_Lot]) -> None:
        self.site = site
        self.rank = rank  # priority order
        self.lots = lots

    def by(self, day: date | None) -> int:
        """Units left that are delivered on or before ``day`` (None: all of them)."""
        return sum(lot.left for lot in self.lots if day is None or lot.delivery_date <= day)

    def date_of(self, qty: int) -> date | None:
        """The delivery date of the ``qty`` earliest units left; None if fewer are left."""
        total = 0
        for lot in self.lots:
            total += lot.left
            if lot.left and total >= qty:
                return lot.delivery_date
        return None


#: Inbound due later than this cannot be dated: handling (at most MAX_DAYS shipping days,
#: one open weekday at least) and transit (MAX_DAYS) would run past ``date.max``.
_LAST_DATABLE_ETA = date.max - timedelta(days=7 * MAX_DAYS + MAX_DAYS + 7)


class _Planner:
    """One plan: lots made once per item-site, taken from as the lines go."""

    def __init__(
        self,
        request: PromiseRequest,
        positions: Mapping[ItemSite, ItemSitePosition],
        sites: SiteBook,
        now: datetime,
    ) -> None:
        self.request = request
        self.positions = positions
        self.sites = sites
        self.now = now
        self.today = now.date()
        self._lots: dict[tuple[str, str], list[_Lot]] = {}
        self._dates: dict[tuple[str, date | None], tuple[date, date]] = {}
        #: Per site: its priority order and days to ``ship_to``; None: a line may not use it.
        self._sites: dict[str, tuple[tuple[int, str], int] | None] = {}

    def usable(self, site: str) -> tuple[tuple[int, str], int] | None:
        if site in self._sites:
            return self._sites[site]
        attributes = self.sites.of(site)
        transit = attributes.transit_to(self.request.ship_to)
        found = self._sites[site] = (
            ((attributes.priority, site), transit)
            if transit is not None and self.request.policy.sells_from(site)
            else None
        )
        return found

    def dates(self, site: str, eta: date | None, transit: int) -> tuple[date, date]:
        """(ship date, delivery date) of the site's stock (``eta`` None) or of inbound."""
        key = (site, eta)
        found = self._dates.get(key)
        if found is None:
            attributes = self.sites.of(site)
            ready = attributes.release_day(self.now)
            if eta is not None and eta > ready:
                ready = eta
            ship = attributes.ship_date(ready)
            found = self._dates[key] = (ship, ship + timedelta(days=transit))
        return found

    def offer(self, sku: str, site: str) -> _Offer | None:
        """The site's offer for ``sku``, or None when the line may not use the site."""
        usable = self.usable(site)
        if usable is None:
            return None
        rank, transit = usable
        key = (sku, site)
        lots = self._lots.get(key)
        if lots is None:
            position = self.positions.get(ItemSite(sku, site))
            lots = self._lots[key] = []
            if position is not None:
                for qty, kind, eta in site_supply(position, self.request.policy, self.today):
                    if eta is not None and eta > _LAST_DATABLE_ETA:
                        break  # its dates would pass the calendar's end (and later ones too)
                    ship, delivery = self.dates(site, eta, transit)
                    lots.append(_Lot(qty, kind, eta, ship, delivery))
        return _Offer(site, rank, lots)

    def line(self, line: PromiseLine) -> LinePromise:
        request = self.request
        candidates = (line.site,) if line.site is not None else request.channel_sites
        offers = [o for site in candidates if (o := self.offer(line.sku, site)) is not None]
        offers.sort(key=lambda o: o.rank)
        chosen = _choose(offers, line.qty, request.strategy, request.allow_split)
        fulfilments: list[Fulfilment] = []
        for offer, qty in chosen:
            for lot in offer.lots:
                if qty == 0:
                    break
                taken = min(qty, lot.left)
                if taken:
                    lot.left -= taken
                    qty -= taken
                    fulfilments.append(
                        Fulfilment(
                            offer.site,
                            taken,
                            lot.supply,
                            lot.eta,
                            lot.ship_date,
                            lot.delivery_date,
                        )
                    )
        fulfilments.sort(key=lambda f: f.delivery_date)  # stable: fill order within a date
        return LinePromise(line, sum(f.qty for f in fulfilments), tuple(fulfilments))


def plan_promise(
    request: PromiseRequest,
    positions: Mapping[ItemSite, ItemSitePosition],
    sites: SiteBook,
    now: datetime,
) -> Promise:
    """The promise for ``request`` given the positions (an item-site left out is empty), the
    sites' attributes and ``now`` (UTC)."""
    planner = _Planner(request, positions, sites, now)
    return Promise(tuple(planner.line(line) for line in request.lines))


# -- choosing the sites of one line ----------------------------------------------------------------


def _choose(
    offers: Sequence[_Offer], qty: int, strategy: Strategy, allow_split: bool
) -> list[tuple[_Offer, int]]:
    """(offer, units) in fill order. ``offers`` are in priority order."""
    if not allow_split:
        whole = [o for o in offers if o.by(None) >= qty]
        if not whole:
            return []
        if strategy is Strategy.PRIORITY:
            return [(whole[0], qty)]
        # earliest and fewest_sites alike: one site each, so the earliest, then priority
        best = min(whole, key=lambda o: (o.date_of(qty), o.rank))
        return [(best, qty)]
    need = min(qty, sum(o.by(None) for o in offers))
    if need == 0:
        return []
    if strategy is Strategy.PRIORITY:
        return _fill(offers, [o.by(None) for o in offers], need)
    days = sorted({lot.delivery_date for o in offers for lot in o.lots if lot.left})
    if strategy is Strategy.EARLIEST:
        # the first day by which all the sites together cover the need, then the fewest
        caps = _first_covering(offers, days, lambda caps: sum(caps) >= need)
        return _fill_fewest(offers, caps, need, _fewest(caps, need))
    # fewest_sites: so few sites, then the first day by which that many cover the need
    count = _fewest([o.by(None) for o in offers], need)
    caps = _first_covering(offers, days, lambda caps: sum(heapq.nlargest(count, caps)) >= need)
    return _fill_fewest(offers, caps, need, count)


def _first_covering(
    offers: Sequence[_Offer], days: Sequence[date], covers: Callable[[list[int]], bool]
) -> list[int]:
    """What each offer delivers by the first of ``days`` on which ``covers`` holds (by then
    the last day, when all of it is delivered, if none before)."""
    for day in days[:-1]:
        caps = [o.by(day) for o in offers]
        if covers(caps):
            return caps
    return [o.by(None) for o in offers]


def _fewest(caps: Sequence[int], need: int) -> int:
    """How few of ``caps`` can sum to ``need`` (the largest first)."""
    total = 0
    for count, cap in enumerate(sorted(caps, reverse=True), start=1):
        total += cap
        if total >= need:
            return count
    raise ValueError("the capacities cannot cover the need")  # callers made sure they do


def _fill_fewest(
    offers: Sequence[_Offer], caps: Sequence[int], need: int, count: int
) -> list[tuple[_Offer, int]]:
    """``count`` offers that cover ``need`` with ``caps``, the first in priority order that
    can (each offer is kept if the ones after it can still complete the cover), filled in
    priority order."""
    kept: list[int] = []
    left = need
    for i, cap in enumerate(caps):
        slots = count - len(kept)
        if slots == 0 or left <= 0:
            break
        if cap == 0:
            continue
        rest = left - cap
        if rest <= 0 or sum(heapq.nlargest(slots - 1, caps[i + 1 :])) >= rest:
            kept.append(i)
            left = rest
    return _fill([offers[i] for i in kept], [caps[i] for i in kept], need)


def _fill(offers: Sequence[_Offer], caps: Sequence[int], need: int) -> list[tuple[_Offer, int]]:
    """Each offer in turn takes what it can of what is still needed."""
    chosen: list[tuple[_Offer, int]] = []
    for offer, cap in zip(offers, caps, strict=True):
        if need == 0:
            break
        taken = min(cap, need)
        if taken:
            chosen.append((offer, taken))
            need -= taken
    return chosen
