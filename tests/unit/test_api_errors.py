"""Every error is RFC 9457 problem JSON with a stable code; a store outage is a 503."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from atp_service.api.errors import PROBLEM_JSON
from tests.unit.api_harness import ADMIN, READER, Api, auth, make_settings, running_api

PROBLEM_MEMBERS = {"type", "title", "status", "detail", "code"}


@pytest.fixture
async def api() -> AsyncIterator[Api]:
    async with running_api(make_settings()) as api:
        yield api


def assert_problem(response: object, status: int, code: str) -> dict[str, object]:
    import httpx

    assert isinstance(response, httpx.Response)
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == PROBLEM_JSON
    body: dict[str, object] = response.json()
    assert set(body) >= PROBLEM_MEMBERS
    assert (body["status"], body["code"]) == (status, code)
    assert isinstance(body["type"], str) and body["type"].endswith(code)
    return body


async def test_an_unknown_route_is_a_404_problem(api: Api) -> None:
    assert_problem(await api.client.get("/v2/anything", headers=READER), 404, "not_found")


async def test_a_wrong_method_is_a_405_problem_naming_the_allowed_ones(api: Api) -> None:
    response = await api.client.delete("/v1/policies/channels", headers=ADMIN)

    assert_problem(response, 405, "method_not_allowed")
    assert response.headers["allow"] == "GET"


async def test_a_body_that_is_not_json_is_422_on_the_body(api: Api) -> None:
    response = await api.client.post(
        "/v1/availability/batch",
        content=b'{"channel": "web", items',
        headers={**READER, "Content-Type": "application/json"},
    )

    body = assert_problem(response, 422, "validation_error")
    assert body["errors"] == [{"field": "body", "message": body["errors"][0]["message"]}]  # type: ignore[index]


async def test_a_validation_problem_names_a_few_fields_and_counts_the_rest(api: Api) -> None:
    items = [{"sku": "-bad"} for _ in range(8)]

    response = await api.client.post(
        "/v1/availability/batch", json={"channel": "web", "items": items}, headers=READER
    )

    body = assert_problem(response, 422, "validation_error")
    assert len(body["errors"]) == 8  # type: ignore[arg-type]
    assert str(body["detail"]).endswith("and 3 more")


@pytest.mark.parametrize(
    ("method", "path", "json"),
    [
        # SKU-2, not SKU-1: what the in-process copy holds is served while the copy is
        # current (docs/api.md); anything else needs the store.
        ("GET", "/v1/availability/SKU-2?channel=web", None),
        ("POST", "/v1/availability/batch", {"channel": "web", "items": [{"sku": "A"}]}),
        ("PUT", "/v1/safety-stock/SKU-1/DC-1", {"safety_stock": 1}),
        ("PUT", "/v1/policies/channels/web", {"share": 10}),
        ("GET", "/v1/policies/channels", None),
    ],
)
async def test_an_unreachable_store_is_a_503_with_retry_after(
    api: Api, method: str, path: str, json: object
) -> None:
    await api.receive("SKU-1", "DC-1", 1)
    api.server.connected = False

    response = await api.client.request(method, path, json=json, headers=ADMIN)

    assert_problem(response, 503, "store_unavailable")
    assert response.headers["retry-after"] == str(api.state.settings.redis_retry_after_seconds)


async def test_the_api_answers_again_once_the_store_is_back(api: Api) -> None:
    await api.receive("A", "DC-1", 1)
    api.server.connected = False
    assert (
        await api.client.get("/v1/availability/B?channel=web", headers=READER)
    ).status_code == 503

    api.server.connected = True

    assert (
        await api.client.get("/v1/availability/B?channel=web", headers=READER)
    ).status_code == 200


async def test_an_unexpected_error_is_a_500_problem_without_internals(api: Api) -> None:
    @api.app.get("/boom")
    async def boom() -> None:
        raise RuntimeError("secret internals")

    response = await api.client.get("/boom", headers={"X-Correlation-ID": "c-500"})

    body = assert_problem(response, 500, "internal_error")
    assert "secret" not in response.text and "Traceback" not in response.text
    assert body["detail"]
    assert response.headers["x-correlation-id"] == "c-500"


async def test_the_correlation_id_is_echoed(api: Api) -> None:
    response = await api.client.get("/healthz", headers={"X-Correlation-ID": "ord-88121"})

    assert response.headers["x-correlation-id"] == "ord-88121"


@pytest.mark.parametrize("given", [None, "x" * 129, "has space"])
async def test_a_missing_or_unusable_correlation_id_is_replaced_by_a_fresh_one(
    api: Api, given: str | None
) -> None:
    headers = {"X-Correlation-ID": given} if given is not None else {}

    first = await api.client.get("/healthz", headers=headers)
    second = await api.client.get("/healthz", headers=headers)

    ids = {first.headers["x-correlation-id"], second.headers["x-correlation-id"]}
    assert len(ids) == 2 and given not in ids
    assert all(len(i) == 32 for i in ids)


async def test_an_error_response_carries_the_correlation_id_too(api: Api) -> None:
    response = await api.client.get("/nowhere", headers={"X-Correlation-ID": "c-404"})

    assert response.headers["x-correlation-id"] == "c-404"


async def test_a_reservation_while_the_store_is_unreachable_is_a_503(api: Api) -> None:
    await api.receive("SKU-1", "DC-1", 5)
    api.server.connected = False

    responses = await asyncio.gather(
        *(
            api.client.post(
                "/v1/reservations",
                json={"channel": "web", "lines": [{"sku": "SKU-1", "site": "DC-1", "qty": 1}]},
                headers={**auth("oms"), "Idempotency-Key": f"k-{n}"},
            )
            for n in range(5)
        )
    )

    for response in responses:
        assert_problem(response, 503, "store_unavailable")
