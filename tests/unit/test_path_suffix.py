"""path_suffix.py: a ``{name:path}`` route leaves a suffix to the route after it, at no cost
to its own paths. If this fails, what api/path_suffix.py relies on in Starlette changed."""

from __future__ import annotations

import re

import httpx
import pytest
from fastapi import FastAPI
from starlette.routing import Route

from atp_service.api.app import create_app
from atp_service.api.path_suffix import leave_suffix_to_later_route
from tests.unit.api_harness import make_settings


async def test_paths_ending_in_the_suffix_go_to_the_later_route_and_the_rest_stay() -> None:
    app = FastAPI()
    app.add_api_route("/items/{name:path}", lambda name: {"read": name}, methods=["GET"])
    app.add_api_route("/items/{name:path}/history", lambda name: {"history": name}, methods=["GET"])
    leave_suffix_to_later_route(app.router.routes[-2], "/history")  # type: ignore[arg-type]

    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as c:
        read = (await c.get("/items/a/b")).json()
        history = (await c.get("/items/a/b/history")).json()
        inside = (await c.get("/items/a/history/b")).json()

    assert read == {"read": "a/b"}
    assert history == {"history": "a/b"}
    assert inside == {"read": "a/history/b"}


def test_the_apps_plain_read_refuses_a_timeline_path_and_nothing_comes_before_it() -> None:
    app = create_app(make_settings(), relay=False)
    plain = app.router.routes[0]
    assert isinstance(plain, Route) and plain.path == "/v1/availability/{sku:path}"
    scope = {"type": "http", "method": "GET", "root_path": ""}

    def params(path: str) -> object:
        _, child = plain.matches({**scope, "path": path})
        return child.get("path_params")

    assert params("/v1/availability/SKU-1") == {"sku": "SKU-1"}
    assert params("/v1/availability/A/B") == {"sku": "A/B"}
    assert params("/v1/availability/SKU-1/timeline") is None


def test_a_pattern_that_does_not_end_the_path_is_refused() -> None:
    route = Route("/x/{rest:path}", lambda request: None)
    route.path_regex = re.compile("^/x/(?P<rest>.*)")

    with pytest.raises(ValueError, match="ends in"):
        leave_suffix_to_later_route(route, "/y")
