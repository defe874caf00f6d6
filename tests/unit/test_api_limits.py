"""Abuse limits: oversized bodies are a 413, a key over its rate is a 429 with Retry-After."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest

from atp_service.api.errors import ProblemError
from atp_service.api.limits import RateLimiter, rate_limiter
from atp_service.config import Settings
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


# -- rate limiting: the token bucket -----------------------------------------------------------


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_a_bucket_grants_its_burst_then_refills_at_the_rate() -> None:
    clock = FakeClock()
    limiter = RateLimiter(rate=2.0, burst=4, clock=clock)

    assert [limiter.acquire("k") for _ in range(4)] == [0.0] * 4
    assert limiter.acquire("k") == pytest.approx(0.5)
    clock.now += 0.5
    assert limiter.acquire("k") == 0.0
    assert limiter.acquire("k") > 0.0
    clock.now += 60
    assert [limiter.acquire("k") for _ in range(4)] == [0.0] * 4  # refilled to the burst only
    assert limiter.acquire("k") > 0.0


def test_each_key_has_its_own_bucket() -> None:
    limiter = RateLimiter(rate=1.0, burst=1, clock=FakeClock())

    assert limiter.acquire("a") == 0.0
    assert limiter.acquire("b") == 0.0
    assert limiter.acquire("a") > 0.0


def test_retry_after_is_whole_seconds_rounded_up_and_at_least_one() -> None:
    clock = FakeClock()
    fast = RateLimiter(rate=100.0, burst=1, clock=clock)
    slow = RateLimiter(rate=0.4, burst=1, clock=clock)
    fast.check("k")
    slow.check("k")

    with pytest.raises(ProblemError) as fast_refusal:
        fast.check("k")
    with pytest.raises(ProblemError) as slow_refusal:
        slow.check("k")

    assert fast_refusal.value.headers == {"Retry-After": "1"}
    assert slow_refusal.value.headers == {"Retry-After": "3"}


def test_a_zero_rate_turns_limiting_off_and_a_zero_burst_follows_the_rate() -> None:
    assert rate_limiter(0, 10) is None
    limiter = rate_limiter(2.5, 0)
    assert limiter is not None and limiter.burst == 3
