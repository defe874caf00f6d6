"""The inventory vocabulary and ATP arithmetic; standard library only, no I/O."""

from atp_service.domain.atp import atp_for_channel, atp_for_site, inbound_within_horizon
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

__all__ = [
    "BUCKETS",
    "DEFAULT_AUTHORITY",
    "Bucket",
    "ChannelPolicy",
    "InventoryDelta",
    "InventorySnapshot",
    "ItemSite",
    "ItemSitePosition",
    "Source",
    "atp_for_channel",
    "atp_for_site",
    "inbound_within_horizon",
    "is_valid_channel",
    "is_valid_site",
    "is_valid_sku",
]
