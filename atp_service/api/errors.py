"""Every error as ``application/problem+json`` (RFC 9457) with a stable ``code``."""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from http import HTTPStatus
from typing import Any

import orjson
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from redis.exceptions import RedisError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import Response

from atp_service import metrics
from atp_service.store import StoreUnavailable
from atp_service.store.redis_store import UNAVAILABLE_ERRORS

log = logging.getLogger(__name__)

PROBLEM_JSON = "application/problem+json"
#: How many invalid fields the ``detail`` sentence names before "and N more".
_DETAIL_FIELDS = 5

# Codes for the HTTP errors the framework raises by itself (routing, body parsing).
_HTTP_CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    406: "not_acceptable",
    413: "payload_too_large",
    415: "unsupported_media_type",
}


def problem_type(code: str) -> str:
    """The problem ``type`` URI of a code: a tag URI (RFC 4151), stable and never fetched."""
    return f"tag:atp-service,2026:problem:{code}"


def problem_body(
    status: int,
    code: str,
    detail: str,
    *,
    title: str | None = None,
    extra: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    body: dict[str, Any] = {
        "type": problem_type(code),
        "title": title or HTTPStatus(status).phrase,
        "status": status,
        "detail": detail,
        "code": code,
    }
    if extra:
        body.update(extra)
    return body


def problem_response(
    status: int,
    code: str,
    detail: str,
    *,
    title: str | None = None,
    headers: Mapping[str, str] | None = None,
    extra: Mapping[str, Any] | None = None,
) -> Response:
    body = problem_body(status, code, detail, title=title, extra=extra)
    return Response(orjson.dumps(body), status, headers=headers, media_type=PROBLEM_JSON)


class ProblemError(Exception):
    """Raise from a route to answer with a problem; ``extra`` members join the body.

    ``ProblemError(409, "insufficient_stock", "...", extra={"lines": [...]})``
    """

    def __init__(
        self,
        status: int,
        code: str,
        detail: str,
        *,
        title: str | None = None,
        headers: Mapping[str, str] | None = None,
        extra: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__(detail)
        self.status = status
        self.code = code
        self.detail = detail
        self.title = title
        self.headers = headers
        self.extra = extra

    def response(self) -> Response:
        return problem_response(
            self.status,
            self.code,
            self.detail,
            title=self.title,
            headers=self.headers,
            extra=self.extra,
        )


def field_name(loc: Sequence[str | int]) -> str:
    """``("query", "channel")`` -> ``query.channel``; ``("body", "items", 3, "sku")`` likewise."""
    return ".".join(str(part) for part in loc)


def _field_error(error: Mapping[str, Any]) -> dict[str, str]:
    loc = error.get("loc", ())
    message = str(error.get("msg", ""))
    if error.get("type") == "json_invalid":
        # pydantic puts the character offset where a field name would be
        where = f" at character {loc[1]}" if len(loc) > 1 else ""
        reason = (error.get("ctx") or {}).get("error")
        return {"field": "body", "message": f"invalid JSON{where}: {reason or message}"}
    return {"field": field_name(loc), "message": message}


def validation_problem(errors: Sequence[Any]) -> Response:
    listed = [_field_error(e) for e in errors]
    named = [f"{e['field']}: {e['message']}" for e in listed[:_DETAIL_FIELDS]]
    more = len(listed) - len(named)
    detail = "; ".join(named) + (f"; and {more} more" if more > 0 else "")
    return problem_response(
        422,
        "validation_error",
        detail or "the request is not valid",
        title="Request validation failed",
        extra={"errors": listed},
    )


def body_not_json(cause: ValueError) -> Response:
    reason = "not UTF-8" if isinstance(cause, UnicodeDecodeError) else "not readable"
    return problem_response(
        422,
        "validation_error",
        f"body: invalid JSON: {reason}",
        title="Request validation failed",
        extra={"errors": [{"field": "body", "message": f"invalid JSON: {reason}"}]},
    )


def is_json_media_type(content_type: str | None) -> bool:
    """``application/json`` or ``application/<anything>+json``, parameters aside."""
    if not content_type:
        return False
    kind = content_type.split(";", 1)[0].strip().lower()
    main, _, sub = kind.partition("/")
    return main == "application" and (sub == "json" or sub.endswith("+json"))


def _body_read_as_bytes(errors: Sequence[Any]) -> bool:
    """FastAPI (and ``bodies.json_body``) read a body that is not JSON by its content type
    as bytes, which no model takes: this error, on the body itself."""
    return any(
        e.get("type") == "model_attributes_type" and tuple(e.get("loc", ())) == ("body",)
        for e in errors
    )


def unsupported_media_type(content_type: str | None) -> Response:
    sent = f"Content-Type {content_type!r}" if content_type else "no Content-Type"
    return problem_response(
        415,
        "unsupported_media_type",
        f"the request body must be JSON (Content-Type: application/json); it came with {sent}",
    )


def store_unavailable(retry_after: int) -> Response:
    return problem_response(
        503,
        "store_unavailable",
        "the inventory store is unreachable right now; retry shortly",
        title="Store unavailable",
        headers={"Retry-After": str(retry_after)},
    )


def store_catching_up(retry_after: int, partitions: int) -> Response:
    return problem_response(
        503,
        "store_catching_up",
        "the inventory store came back holding less than was folded into it; the workers "
        "are reading again from Kafka what it lost",
        title="Store catching up",
        headers={"Retry-After": str(retry_after)},
        extra={"partitions_catching_up": partitions},
    )


def internal_error() -> Response:
    return problem_response(
        500, "internal_error", "an unexpected error occurred; it has been logged"
    )


class _OutageLog:
    """Logs store failures at most once a second: an outage fails every request."""

    def __init__(self, interval: float = 1.0) -> None:
        self.interval = interval
        self.last = -interval
        self.suppressed = 0

    def failed(self, request: Request, exc: Exception) -> None:
        now = time.monotonic()
        if now - self.last < self.interval:
            self.suppressed += 1
            return
        more = f" (and {self.suppressed} more since)" if self.suppressed else ""
        log.warning("store unavailable on %s %s: %r%s", request.method, request.url.path, exc, more)
        self.last = now
        self.suppressed = 0


def install_error_handlers(app: FastAPI, *, retry_after: int) -> None:
    """Route framework, validation, store and own errors to problem responses."""

    async def on_problem(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, ProblemError)
        return exc.response()

    async def on_http(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, StarletteHTTPException)
        status = exc.status_code
        if status == 400 and isinstance(exc.__cause__, ValueError):
            # FastAPI's answer to a body json cannot even decode (not UTF-8, ...): for the
            # contract that is a validation error of the body, like malformed JSON.
            return body_not_json(exc.__cause__)
        detail = exc.detail if isinstance(exc.detail, str) else HTTPStatus(status).phrase
        if status == 404 and detail == "Not Found":
            detail = f"no such resource: {request.method} {request.url.path}"
        elif status == 405:
            detail = f"{request.method} is not allowed on {request.url.path}"
        code = _HTTP_CODES.get(status) or HTTPStatus(status).phrase.lower().replace(" ", "_")
        return problem_response(status, code, detail, headers=exc.headers)

    async def on_validation(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, RequestValidationError)
        content_type = request.headers.get("content-type")
        if not is_json_media_type(content_type) and _body_read_as_bytes(exc.errors()):
            return unsupported_media_type(content_type)
        return validation_problem(exc.errors())

    redis_errors = metrics.REDIS_ERRORS.labels("api")
    outage_log = _OutageLog()

    async def on_store_unavailable(request: Request, exc: Exception) -> Response:
        redis_errors.inc()
        outage_log.failed(request, exc)
        return store_unavailable(retry_after)

    app.add_exception_handler(ProblemError, on_problem)
    app.add_exception_handler(StarletteHTTPException, on_http)
    app.add_exception_handler(RequestValidationError, on_validation)
    # Any Redis failure (outage, timeout, pool exhausted, a server-side error) is a 503:
    # the request may succeed once the store is healthy again.
    for exc_class in (StoreUnavailable, RedisError, *UNAVAILABLE_ERRORS):
        app.add_exception_handler(exc_class, on_store_unavailable)
