"""Availability: what a channel may promise for a sku, per site and in total."""

from __future__ import annotations

import itertools
import operator
import time
import weakref
from collections.abc import Sequence
from datetime import date
from functools import lru_cache
from typing import Any
from urllib.parse import unquote_plus

import orjson
from fastapi import APIRouter, Request
from fastapi.exceptions import RequestValidationError
from starlette.responses import Response

from atp_service.api.auth import require_scope
from atp_service.api.deps import AvailabilityReader, StateDep
from atp_service.api.direct_route import DirectRoute
from atp_service.api.path_suffix import leave_suffix_to_later_route
from atp_service.api.schemas import (
    CHANNEL_REGEX,
    PROBLEM_RESPONSES,
    SITE_REGEX,
    SKU_REGEX,
    UNROUTABLE_PATH,
    Availability,
    AvailabilityBatch,
    AvailabilityBatchRequest,
)
from atp_service.api.state import ApiState
from atp_service.api.sync_view import with_sync
from atp_service.domain import (
    ChannelPolicy,
    ItemSite,
    ItemSitePosition,
    atp_for_site,
    is_valid_channel,
    is_valid_site,
    is_valid_sku,
)
from atp_service.domain.reservations import iso_from_ms
from atp_service.store import PolicyBook
from atp_service.store.position_cache import AS_OF_MS, RawPosition, position_of

router = APIRouter(tags=["availability"], responses=PROBLEM_RESPONSES)

_DAY_MS = 86_400_000
_read_scope = require_scope("availability:read")


@lru_cache(maxsize=4)
def _date_of_epoch_day(day: int) -> date:
    """Day ``day`` since the epoch, in UTC, as the Lua scripts count days."""
    return date.fromordinal(719_163 + day)  # 719_163: ordinal of 1970-01-01


def _site_body(site: str, pos: ItemSitePosition, atp: int) -> dict[str, Any]:
    return {
        "site": site,
        "atp": atp,
        "on_hand": pos.on_hand,
        "allocated": pos.allocated,
        "quarantined": pos.quarantined,
        "reserved": pos.reserved,
        "in_transit": pos.in_transit,
        "version": pos.version,
        "as_of": iso_from_ms(pos.as_of_ms) if pos.as_of_ms else None,
        "sources": {source: iso_from_ms(ms) for source, ms in pos.sources.items()},
    }


#: Rendered site answers kept, at most, over all channels (about 230 bytes each), shared
#: evenly by the channels asked for (channel names come from requests).
_RENDERED_MAX = 200_000
_CHANNELS_MAX = 64
_Rendered = tuple[RawPosition, int, orjson.Fragment, int]  # position, atp, JSON, day
#: Whole single-sku answers kept, at most, over all channels (about 1.5 KB each with 5 sites,
#: 30 MB in all): the hot skus of the storefronts, each re-rendered when a position moves.
_ANSWERS_MAX = 20_000
# sites, their "sku@site" idents, the positions answered from, the day, the JSON
_Answer = tuple[tuple[str, ...], tuple[str, ...], tuple[RawPosition, ...], int, bytes]


