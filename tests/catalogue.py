"""The events catalogue (docs/asyncapi.yaml) as validators, for the tests of every layer."""

from __future__ import annotations

from functools import cache
from pathlib import Path
from typing import Any

import yaml
from jsonschema import Draft7Validator
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT7

ASYNCAPI = Path(__file__).resolve().parent.parent / "docs" / "asyncapi.yaml"
_ROOT = "urn:atp:asyncapi"


@cache
def document() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load(ASYNCAPI.read_text())
    return loaded


@cache
def _registry() -> Registry:
    return Registry().with_resource(
        _ROOT, Resource.from_contents(document(), default_specification=DRAFT7)
    )


def _resolve(ref: str) -> Any:
    node: Any = document()
    for part in ref.removeprefix("#/").split("/"):
        node = node[part]
    return node


@cache
def validator(message: str) -> Draft7Validator:
    """The payload schema of ``components.messages[message]``."""
    payload = document()["components"]["messages"][message]["payload"]
    return Draft7Validator({"$ref": f"{_ROOT}{payload['$ref']}"}, registry=_registry())


@cache
def channel_messages(channel: str) -> dict[str, str]:
    """Message name (the event type or schema) -> component name, of one channel."""
    out = {}
    for ref in document()["channels"][channel]["messages"].values():
        component = ref["$ref"].rsplit("/", 1)[1]
        out[_resolve(ref["$ref"])["name"]] = component
    return out


def problems(body: dict[str, Any], channel: str = "atpEvents") -> list[str]:
    """What in ``body`` the catalogue refuses (empty: it matches its message's schema)."""
    name = body.get("type") if channel == "atpEvents" else body.get("schema")
    component = channel_messages(channel).get(str(name))
    if component is None:
        return [f"{name!r} is not a message of {channel}"]
    return [
        f"{'/'.join(map(str, e.absolute_path)) or '(root)'}: {e.message}"
        for e in validator(component).iter_errors(body)
    ]


def assert_in_catalogue(body: dict[str, Any], channel: str = "atpEvents") -> None:
    found = problems(body, channel)
    assert not found, f"{body}\nrefused by docs/asyncapi.yaml: {found}"
