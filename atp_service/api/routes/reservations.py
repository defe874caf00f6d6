"""Reservations over HTTP (contract section 4): place, read, confirm, release; the sweeper.

A reservation is its creator's: see "Ownership" below."""

from __future__ import annotations

import asyncio
import re
import weakref
from typing import Annotated, Any, Literal

import orjson
from fastapi import APIRouter, Path, Request
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictInt,
    StringConstraints,
    TypeAdapter,
    ValidationError,
)
from starlette.responses import Response

from atp_service.api.auth import Principal, require_scope
from atp_service.api.bodies import documented_body, json_body
from atp_service.api.deps import ReservationsWriter, correlation_id_of
from atp_service.api.direct_route import DirectRoute
from atp_service.api.errors import ProblemError
from atp_service.api.schemas import MAX_QUANTITY, PROBLEM_RESPONSES, Channel, SiteCode, Sku
from atp_service.api.state import ApiState
from atp_service.domain.reservations import (
    DEFAULT_TTL_SECONDS,
    MAX_IDEMPOTENCY_KEY_LENGTH,
    MAX_LINES,
    MAX_TTL_SECONDS,
    IdempotencyConflict,
    InsufficientStock,
    InvalidTransition,
    LineRequest,
    Reservation,
    ReservationMode,
    ReservationNotFound,
    ReservationRequest,
    Transition,
    iso_from_ms,
)
from atp_service.events import relay_consumer_name
from atp_service.store.duty import Duty
from atp_service.store.reservations import ExpirySweeper, ReservationStore

router = APIRouter(prefix="/v1/reservations", tags=["reservations"], responses=PROBLEM_RESPONSES)

_STRICT_BODY = ConfigDict(extra="forbid")
_RESERVATION_ID = re.compile(r"res_[0-9a-f]{32}")


# -- bodies ------------------------------------------------------------------------------------


class ReservationLineIn(BaseModel):
    model_config = _STRICT_BODY

    sku: Sku
    site: SiteCode
    qty: Annotated[StrictInt, Field(ge=1, le=MAX_QUANTITY)]


class ReservationIn(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "channel": "web",
                    "order_ref": "ORD-88121",
                    "ttl_seconds": 900,
                    "mode": "all_or_nothing",
                    "lines": [
                        {"sku": "SKU-1001", "site": "DC-EAST", "qty": 2},
                        {"sku": "SKU-1002", "site": "DC-EAST", "qty": 1},
                    ],
                }
            ]
        },
    )

    channel: Channel
    order_ref: Annotated[str, StringConstraints(min_length=1, max_length=128)] | None = None
    ttl_seconds: Annotated[StrictInt, Field(ge=1, le=MAX_TTL_SECONDS)] = DEFAULT_TTL_SECONDS
    mode: Literal["all_or_nothing", "partial"] = "all_or_nothing"
    lines: Annotated[
        list[ReservationLineIn],
        Field(
            min_length=1,
            max_length=MAX_LINES,
            description="One line per item-site; naming an item-site twice is a 422.",
        ),
    ]

    def to_request(self) -> ReservationRequest:
        return ReservationRequest(
            channel=self.channel,
            order_ref=self.order_ref,
            ttl_seconds=self.ttl_seconds,
            mode=ReservationMode(self.mode),
            lines=tuple(LineRequest(ln.sku, ln.site, ln.qty) for ln in self.lines),
        )


class ReservationLineOut(BaseModel):
    sku: str
    site: str
    qty: int = Field(description="Units asked.")
    reserved: int = Field(description="Units held (all_or_nothing: qty; partial: 0..qty).")
    allocated: int = Field(description="Of the reserved units, how many the WMS allocated.")


class ReservationOut(BaseModel):
    reservation_id: str
    status: Literal["held", "confirmed", "released", "expired", "consumed"]
    owner: str | None = Field(
        description="The name of the API key that made it (null: made before owners were "
        "recorded). Only that key, or one with admin, sees or changes it."
    )
    channel: str
    order_ref: str | None
    mode: Literal["all_or_nothing", "partial"]
    expires_at: str | None = Field(description="When a held reservation expires; else null.")
    created_at: str
    updated_at: str
    lines: list[ReservationLineOut]


def reservation_body(reservation: Reservation) -> dict[str, Any]:
    return {
        "reservation_id": reservation.reservation_id,
        "status": reservation.status.value,
        "owner": reservation.owner,
        "channel": reservation.channel,
        "order_ref": reservation.order_ref,
        "mode": reservation.mode.value,
        "expires_at": (
            iso_from_ms(reservation.expires_ms) if reservation.expires_ms is not None else None
        ),
        "created_at": iso_from_ms(reservation.created_ms),
        "updated_at": iso_from_ms(reservation.updated_ms),
        "lines": [
            {
                "sku": ln.sku,
                "site": ln.site,
                "qty": ln.qty,
                "reserved": ln.reserved,
                "allocated": ln.allocated,
            }
            for ln in reservation.lines
        ],
    }


