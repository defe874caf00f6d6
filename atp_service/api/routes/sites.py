"""Sites as ship nodes: their attributes for the promise, listed and changed (admin)."""

from __future__ import annotations

import logging
from typing import Annotated, Any

from fastapi import APIRouter, Path

from atp_service.api.deps import Admin, AvailabilityReader, StateDep
from atp_service.api.schemas import PROBLEM_RESPONSES, SITE_REGEX, UNROUTABLE_PATH, SiteOut, Sites
from atp_service.config import SiteSpec
from atp_service.domain import DEFAULT_SITE

router = APIRouter(tags=["sites"], responses=PROBLEM_RESPONSES)
log = logging.getLogger(__name__)


@router.get(
    "/v1/sites",
    response_model=Sites,
    summary="Every site's attributes for the promise",
    description="`sites` holds the sites with attributes of their own (from ATP_SITES_FILE "
    "or PUT); every other site has `default`: priority 100, shipped the day it is asked, "
    "delivered to every zone at once. Scope `availability:read` (a storefront may show "
    "cutoffs).",
)
async def get_sites(state: StateDep, _: AvailabilityReader) -> dict[str, Any]:
    await state.refresh_site_book()
    book = state.site_book
    return {
        "version": book.version,
        "default": DEFAULT_SITE.to_mapping(),
        "sites": {site: a.to_mapping() for site, a in sorted(book.sites.items())},
    }


@router.put(
    "/v1/sites/{site}",
    responses=UNROUTABLE_PATH,
    response_model=SiteOut,
    summary="Replace a site's attributes",
    description="The body is all of them; omitted fields take their defaults, unknown ones "
    "are refused (422 naming the field, as are a cutoff that is no HH:MM time of day, a "
    "weekday outside 1..7 and negative days). Applies at once in this process and within "
    "about a second in every other.",
)
async def put_site(
    site: Annotated[str, Path(pattern=SITE_REGEX)],
    body: SiteSpec,
    state: StateDep,
    principal: Admin,
) -> dict[str, Any]:
    await state.refresh_site_book()  # first re-seeds a store that came back empty
    attributes = body.to_attributes()
    version = await state.store.put_site(site, attributes)
    state.install_site_book(await state.store.site_book(), force=True)
    log.info(
        "site attributes changed",
        extra={
            "site": site,
            "key_name": principal.name,
            "version": version,
            "attributes": attributes.to_mapping(),
        },
    )
    return {"site": site, **attributes.to_mapping(), "version": version}
