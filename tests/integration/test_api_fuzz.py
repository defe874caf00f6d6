"""Schemathesis against the service's own OpenAPI document: no 5xx, every response as documented.

The API runs in a real uvicorn server (a thread of this process) over a redis-server of
this module alone, so the policies the fuzzer writes touch no other test's data.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import schemathesis
import uvicorn
from hypothesis import HealthCheck, given, settings
from schemathesis import GenerationMode, checks

from atp_service.api.app import create_app
from atp_service.config import ApiKeySpec, Settings
from atp_service.embedded import LOOPBACK, free_port, redis_process

pytestmark = pytest.mark.integration

FUZZ_KEY = "fuzz-all-scopes-key"
HEADERS = {"Authorization": f"Bearer {FUZZ_KEY}"}
#: Examples per operation and mode: 20 runs of a dozen operations, about half a minute.
MAX_EXAMPLES = 120
CHECKS = [
    checks.not_a_server_error,
    checks.status_code_conformance,
    checks.content_type_conformance,
    checks.response_schema_conformance,
    checks.response_headers_conformance,
]


class ThreadedServer:
    """uvicorn serving ``app`` on a loopback port from a background thread."""

    def __init__(self, app: Any) -> None:
        self.port = free_port()
        config = uvicorn.Config(
            app, host=LOOPBACK, port=self.port, log_level="warning", lifespan="on"
        )
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, name="fuzz-api", daemon=True)

    @property
    def url(self) -> str:
        return f"http://{LOOPBACK}:{self.port}"

    def __enter__(self) -> ThreadedServer:
        self.thread.start()
        deadline = time.monotonic() + 20
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the API did not start")
            time.sleep(0.02)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)


def fuzz_settings(redis_url: str = f"redis://{LOOPBACK}:1/0") -> Settings:
    return Settings(
        _env_file=None,  # type: ignore[call-arg]
        api_keys=[
            ApiKeySpec(
                name="fuzzer",
                key=FUZZ_KEY,
                scopes=["availability:read", "reservations:write", "admin"],
            )
        ],
        redis_url=redis_url,
    )


def fuzz_cases() -> list[tuple[str, str, GenerationMode]]:
    """(METHOD, path, mode) of every documented operation, built without starting anything.

    Operations taking no input at all have no negative cases.
    """
    document = create_app(fuzz_settings()).openapi()
    cases = []
    for path, item in document["paths"].items():
        for method, operation in item.items():
            takes_input = bool(operation.get("parameters") or operation.get("requestBody"))
            for mode in GenerationMode:
                if mode is GenerationMode.POSITIVE or takes_input:
                    cases.append((method.upper(), path, mode))
    return cases


@pytest.fixture(scope="module")
def api_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    redis = redis_process(free_port(), tmp_path_factory.mktemp("fuzz-redis") / "redis")
    redis.start()
    try:
        app = create_app(fuzz_settings(f"redis://{LOOPBACK}:{redis.port}/0"), relay=False)
        with ThreadedServer(app) as server:
            yield server.url
    finally:
        redis.stop()


@pytest.fixture(scope="module")
def api_schema(api_url: str) -> Any:
    return schemathesis.openapi.from_url(f"{api_url}/openapi.json")


@pytest.mark.parametrize(
    ("method", "path", "mode"),
    [pytest.param(*case, id=f"{case[0]} {case[1]} {case[2].value}") for case in fuzz_cases()],
)
def test_the_api_answers_every_generated_request_as_documented(
    api_schema: Any, method: str, path: str, mode: GenerationMode
) -> None:
    """Positive cases follow the schema; negative ones break it, and must be a 4xx."""
    operation = api_schema[path][method]

    @given(case=operation.as_strategy(generation_mode=mode))
    @settings(
        max_examples=MAX_EXAMPLES,
        deadline=None,
        suppress_health_check=list(HealthCheck),
        database=None,
    )
    def answers_as_documented(case: Any) -> None:
        case.call_and_validate(headers=HEADERS, checks=CHECKS, timeout=10)

    answers_as_documented()


#: Where the examples are sent: the templated paths filled in.
EXAMPLE_PATHS = {
    "/v1/policies/channels/{channel}": "/v1/policies/channels/fuzz-examples",
    "/v1/safety-stock/{sku}/{site}": "/v1/safety-stock/SKU-1001/DC-EAST",
}


def test_every_request_body_has_examples_which_the_api_accepts(api_url: str) -> None:
    document = httpx.get(f"{api_url}/openapi.json").json()
    answers: dict[str, list[int]] = {}
    for path, item in document["paths"].items():
        for method, operation in item.items():
            if "requestBody" not in operation:
                continue
            media = operation["requestBody"]["content"]["application/json"]
            examples = _examples(document, media)
            answers[f"{method.upper()} {path}"] = [
                httpx.request(
                    method,
                    api_url + EXAMPLE_PATHS.get(path, path),
                    json=example,
                    headers={**HEADERS, "Idempotency-Key": f"example-{n}"},
                ).status_code
                for n, example in enumerate(examples)
            ]

    assert len(answers) >= 4  # batch, reservations, policies, safety stock
    no_example = [operation for operation, statuses in answers.items() if not statuses]
    assert no_example == []
    # Valid: served, or refused only for want of stock (nothing was received here).
    refused = {op: statuses for op, statuses in answers.items() if set(statuses) - {200, 201, 409}}
    assert refused == {}


def _examples(document: dict[str, Any], media: dict[str, Any]) -> list[Any]:
    if "example" in media:
        return [media["example"]]
    if "examples" in media:
        return [example["value"] for example in media["examples"].values()]
    schema = media["schema"]
    ref = schema.get("$ref")
    if ref is not None:
        schema = document["components"]["schemas"][ref.rsplit("/", 1)[-1]]
    return list(schema.get("examples", []))
