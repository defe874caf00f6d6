"""DirectRoute: the endpoint called as is, documented and handled as any route."""

from __future__ import annotations

import fastapi.routing
import httpx
import pytest
from fastapi import Depends, FastAPI, Request
from starlette.responses import Response

from atp_service.api.direct_route import DirectRoute
from tests.unit.api_harness import READER, auth, make_settings, running_api


async def _echo(request: Request) -> Response:
    return Response(request.url.query.encode(), media_type="text/plain")


async def test_the_endpoint_gets_the_request_and_its_response_is_sent() -> None:
    app = FastAPI()
    app.router.add_api_route(
        "/echo/{rest:path}", _echo, methods=["GET"], route_class_override=DirectRoute
    )

    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        answer = await client.get("/echo/a/b", params={"q": "1"})
        missing = await client.post("/echo/a")

    assert (answer.status_code, answer.text) == (200, "q=1")
    assert missing.status_code == 405  # routing, methods and errors as for any route


async def _with_a_parameter(request: Request, sku: str) -> Response:
    return Response(sku)


def _sync(request: Request) -> Response:
    return Response(b"")


async def _no_request() -> Response:
    return Response(b"")


@pytest.mark.parametrize("endpoint", [_with_a_parameter, _sync, _no_request])
def test_an_endpoint_with_anything_to_solve_is_refused_when_routed(endpoint: object) -> None:
    app = FastAPI()
    with pytest.raises(TypeError, match="DirectRoute"):
        app.router.add_api_route(
            "/x",
            endpoint,
            methods=["GET"],
            route_class_override=DirectRoute,  # type: ignore[arg-type]
        )


def test_a_dependency_is_refused_when_routed() -> None:
    app = FastAPI()
    with pytest.raises(TypeError, match="no dependencies"):
        app.router.add_api_route(
            "/x",
            _echo,
            methods=["GET"],
            route_class_override=DirectRoute,
            dependencies=[Depends(lambda: None)],
        )


async def test_the_hot_routes_solve_no_dependencies_per_request(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    async def refuse(**_: object) -> None:
        raise AssertionError("dependencies solved for a hot route")

    async with running_api(make_settings()) as api:
        await api.receive("SKU-1", "DC-1", 5)
        monkeypatch.setattr(fastapi.routing, "solve_dependencies", refuse)
        read = await api.client.get("/v1/availability/SKU-1?channel=web", headers=READER)
        placed = await api.client.post(
            "/v1/reservations",
            json={"channel": "web", "lines": [{"sku": "SKU-1", "site": "DC-1", "qty": 2}]},
            headers={**auth("oms"), "Idempotency-Key": "k-1"},
        )
        other = await api.client.get("/healthz")  # any other route solves them: a 500 here

    assert other.status_code == 500
    assert (read.status_code, read.json()["atp"]) == (200, 5)
    assert (placed.status_code, placed.json()["lines"][0]["qty"]) == (201, 2)
