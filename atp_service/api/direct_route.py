"""Routes whose endpoint reads the request itself: FastAPI documents them, then calls them.

The hottest routes (a storefront's availability read, the OMS's reservation) take the
``Request`` alone, read their parameters and body by hand and return a ``Response``; what
they read is declared in the OpenAPI document through ``openapi_extra``. For such an endpoint
FastAPI's per-request handler (telemetry hook, endpoint context for error messages,
dependency solving over one ``Request`` parameter, response-model checks it skips for a
``Response`` anyway) does nothing the endpoint needs, and costs about as much as the
endpoint's own work. ``DirectRoute`` is an ``APIRoute`` (same OpenAPI entry, same exception
handlers, same ``scope["route"]``) whose handler is the endpoint itself.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Coroutine
from typing import Any

from fastapi import Request
from fastapi.routing import APIRoute
from starlette.responses import Response


class DirectRoute(APIRoute):
    """An ``APIRoute`` for an ``async def endpoint(request: Request) -> Response``.

    Use as ``router.add_api_route(path, endpoint, route_class_override=DirectRoute, ...)``.
    Anything else (another parameter, a dependency, a sync endpoint) is refused when the
    route is built, since nothing would solve it per request.
    """

    def __init__(self, path: str, endpoint: Callable[..., Any], **kwargs: Any) -> None:
        parameters = list(inspect.signature(endpoint).parameters.values())
        if (
            not inspect.iscoroutinefunction(endpoint)
            or len(parameters) != 1
            or parameters[0].annotation not in (Request, "Request")
            or kwargs.get("dependencies")
        ):
            raise TypeError(
                f"DirectRoute {path!r}: the endpoint must be `async def (request: Request)"
                " -> Response` with no dependencies"
            )
        super().__init__(path, endpoint, **kwargs)

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler: Callable[[Request], Coroutine[Any, Any, Response]] = self.endpoint
        return handler
