"""A body read by hand (POST /v1/reservations) is refused with the 422s FastAPI would give."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from tests.unit.api_harness import Api, auth, make_settings, running_api
from tests.unit.test_api_errors import assert_problem

OMS = auth("oms")
GOOD = b'{"channel": "web", "lines": [{"sku": "SKU-1", "site": "DC-1", "qty": 1}]}'


@pytest.fixture
async def api() -> AsyncIterator[Api]:
    async with running_api(make_settings()) as api:
        yield api


async def post(api: Api, body: bytes, content_type: str | None, key: str | None = "k-1") -> object:
    headers = dict(OMS)
    if content_type is not None:
        headers["Content-Type"] = content_type
    if key is not None:
        headers["Idempotency-Key"] = key
    return await api.client.post("/v1/reservations", content=body, headers=headers)


@pytest.mark.parametrize(
    ("body", "content_type", "field"),
    [
        (b"", "application/json", "body"),
        (b'{"channel": "web", "lines": [', "application/json", "body"),
        (b"\xff\xfe", "application/json", "body"),
        (b'{"channel": "web", "lines": [{"sku": "SKU-1", "site": "DC-1", "qty": 0}]}',
         "application/json", "body.lines.0.qty"),
        (b'{"channel": "Web", "lines": [{"sku": "SKU-1", "site": "DC-1", "qty": 1}]}',
         "application/json; charset=utf-8", "body.channel"),
    ],
)  # fmt: skip
async def test_a_body_that_cannot_be_a_reservation_is_a_422_naming_where(
    api: Api, body: bytes, content_type: str | None, field: str
) -> None:
    problem = assert_problem(await post(api, body, content_type), 422, "validation_error")
    assert [e["field"] for e in problem["errors"]] == [field]  # type: ignore[attr-defined]


@pytest.mark.parametrize("content_type", [None, "text/plain", "application/x-www-form-urlencoded"])
async def test_a_json_body_sent_without_a_json_content_type_is_415(
    api: Api, content_type: str | None
) -> None:
    problem = assert_problem(await post(api, GOOD, content_type), 415, "unsupported_media_type")
    assert "application/json" in str(problem["detail"])  # type: ignore[index]


async def test_a_missing_header_and_a_bad_body_are_named_together_header_first(api: Api) -> None:
    problem = assert_problem(
        await post(api, b"", "application/json", key=None), 422, "validation_error"
    )
    assert [e["field"] for e in problem["errors"]] == ["header.Idempotency-Key", "body"]  # type: ignore[attr-defined]


async def test_a_json_body_with_a_json_subtype_is_read(api: Api) -> None:
    await api.receive("SKU-1", "DC-1", 5)
    response = await post(api, GOOD, "application/vnd.atp+json")
    assert response.status_code == 201, response.text  # type: ignore[attr-defined]


async def test_the_document_still_describes_the_body_and_its_models(api: Api) -> None:
    document = (await api.client.get("/openapi.json")).json()
    operation = document["paths"]["/v1/reservations"]["post"]
    schema = operation["requestBody"]["content"]["application/json"]["schema"]
    assert schema == {"$ref": "#/components/schemas/ReservationIn"}
    assert {"ReservationIn", "ReservationLineIn"} <= set(document["components"]["schemas"])
