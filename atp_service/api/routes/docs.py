"""The OpenAPI document and its reader, Swagger UI, served whole by the service (no CDN).

FastAPI's own ``/docs`` loads Swagger UI from a CDN, so it is blank on a machine without
internet access. Here the page loads Swagger UI 5 from the ``swagger-ui-bundle-v2`` package
(its files, unchanged, under ``/docs/assets/``). The routes are FastAPI routes of their
own, so the access log and ``atp_http_request_duration_seconds`` name them (FastAPI's
built-in ones are plain Starlette routes, which leave no route in the request scope and
were logged as ``unmatched``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import swagger_ui_bundle
from fastapi import APIRouter, Request
from fastapi.openapi.docs import get_swagger_ui_html, get_swagger_ui_oauth2_redirect_html
from starlette.exceptions import HTTPException
from starlette.responses import FileResponse, HTMLResponse, JSONResponse

OPENAPI_PATH = "/openapi.json"
DOCS_PATH = "/docs"
ASSETS_PATH = "/docs/assets"
OAUTH2_REDIRECT_PATH = "/docs/oauth2-redirect"

#: The Swagger UI files the page uses (and the source maps a browser's tools ask for).
ASSETS: dict[str, str] = {
    "swagger-ui-bundle.js": "text/javascript; charset=utf-8",
    "swagger-ui-bundle.js.map": "application/json",
    "swagger-ui.css": "text/css; charset=utf-8",
    "swagger-ui.css.map": "application/json",
    "favicon-32x32.png": "image/png",
}
_ASSET_DIR = Path(str(swagger_ui_bundle.swagger_ui_path))

router = APIRouter(include_in_schema=False)


def _root(request: Request) -> str:
    return str(request.scope.get("root_path", "")).rstrip("/")


@router.get(OPENAPI_PATH)
async def openapi_document(request: Request) -> JSONResponse:
    return JSONResponse(request.app.openapi())


@router.get(DOCS_PATH)
async def swagger_ui(request: Request) -> HTMLResponse:
    root = _root(request)
    return get_swagger_ui_html(
        openapi_url=root + OPENAPI_PATH,
        title=f"{request.app.title} - Swagger UI",
        swagger_js_url=f"{root}{ASSETS_PATH}/swagger-ui-bundle.js",
        swagger_css_url=f"{root}{ASSETS_PATH}/swagger-ui.css",
        swagger_favicon_url=f"{root}{ASSETS_PATH}/favicon-32x32.png",
        oauth2_redirect_url=root + OAUTH2_REDIRECT_PATH,
        # No badge asking an online validator about the document.
        swagger_ui_parameters={"validatorUrl": None},
    )


@router.get(OAUTH2_REDIRECT_PATH)
async def swagger_ui_redirect() -> HTMLResponse:
    return get_swagger_ui_oauth2_redirect_html()


@router.get(ASSETS_PATH + "/{name}")
async def swagger_ui_asset(name: str) -> Any:
    media_type = ASSETS.get(name)
    if media_type is None:
        raise HTTPException(404, f"no such documentation asset: {name}")
    return FileResponse(_ASSET_DIR / name, media_type=media_type)
