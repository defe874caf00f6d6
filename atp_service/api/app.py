"""The FastAPI app factory: the one place the API builds its clients (the bootstrap)."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import APIRouter, FastAPI
from fastapi.telemetry import TelemetryConfig
from pydantic import BaseModel

from atp_service.api.errors import install_error_handlers
from atp_service.api.limits import BodyLimitMiddleware
from atp_service.api.middleware import RequestContextMiddleware
from atp_service.api.routes import DOCUMENTED_MODELS, ROUTERS
from atp_service.api.routes.admin import run_reevaluation
from atp_service.api.routes.reservations import run_expiry_sweeper
from atp_service.api.state import STORE_ERRORS, ApiState, BackgroundTask
from atp_service.api.sync_view import follow_sync
from atp_service.config import Settings, get_settings
from atp_service.store import connect
from atp_service.store.redis_store import RedisClient

log = logging.getLogger(__name__)

#: Tasks run beside the API for its lifetime, each ``async def task(state, stop)``;
#: they see the connected ``ApiState`` and must return soon after ``stop`` is set.
BACKGROUND_TASKS: list[BackgroundTask] = [run_expiry_sweeper, follow_sync, run_reevaluation]


def telemetry_config(settings: Settings) -> TelemetryConfig:
    """FastAPI's built-in OpenTelemetry, on only when asked for (``ATP_API_OPENTELEMETRY``).

    Off, FastAPI skips it without asking OpenTelemetry for its providers on every request;
    the service's own metrics are Prometheus' (``/metrics``). On, configure providers and
    exporters as OpenTelemetry's ``OTEL_*`` variables say.
    """
    on = settings.api_opentelemetry
    return {"tracing": on, "metrics": on, "logs": on, "operation_spans": on}


def document_models(app: FastAPI, models: list[type[BaseModel]]) -> None:
    """Put ``models`` (bodies routes read by hand, ``api/bodies.py``) into the OpenAPI
    document's components, where their ``requestBody`` refers to them."""
    generate = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            document = generate()
            schemas = document.setdefault("components", {}).setdefault("schemas", {})
            for model in models:
                schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
                for name, sub in schema.pop("$defs", {}).items():
                    schemas.setdefault(name, sub)
                schemas.setdefault(model.__name__, schema)
        return app.openapi_schema  # type: ignore[return-value]  # set by generate()

    app.openapi = openapi  # type: ignore[method-assign]


def serve_routes(app: FastAPI, routers: list[APIRouter]) -> None:
    """Put the routers' routes in the app's own route table, in order, ahead of any route
    FastAPI added itself (matched first: a request tries the routes in order; the API has
    none, its documentation is routes/docs.py, but the benchmark's ceiling app does).

    Not ``include_router``: since FastAPI 0.130 an included router stays a router of its own
    (``_IncludedRouter``) that matches each request against its routes twice (once to be
    chosen, once to dispatch), keeping route contexts in the scope on the way. Measured on
    a product-page read called directly (no HTTP): 38 µs included, 31 µs in the app's own
    table, 26 µs ahead of the four documentation routes. The benchmark's ceiling app serves
    its endpoints through this function too, so both sides of the ratio route alike.

    The routers declare nothing at inclusion (no prefix, tags, responses or dependencies:
    their own are already in each route, put there by ``APIRouter.add_api_route``), so the
    routes and the OpenAPI document are the same as with ``include_router``
    (tests/unit/test_api_routing.py). The routes do not see ``app.dependency_overrides``
    (nothing here uses them).
    """
    routes = [route for router in routers for route in router.routes]
    app.router.routes[0:0] = routes


def create_app(
    settings: Settings | None = None,
    *,
    redis_client: RedisClient | None = None,
    relay: bool = True,
) -> FastAPI:
    """The API. ``redis_client`` (tests) replaces the one built from ``settings.redis_url``
    and is left open; ``relay=False`` runs no outbox relay (no Kafka producer)."""
    settings = settings or get_settings()
    state = ApiState(settings)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        client = redis_client or connect(
            settings.redis_url,
            timeout=settings.redis_timeout_seconds,
            max_connections=settings.redis_max_connections,
            cluster=settings.redis_cluster,
        )
        state.open(client)
        try:
            await state.refresh_policies()
            await state.refresh_site_book()
            await state.refresh_sites()
        except STORE_ERRORS as exc:
            # Serve anyway: requests answer 503 until the store is back, and the
            # background refresher seeds and loads the policies then.
            log.warning("store unreachable at startup (%r); serving 503 until it is back", exc)
        state.start_background(BACKGROUND_TASKS, relay=relay)
        try:
            yield
        finally:
            await state.stop_background()
            if redis_client is None:
                await client.aclose()

    app = FastAPI(
        title="ATP service",
        version="1.0.0",
        summary="Available-to-promise inventory: availability, reservations, policies.",
        lifespan=lifespan,
        telemetry=telemetry_config(settings),
        # The document and Swagger UI are served by routes/docs.py, from local assets.
        openapi_url=None,
        docs_url=None,
        redoc_url=None,
    )
    app.state.atp = state
    install_error_handlers(app, retry_after=settings.redis_retry_after_seconds)
    serve_routes(app, ROUTERS)
    document_models(app, DOCUMENTED_MODELS)
    # Inside the request context, so a 413 carries the correlation id and is timed.
    app.add_middleware(BodyLimitMiddleware, max_bytes=settings.api_max_body_bytes)
    app.add_middleware(RequestContextMiddleware)
    return app
