"""Abuse limits: oversized bodies are a 413, a key over its rate is a 429 with Retry-After,
one limit for every API process (over one fake Redis here; real processes in
tests/integration/test_api_rate_limit.py)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import fakeredis
import pytest
from redis.exceptions import ConnectionError as RedisConnectionError

from atp_service.api.errors import ProblemError
from atp_service.api.limits import SHARED_RETRY_SECONDS, LocalBuckets, RateLimiter, limits_of
from atp_service.config import Settings
from atp_service.store import keys
from tests.unit.api_harness import ADMIN, READER, auth, make_settings, running_api
from tests.unit.test_api_errors import assert_problem

SMALL_LIMIT = 200


def settings_with(**overrides: Any) -> Settings:
    return make_settings().model_copy(update=overrides)


def batch_of(n: int, sku: str = "A") -> dict[str, Any]:
    return {"channel": "web", "items": [{"sku": sku} for _ in range(n)]}


async def chunks(*parts: bytes) -> AsyncIterator[bytes]:
    for part in parts:
        yield part


# -- body size ---------------------------------------------------------------------------------


async def test_the_default_limit_holds_a_batch_of_1000_of_the_longest_item_sites() -> None:
    items = [{"sku": "S" * 64, "site": f"{i:0>32}"} for i in range(1000)]
    async with running_api(make_settings()) as api:
        response = await api.client.post(
            "/v1/availability/batch", json={"channel": "web", "items": items}, headers=READER
        )

    assert response.status_code == 200, response.text
    assert len(response.json()["items"]) == 1000


async def test_a_declared_length_over_the_limit_is_refused_before_anything_else() -> None:
    async with running_api(settings_with(api_max_body_bytes=SMALL_LIMIT)) as api:
        response = await api.client.post(
            "/v1/availability/batch",
            json=batch_of(50),
            headers={"X-Correlation-ID": "c-413"},  # no key: the size is checked first
        )

    body = assert_problem(response, 413, "payload_too_large")
    assert str(SMALL_LIMIT) in str(body["detail"])
    assert response.headers["x-correlation-id"] == "c-413"


async def test_a_declared_length_over_the_limit_is_refused_even_where_no_body_is_read() -> None:
    async with running_api(settings_with(api_max_body_bytes=SMALL_LIMIT)) as api:
        response = await api.client.request("GET", "/healthz", content=b"x" * (SMALL_LIMIT + 1))

    assert_problem(response, 413, "payload_too_large")


async def test_a_chunked_body_is_counted_and_refused_once_it_crosses_the_limit() -> None:
    part = b" " * 150
    async with running_api(settings_with(api_max_body_bytes=SMALL_LIMIT)) as api:
        response = await api.client.post(
            "/v1/availability/batch",
            content=chunks(b'{"channel": "web", "items": [{"sku": "A"}]}', part, part),
            headers={**READER, "Content-Type": "application/json"},
        )

    assert "content-length" not in response.request.headers
    assert_problem(response, 413, "payload_too_large")


async def test_a_chunked_body_within_the_limit_is_served() -> None:
    async with running_api(settings_with(api_max_body_bytes=SMALL_LIMIT)) as api:
        response = await api.client.post(
            "/v1/availability/batch",
            content=chunks(b'{"channel": "web", ', b'"items": [{"sku": "A"}]}'),
            headers={**READER, "Content-Type": "application/json"},
        )

    assert response.status_code == 200, response.text


async def test_a_body_of_exactly_the_limit_is_accepted() -> None:
    body = b'{"channel": "web", "items": [{"sku": "A"}]}'
    padded = body[:-1] + b" " * (SMALL_LIMIT - len(body)) + b"}"
    assert len(padded) == SMALL_LIMIT
    async with running_api(settings_with(api_max_body_bytes=SMALL_LIMIT)) as api:
        exact = await api.client.post(
            "/v1/availability/batch",
            content=padded,
            headers={**READER, "Content-Type": "application/json"},
        )
        over = await api.client.post(
            "/v1/availability/batch",
            content=padded + b" ",
            headers={**READER, "Content-Type": "application/json"},
        )

    assert exact.status_code == 200, exact.text
    assert_problem(over, 413, "payload_too_large")


# -- rate limiting: over HTTP ------------------------------------------------------------------


async def test_rate_limiting_is_off_by_default() -> None:
    assert Settings(_env_file=None).api_rate_limit_per_second == 0  # type: ignore[call-arg]
    async with running_api(make_settings()) as api:
        assert api.state.rate_limiter is None
        statuses = {
            (await api.client.get("/v1/policies/channels", headers=ADMIN)).status_code
            for _ in range(50)
        }

    assert statuses == {200}


async def test_a_key_over_its_burst_is_429_with_retry_after_and_other_keys_are_served() -> None:
    # A rate this low cannot refill a token while the test runs.
    settings = settings_with(api_rate_limit_per_second=0.001, api_rate_limit_burst=3)
    async with running_api(settings) as api:
        served = [
            (await api.client.get("/v1/policies/channels", headers=ADMIN)).status_code
            for _ in range(3)
        ]
        refused = await api.client.get("/v1/policies/channels", headers=ADMIN)
        other_key = await api.client.get("/v1/availability/A?channel=web", headers=READER)

    assert served == [200, 200, 200]
    body = assert_problem(refused, 429, "rate_limited")
    assert "ops" in str(body["detail"])
    assert int(refused.headers["retry-after"]) >= 1
    assert other_key.status_code == 200


async def test_requests_without_a_known_key_and_probes_spend_no_tokens() -> None:
    settings = settings_with(api_rate_limit_per_second=0.001, api_rate_limit_burst=1)
    async with running_api(settings) as api:
        for _ in range(5):
            assert (await api.client.get("/healthz")).status_code == 200
            unknown = await api.client.get(
                "/v1/policies/channels", headers={"Authorization": "Bearer nope"}
            )
            assert unknown.status_code == 401
        first = await api.client.get("/v1/policies/channels", headers=ADMIN)
        second = await api.client.get("/v1/policies/channels", headers=ADMIN)

    assert first.status_code == 200
    assert_problem(second, 429, "rate_limited")


async def test_a_key_lacking_the_scope_still_spends_a_token() -> None:
    settings = settings_with(api_rate_limit_per_second=0.001, api_rate_limit_burst=1)
    async with running_api(settings) as api:
        forbidden = await api.client.get("/v1/policies/channels", headers=auth("reader"))
        limited = await api.client.get("/v1/availability/A?channel=web", headers=READER)

    assert_problem(forbidden, 403, "forbidden")
    assert_problem(limited, 429, "rate_limited")


async def test_a_rate_limited_request_changes_nothing() -> None:
    settings = settings_with(api_rate_limit_per_second=0.001, api_rate_limit_burst=1)
    async with running_api(settings) as api:
        await api.client.get("/v1/policies/channels", headers=ADMIN)
        refused = await api.client.put(
            "/v1/policies/channels/web", json={"share": 10}, headers=ADMIN
        )
        book = await api.store.policy_book()

    assert_problem(refused, 429, "rate_limited")
    assert "web" not in book.policies


async def test_two_api_processes_share_one_limit_per_key() -> None:
    settings = settings_with(api_rate_limit_per_second=0.001, api_rate_limit_burst=4)
    server = fakeredis.FakeServer()
    async with running_api(settings, server) as one, running_api(settings, server) as two:
        statuses = [
            (await api.client.get("/v1/policies/channels", headers=ADMIN)).status_code
            for api in (one, two, one, two, one, two)
        ]
        bucket = await one.redis.hgetall(keys.rate_bucket("ops"))

    assert statuses == [200, 200, 200, 200, 429, 429]
    assert float(bucket["tk"]) < 1


async def test_a_redis_outage_is_a_503_never_a_500_nor_a_429_of_the_limiter() -> None:
    settings = settings_with(api_rate_limit_per_second=0.001, api_rate_limit_burst=2)
    async with running_api(settings) as api:
        api.server.connected = False
        during = [await api.client.get("/v1/policies/channels", headers=ADMIN) for _ in range(2)]
        over = await api.client.get("/v1/policies/channels", headers=ADMIN)
        api.server.connected = True

    for response in during:
        assert_problem(response, 503, "store_unavailable")
    # Counted in this process meanwhile: the burst still holds.
    assert_problem(over, 429, "rate_limited")


# -- rate limiting: the limiter ------------------------------------------------------------


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Shared:
    """Service-wide buckets that count what was asked, and fail while ``down``."""

    def __init__(self) -> None:
        self.down = False
        self.asked = 0
        self.answer = 0.0
        self.gate: asyncio.Event | None = None

    async def take(self, key_name: str) -> float:
        self.asked += 1
        if self.gate is not None:
            await self.gate.wait()
        if self.down:
            raise RedisConnectionError("down")
        return self.answer


def limiter(shared: Shared, clock: FakeClock, burst: int = 2) -> RateLimiter:
    return RateLimiter(shared, 0.001, burst, outage_errors=(RedisConnectionError,), clock=clock)


async def test_the_limiter_asks_the_shared_buckets_and_answers_what_they_say() -> None:
    shared, clock = Shared(), FakeClock()
    rl = limiter(shared, clock)

    assert await rl.acquire("k") == 0.0
    shared.answer = 2.5
    assert await rl.acquire("k") == 2.5
    assert shared.asked == 2 and rl.shared_in_use


async def test_while_redis_cannot_be_asked_the_process_limits_alone_then_asks_again() -> None:
    shared, clock = Shared(), FakeClock()
    rl = limiter(shared, clock, burst=2)
    shared.down = True

    first = await rl.acquire("k")
    second = await rl.acquire("k")
    third = await rl.acquire("k")

    assert (first, second) == (0.0, 0.0) and third > 0.0  # the local burst of 2
    assert shared.asked == 1 and not rl.shared_in_use  # asked once, not per request
    clock.now += SHARED_RETRY_SECONDS
    shared.down = False
    assert await rl.acquire("k") == 0.0
    assert shared.asked == 2 and rl.shared_in_use


async def test_one_request_asks_again_while_the_others_count_locally() -> None:
    shared, clock = Shared(), FakeClock()
    rl = limiter(shared, clock, burst=100)
    shared.down = True
    await rl.acquire("k")
    clock.now += SHARED_RETRY_SECONDS
    shared.gate = asyncio.Event()

    asking = asyncio.create_task(rl.acquire("k"))
    await asyncio.sleep(0)
    meanwhile = [await rl.acquire("k") for _ in range(5)]
    shared.gate.set()
    await asking

    assert meanwhile == [0.0] * 5
    assert shared.asked == 2  # the first failure, then the one request that asked again


async def test_check_answers_429_with_retry_after_in_whole_seconds_rounded_up() -> None:
    shared, clock = Shared(), FakeClock()
    rl = limiter(shared, clock)
    shared.answer = 0.001

    with pytest.raises(ProblemError) as fast:
        await rl.check("k")
    shared.answer = 2.2
    with pytest.raises(ProblemError) as slow:
        await rl.check("k")

    assert (fast.value.status, fast.value.code) == (429, "rate_limited")
    assert fast.value.headers == {"Retry-After": "1"}
    assert slow.value.headers == {"Retry-After": "3"}


# -- rate limiting: the local token bucket ------------------------------------------------------


def test_a_bucket_grants_its_burst_then_refills_at_the_rate() -> None:
    clock = FakeClock()
    buckets = LocalBuckets(rate=2.0, burst=4, clock=clock)

    assert [buckets.acquire("k") for _ in range(4)] == [0.0] * 4
    assert buckets.acquire("k") == pytest.approx(0.5)
    clock.now += 0.5
    assert buckets.acquire("k") == 0.0
    assert buckets.acquire("k") > 0.0
    clock.now += 60
    assert [buckets.acquire("k") for _ in range(4)] == [0.0] * 4  # refilled to the burst only
    assert buckets.acquire("k") > 0.0


def test_each_key_has_its_own_bucket() -> None:
    buckets = LocalBuckets(rate=1.0, burst=1, clock=FakeClock())

    assert buckets.acquire("a") == 0.0
    assert buckets.acquire("b") == 0.0
    assert buckets.acquire("a") > 0.0


def test_a_zero_rate_turns_limiting_off_and_a_zero_burst_follows_the_rate() -> None:
    assert limits_of(0, 10) is None
    assert limits_of(2.5, 0) == (2.5, 3)
    assert limits_of(0.001, 0) == (0.001, 1)


def test_a_rate_bucket_is_one_key_of_its_own_slot_whatever_the_key_name() -> None:
    names = ["oms", "oms-eu", "a}b{c", "x" * 128]
    buckets = [keys.rate_bucket(name) for name in names]

    assert len(set(buckets)) == len(names)
    for bucket in buckets:
        tag = bucket[bucket.index("{") + 1 : bucket.index("}")]
        assert bucket.startswith("atp:{rl:") and bucket.endswith("}") and tag.startswith("rl:")
