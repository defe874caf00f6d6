"""Sites as ship nodes: their attributes for the promise, listed and changed (admin)."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Path

from atp_service.api.admin_log import log_admin_change
from atp_service.api.deps import Admin, AvailabilityReader, StateDep
from atp_service.api.routes.admin import change_body
from atp_service.api.schemas import PROBLEM_RESPONSES, SITE_REGEX, UNROUTABLE_PATH, SiteOut, Sites
from atp_service.config import SiteSpec
from atp_service.domain import DEFAULT_SITE

router = APIRouter(tags=["sites"], responses=PROBLEM_RESPONSES)


@router.get(
    "/v1/sites",
    response_model=Sites,
    summary="Every site's attributes for the promise",
    description="`sites` holds the sites with attributes of their own (from ATP_SITES_FILE "
    "or PUT), each with who put them in force (`changed_by`, `changed_at`; null for a site "
    "seeded from the file); every other site has `default`: priority 100, shipped the day "
    "it is asked, delivered to every zone at once. Scope `availability:read` (a storefront "
    "may show cutoffs).",
)
async def get_sites(state: StateDep, _: AvailabilityReader) -> dict[str, Any]:
    await state.refresh_site_book()
    table = state.site_table
    return {
        "version": table.version,
        "default": DEFAULT_SITE.to_mapping(),
        "sites": {
            site: {**a.to_mapping(), **change_body(table.changes.get(site))}
            for site, a in sorted(table.book.sites.items())
        },
    }


@router.put(
    "/v1/sites/{site}",
    responses=UNROUTABLE_PATH,
    response_model=SiteOut,
    summary="Replace a site's attributes",
    description="The body is all of them; omitted fields take their defaults, unknown ones "
    "are refused (422 naming the field, as are a cutoff that is no HH:MM time of day, a "
    "weekday outside 1..7 and negative days). Applies at once in this process and within "
    "about a second in every other; the record keeps who put it in force (`changed_by`, "
    "the name of the API key).",
)
async def put_site(
    site: Annotated[str, Path(pattern=SITE_REGEX)],
    body: SiteSpec,
    state: StateDep,
    principal: Admin,
) -> dict[str, Any]:
    await state.refresh_site_book()  # first re-seeds a store that came back empty
    attributes = body.to_attributes()
    version = await state.store.put_site(site, attributes, changed_by=principal.name)
    table = await state.store.site_table()
    state.install_site_table(table, force=True)
    log_admin_change(
        principal, "site put", site=site, attributes=attributes.to_mapping(),
        sites_version=version,
    )  # fmt: skip
    return {
        "site": site,
        **attributes.to_mapping(),
        **change_body(table.changes.get(site)),
        "version": table.version,
    }
