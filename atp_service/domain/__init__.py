"""The inventory vocabulary and ATP arithmetic; standard library only, no I/O."""

from atp_service.domain.atp import (
    atp_for_channel,
    atp_for_site,
    channel_stock,
    inbound_within_horizon,
)
from atp_service.domain.model import (
    BUCKETS,
    DEFAULT_AUTHORITY,
    Bucket,
    ChannelPolicy,
    InventoryDelta,
    InventorySnapshot,
    ItemSite,
    ItemSitePosition,
    Source,
    is_valid_channel,
    is_valid_site,
    is_valid_sku,
)
from atp_service.domain.promising import (
    Fulfilment,
    LinePromise,
    Promise,
    PromiseLine,
    PromiseRequest,
    Strategy,
    plan_promise,
)
from atp_service.domain.sites import DEFAULT_SITE, SiteAttributes, SiteBook
from atp_service.domain.supply import SupplyKind, SupplyLot, site_supply
from atp_service.domain.timeline import availability_timeline

__all__ = [
    "BUCKETS",
    "DEFAULT_AUTHORITY",
    "DEFAULT_SITE",
    "Bucket",
    "ChannelPolicy",
    "Fulfilment",
    "InventoryDelta",
    "InventorySnapshot",
    "ItemSite",
    "ItemSitePosition",
    "LinePromise",
    "Promise",
    "PromiseLine",
    "PromiseRequest",
    "SiteAttributes",
    "SiteBook",
    "Source",
    "Strategy",
    "SupplyKind",
    "SupplyLot",
    "atp_for_channel",
    "atp_for_site",
    "availability_timeline",
    "channel_stock",
    "inbound_within_horizon",
    "is_valid_channel",
    "is_valid_site",
    "is_valid_sku",
    "plan_promise",
    "site_supply",
]
