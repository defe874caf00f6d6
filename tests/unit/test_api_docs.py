"""/docs works with no internet: the page and everything it loads come from the service."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from urllib.parse import urlsplit

import pytest

from atp_service.api import middleware
from tests.unit.api_harness import Api, make_settings, running_api


@pytest.fixture
async def api() -> AsyncIterator[Api]:
    async with running_api(make_settings()) as api:
        yield api


def referenced_by_page(html: str) -> list[str]:
    """What the page loads: src/href attributes and the OpenAPI document's url."""
    found = re.findall(r"""(?:src|href)=["']([^"']+)["']""", html)
    return found + re.findall(r"""\burl:\s*["']([^"']+)["']""", html)


def referenced_by_asset(path: str, text: str) -> list[str]:
    """What a script or style sheet loads: its source map, a style sheet's url(...)s."""
    found = re.findall(r"sourceMappingURL=([^\s*]+)", text)
    if path.endswith(".css"):
        found += re.findall(r"""url\(["']?([^"')]+)["']?\)""", text)
    return [url for url in found if not url.startswith("data:")]


async def test_the_docs_page_and_every_asset_it_references_are_served_by_the_app(
    api: Api,
) -> None:
    page = await api.client.get("/docs")
    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")

    pending = [("/docs", url) for url in referenced_by_page(page.text)]
    fetched: dict[str, str] = {}
    while pending:
        base, url = pending.pop()
        parts = urlsplit(url)
        assert not parts.scheme and not parts.netloc, f"{base} loads {url} from elsewhere"
        path = url if url.startswith("/") else base.rsplit("/", 1)[0] + "/" + url
        if path in fetched:
            continue
        response = await api.client.get(path)
        assert response.status_code == 200, f"{path} (named by {base}): {response.status_code}"
        assert response.content, path
        fetched[path] = response.headers["content-type"]
        if path.endswith((".css", ".js")):
            pending += [(path, ref) for ref in referenced_by_asset(path, response.text)]

    assert fetched["/openapi.json"].startswith("application/json")
    assert fetched["/docs/assets/swagger-ui-bundle.js"].startswith("text/javascript")
    assert fetched["/docs/assets/swagger-ui.css"].startswith("text/css")
    assert "/docs/assets/swagger-ui.css.map" in fetched
    assert (await api.client.get("/openapi.json")).json()["openapi"].startswith("3.1")


async def test_an_unknown_docs_asset_is_a_404_problem(api: Api) -> None:
    response = await api.client.get("/docs/assets/../../config.py")
    assert response.status_code == 404
    response = await api.client.get("/docs/assets/index.html")
    assert response.status_code == 404
    assert response.headers["content-type"] == "application/problem+json"


async def test_the_access_log_names_the_documentation_routes(
    api: Api, monkeypatch: pytest.MonkeyPatch
) -> None:
    lines: list[tuple[str, str, int]] = []
    monkeypatch.setattr(middleware.ACCESS_LOG, "enabled", lambda: True)
    monkeypatch.setattr(
        middleware.ACCESS_LOG,
        "record",
        lambda method, route, status, *_: lines.append((method, route, status)),
    )

    for path in ("/docs", "/openapi.json", "/docs/assets/swagger-ui.css", "/docs/oauth2-redirect"):
        await api.client.get(path)

    assert lines == [
        ("GET", "/docs", 200),
        ("GET", "/openapi.json", 200),
        ("GET", "/docs/assets/{name}", 200),
        ("GET", "/docs/oauth2-redirect", 200),
    ]
