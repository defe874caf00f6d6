"""The per-key rate limit across real `atp api` processes: one limit for the whole service.

Two processes on one real redis-server hold one key to its rate together (a per-process
limit would let the key make twice as many requests); a Redis paused under them gets 503s,
never 500s, and the shared limit is back once Redis is.
"""

from __future__ import annotations

import asyncio
import signal
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from atp_service.embedded import ManagedProcess
from atp_service.store import keys
from atp_service.store.rate_limit import lease
from atp_service.store.redis_store import connect
from tests.integration.test_reservations_http import READER_KEY, api_process, base_url
from tests.random_refs import random_sku

pytestmark = pytest.mark.integration

#: (rate, burst): a slow key, asking Redis for every request, and a busy one, whose tokens
#: each process takes two at a time (store/rate_limit.py, ``lease``).
SLOW_KEY = (4.0, 10)
BUSY_KEY = (100.0, 10)
READER = {"Authorization": f"Bearer {READER_KEY}"}
ADMIN = {"Authorization": "Bearer test-admin-http-key"}


@pytest.fixture(params=[SLOW_KEY], ids=["slow key"])
def limits(request: pytest.FixtureRequest) -> tuple[float, int]:
    rate, burst = request.param
    return float(rate), int(burst)


@pytest.fixture
def two_apis(
    own_redis: ManagedProcess, tmp_path: Path, limits: tuple[float, int]
) -> Iterator[list[ManagedProcess]]:
    url = f"redis://127.0.0.1:{own_redis.port}/0"
    rate, burst = limits
    procs = [
        api_process(
            url,
            tmp_path / str(i),
            ATP_API_RATE_LIMIT_PER_SECOND=str(rate),
            ATP_API_RATE_LIMIT_BURST=str(burst),
            ATP_REDIS_TIMEOUT_SECONDS="0.5",
        )
        for i in range(2)
    ]
    try:
        for proc in procs:
            proc.start(timeout=30)
        yield procs
    finally:
        for proc in procs:
            proc.stop()


@pytest.mark.parametrize(
    "limits", [SLOW_KEY, BUSY_KEY], ids=["slow key", "busy key"], indirect=True
)
async def test_two_api_processes_hold_one_key_to_one_limit(
    two_apis: list[ManagedProcess], limits: tuple[float, int]
) -> None:
    rate, burst = limits
    assert lease(rate, burst) == (1 if limits == SLOW_KEY else 2)
    clients = [httpx.AsyncClient(base_url=base_url(p), timeout=10) for p in two_apis]
    path = f"/v1/availability/{random_sku()}?channel=web"
    statuses: list[Counter[int]] = [Counter(), Counter()]

    async def hammer(i: int, until: float) -> None:
        while time.monotonic() < until:
            response = await clients[i].get(path, headers=READER)
            statuses[i][response.status_code] += 1
            if response.status_code == 429:
                assert int(response.headers["retry-after"]) >= 1
                await asyncio.sleep(0.02)

    try:
        started = time.monotonic()
        # Four callers a process, alternately, for 2.5 s: far above either rate.
        await asyncio.gather(*(hammer(i % 2, started + 2.5) for i in range(8)))
        elapsed = time.monotonic() - started
        other_key = await clients[1].get("/v1/policies/channels", headers=ADMIN)
    finally:
        for client in clients:
            await client.aclose()

    served = [c[200] for c in statuses]
    allowed = burst + rate * elapsed
    print(
        f"\nrate limit {rate:g}/s, burst {burst}, two processes, {elapsed:.2f} s: served "
        f"{served} (sum {sum(served)}; the limit allows {allowed:.1f}, a per-process limit "
        f"{2 * allowed:.1f}), refused {[c[429] for c in statuses]}"
    )
    assert set(statuses[0]) | set(statuses[1]) == {200, 429}
    assert sum(served) <= allowed + 1  # one token's rounding
    assert sum(served) >= burst  # and the key does get what it may
    assert all(c[200] > 0 and c[429] > 0 for c in statuses)  # each process took part
    assert other_key.status_code == 200  # another key has a bucket of its own


async def test_a_paused_redis_under_the_limit_is_503s_and_the_shared_limit_comes_back(
    two_apis: list[ManagedProcess], own_redis: ManagedProcess
) -> None:
    url = f"redis://127.0.0.1:{own_redis.port}/0"
    api = two_apis[0]
    path = "/v1/policies/channels"
    async with httpx.AsyncClient(base_url=base_url(api), timeout=10) as client:
        assert (await client.get(path, headers=ADMIN)).status_code == 200
        own_redis.signal(signal.SIGSTOP)
        try:
            during = [await client.get(path, headers=ADMIN) for _ in range(3)]
        finally:
            own_redis.signal(signal.SIGCONT)
        deadline = time.monotonic() + 20
        while (after := await client.get(path, headers=ADMIN)).status_code != 200:
            assert time.monotonic() < deadline, after.text
            await asyncio.sleep(0.2)
        await asyncio.sleep(1.2)  # past the retry: the next request asks Redis again
        again = await client.get(path, headers=ADMIN)

    assert [r.status_code for r in during] == [503, 503, 503]
    assert {r.json()["code"] for r in during} == {"store_unavailable"}
    assert again.status_code == 200
    redis = connect(url, timeout=2.0, max_connections=2)
    try:
        bucket = await redis.hgetall(keys.rate_bucket("ops"))
    finally:
        await redis.aclose()
    assert float(bucket["tk"]) < SLOW_KEY[1]  # counted in Redis again
