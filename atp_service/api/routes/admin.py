"""Admin: channel policies and per-item-site safety-stock overrides (scope ``admin``)."""

from __future__ import annotations

import asyncio
import os
from typing import TYPE_CHECKING, Annotated, Any

from fastapi import APIRouter, Path

from atp_service.api.admin_log import log_admin_change
from atp_service.api.deps import Admin, CorrelationIdDep, StateDep
from atp_service.api.schemas import (
    CHANNEL_REGEX,
    PROBLEM_RESPONSES,
    SITE_REGEX,
    SKU_REGEX,
    UNROUTABLE_PATH,
    ChannelPolicies,
    ChannelPolicyBody,
    ChannelPolicyOut,
    SafetyStockBody,
    SafetyStockOut,
    policy_body,
)
from atp_service.domain import ChannelPolicy, ItemSite
from atp_service.domain.reservations import iso_from_ms
from atp_service.events import relay_consumer_name
from atp_service.store.duty import Duty
from atp_service.store.redis_store import PolicyChange
from atp_service.store.reevaluation import Reevaluator

if TYPE_CHECKING:
    from atp_service.api.state import ApiState

router = APIRouter(tags=["admin"], responses=PROBLEM_RESPONSES)


@router.get(
    "/v1/policies/channels",
    response_model=ChannelPolicies,
    summary="Every channel policy in force",
    description="`channels` holds the channels with a policy of their own; every other "
    "channel follows `default` (all sites, no safety stock, 100 % share, no in-transit).",
)
async def get_channel_policies(state: StateDep, _: Admin) -> dict[str, Any]:
    await state.refresh_policies()
    book = state.book
    return {
        "version": book.version,
        "default": policy_body(ChannelPolicy()),
        "channels": {
            name: {**policy_body(p), **change_body(book.changes.get(name))}
            for name, p in sorted(book.policies.items())
        },
    }


def change_body(change: PolicyChange | None) -> dict[str, Any]:
    """Who put a policy in force and when (both null for one seeded from the channels file)."""
    if change is None:
        return {"changed_by": None, "changed_at": None}
    return {"changed_by": change.changed_by, "changed_at": iso_from_ms(change.changed_at_ms)}


@router.put(
    "/v1/policies/channels/{channel}",
    responses=UNROUTABLE_PATH,
    response_model=ChannelPolicyOut,
    summary="Replace a channel's policy",
    description="The body is the whole policy; omitted fields take their defaults, so "
    "`{}` resets the channel to the default policy (every site, no safety stock, 100 % "
    "share, no in-transit). `sites` names at least one site or is null (every site); `[]` "
    "is refused (422): a channel that should promise nothing takes `share` 0 and no "
    "in-transit. It applies at once in this process and within about a second everywhere; "
    "the record keeps who put it in force (`changed_by`, the name of the API key). Events "
    "already folded are not re-published: `availability.changed` follows the next "
    "change of each item-site.",
)
async def put_channel_policy(
    channel: Annotated[str, Path(pattern=CHANNEL_REGEX)],
    body: ChannelPolicyBody,
    state: StateDep,
    principal: Admin,
) -> dict[str, Any]:
    await state.refresh_policies()  # first re-seeds a store that came back empty
    policy = body.to_policy()
    version = await state.store.put_channel_policy(channel, policy, changed_by=principal.name)
    book = await state.store.policy_book()
    state.install_book(book, force=True)
    log_admin_change(
        principal, "channel policy put", channel=channel, policy=policy_body(policy),
        policies_version=version,
    )  # fmt: skip
    return {
        "channel": channel,
        **policy_body(policy),
        **change_body(book.changes.get(channel)),
        "version": book.version,
    }


@router.put(
    "/v1/safety-stock/{sku:path}/{site}",
    responses=UNROUTABLE_PATH,
    response_model=SafetyStockOut,
    summary="Set or clear the safety-stock override of one item-site",
    description="The override beats every channel's safety stock. Each channel whose "
    "ATP moves gets an `availability.changed` event carrying this request's "
    "X-Correlation-ID and, as `changed_by`, the name of the API key that made the "
    "change. The sku may contain '/'.",
)
async def put_safety_stock(
    sku: Annotated[str, Path(pattern=SKU_REGEX)],
    site: Annotated[str, Path(pattern=SITE_REGEX)],
    body: SafetyStockBody,
    state: StateDep,
    correlation_id: CorrelationIdDep,
    principal: Admin,
) -> dict[str, Any]:
    book = await state.ensure_policies()
    version = await state.store.set_safety_stock(
        ItemSite(sku, site),
        body.safety_stock,
        book,
        correlation_id=correlation_id,
        change_id=f"ss-{os.urandom(12).hex()}",
        changed_by=principal.name,
    )
    log_admin_change(
        principal, "safety stock put", sku=sku, site=site, safety_stock=body.safety_stock,
        version=version,
    )  # fmt: skip
    return {
        "sku": sku,
        "site": site,
        "safety_stock": body.safety_stock,
        "version": version,
        "changed_by": principal.name,
    }


async def run_reevaluation(state: ApiState, stop: asyncio.Event) -> None:
    """Re-evaluation (store/reevaluation.py) while no worker has ticked it lately: an API
    alone still announces what a policy change or a new day moves."""
    holder = relay_consumer_name("api")
    reevaluator = Reevaluator(state.store, holder=holder, rate=state.settings.reevaluation_rate)
    await reevaluator.run(
        stop, duty=Duty(state.redis, "reevaluation", holder=holder), stand_by=True
    )