# -- the store of this app -----------------------------------------------------------------------

_stores: weakref.WeakKeyDictionary[ApiState, ReservationStore] = weakref.WeakKeyDictionary()


def reservation_store(state: ApiState) -> ReservationStore:
    """The app's ReservationStore, made once per app state (its scripts registered once)."""
    found = _stores.get(state)
    if found is None or found.store is not state.store:
        found = _stores[state] = ReservationStore(
            state.store, idempotency_ttl_seconds=state.settings.idempotency_ttl_seconds
        )
    return found


ReservationIdPath = Annotated[str, Path(description="As returned by POST /v1/reservations.")]

_IDEMPOTENCY_HEADER = "Idempotency-Key"
_IDEMPOTENCY_DESCRIPTION = (
    "Required. Same key and body again: the first answer again; "
    "same key, other body: 409 idempotency_conflict. Kept at least 24 h per API key."
)
#: Validates the header as FastAPI's ``Header(min_length=1, max_length=...)`` would.
_IDEMPOTENCY_KEY: TypeAdapter[str] = TypeAdapter(
    Annotated[str, StringConstraints(min_length=1, max_length=MAX_IDEMPOTENCY_KEY_LENGTH)]
)
_write_scope = require_scope("reservations:write")
_CREATE_OPENAPI: dict[str, Any] = {
    "security": [{_write_scope.scheme_name: []}],
    "requestBody": documented_body(ReservationIn),
    "parameters": [
        {
            "name": _IDEMPOTENCY_HEADER,
            "in": "header",
            "required": True,
            "schema": {
                "type": "string",
                "minLength": 1,
                "maxLength": MAX_IDEMPOTENCY_KEY_LENGTH,
                "description": _IDEMPOTENCY_DESCRIPTION,
                "title": _IDEMPOTENCY_HEADER,
            },
            "description": _IDEMPOTENCY_DESCRIPTION,
        }
    ],
}


def idempotency_key(request: Request) -> tuple[str | None, list[dict[str, Any]]]:
    """The request's ``Idempotency-Key``, or the errors naming the header."""
    value = request.headers.get(_IDEMPOTENCY_HEADER)
    if value is None:
        return None, [
            {"type": "missing", "loc": ("header", _IDEMPOTENCY_HEADER), "msg": "Field required"}
        ]
    try:
        return _IDEMPOTENCY_KEY.validate_python(value), []
    except ValidationError as exc:
        return None, [
            {**e, "loc": ("header", _IDEMPOTENCY_HEADER, *e["loc"])} for e in exc.errors()
        ]


