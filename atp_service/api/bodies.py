"""Request bodies read by hand, answering exactly as FastAPI does for a declared body.

A route that declares its body makes FastAPI read it with the standard library's JSON
parser and validate it through its dependency machinery on every request; reading it here
(pydantic parses and validates the JSON in one pass) costs a fraction. The OpenAPI document
still describes the body: see ``documented_body`` and ``app.document_models``.
"""

from __future__ import annotations

from typing import Any, TypeVar

from fastapi import Request
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, ValidationError
from starlette.exceptions import HTTPException

from atp_service.api.errors import is_json_media_type

M = TypeVar("M", bound=BaseModel)

_NOT_AN_OBJECT = "Input should be a valid dictionary or object to extract fields from"


def documented_body(model: type[BaseModel]) -> dict[str, Any]:
    """The ``requestBody`` of an operation whose JSON body is ``model`` (``openapi_extra``)."""
    return {
        "required": True,
        "content": {
            "application/json": {"schema": {"$ref": f"#/components/schemas/{model.__name__}"}}
        },
    }


async def json_body(
    request: Request, model: type[M], errors: list[dict[str, Any]] | None = None
) -> M:
    """``model`` from the request's JSON body, or the 422 FastAPI gives (with ``errors``
    found before it, e.g. a header's, listed first)."""
    found = list(errors or ())
    raw = await request.body()
    body: M | None = None
    if not raw:
        found.append({"type": "missing", "loc": ("body",), "msg": "Field required", "input": None})
    elif not is_json_media_type(request.headers.get("content-type")):
        # FastAPI reads such a body as bytes, which no model accepts (errors.py: a 415).
        found.append({"type": "model_attributes_type", "loc": ("body",), "msg": _NOT_AN_OBJECT})
    else:
        try:
            raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            # FastAPI's 400 for a body it cannot decode; errors.py makes it the 422 of the body.
            raise HTTPException(400, "There was an error parsing the body") from exc
        try:
            body = model.model_validate_json(raw)
        except ValidationError as exc:
            found.extend({**e, "loc": ("body", *e["loc"])} for e in exc.errors())
    if found or body is None:
        raise RequestValidationError(found)
    return body
