"""Request and response bodies of the HTTP API (contract section 4)."""

from __future__ import annotations

from typing import Annotated, Any, NotRequired

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    StrictInt,
    StringConstraints,
    field_validator,
)
from pydantic_core import PydanticCustomError
from typing_extensions import TypedDict

from atp_service.config import SITE_EXAMPLE, SiteSpec
from atp_service.domain import ChannelPolicy
from atp_service.domain.model import (
    CHANNEL_PATTERN,
    EMPTY_SITES,
    MAX_ABS_DELTA,
    SITE_PATTERN,
    SKU_PATTERN,
    ZONE_PATTERN,
)

# Anchored for pydantic, which searches rather than matches (its engine's `$` is end of text).
SKU_REGEX = f"^(?:{SKU_PATTERN})$"
SITE_REGEX = f"^(?:{SITE_PATTERN})$"
CHANNEL_REGEX = f"^(?:{CHANNEL_PATTERN})$"

Sku = Annotated[str, StringConstraints(pattern=SKU_REGEX)]
SiteCode = Annotated[str, StringConstraints(pattern=SITE_REGEX)]
Channel = Annotated[str, StringConstraints(pattern=CHANNEL_REGEX)]
ZONE_REGEX = f"^(?:{ZONE_PATTERN})$"
Zone = Annotated[str, StringConstraints(pattern=ZONE_REGEX)]

MAX_BATCH_ITEMS = 1000
MAX_QUANTITY = MAX_ABS_DELTA
#: A horizon beyond a century is a typo; refusing it keeps date arithmetic in range.
MAX_HORIZON_DAYS = 36_500

_STRICT_BODY = ConfigDict(extra="forbid")


# -- availability ----------------------------------------------------------------------------


class SiteAvailability(BaseModel):
    site: str
    atp: int = Field(
        description="What the channel may promise from this site: max(0, stock) + "
        "max(0, inbound - owed), where stock = floor(min(sellable, sellable * share / 100)) "
        "- safety_stock, owed = max(0, -stock) and inbound is the in-transit the channel "
        "may promise. Units the site owes come out of the inbound first."
    )
    on_hand: int
    allocated: int
    quarantined: int
    reserved: int
    in_transit: int = Field(description="All inbound units, whatever their ETA.")
    version: int = Field(description="Increases with every change to the item-site.")
    as_of: str | None = Field(
        description="RFC 3339 time of the item-site's last change; null if never seen."
    )
    sources: dict[str, str] = Field(
        description="Per source that has sent anything for this item-site (`wms`, `erp`, ...), "
        "the occurred_at (RFC 3339 UTC) of the newest event of that source folded into it, "
        "whether or not it changed a quantity.",
        examples=[{"wms": "2026-11-23T10:00:46.120Z", "erp": "2026-11-23T09:12:03.000Z"}],
    )


class SourceSync(BaseModel):
    lag_seconds: float | None = Field(
        description="How long the oldest inbound event of this source not yet folded has "
        "waited (0 when the fold is caught up); null when no worker has measured it."
    )
    as_of: str | None = Field(description="When the workers took that measure.")


class Availability(BaseModel):
    sku: str
    channel: str
    atp: int = Field(description="Sum of the sites' ATP.")
    sites: list[SiteAvailability]
    as_of: str | None = Field(
        description="The latest as_of among the sites: the answer reflects every change "
        "up to this time. Null when no site has ever seen the sku."
    )
    sync: dict[str, SourceSync] = Field(
        description="Per source, how far the fold is behind what it sent: with `sources`, "
        "tells a quiet item (sync caught up, source quiet) from a stale one (sync behind)."
    )


class BatchItem(TypedDict):
    __pydantic_config__ = _STRICT_BODY  # type: ignore[misc]

    sku: Sku
    site: NotRequired[SiteCode | None]


class AvailabilityBatchRequest(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "channel": "web",
                    "items": [{"sku": "SKU-1001"}, {"sku": "SKU-1002", "site": "DC-EAST"}],
                }
            ]
        },
    )

    channel: Channel
    items: Annotated[list[BatchItem], Field(min_length=1, max_length=MAX_BATCH_ITEMS)]


class AvailabilityBatch(BaseModel):
    items: list[Availability]


# -- admin -------------------------------------------------------------------------------------


