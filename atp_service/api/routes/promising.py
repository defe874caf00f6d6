"""The promise: when the customer can have each line, and from which sites (holds nothing)."""

from __future__ import annotations

from datetime import date
from typing import Annotated, Any, Literal

import orjson
from fastapi import APIRouter, Request
from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt
from starlette.responses import Response

from atp_service.api.auth import require_scope
from atp_service.api.bodies import documented_body, json_body
from atp_service.api.direct_route import DirectRoute
from atp_service.api.schemas import MAX_QUANTITY, PROBLEM_RESPONSES, Channel, SiteCode, Sku, Zone
from atp_service.api.state import ApiState
from atp_service.domain import (
    Fulfilment,
    ItemSite,
    Promise,
    PromiseLine,
    PromiseRequest,
    Strategy,
    plan_promise,
)
from atp_service.domain.reservations import MAX_LINES, iso_from_ms
from atp_service.store.position_cache import AS_OF_MS, position_of

router = APIRouter(tags=["promising"], responses=PROBLEM_RESPONSES)

#: Lines of one promise at most: as many as one reservation may hold, so that a reservation
#: without sites can always be planned as the promise of its lines.
MAX_PROMISE_LINES = MAX_LINES


class PromiseLineIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    sku: Sku
    qty: Annotated[StrictInt, Field(ge=1, le=MAX_QUANTITY)]
    site: SiteCode | None = Field(
        default=None, description="Serve the line from this site alone; null: the service chooses."
    )


class PromiseIn(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "channel": "web",
                    "ship_to": "US-WEST",
                    "strategy": "earliest",
                    "allow_split": True,
                    "lines": [
                        {"sku": "SKU-1", "qty": 50},
                        {"sku": "SKU-9", "qty": 1, "site": "DC-EAST"},
                    ],
                }
            ]
        },
    )

    channel: Channel
    ship_to: Zone | None = Field(
        default=None,
        description="The ship-to zone (a key of the sites' `transit_days`); null: delivery "
        "dates are ship dates and every site of the channel delivers.",
    )
    strategy: Literal["earliest", "priority", "fewest_sites"] = "earliest"
    allow_split: StrictBool = Field(
        default=True, description="false: each line whole from one site, or not at all."
    )
    lines: Annotated[
        list[PromiseLineIn],
        Field(
            min_length=1,
            max_length=MAX_PROMISE_LINES,
            description="Planned in order; lines of one sku share its supply.",
        ),
    ]


class FulfilmentOut(BaseModel):
    site: str
    qty: int
    supply: Literal["on_hand", "in_transit"]
    eta: str | None = Field(default=None, description="Inbound only: its expected arrival.")
    ship_date: str
    delivery_date: str


class PromiseLineOut(BaseModel):
    sku: str
    site: str | None = Field(description="The site the line named; null: the service chose.")
    qty: int
    promised: int = Field(description="Units that can be promised, at most `qty`.")
    shortfall: int = Field(description="qty - promised.")
    delivery_date: str | None = Field(
        description="When every promised unit arrives; null when none is promised."
    )
    fulfilments: list[FulfilmentOut]


class PromiseOut(BaseModel):
    channel: str
    ship_to: str | None
    delivery_date: str | None = Field(
        description="The latest line's date when every line is promised in full; else null."
    )
    as_of: str | None = Field(
        description="The latest change among the item-sites the promise read; null if none "
        "was ever seen."
    )
    lines: list[PromiseLineOut]


#: Bodies read by hand, documented as components of the OpenAPI document (app.py).
DOCUMENTED_MODELS: list[type[BaseModel]] = [PromiseIn]


def promise_request(body: PromiseIn, state: ApiState) -> PromiseRequest:
    """The domain's request for ``body`` under the policy and sites in force."""
    policy = state.book.policy(body.channel)
    return PromiseRequest(
        lines=tuple(PromiseLine(ln.sku, ln.qty, ln.site) for ln in body.lines),
        policy=policy,
        channel_sites=policy.sites if policy.sites is not None else state.sites,
        ship_to=body.ship_to,
        strategy=Strategy(body.strategy),
        allow_split=body.allow_split,
    )


async def plan(state: ApiState, request: PromiseRequest) -> tuple[Promise, int]:
    """The promise for ``request`` now, and the latest ``as_of`` (ms) of what it read: every
    position from the in-process copy within its staleness bound, the rest in one Redis
    round trip."""
    items: list[ItemSite] = request.item_sites()
    held = await state.positions.read_raw(items) if items else []
    positions = {item: position_of(raw) for item, raw in zip(items, held, strict=True)}
    latest = max((raw[AS_OF_MS] for raw in held), default=0)
    return plan_promise(request, positions, state.site_book, state.clock()), latest


def _day(value: date | None) -> str | None:
    return value.isoformat() if value is not None else None


def _fulfilment_body(f: Fulfilment) -> dict[str, Any]:
    body: dict[str, Any] = {"site": f.site, "qty": f.qty, "supply": f.supply.value}
    if f.eta is not None:
        body["eta"] = f.eta.isoformat()
    body["ship_date"] = f.ship_date.isoformat()
    body["delivery_date"] = f.delivery_date.isoformat()
    return body


def promise_body(
    channel: str, ship_to: str | None, promise: Promise, as_of_ms: int
) -> dict[str, Any]:
    return {
        "channel": channel,
        "ship_to": ship_to,
        "delivery_date": _day(promise.delivery_date),
        "as_of": iso_from_ms(as_of_ms) if as_of_ms else None,
        "lines": [
            {
                "sku": line.line.sku,
                "site": line.line.site,
                "qty": line.line.qty,
                "promised": line.promised,
                "shortfall": line.shortfall,
                "delivery_date": _day(line.delivery_date),
                "fulfilments": [_fulfilment_body(f) for f in line.fulfilments],
            }
            for line in promise.lines
        ],
    }


_read_scope = require_scope("availability:read")


async def post_promise(http: Request) -> Response:
    # Read by hand and called directly (DirectRoute), as the reservation is: FastAPI's body
    # reading and dependency solving would cost more than planning a short promise.
    await _read_scope(http)
    body = await json_body(http, PromiseIn)
    state: ApiState = http.app.state.atp
    if not state.policies_loaded:
        await state.ensure_policies()
    if not state.site_book_loaded:
        await state.ensure_site_book()
    promise, as_of_ms = await plan(state, promise_request(body, state))
    answer = promise_body(body.channel, body.ship_to, promise, as_of_ms)
    return Response(orjson.dumps(answer), media_type="application/json")


router.add_api_route(
    "/v1/promise",
    post_promise,
    methods=["POST"],
    route_class_override=DirectRoute,
    response_model=PromiseOut,
    openapi_extra={
        "security": [{_read_scope.scheme_name: []}],
        "requestBody": documented_body(PromiseIn),
    },
    summary="When the customer can have each line, and from which sites",
    description="Quotes without holding anything (docs/promising.md has the rules). At most "
    f"{MAX_PROMISE_LINES} lines. `earliest` (default): the earliest delivery of the whole "
    "line, then fewer sites, then priority; `priority`: sites in priority order, each "
    "taking what it can; `fewest_sites`: fewest sites, then earliest. Only the channel's "
    "sites that deliver to `ship_to` are used.",
)
