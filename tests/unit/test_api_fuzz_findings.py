"""What fuzzing the API found, kept as regressions: every answer is one the document lists."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from tests.unit.api_harness import ADMIN, READER, Api, make_settings, running_api
from tests.unit.test_api_errors import assert_problem


@pytest.fixture
async def api() -> AsyncIterator[Api]:
    async with running_api(make_settings()) as api:
        yield api


@pytest.mark.parametrize("body", [b"\xff\xfe\xfa", b'{"channel": "\xe9"}'])
async def test_a_body_that_is_not_utf8_is_a_422_on_the_body_not_a_400(
    api: Api, body: bytes
) -> None:
    response = await api.client.post(
        "/v1/availability/batch",
        content=body,
        headers={**READER, "Content-Type": "application/json"},
    )

    problem = assert_problem(response, 422, "validation_error")
    assert problem["errors"] == [{"field": "body", "message": "invalid JSON: not UTF-8"}]


async def test_a_path_parameter_that_breaks_the_path_is_a_documented_404(api: Api) -> None:
    response = await api.client.put(
        "/v1/safety-stock/A%0AB/DC-1", json={"safety_stock": 1}, headers=ADMIN
    )
    document = (await api.client.get("/openapi.json")).json()

    assert_problem(response, 404, "not_found")
    assert "404" in document["paths"]["/v1/safety-stock/{sku}/{site}"]["put"]["responses"]


async def test_every_operation_documents_the_rate_and_size_limits(api: Api) -> None:
    document = (await api.client.get("/openapi.json")).json()

    keyed = {
        f"{method.upper()} {path}": set(operation["responses"])
        for path, item in document["paths"].items()
        for method, operation in item.items()
        if operation.get("security")
    }

    assert len(keyed) >= 9
    assert {op for op, statuses in keyed.items() if not {"401", "413", "429"} <= statuses} == set()
