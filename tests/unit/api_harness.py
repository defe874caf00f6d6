"""The API over fakeredis, its lifespan running, called through httpx's ASGI transport."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import fakeredis
import httpx
from fastapi import FastAPI

from atp_service.api.app import create_app
from atp_service.api.state import ApiState
from atp_service.config import Settings
from atp_service.domain import Bucket, InventoryDelta, Source
from atp_service.store import KeySpace, PolicyBook, RedisStore
from tests.random_refs import random_event_id

KEYS = {
    "reader": "test-reader-key",
    "oms": "test-oms-key",
    "admin": "test-admin-key",
}
API_KEYS = [
    {"name": "storefront", "key": KEYS["reader"], "scopes": ["availability:read"]},
    {"name": "oms", "key": KEYS["oms"], "scopes": ["availability:read", "reservations:write"]},
    {"name": "ops", "key": KEYS["admin"], "scopes": ["admin", "availability:read"]},
]


def auth(who: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {KEYS[who]}"}


READER = auth("reader")
ADMIN = auth("admin")


def make_settings(
    channels: Mapping[str, Any] | None = None,
    tmp: Path | None = None,
    *,
    sites: Mapping[str, Any] | None = None,
    **overrides: Any,
) -> Settings:
    """Settings with the test keys; ``channels`` and ``sites`` become files in ``tmp``."""

    def written(name: str, content: Mapping[str, Any] | None) -> Path | None:
        if content is None:
            return None
        assert tmp is not None
        path = tmp / name
        path.write_text(json.dumps(content))
        return path

    return Settings(
        _env_file=None,  # type: ignore[call-arg]
        api_keys=API_KEYS,  # type: ignore[arg-type]
        channels_file=written("channels.json", channels),
        sites_file=written("sites.json", sites),
        redis_url="redis://127.0.0.1:1/0",  # never used: the tests hand in fakeredis
        **overrides,
    )


@dataclass
class Api:
    app: FastAPI
    client: httpx.AsyncClient
    store: RedisStore
    redis: fakeredis.FakeAsyncRedis
    server: fakeredis.FakeServer

    @property
    def state(self) -> ApiState:
        state: ApiState = self.app.state.atp
        return state

    async def receive(
        self, sku: str, site: str, qty: int, bucket: Bucket = Bucket.ON_HAND, **kw: Any
    ) -> None:
        """Fold one delta, as the stream worker would, and make the site known."""
        source = Source.ERP if bucket is Bucket.IN_TRANSIT else Source.WMS
        occurred_at = kw.pop("occurred_at", "2026-11-23T05:00:00Z")
        event = InventoryDelta(random_event_id(), source, sku, site, bucket, qty, occurred_at, **kw)
        await self.store.fold_many([event], PolicyBook.of({}))
        await self.store.register_sites([site])
        await self.state.refresh_sites()


@asynccontextmanager
async def running_api(
    settings: Settings, server: fakeredis.FakeServer | None = None
) -> AsyncIterator[Api]:
    """An API process; give ``server`` to share another one's (fake) Redis."""
    server = server or fakeredis.FakeServer()
    redis = fakeredis.FakeAsyncRedis(server=server, decode_responses=True)
    app = create_app(settings, redis_client=redis, relay=False)
    store = RedisStore(redis, KeySpace(settings.key_groups), dedup_window_seconds=86_400)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://api") as client:
            yield Api(app, client, store, redis, server)
    await redis.aclose()
