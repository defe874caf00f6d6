"""Dependencies routes share: the app state, the store, the caller, the correlation id.

async def route(state: StateDep, correlation_id: CorrelationIdDep,
                _: Annotated[Principal, Depends(require_scope("reservations:write"))]): ...
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from atp_service.api.auth import Principal, require_scope
from atp_service.api.middleware import CORRELATION_SCOPE_KEY, new_correlation_id
from atp_service.api.state import ApiState
from atp_service.config import Settings
from atp_service.store import RedisStore


async def get_state(request: Request) -> ApiState:
    state: ApiState = request.app.state.atp
    return state


async def get_store(request: Request) -> RedisStore:
    state: ApiState = request.app.state.atp
    return state.store


async def get_settings(request: Request) -> Settings:
    state: ApiState = request.app.state.atp
    return state.settings


def correlation_id_of(request: Request) -> str:
    """The request's ``X-Correlation-ID`` (or the one generated for it); echoed in the response."""
    value = request.scope.get(CORRELATION_SCOPE_KEY)
    return value if isinstance(value, str) else new_correlation_id()


async def get_correlation_id(request: Request) -> str:
    return correlation_id_of(request)


StateDep = Annotated[ApiState, Depends(get_state)]
StoreDep = Annotated[RedisStore, Depends(get_store)]
SettingsDep = Annotated[Settings, Depends(get_settings)]
CorrelationIdDep = Annotated[str, Depends(get_correlation_id)]
AvailabilityReader = Annotated[Principal, Depends(require_scope("availability:read"))]
ReservationsWriter = Annotated[Principal, Depends(require_scope("reservations:write"))]
Admin = Annotated[Principal, Depends(require_scope("admin"))]

__all__ = [
    "Admin",
    "AvailabilityReader",
    "CorrelationIdDep",
    "ReservationsWriter",
    "SettingsDep",
    "StateDep",
    "StoreDep",
    "correlation_id_of",
    "get_correlation_id",
    "get_settings",
    "get_state",
    "get_store",
    "require_scope",
]