class _RenderedSites:
    """Each item-site's site answer under one policy book, rendered once per position.

    A position in the in-process copy is replaced, never changed, when the item-site moves,
    so "rendered from this very position object" means "still right" (and an answer from a
    position read from Redis is never reused: it is a new object every time). Entries are
    plain tuples, which the garbage collector does not track (see position_cache.py). In-transit
    horizons make an answer depend on the day too; it is re-rendered when that moves.
    """

    def __init__(self, book: PolicyBook) -> None:
        self.book = book
        self.by_channel: dict[str, dict[str, _Rendered]] = {}
        self.share = _RENDERED_MAX  # of each channel
        self.answers: dict[tuple[str, str], _Answer] = {}  # (channel, sku) -> answer

    def of(self, channel: str) -> dict[str, _Rendered]:
        by_channel = self.by_channel
        rendered = by_channel.get(channel)
        if rendered is None:
            if len(by_channel) >= _CHANNELS_MAX:
                by_channel.clear()
            rendered = by_channel[channel] = {}
            self.share = share = max(1, _RENDERED_MAX // len(by_channel))
            for kept in by_channel.values():  # a new channel: every one gets its share
                if len(kept) > share:
                    _drop_oldest(kept, share)
        elif len(rendered) >= self.share:
            _drop_oldest(rendered, self.share - max(1, self.share // 10))
        return rendered

    def kept_answers(self) -> dict[tuple[str, str], _Answer]:
        """Whole answers of single-sku reads (every site of the channel), by channel and sku."""
        answers = self.answers
        if len(answers) >= _ANSWERS_MAX:
            _drop_oldest(answers, _ANSWERS_MAX - max(1, _ANSWERS_MAX // 10))
        return answers


def _drop_oldest(kept: dict[Any, Any], keep: int) -> None:
    """Keep the newest ``keep`` entries (insertion order): a cheap, bounded FIFO."""
    for key in list(itertools.islice(kept, max(0, len(kept) - keep))):
        del kept[key]


_rendered: weakref.WeakKeyDictionary[ApiState, _RenderedSites] = weakref.WeakKeyDictionary()


def _rendered_for(state: ApiState, book: PolicyBook) -> _RenderedSites:
    found = _rendered.get(state)
    if found is None or found.book is not book:
        found = _rendered[state] = _RenderedSites(book)
    return found


async def availability(
    state: ApiState, channel: str, queries: Sequence[tuple[str, str | None]]
) -> list[dict[str, Any]]:
    """One answer per (sku, site or None for the channel's sites), from the in-process copy
    of the positions, or one Redis round trip for what it lacks; each with the ``sync``
    held in memory (api/sync_view.py)."""
    book = state.book if state.policies_loaded else await state.ensure_policies()
    policy = book.policy(channel)
    channel_sites = policy.sites if policy.sites is not None else state.sites
    plan: list[tuple[str, Sequence[str]]] = []
    idents: list[str] = []
    for sku, site in queries:
        sites: Sequence[str] = channel_sites if site is None else (site,)
        plan.append((sku, sites))
        idents.extend([f"{sku}@{s}" for s in sites])
    positions = state.positions.lookup_raw(idents)
    if positions is None:
        wanted = [ItemSite(sku, s) for sku, sites in plan for s in sites]
        positions = await state.positions.read_raw(wanted) if wanted else []
    day = int(time.time() * 1000) // _DAY_MS
    render = _Renderer(_rendered_for(state, book).of(channel), policy, channel, day)
    answers: list[dict[str, Any]] = []
    sync = state.sync.fragment
    i = 0
    for sku, sites in plan:
        answer = render.answer(sku, sites, idents, positions, i)
        answer["sync"] = sync
        answers.append(answer)
        i += len(sites)
    return answers


async def availability_of_sku(state: ApiState, channel: str, sku: str) -> bytes:
    """The JSON answer for ``sku`` at every site of ``channel`` (the product page's read).

    Served whole from the last answer while every position it was rendered from is still
    the one in the copy (positions are replaced, never changed, when they move), the policy
    book and the channel's sites are the same and, for dated in-transit, so is the day.
    The answer is kept without its ``sync``, which moves every second on its own: that is
    appended to it (``with_sync``).
    """
    book = state.book if state.policies_loaded else await state.ensure_policies()
    policy = book.policy(channel)
    sites = policy.sites if policy.sites is not None else state.sites
    dated = policy.include_in_transit and policy.in_transit_horizon_days > 0
    rendered_sites = _rendered_for(state, book)
    answers = rendered_sites.kept_answers()
    key = (channel, sku)
    kept = answers.get(key)
    if kept is not None and kept[0] == sites:
        idents = kept[1]
        positions = state.positions.lookup_raw(idents)
        if (
            positions is not None
            and all(map(operator.is_, positions, kept[2]))
            and (not dated or kept[3] == int(time.time() * 1000) // _DAY_MS)
        ):
            return with_sync(kept[4], state.sync)
    else:
        idents = tuple([f"{sku}@{s}" for s in sites])
        positions = state.positions.lookup_raw(idents)
    from_copy = positions is not None
    if positions is None:
        positions = await state.positions.read_raw([ItemSite(sku, s) for s in sites])
    day = int(time.time() * 1000) // _DAY_MS
    render = _Renderer(rendered_sites.of(channel), policy, channel, day)
    body = orjson.dumps(render.answer(sku, sites, idents, positions, 0))
    if from_copy:  # an answer from positions read from Redis is never reused
        # A copy: the bytes orjson returns hold a 4 KiB buffer (this one, ~850 bytes).
        answers[key] = (tuple(sites), idents, tuple(positions), day, bytes(memoryview(body)))
    return with_sync(body, state.sync)


class _Renderer:
    """Answers under one policy on one day, from site answers rendered once per position."""

    __slots__ = ("channel", "dated", "day", "policy", "rendered")

    def __init__(
        self, rendered: dict[str, _Rendered], policy: ChannelPolicy, channel: str, day: int
    ) -> None:
        self.rendered = rendered
        self.policy = policy
        self.channel = channel
        self.day = day
        self.dated = policy.include_in_transit and policy.in_transit_horizon_days > 0

    def answer(
        self,
        sku: str,
        sites: Sequence[str],
        idents: Sequence[str],
        positions: Sequence[RawPosition],
        first: int,
    ) -> dict[str, Any]:
        """The answer for ``sku`` at ``sites``, whose positions and idents start at ``first``."""
        rendered, policy, day, dated = self.rendered, self.policy, self.day, self.dated
        total = 0
        latest = 0
        bodies = []
        i = first
        for site in sites:
            held = positions[i]
            ident = idents[i]
            i += 1
            hit = rendered.get(ident)
            if hit is not None and hit[0] is held and (not dated or hit[3] == day):
                atp, body = hit[1], hit[2]
            else:
                pos = position_of(held)
                atp = (
                    atp_for_site(pos, policy, _date_of_epoch_day(day))
                    if policy.sells_from(site)
                    else 0
                )
                # As text: the bytes orjson returns keep a 4 KiB buffer each.
                body = orjson.Fragment(orjson.dumps(_site_body(site, pos, atp)).decode())
                rendered[ident] = (held, atp, body, day)
            total += atp
            as_of_ms = held[AS_OF_MS]
            if as_of_ms > latest:
                latest = as_of_ms
            bodies.append(body)
        return {
            "sku": sku,
            "channel": self.channel,
            "atp": total,
            "sites": bodies,
            "as_of": iso_from_ms(latest) if latest else None,
        }


def _parameter(name: str, where: str, pattern: str, required: bool, text: str) -> dict[str, Any]:
    return {
        "name": name,
        "in": where,
        "required": required,
        "schema": {"type": "string", "pattern": pattern},
        "description": text,
    }


_GET_OPENAPI: dict[str, Any] = {
    "security": [{_read_scope.scheme_name: []}],
    "parameters": [
        _parameter("sku", "path", SKU_REGEX, True, "The sku; may contain '/'."),
        _parameter("channel", "query", CHANNEL_REGEX, True, "The sales channel."),
        _parameter("site", "query", SITE_REGEX, False, "One site only."),
    ],
}


def _mismatch(field: tuple[str, str], pattern: str) -> dict[str, Any]:
    return {
        "type": "string_pattern_mismatch",
        "loc": field,
        "msg": f"String should match pattern '{pattern}'",
    }


async def get_availability(request: Request) -> Response:
    # The hottest route reads its parameters by hand and is called directly (DirectRoute):
    # FastAPI's per-request handler costs more than the rest of the route (Redis aside).
    # The checks and the 422 they give are the same as elsewhere; OpenAPI is declared below.
    await _read_scope(request)
    scope = request.scope
    sku: str = scope["path_params"]["sku"]
    channel, site = _channel_and_site(scope["query_string"])
    errors: list[dict[str, Any]] = []
    if not is_valid_sku(sku):
        errors.append(_mismatch(("path", "sku"), SKU_REGEX))
    if channel is None:
        errors.append({"type": "missing", "loc": ("query", "channel"), "msg": "Field required"})
    elif not is_valid_channel(channel):
        errors.append(_mismatch(("query", "channel"), CHANNEL_REGEX))
    if site is not None and not is_valid_site(site):
        errors.append(_mismatch(("query", "site"), SITE_REGEX))
    if errors or channel is None:
        raise RequestValidationError(errors)
    state: ApiState = scope["app"].state.atp
    if site is None:
        body = await availability_of_sku(state, channel, sku)
    else:
        (answer,) = await availability(state, channel, ((sku, site),))
        body = orjson.dumps(answer)
    return Response(body, media_type="application/json")


router.add_api_route(
    "/v1/availability/{sku:path}",
    get_availability,
    methods=["GET"],
    route_class_override=DirectRoute,
    responses=UNROUTABLE_PATH,
    response_model=Availability,
    openapi_extra=_GET_OPENAPI,
    summary="ATP of one sku for a channel",
    description="Without `site`, `sites` lists the channel policy's sites (every known site "
    "when the policy names none). With `site`, that site alone; its ATP is 0 when the "
    "channel may not sell from it. A sku never seen is ATP 0, not 404. The sku may "
    "contain '/'. A path ending in `/timeline` is the sku's timeline instead.",
)
# ... which routes/timeline.py serves, listed after this route (see path_suffix.py).
leave_suffix_to_later_route(router.routes[-1], "/timeline")  # type: ignore[arg-type]


def _channel_and_site(query_string: bytes) -> tuple[str | None, str | None]:
    """``channel`` and ``site`` of a query string, as ``Request.query_params`` reads them
    (the last of a repeated name wins, ``+`` and %-escapes decoded), without the rest of
    its work. tests/unit/test_api_availability.py compares the two."""
    channel = site = None
    if not query_string:
        return None, None
    for pair in query_string.decode("latin-1").split("&"):
        name, _, value = pair.partition("=")
        if "%" in name or "+" in name:
            name = _decoded(name)
        if name == "channel":
            channel = _decoded(value)
        elif name == "site":
            site = _decoded(value)
    return channel, site


def _decoded(text: str) -> str:
    if "%" in text or "+" in text:
        return unquote_plus(text)
    return text


@router.post(
    "/v1/availability/batch",
    response_model=AvailabilityBatch,
    summary="ATP of up to 1000 skus for a channel, one answer per item, in order",
)
async def post_availability_batch(
    body: AvailabilityBatchRequest, state: StateDep, _: AvailabilityReader
) -> Response:
    queries = [(item["sku"], item.get("site")) for item in body.items]
    answers = await availability(state, body.channel, queries)
    return Response(orjson.dumps({"items": answers}), media_type="application/json")
