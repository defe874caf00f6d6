"""Operations: liveness, readiness, Prometheus metrics (no authentication)."""

from __future__ import annotations

import asyncio
from typing import Any

from fastapi import APIRouter
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.responses import Response

from atp_service import __version__
from atp_service.api.deps import StateDep
from atp_service.api.errors import store_catching_up, store_unavailable
from atp_service.api.state import STORE_ERRORS

router = APIRouter(tags=["operations"])


@router.get("/healthz", summary="The process is alive, and its version")
async def healthz() -> dict[str, str]:
    return {"status": "ok", "version": __version__}


@router.get(
    "/readyz",
    summary="Redis answers a PING in time and holds every fold (503 otherwise)",
    description="503 `store_unavailable` while Redis is out of reach; 503 `store_catching_up` "
    "while Redis, back holding less than was folded into it (restarted from an older RDB or "
    "AOF, emptied, a replica promoted before it had the last writes), is being filled again "
    "from Kafka by the workers (`partitions_catching_up` of them left; -1: no worker has "
    "noticed yet). `kafka` is informative: the API serves while Kafka is down, and the "
    "outbox keeps the events until it is back.",
    responses={503: {"description": "The store is unreachable, or catching up"}},
)
async def readyz(state: StateDep) -> Any:
    retry_after = state.settings.redis_retry_after_seconds
    try:
        async with asyncio.timeout(state.settings.redis_timeout_seconds * 2):
            await state.store.ping()
            await state.ensure_policies()
            catching_up = await state.partitions_catching_up()
    except STORE_ERRORS:
        return store_unavailable(retry_after)
    if catching_up:
        return store_catching_up(retry_after, catching_up)
    return {
        "status": "ready",
        "store": "ok",
        "kafka": "connected" if state.kafka_connected else "unavailable",
    }


@router.get("/metrics", summary="Prometheus metrics", response_class=Response)
async def prometheus_metrics() -> Response:
    return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)
