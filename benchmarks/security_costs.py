"""What the security of issue 15 costs: `python -m benchmarks.security_costs [--rounds N]`.

1. The shared per-key rate limit: CPU per request of the API process (the ASGI app called
   directly in a loop by concurrent callers, no HTTP, as docs/benchmarks.md measures the
   routes) and of Redis, with the limit off and on, for the product-page read (served from
   the in-process copy: the limit adds the only Redis call) and the 2-line reservation.
   Rounds alternate off and on; each phase's figure is the median of its rounds.
2. Ownership: the latency of GET /v1/reservations/{id} for another key's reservation and
   for an unknown id (both 404), called directly, so a difference would show.

It prints figures and writes nothing. A real redis-server (the embedded one) on a free
port; the machine may be shared with other work, so read the ratios more than the values.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import orjson
import psutil
from fastapi import FastAPI

from atp_service.api.app import create_app
from atp_service.config import Settings
from atp_service.domain import Bucket, InventoryDelta, Source
from atp_service.embedded import free_port, redis_process
from atp_service.store import KeySpace, PolicyBook, RedisStore, connect

SKUS = 2000
SITES = ("DC-1", "DC-2", "DC-3", "DC-4", "DC-5")
CALLERS = 16
KEYS = [
    {"name": "storefront", "key": "bench-reader", "scopes": ["availability:read"]},
    {"name": "oms", "key": "bench-oms", "scopes": ["reservations:write"]},
    {"name": "connector", "key": "bench-connector", "scopes": ["reservations:write"]},
]
READER = [(b"authorization", b"Bearer bench-reader")]
OMS = [(b"authorization", b"Bearer bench-oms")]
CONNECTOR = [(b"authorization", b"Bearer bench-connector")]


async def call(
    app: FastAPI, method: str, path: str, headers: list[tuple[bytes, bytes]], body: bytes = b""
) -> int:
    """One request through the ASGI app, no server: its status."""
    target, _, query = path.partition("?")
    scope: dict[str, Any] = {
        "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": method,
        "scheme": "http", "path": target, "raw_path": target.encode(),
        "query_string": query.encode(), "root_path": "", "server": ("bench", 80),
        "client": ("127.0.0.1", 1), "app": app,
        "headers": [*headers, (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode())],
    }  # fmt: skip
    sent = False
    status = 0

    async def receive() -> dict[str, Any]:
        nonlocal sent
        if sent:
            await asyncio.sleep(3600)
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        nonlocal status
        if message["type"] == "http.response.start":
            status = message["status"]

    await app(scope, receive, send)
    return status


async def load(redis_url: str) -> None:
    client = connect(redis_url, timeout=5.0, max_connections=4)
    store = RedisStore(client, KeySpace(16), dedup_window_seconds=86_400)
    events = [
        InventoryDelta(
            uuid.uuid4().hex, Source.WMS, f"SKU-{n:05d}", site, Bucket.ON_HAND, 10**8,
            "2026-11-23T05:00:00Z",
        )
        for n in range(SKUS)
        for site in SITES
    ]  # fmt: skip
    for start in range(0, len(events), 2000):
        await store.fold_many(events[start : start + 2000], PolicyBook.of({}))
    await store.register_sites(list(SITES))
    await client.aclose()


Request = Callable[[FastAPI, int], Awaitable[int]]


async def product_page(app: FastAPI, n: int) -> int:
    return await call(app, "GET", f"/v1/availability/SKU-{n % SKUS:05d}?channel=web", READER)


async def reservation(app: FastAPI, n: int) -> int:
    lines = [
        {"sku": f"SKU-{n % SKUS:05d}", "site": SITES[n % 5], "qty": 1},
        {"sku": f"SKU-{(n + 7) % SKUS:05d}", "site": SITES[(n + 1) % 5], "qty": 1},
    ]
    payload = orjson.dumps({"channel": "web", "ttl_seconds": 60, "lines": lines})
    headers = [*OMS, (b"idempotency-key", uuid.uuid4().hex.encode())]
    return await call(app, "POST", "/v1/reservations", headers, payload)


async def cpu_per_request(
    app: FastAPI, request: Request, count: int, redis: psutil.Process
) -> tuple[float, float, float]:
    """(API µs CPU, Redis µs CPU, requests/s) over ``count`` requests from CALLERS callers."""
    statuses: dict[int, int] = {}
    counter = iter(range(count))

    async def caller() -> None:
        for n in counter:
            status = await request(app, n)
            statuses[status] = statuses.get(status, 0) + 1

    redis_before = sum(redis.cpu_times()[:2])
    cpu_before, wall_before = time.process_time(), time.perf_counter()
    await asyncio.gather(*(caller() for _ in range(CALLERS)))
    cpu, wall = time.process_time() - cpu_before, time.perf_counter() - wall_before
    redis_cpu = sum(redis.cpu_times()[:2]) - redis_before
    if set(statuses) - {200, 201}:
        raise RuntimeError(f"unexpected answers: {statuses}")
    return cpu / count * 1e6, redis_cpu / count * 1e6, count / wall


def settings_for(redis_url: str, *, limited: bool) -> Settings:
    return Settings(
        _env_file=None,  # type: ignore[call-arg]
        api_keys=KEYS,  # type: ignore[arg-type]
        redis_url=redis_url,
        # On, at a rate no request reaches: every request takes a token, none is refused.
        api_rate_limit_per_second=1e9 if limited else 0,
        expiry_sweep_interval_seconds=60,
    )


async def run(rounds: int, count: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        server = redis_process(free_port(), Path(tmp) / "redis")
        server.start()
        try:
            assert server.proc is not None
            redis = psutil.Process(server.proc.pid)
            url = f"redis://127.0.0.1:{server.port}/0"
            await load(url)
            await measure(url, redis, rounds, count)
        finally:
            server.stop()


#: The phases: the limit off; on, a token from Redis for each request (as a key slower than
#: 1 / LEASE_SECONDS a second; coalesced per loop turn only); on, with a busy key's leases.
PHASES = ("limit off", "on, lease 1", "on, lease 64")


async def measure(url: str, redis: psutil.Process, rounds: int, count: int) -> None:
    apps = [create_app(settings_for(url, limited=i > 0), relay=False) for i in range(3)]
    async with (
        apps[0].router.lifespan_context(apps[0]),
        apps[1].router.lifespan_context(apps[1]),
        apps[2].router.lifespan_context(apps[2]),
    ):
        apps[1].state.atp.rate_limiter.shared.lease = 1
        assert apps[2].state.atp.rate_limiter.shared.lease == 64
        for app in apps:  # the copies filled, the scripts loaded
            for n in range(SKUS):
                await product_page(app, n)
            await cpu_per_request(app, reservation, 200, redis)
        print(f"{CALLERS} callers, {count} requests a round, {rounds} rounds alternated")
        for name, request in (("product page", product_page), ("reservation", reservation)):
            figures: list[list[tuple[float, float, float]]] = [[], [], []]
            for _ in range(rounds):
                for i, app in enumerate(apps):
                    figures[i].append(await cpu_per_request(app, request, count, redis))
            for phase, runs in zip(PHASES, figures, strict=True):
                api, red, rate = (statistics.median(f[i] for f in runs) for i in (0, 1, 2))
                print(
                    f"  {name:12} {phase:12}: API {api:6.1f} µs CPU/request, Redis {red:5.1f}, "
                    f"{rate:7.0f} requests/s"
                )
        await ownership_latency(apps[0])


async def ownership_latency(app: FastAPI, samples: int = 2000) -> None:
    """GET of another key's reservation against GET of an unknown id, interleaved."""
    payload = orjson.dumps(
        {"channel": "web", "lines": [{"sku": "SKU-00001", "site": "DC-1", "qty": 1}]}
    )
    # Made by one key, asked for by another (``call`` keeps no body: the id is looked up).
    status = await call(
        app, "POST", "/v1/reservations", [*OMS, (b"idempotency-key", b"bench-own")], payload
    )
    assert status == 201
    state = app.state.atp
    rid = await _some_reservation_of(state.redis, "oms")
    unknown = f"res_{uuid.uuid4().hex}"
    timings: dict[str, list[float]] = {"another key's": [], "unknown": []}
    for _ in range(samples):
        for label, asked in (("another key's", rid), ("unknown", unknown)):
            started = time.perf_counter()
            status = await call(app, "GET", f"/v1/reservations/{asked}", CONNECTOR)
            timings[label].append((time.perf_counter() - started) * 1e6)
            assert status == 404, status
    print(f"  GET /v1/reservations/{{id}} answered 404, {samples} each, interleaved:")
    for label, values in timings.items():
        values.sort()
        print(
            f"    {label:14} id: p50 {values[len(values) // 2]:6.1f} µs, "
            f"p99 {values[int(len(values) * 0.99)]:6.1f} µs"
        )


async def _some_reservation_of(redis: Any, owner: str) -> str:
    async for key in redis.scan_iter(match="atp:{g*}:r:*", count=1000):
        if await redis.hget(key, "ow") == owner:
            return str(key).rsplit(":", 1)[1]
    raise RuntimeError("no reservation found")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--requests", type=int, default=4000)
    args = parser.parse_args()
    asyncio.run(run(args.rounds, args.requests))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
