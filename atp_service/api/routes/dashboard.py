"""`GET /dashboard`, the live operations page, and `GET /v1/ops/summary`, the JSON it polls.

The page is three static files (``atp_service/api/dashboard/``: plain HTML, CSS and
JavaScript, no build step) served as they are. It asks for a key with the ``admin`` scope,
keeps it in the browser's session storage only, and polls the summary every two seconds.
The files hold no data: everything comes from the summary, over the admin key.
"""

from __future__ import annotations

from functools import cache
from importlib import resources
from typing import Annotated, Any

import orjson
from fastapi import APIRouter, Query
from starlette.exceptions import HTTPException
from starlette.responses import Response

from atp_service.api.deps import Admin, StateDep
from atp_service.api.ops_summary import summary
from atp_service.api.routes.availability import availability
from atp_service.api.schemas import PROBLEM_RESPONSES, SKU_REGEX

router = APIRouter(tags=["operations"])

#: The page's assets by name, with their media types.
ASSETS = {
    "dashboard.css": "text/css; charset=utf-8",
    "dashboard.js": "text/javascript; charset=utf-8",
}
#: The page runs its own script and style only, and talks to this origin only: a dead
#: letter's text (anyone's input) can never run as code beside the admin key.
_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; script-src 'self'; style-src 'self'; "
    "img-src 'self' data:; connect-src 'self'; base-uri 'none'; form-action 'none'; "
    "frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}


@cache
def _file(name: str) -> bytes:
    return (resources.files("atp_service.api") / "dashboard" / name).read_bytes()


@router.get(
    "/dashboard",
    summary="The live operations page (for a person in a browser; asks for an admin key)",
    response_class=Response,
    responses={200: {"content": {"text/html": {}}, "description": "The page"}},
)
async def dashboard_page() -> Response:
    return Response(_file("index.html"), media_type="text/html; charset=utf-8", headers=_HEADERS)


@router.get("/dashboard/{name}", include_in_schema=False)
async def dashboard_asset(name: str) -> Response:
    media_type = ASSETS.get(name)
    if media_type is None:
        raise HTTPException(404)
    return Response(_file(name), media_type=media_type, headers=_HEADERS)


@router.get(
    "/v1/ops/summary",
    summary="The service at a glance, as /dashboard shows it (admin scope)",
    description="Sync lag and fold rate per source (from the workers' reports, about once a "
    "second), dead letters by code with the latest ones, drift, reservations by status and "
    "the last audit, the outbox backlog; with `sku`, its availability in every channel "
    "that has a policy and in `*` (the channels that have none), per site with the "
    "buckets and the sources' freshness.",
    responses={
        **PROBLEM_RESPONSES,
        200: {"content": {"application/json": {"schema": {"type": "object"}}}},
    },
    response_class=Response,
)
async def ops_summary(
    state: StateDep,
    _: Admin,
    sku: Annotated[str | None, Query(pattern=SKU_REGEX, description="A sku to show.")] = None,
) -> Response:
    body: dict[str, Any] = await summary(state, sku, availability)
    return Response(orjson.dumps(body), media_type="application/json")
