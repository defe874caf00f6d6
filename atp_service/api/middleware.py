"""One pure-ASGI layer around every request: correlation id, latency metric, last-resort 500."""

from __future__ import annotations

import itertools
import logging
import os
import re
import time
from typing import Any

from prometheus_client.metrics import Histogram
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from atp_service import logs, metrics
from atp_service.api.errors import internal_error

log = logging.getLogger(__name__)

CORRELATION_HEADER = b"x-correlation-id"
#: Where the request's correlation id lives in the ASGI scope (read it with ``deps``).
CORRELATION_SCOPE_KEY = "atp.correlation_id"
#: Where the name of the request's API key lives in the ASGI scope once auth has found it
#: (the access log's ``caller``); set once a request, so the rate limiter counts it once.
CALLER_SCOPE_KEY = "atp.caller"
# Carried into outbound events, so only a bounded, printable value is taken as is.
_VALID_CORRELATION = re.compile(rb"[\x21-\x7e]{1,128}")
_UNMATCHED = "unmatched"
_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


#: The API's line per request (written in batches; the API state flushes it).
ACCESS_LOG = logs.AccessLog()

_ID_PREFIX = os.urandom(8).hex()
_ID_COUNTER = itertools.count(1)


def _new_id_prefix() -> None:
    global _ID_PREFIX
    _ID_PREFIX = os.urandom(8).hex()


os.register_at_fork(after_in_child=_new_id_prefix)  # uvicorn workers forked from one parent


def new_correlation_id() -> str:
    """32 hex digits, unique: a random prefix per process and a counter."""
    return f"{_ID_PREFIX}{next(_ID_COUNTER):016x}"


class RequestContextMiddleware:
    """Carries ``X-Correlation-ID`` in and out, and times and logs each request by route
    template (with the name of its API key, once known).

    Also the last resort for an unexpected exception: a problem response with no stack
    trace (the trace goes to the log), sent through this layer so it carries the header.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self._children: dict[tuple[str, str, int], Histogram] = {}

    def _histogram(self, method: str, route: str, status: int) -> Histogram:
        key = (method, route, status)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = metrics.REQUEST_SECONDS.labels(method, route, str(status))
        return child

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        correlation: bytes | None = None
        for name, value in scope["headers"]:
            if name == CORRELATION_HEADER:
                correlation = value
                break
        if correlation is None or _VALID_CORRELATION.fullmatch(correlation) is None:
            correlation = new_correlation_id().encode()
        scope[CORRELATION_SCOPE_KEY] = cid = correlation.decode()
        token = logs.correlation_id.set(cid)
        status = 500
        response_started = False

        async def send_with_context(message: Message) -> None:
            nonlocal status, response_started
            if message["type"] == "http.response.start":
                response_started = True
                status = message["status"]
                headers: list[Any] = list(message.get("headers", ()))
                headers.append((CORRELATION_HEADER, correlation))
                message["headers"] = headers
            await send(message)

        try:
            await self.app(scope, receive, send_with_context)
        except Exception:
            log.exception("unhandled error on %s %s", scope.get("method"), scope.get("path"))
            if not response_started:
                await internal_error()(scope, receive, send_with_context)
        finally:
            route = scope.get("route")
            template = getattr(route, "path", None) or _UNMATCHED
            method = scope["method"] if scope["method"] in _METHODS else "OTHER"
            elapsed = time.perf_counter() - started
            self._histogram(method, template, status).observe(elapsed)
            if ACCESS_LOG.enabled():
                ACCESS_LOG.record(
                    method, template, status, round(elapsed * 1000, 3), cid,
                    scope.get(CALLER_SCOPE_KEY),
                )  # fmt: skip
            logs.correlation_id.reset(token)