def _json(body: Any, status_code: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(orjson.dumps(body), status_code, headers, media_type="application/json")


#: Bodies read by hand, documented as components of the OpenAPI document (app.py).
DOCUMENTED_MODELS: list[type[BaseModel]] = [ReservationIn]


# -- routes --------------------------------------------------------------------------------------

_PROBLEM: dict[str, Any] = {"content": {"application/problem+json": {}}}


# The routes take the request and the caller (and a path parameter) only: FastAPI's body
# reading and dependency solving per request cost more than the rest of the route, Redis
# aside. What they read by hand (the body, the header) is declared in the OpenAPI document
# as FastAPI would declare it, and refused with the same 422s. The hottest, the creation,
# takes the request alone and is called directly (DirectRoute).
async def create_reservation(http: Request) -> Response:
    principal = await _write_scope(http)  # first: a caller without the scope learns nothing
    key, errors = idempotency_key(http)
    body = await json_body(http, ReservationIn, errors)
    assert key is not None  # json_body raised otherwise
    state: ApiState = http.app.state.atp
    reservations = reservation_store(state)
    request = body.to_request()
    duplicate = request.duplicate_line_index()
    if duplicate is not None:
        line = request.lines[duplicate]
        field = f"body.lines.{duplicate}"
        message = f"{line.sku}@{line.site} is named by an earlier line; give one line per item-site"
        raise ProblemError(
            422,
            "validation_error",
            f"{field}: {message}",
            title="Request validation failed",
            extra={"errors": [{"field": field, "message": message}]},
        )
    book = await state.ensure_policies()
    try:
        placed = await reservations.reserve(
            request,
            reservation_id=reservations.new_reservation_id(principal.name, key),
            principal=principal.name,
            idempotency_key_value=key,
            correlation_id=correlation_id_of(http),
            book=book,
        )
    except InsufficientStock as exc:
        raise ProblemError(
            409,
            "insufficient_stock",
            "not every line can be reserved: "
            + ", ".join(
                f"{ln.sku}@{ln.site} asked {ln.qty}, ATP {ln.atp}"
                for ln in exc.lines
                if ln.atp < ln.qty
            ),
            title="Insufficient stock",
            extra={
                "lines": [
                    {"sku": ln.sku, "site": ln.site, "qty": ln.qty, "atp": ln.atp}
                    for ln in exc.lines
                ]
            },
        ) from None
    except IdempotencyConflict as exc:
        raise ProblemError(
            409, "idempotency_conflict", str(exc), title="Idempotency conflict"
        ) from None
    reservation = placed.reservation
    headers = {"Location": f"/v1/reservations/{reservation.reservation_id}"}
    if placed.replayed:
        headers["Idempotent-Replayed"] = "true"
    return _json(reservation_body(reservation), 201, headers)


router.add_api_route(
    "",
    create_reservation,
    methods=["POST"],
    route_class_override=DirectRoute,
    status_code=201,
    response_model=ReservationOut,
    responses={
        409: {"description": "insufficient_stock or idempotency_conflict", **_PROBLEM},
        422: {"description": "validation_error", **_PROBLEM},
    },
    openapi_extra=_CREATE_OPENAPI,
)


# Ownership (contract section 4): a reservation belongs to the key that made it. Every route
# on one reservation passes ``principal.reservation_caller`` (api/auth.py) to the store as
# ``caller``; the store tells another key's reservation exactly as an unknown one
# (ReservationNotFound, checked inside Redis in the read itself: store/reservations.py
# ``read_visible``), and ``_not_found`` answers both with the same 404. New routes on one
# reservation (consume, PATCH) do the same, nothing more.
_NOT_YOURS = (
    "Another key's reservation is answered exactly as an unknown id: "
    "404 not_found, the same body. A key with admin acts on any."
)


@router.get(
    "/{reservation_id}",
    response_model=ReservationOut,
    responses={404: {"description": _NOT_YOURS, **_PROBLEM}},
)
async def get_reservation(
    http: Request, reservation_id: ReservationIdPath, principal: ReservationsWriter
) -> Response:
    _known_form(reservation_id)
    try:
        reservation = await reservation_store(http.app.state.atp).get(
            reservation_id, caller=principal.reservation_caller
        )
    except ReservationNotFound as exc:
        raise _not_found(exc) from None
    return _json(reservation_body(reservation))


async def _transition(
    http: Request, transition: Transition, reservation_id: str, principal: Principal
) -> Response:
    """Confirm or release: the same checks and answers, a different transition."""
    _known_form(reservation_id)
    state: ApiState = http.app.state.atp
    book = await state.ensure_policies()
    reservations = reservation_store(state)
    action = reservations.confirm if transition is Transition.CONFIRM else reservations.release
    try:
        reservation = await action(
            reservation_id,
            caller=principal.reservation_caller,
            correlation_id=correlation_id_of(http),
            book=book,
        )
    except ReservationNotFound as exc:
        raise _not_found(exc) from None
    except InvalidTransition as exc:
        raise _invalid(exc) from None
    return _json(reservation_body(reservation))


@router.post(
    "/{reservation_id}/confirm",
    response_model=ReservationOut,
    responses={
        404: {"description": _NOT_YOURS, **_PROBLEM},
        409: {"description": "invalid_transition", **_PROBLEM},
    },
)
async def confirm_reservation(
    http: Request, reservation_id: ReservationIdPath, principal: ReservationsWriter
) -> Response:
    return await _transition(http, Transition.CONFIRM, reservation_id, principal)


@router.post(
    "/{reservation_id}/release",
    response_model=ReservationOut,
    responses={
        404: {"description": _NOT_YOURS, **_PROBLEM},
        409: {"description": "invalid_transition", **_PROBLEM},
    },
)
async def release_reservation(
    http: Request, reservation_id: ReservationIdPath, principal: ReservationsWriter
) -> Response:
    return await _transition(http, Transition.RELEASE, reservation_id, principal)


def _known_form(reservation_id: str) -> None:
    """An id this service could never have issued is unknown without asking Redis."""
    if _RESERVATION_ID.fullmatch(reservation_id) is None:
        raise _not_found(ReservationNotFound(reservation_id))


def _not_found(exc: ReservationNotFound) -> ProblemError:
    return ProblemError(
        404,
        "not_found",
        f"no reservation {exc.reservation_id!r} (ended reservations are kept 24 h)",
        extra={"reservation_id": exc.reservation_id},
    )


def _invalid(exc: InvalidTransition) -> ProblemError:
    return ProblemError(
        409,
        "invalid_transition",
        str(exc),
        title="Invalid transition",
        extra={
            "reservation_id": exc.reservation.reservation_id,
            "reservation_status": exc.reservation.status.value,
        },
    )


# -- background ----------------------------------------------------------------------------------


async def run_expiry_sweeper(state: ApiState, stop: asyncio.Event) -> None:
    """Expire due reservations every ``expiry_sweep_interval_seconds`` while no worker does."""
    sweeper = ExpirySweeper(
        reservation_store(state),
        state.settings.expiry_sweep_interval_seconds,
        policy_book=state.ensure_policies,
        # Workers expire; this process does only while none has lately.
        duty=Duty(state.redis, "expiry", holder=relay_consumer_name("api")),
        stand_by=True,
    )
    await sweeper.run(stop)