class ChannelPolicyBody(BaseModel):
    """A channel's whole policy; a PUT replaces it, and omitted fields take their defaults."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "sites": ["DC-EAST", "DC-WEST"],
                    "safety_stock": 2,
                    "share": 80,
                    "include_in_transit": True,
                    "in_transit_horizon_days": 7,
                }
            ]
        },
    )

    sites: list[SiteCode] | None = Field(
        default=None,
        min_length=1,
        description="Sites the channel may sell from (at least one); null: every site. "
        "To stop a channel promising, give it `share` 0 and no in-transit.",
    )
    safety_stock: Annotated[StrictInt, Field(ge=0, le=MAX_QUANTITY)] = 0
    share: Annotated[StrictInt, Field(ge=0, le=100)] = 100
    include_in_transit: StrictBool = False
    in_transit_horizon_days: Annotated[StrictInt, Field(ge=0, le=MAX_HORIZON_DAYS)] = 0

    @field_validator("sites", mode="before")
    @classmethod
    def _sites_not_empty(cls, value: Any) -> Any:
        if isinstance(value, list) and not value:
            raise PydanticCustomError("too_short", EMPTY_SITES)
        return value

    def to_policy(self) -> ChannelPolicy:
        return ChannelPolicy(
            sites=tuple(dict.fromkeys(self.sites)) if self.sites is not None else None,
            safety_stock=self.safety_stock,
            share=self.share,
            include_in_transit=self.include_in_transit,
            in_transit_horizon_days=self.in_transit_horizon_days,
        )


def policy_body(policy: ChannelPolicy) -> dict[str, Any]:
    return {
        "sites": list(policy.sites) if policy.sites is not None else None,
        "safety_stock": policy.safety_stock,
        "share": policy.share,
        "include_in_transit": policy.include_in_transit,
        "in_transit_horizon_days": policy.in_transit_horizon_days,
    }


class ChannelPolicyOut(ChannelPolicyBody):
    model_config = ConfigDict(
        extra="ignore",
        json_schema_extra={
            "examples": [
                {
                    "channel": "web",
                    "sites": ["DC-EAST", "DC-WEST"],
                    "safety_stock": 2,
                    "share": 80,
                    "include_in_transit": True,
                    "in_transit_horizon_days": 7,
                    "changed_by": "ops",
                    "changed_at": "2026-11-23T10:00:00.000Z",
                    "version": 12,
                }
            ]
        },
    )

    channel: str
    changed_by: str | None = Field(
        description="The name of the API key that put this policy in force."
    )
    changed_at: str | None = Field(description="When it did.")
    version: int = Field(description="Version of the whole policy set after this change.")


class ChannelPolicyInForce(ChannelPolicyBody):
    model_config = ConfigDict(extra="ignore")

    changed_by: str | None = Field(
        description="The name of the API key that put this policy in force; null for a "
        "policy seeded from ATP_CHANNELS_FILE."
    )
    changed_at: str | None = Field(description="When it did (null: seeded).")


class ChannelPolicies(BaseModel):
    version: int = Field(description="Increases with every policy change.")
    default: ChannelPolicyBody = Field(
        description="The policy of every channel not listed in `channels`."
    )
    channels: dict[str, ChannelPolicyInForce]


class SafetyStockBody(BaseModel):
    # No example with null: FastAPI drops None values from the document it serves.
    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [{"safety_stock": 5}]})

    safety_stock: Annotated[StrictInt, Field(ge=0, le=MAX_QUANTITY)] | None = Field(
        description="Units held back at this item-site for every channel; null clears "
        "the override (each channel's own safety stock applies again)."
    )


class SafetyStockOut(BaseModel):
    sku: str
    site: str
    safety_stock: int | None
    version: int = Field(description="The item-site's version after the change.")
    changed_by: str = Field(
        description="The name of the API key that made the change (also in the events)."
    )


# -- sites -------------------------------------------------------------------------------------


class SiteAttributesOut(SiteSpec):
    """A site's attributes as they are in force (``default_transit_days`` resolved)."""

    model_config = ConfigDict(extra="ignore")

    default_transit_days: int | None = Field(
        description="Days to zones not in `transit_days`; null: the site does not deliver there."
    )


class SiteInForce(SiteAttributesOut):
    """A site's attributes, and who put them in force."""

    changed_by: str | None = Field(
        description="The name of the API key that put these attributes in force; null for a "
        "site seeded from ATP_SITES_FILE."
    )
    changed_at: str | None = Field(description="When it did (null: seeded).")


class SiteOut(SiteInForce):
    model_config = ConfigDict(
        extra="ignore",
        json_schema_extra={
            "examples": [
                {
                    "site": "DC-EAST",
                    **SITE_EXAMPLE,
                    "changed_by": "ops",
                    "changed_at": "2026-11-23T10:00:00.000Z",
                    "version": 3,
                }
            ]
        },
    )

    site: str
    version: int = Field(description="Version of the whole site book after this change.")


class Sites(BaseModel):
    version: int = Field(description="Increases with every change of a site's attributes.")
    default: SiteAttributesOut = Field(
        description="The attributes of every site not listed in `sites`."
    )
    sites: dict[str, SiteInForce]


# -- problems ----------------------------------------------------------------------------------


class FieldError(BaseModel):
    field: str = Field(description="Where: `path.sku`, `query.channel`, `body.items.3.site`...")
    message: str


class Problem(BaseModel):
    """RFC 9457 problem details, plus a stable ``code``."""

    type: str
    title: str
    status: int
    detail: str
    code: str
    errors: list[FieldError] | None = Field(default=None, description="422 only.")


PROBLEM_RESPONSES: dict[int | str, dict[str, Any]] = {
    status: {"model": Problem, "content": {"application/problem+json": {}}, "description": text}
    for status, text in (
        (401, "Missing or unknown API key"),
        (403, "The key lacks the scope"),
        (413, "The request body is over the size limit"),
        (415, "The request body is not JSON by its Content-Type"),
        (422, "Invalid request; `errors` names each field"),
        (429, "The API key is over its rate limit; see Retry-After"),
        (503, "The store is unreachable; see Retry-After"),
    )
}

#: For routes with path parameters: a value that breaks the path (a line break, say)
#: matches no route, and no route is a 404.
UNROUTABLE_PATH: dict[int | str, dict[str, Any]] = {
    404: {
        "model": Problem,
        "content": {"application/problem+json": {}},
        "description": "A path parameter made the path match no route",
    }
}
