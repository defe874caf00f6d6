"""The HTTP and Redis ceilings: a tiny FastAPI app served exactly as `atp api` serves the API.

``python -m benchmarks.ceiling_app --port P --workers N`` runs it through
``atp_service.api.server.serve`` itself (the same uvicorn options, loop, HTTP parser, worker
count), with the app factory swapped for ours. Each ceiling is asked the very request it is
compared with (benchmarks/locustfile.py), so that the load generator, which shares the
machine, does the same work on both sides of a ratio; the ceiling ignores what it is told.
Endpoints, routed as the API's hot routes are (``DirectRoute``, ``serve_routes``), with no
auth and no middleware:

- ``GET /ceiling/http/{sku}``: a constant availability-shaped body, encoded per request by
  orjson into a ``Response`` (as the availability route does). Asked as a product page is
  (``/v1/availability/{sku}?channel=web``, the read key's ``Authorization``).
- ``GET /ceiling/http``: the same at one fixed URL (the reference the ceiling was until
  2026-12-04: a cheaper request for the load generator).
- ``POST /ceiling/redis``: the request's body read, one ``GET`` round trip to Redis from
  redis.asyncio through ``atp_service.store.connect`` (the API's pool, parser and timeouts),
  a constant reservation-shaped body. Asked as a 2-line reservation is (the same body,
  ``Idempotency-Key`` and ``Authorization``).
- ``GET /readyz``: 200 once the Redis client is connected.
"""

from __future__ import annotations

import argparse
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import orjson
from fastapi import APIRouter, FastAPI, Request
from starlette.responses import Response

from atp_service.api import server
from atp_service.api.app import serve_routes, telemetry_config
from atp_service.api.direct_route import DirectRoute
from atp_service.config import Settings, get_settings
from atp_service.store import connect

CEILING_KEY = "atp:bench:ceiling"

#: The size and shape of a one-sku, five-site availability answer.
BODY = {
    "sku": "SKU-00042",
    "channel": "web",
    "atp": 1234,
    "sites": [
        {
            "site": site,
            "atp": 246,
            "on_hand": 300,
            "allocated": 20,
            "quarantined": 4,
            "reserved": 30,
            "in_transit": 0,
            "version": 17,
            "as_of": "2026-11-23T05:00:00.123Z",
        }
        for site in ("DC-EAST", "DC-WEST", "STORE-001", "STORE-002", "DC-CENTRAL")
    ],
    "as_of": "2026-11-23T05:00:00.123Z",
}
#: The size and shape of the answer to a 2-line reservation (201).
RESERVATION_BODY = {
    "reservation_id": "res_" + "0" * 32,
    "status": "held",
    "channel": "web",
    "order_ref": None,
    "mode": "all_or_nothing",
    "expires_at": "2026-11-23T05:00:05.123Z",
    "created_at": "2026-11-23T05:00:00.123Z",
    "updated_at": "2026-11-23T05:00:00.123Z",
    "lines": [
        {"sku": sku, "site": "DC-EAST", "qty": 1, "reserved": 1, "allocated": 0}
        for sku in ("SKU-00042", "SKU-01042")
    ],
}


def create_ceiling_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()
    holder: dict[str, object] = {}

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        client = connect(
            settings.redis_url,
            timeout=settings.redis_timeout_seconds,
            max_connections=settings.redis_max_connections,
            cluster=settings.redis_cluster,
        )
        await client.set(CEILING_KEY, orjson.dumps(BODY).decode())
        holder["redis"] = client
        try:
            yield
        finally:
            await client.aclose()

    # The API's framework configuration (its OpenTelemetry setting included).
    app = FastAPI(
        title="ATP benchmark ceilings", lifespan=lifespan, telemetry=telemetry_config(settings)
    )

    # Routed as the API's hot routes are (DirectRoute: the endpoint called as is).
    async def constant(request: Request) -> Response:
        return Response(orjson.dumps(BODY), media_type="application/json")

    async def one_round_trip(request: Request) -> Response:
        await request.body()
        await holder["redis"].get(CEILING_KEY)  # type: ignore[attr-defined]
        return Response(orjson.dumps(RESERVATION_BODY), 201, media_type="application/json")

    # Served as the API serves its routes (serve_routes: the app's own table, ahead of the
    # documentation routes).
    router = APIRouter()
    for path, endpoint, method in (
        ("/ceiling/http/{sku:path}", constant, "GET"),
        ("/ceiling/http", constant, "GET"),
        ("/ceiling/redis", one_round_trip, "POST"),
    ):
        router.add_api_route(path, endpoint, methods=[method], route_class_override=DirectRoute)
    serve_routes(app, [router])

    @app.get("/readyz")
    async def ready() -> Response:
        return Response(b'{"status":"ready"}', media_type="application/json")

    return app


# Swapped in at import time, so that with workers > 1 the uvicorn worker processes (which
# import this module as their __mp_main__) build this app too.
server.create_app = create_ceiling_app  # type: ignore[attr-defined,assignment]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--workers", type=int, default=1)
    args = parser.parse_args()
    server.serve(get_settings(), host=args.host, port=args.port, workers=args.workers)


if __name__ == "__main__":
    main()
