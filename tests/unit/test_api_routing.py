"""serve_routes: the API's routes in the app's own table, as include_router would declare them."""

from __future__ import annotations

from fastapi import FastAPI
from fastapi.routing import APIRoute

from atp_service.api.app import create_app, document_models, serve_routes
from atp_service.api.routes import DOCUMENTED_MODELS, ROUTERS
from tests.unit.api_harness import READER, make_settings, running_api


def _included_app() -> FastAPI:
    """The same app as create_app's, its routers included the usual way."""
    app = create_app(make_settings(), relay=False)
    app.router.routes[:] = [r for r in app.router.routes if not isinstance(r, APIRoute)]
    for router in ROUTERS:
        app.include_router(router)
    app.openapi_schema = None
    document_models(app, DOCUMENTED_MODELS)
    return app


def test_the_openapi_document_is_the_one_include_router_gives() -> None:
    served = create_app(make_settings(), relay=False)

    assert served.openapi() == _included_app().openapi()


def test_every_route_is_in_the_apps_own_table_the_documentation_last() -> None:
    app = create_app(make_settings(), relay=False)

    declared = [route for router in ROUTERS for route in router.routes]
    assert app.router.routes == declared
    assert all(isinstance(route, APIRoute) for route in declared)
    paths = [route.path for route in declared if isinstance(route, APIRoute)]
    assert paths[-4:] == ["/openapi.json", "/docs", "/docs/oauth2-redirect", "/docs/assets/{name}"]


def test_routes_of_several_routers_keep_their_order() -> None:
    from fastapi import APIRouter

    first, second = APIRouter(prefix="/a"), APIRouter()
    first.add_api_route("/{rest:path}", lambda: "a", methods=["GET"])
    second.add_api_route("/a/b", lambda: "b", methods=["GET", "POST"])
    app = FastAPI()

    serve_routes(app, [first, second])

    paths = [getattr(r, "path", None) for r in app.router.routes[:2]]
    assert paths == ["/a/{rest:path}", "/a/b"]


async def test_the_api_answers_through_its_own_table() -> None:
    async with running_api(make_settings()) as api:
        read = await api.client.get(
            "/v1/availability/SKU-1", params={"channel": "web"}, headers=READER
        )
        batch = await api.client.post(
            "/v1/availability/batch",
            json={"channel": "web", "items": [{"sku": "SKU-1", "site": None}]},
            headers=READER,
        )
        docs = await api.client.get("/openapi.json")
        wrong_method = await api.client.delete("/v1/availability/SKU-1", headers=READER)

    assert read.status_code == 200 and read.json()["sku"] == "SKU-1"
    assert batch.status_code == 200 and batch.json()["items"][0]["sku"] == "SKU-1"
    assert docs.status_code == 200 and "/v1/reservations" in docs.json()["paths"]
    assert wrong_method.status_code == 405
