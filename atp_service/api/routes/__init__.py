"""The API's routers, one module per resource."""

from fastapi import APIRouter

from atp_service.api.routes import admin, availability, docs, ops, reservations

ROUTERS: list[APIRouter] = [
    availability.router,
    reservations.router,
    admin.router,
    ops.router,
    docs.router,
]

__all__ = ["ROUTERS"]
