"""The availability timeline: what a channel could ship of a sku by each of the coming days.

Its path, ``/v1/availability/{sku}/timeline``, would also be a path of the plain read
(``/v1/availability/{sku:path}`` takes skus with '/'); the plain read leaves every path
ending in ``/timeline`` to this route (``api/path_suffix.py``), so such a path is always
the timeline of the sku before it.
The plain read of a sku that itself ends in ``/timeline`` is the batch's
(``POST /v1/availability/batch``).
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Path, Query
from pydantic import BaseModel, Field

from atp_service.api.deps import AvailabilityReader, StateDep
from atp_service.api.schemas import (
    CHANNEL_REGEX,
    MAX_HORIZON_DAYS,
    PROBLEM_RESPONSES,
    SITE_REGEX,
    SKU_REGEX,
    UNROUTABLE_PATH,
)
from atp_service.domain import ItemSite, availability_timeline
from atp_service.domain.reservations import iso_from_ms
from atp_service.store.position_cache import AS_OF_MS, position_of

router = APIRouter(tags=["availability"], responses=PROBLEM_RESPONSES)

#: The window without ``days`` when the channel's in-transit has no horizon.
DEFAULT_TIMELINE_DAYS = 30


class TimelinePoint(BaseModel):
    date: str
    atp: int = Field(
        description="Units the channel could ship by this date: the stock part of its ATP, "
        "plus the inbound it may promise whose ETA has come."
    )


class Timeline(BaseModel):
    sku: str
    channel: str
    points: list[TimelinePoint] = Field(
        description="Today, then each later date within the window on which the units change."
    )
    as_of: str | None


@router.get(
    "/v1/availability/{sku:path}/timeline",
    responses=UNROUTABLE_PATH,
    response_model=Timeline,
    summary="What a channel could ship of a sku by each coming date",
    description="Without inbound there is one point; when every inbound unit the channel may "
    "promise has its ETA inside the window, the last point is the channel's `atp`. Inbound "
    "without an ETA is in no point. The sku may contain '/'; a path ending in `/timeline` is "
    "always the timeline (the plain read of a sku ending in `/timeline` is the batch's).",
)
async def get_timeline(
    sku: Annotated[str, Path(pattern=SKU_REGEX)],
    channel: Annotated[str, Query(pattern=CHANNEL_REGEX)],
    state: StateDep,
    _: AvailabilityReader,
    site: Annotated[str | None, Query(pattern=SITE_REGEX, description="One site only.")] = None,
    days: Annotated[
        int | None,
        Query(
            ge=0,
            le=MAX_HORIZON_DAYS,
            description="The window: today and the next `days` days. Default: the channel's "
            f"in-transit horizon, or {DEFAULT_TIMELINE_DAYS}.",
        ),
    ] = None,
) -> dict[str, Any]:
    book = await state.ensure_policies()
    policy = book.policy(channel)
    if site is not None:
        sites: tuple[str, ...] = (site,)
    else:
        sites = policy.sites if policy.sites is not None else state.sites
    if days is None:
        horizon = policy.in_transit_horizon_days if policy.include_in_transit else 0
        days = horizon or DEFAULT_TIMELINE_DAYS
    held = await state.positions.read_raw([ItemSite(sku, s) for s in sites]) if sites else []
    today = state.clock().date()
    points = availability_timeline(
        [(s, position_of(raw)) for s, raw in zip(sites, held, strict=True)], policy, today, days
    )
    latest = max((raw[AS_OF_MS] for raw in held), default=0)
    return {
        "sku": sku,
        "channel": channel,
        "points": [{"date": d.isoformat(), "atp": units} for d, units in points],
        "as_of": iso_from_ms(latest) if latest else None,
    }
