"""Identifiers, buckets, item-site positions, channel policies and inbound inventory events."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import date
from enum import StrEnum
from typing import Final

SKU_PATTERN: Final = r"[A-Za-z0-9][A-Za-z0-9._:/-]{0,63}"
SITE_PATTERN: Final = r"[A-Za-z0-9][A-Za-z0-9._-]{0,31}"
CHANNEL_PATTERN: Final = r"[a-z0-9][a-z0-9._-]{0,31}"
#: A ship-to zone (``US-EAST``): what a site's ``transit_days`` are keyed by.
ZONE_PATTERN: Final = r"[A-Za-z0-9][A-Za-z0-9._-]{0,31}"
MAX_ABS_DELTA: Final = 10**9

_SKU_RE: Final = re.compile(SKU_PATTERN)
_SITE_RE: Final = re.compile(SITE_PATTERN)
_CHANNEL_RE: Final = re.compile(CHANNEL_PATTERN)


def is_valid_sku(value: str) -> bool:
    return _SKU_RE.fullmatch(value) is not None


def is_valid_site(value: str) -> bool:
    return _SITE_RE.fullmatch(value) is not None


def is_valid_channel(value: str) -> bool:
    return _CHANNEL_RE.fullmatch(value) is not None


class Bucket(StrEnum):
    """A quantity bucket folded from a source system."""

    ON_HAND = "on_hand"
    ALLOCATED = "allocated"
    QUARANTINED = "quarantined"
    IN_TRANSIT = "in_transit"


BUCKETS: Final = tuple(Bucket)


class Source(StrEnum):
    WMS = "wms"
    ERP = "erp"


# Which source owns which bucket, unless configuration says otherwise (contract section 2).
DEFAULT_AUTHORITY: Final[dict[Bucket, Source]] = {
    Bucket.ON_HAND: Source.WMS,
    Bucket.ALLOCATED: Source.WMS,
    Bucket.QUARANTINED: Source.WMS,
    Bucket.IN_TRANSIT: Source.ERP,
}


@dataclass(frozen=True, slots=True)
class ItemSite:
    sku: str
    site: str

    @property
    def kafka_key(self) -> str:
        """The inbound and outbound message key, so one item-site lives on one partition."""
        return f"{self.sku}@{self.site}"


@dataclass(frozen=True, slots=True)
class ItemSitePosition:
    """Everything known about one item-site, as read from the store.

    ``in_transit_by_eta`` maps an expected arrival date to units; ``None`` holds inbound
    whose ETA is unknown. ``safety_stock_override`` beats every channel's safety stock.
    ``sources`` maps each source heard from (``wms``, ``erp``, ...) to the ``occurred_at``
    (epoch ms) of the newest event of that source folded into the item-site.
    """

    on_hand: int = 0
    allocated: int = 0
    quarantined: int = 0
    reserved: int = 0
    in_transit_by_eta: dict[date | None, int] = field(default_factory=dict)
    safety_stock_override: int | None = None
    version: int = 0
    as_of_ms: int = 0
    sources: dict[str, int] = field(default_factory=dict)

    @property
    def in_transit(self) -> int:
        return sum(self.in_transit_by_eta.values())

    @property
    def sellable(self) -> int:
        """May be negative: the WMS may report a pick before the receipt."""
        return self.on_hand - self.allocated - self.quarantined - self.reserved


#: Why a channel policy with ``"sites": []`` is refused.
EMPTY_SITES: Final = (
    "sites must name at least one site (null: every site); a channel that should promise "
    "nothing takes share 0 and include_in_transit false"
)


@dataclass(frozen=True, slots=True)
class ChannelPolicy:
    """What a sales channel may promise (contract section 2, channel policy).

    ``sites`` is never empty where a policy is configured (the API and the channels file
    refuse it with ``EMPTY_SITES``): null means every site, and "sells nothing" is said
    with ``share`` 0 and no in-transit.
    """

    sites: tuple[str, ...] | None = None  # None: every site
    safety_stock: int = 0
    share: int = 100  # percent of sellable units
    include_in_transit: bool = False
    in_transit_horizon_days: int = 0  # 0: no horizon, every inbound unit counts

    def __post_init__(self) -> None:
        if not 0 <= self.share <= 100:
            raise ValueError("share must be between 0 and 100")
        if self.safety_stock < 0:
            raise ValueError("safety_stock must not be negative")
        if self.in_transit_horizon_days < 0:
            raise ValueError("in_transit_horizon_days must not be negative")

    def sells_from(self, site: str) -> bool:
        return self.sites is None or site in self.sites


@dataclass(frozen=True, slots=True)
class InventoryDelta:
    """``inventory.delta.v1``: one bucket of one item-site moved by ``delta`` units."""

    event_id: str
    source: Source
    sku: str
    site: str
    bucket: Bucket
    delta: int
    occurred_at: str
    source_seq: int | None = None
    correlation_id: str | None = None
    reason: str | None = None
    eta: date | None = None
    reservation_id: str | None = None

    @property
    def item_site(self) -> ItemSite:
        return ItemSite(self.sku, self.site)


@dataclass(frozen=True, slots=True)
class InventorySnapshot:
    """``inventory.snapshot.v1``: the full position of one item-site as its source sees it.

    ``in_transit_by_eta`` is an optional extension for ERP snapshots: when present, it
    splits ``quantities["in_transit"]`` by arrival date (``None`` for unknown ETA).
    """

    event_id: str
    source: Source
    sku: str
    site: str
    quantities: dict[Bucket, int]
    occurred_at: str
    source_seq: int | None = None
    correlation_id: str | None = None
    in_transit_by_eta: dict[date | None, int] | None = None

    @property
    def item_site(self) -> ItemSite:
        return ItemSite(self.sku, self.site)
