"""The API's routers, one module per resource."""

from fastapi import APIRouter
from pydantic import BaseModel

from atp_service.api.routes import (
    admin,
    availability,
    dashboard,
    docs,
    ops,
    promising,
    reservations,
    sites,
    timeline,
)

#: In matching order. The plain read (``/v1/availability/{sku:path}``) leaves the paths
#: ending in ``/timeline`` to the timeline, after it (``api/path_suffix.py``).
ROUTERS: list[APIRouter] = [
    availability.router,
    timeline.router,
    reservations.router,
    promising.router,
    admin.router,
    sites.router,
    ops.router,
    dashboard.router,
    docs.router,
]

#: Bodies the routes read by hand, documented as components of the OpenAPI document.
DOCUMENTED_MODELS: list[type[BaseModel]] = [
    *reservations.DOCUMENTED_MODELS,
    *promising.DOCUMENTED_MODELS,
]

__all__ = ["DOCUMENTED_MODELS", "ROUTERS"]
