"""Schemathesis against the service's own OpenAPI document: no 5xx, every response as documented.

The API runs in a real uvicorn server (a thread of this process) over a redis-server of
this module alone, so the policies the fuzzer writes touch no other test's data.
"""

from __future__ import annotations

import asyncio
import os
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import schemathesis
import uvicorn
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis import GenerationMode, checks

from atp_service.api.app import create_app
from atp_service.config import ApiKeySpec, Settings
from atp_service.domain import Bucket, InventoryDelta, Source
from atp_service.embedded import LOOPBACK, free_port, redis_process
from atp_service.store import KeySpace, PolicyBook, RedisStore, connect
from tests.random_refs import random_event_id, random_site, random_sku

pytestmark = pytest.mark.integration

FUZZ_KEY = "fuzz-all-scopes-key"
HEADERS = {"Authorization": f"Bearer {FUZZ_KEY}"}
#: Examples per operation and mode: 20 runs of a dozen operations, about half a minute.
#: ``ATP_FUZZ_EXAMPLES=2000`` fuzzes longer by hand.
MAX_EXAMPLES = int(os.environ.get("ATP_FUZZ_EXAMPLES", "120"))
RESERVATIONS = 5
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
def fuzz_redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    redis = redis_process(free_port(), tmp_path_factory.mktemp("fuzz-redis") / "redis")
    redis.start()
    try:
        yield f"redis://{LOOPBACK}:{redis.port}/0"
    finally:
        redis.stop()


@pytest.fixture(scope="module")
def api_url(fuzz_redis_url: str) -> Iterator[str]:
    with ThreadedServer(create_app(fuzz_settings(fuzz_redis_url), relay=False)) as server:
        yield server.url


@pytest.fixture(scope="module")
def api_schema(api_url: str) -> Any:
    return schemathesis.openapi.from_url(f"{api_url}/openapi.json")


@pytest.fixture(scope="module")
def reservation_ids(api_url: str, fuzz_redis_url: str) -> list[str]:
    """Reservations that exist, so reading, confirming and releasing reach past a 404."""
    sku, site = random_sku(), random_site()

    async def receive_stock() -> None:
        client = connect(fuzz_redis_url, timeout=2.0, max_connections=2)
        try:
            store = RedisStore(client, KeySpace(16), dedup_window_seconds=86_400)
            delta = InventoryDelta(
                random_event_id(),
                Source.WMS,
                sku,
                site,
                Bucket.ON_HAND,
                1000,
                "2026-11-23T05:00:00Z",
            )
            await store.fold_many([delta], PolicyBook.of({}))
        finally:
            await client.aclose()

    asyncio.run(receive_stock())
    channel = f"seed-{os.urandom(4).hex()}"  # no policy the fuzzer could have written
    ids = []
    for n in range(RESERVATIONS):
        placed = httpx.post(
            f"{api_url}/v1/reservations",
            json={"channel": channel, "lines": [{"sku": sku, "site": site, "qty": 1}]},
            headers={**HEADERS, "Idempotency-Key": f"fuzz-seed-{n}"},
        )
        assert placed.status_code == 201, placed.text
        ids.append(placed.json()["reservation_id"])
    return ids


@pytest.mark.parametrize(
    ("method", "path", "mode"),
    [pytest.param(*case, id=f"{case[0]} {case[1]} {case[2].value}") for case in fuzz_cases()],
)
def test_the_api_answers_every_generated_request_as_documented(
    api_schema: Any, reservation_ids: list[str], method: str, path: str, mode: GenerationMode
) -> None:
    """Positive cases follow the schema; negative ones break it, and must be a 4xx."""
    operation = api_schema[path][method]
    strategy = operation.as_strategy(generation_mode=mode)
    if "{reservation_id}" in path and mode is GenerationMode.POSITIVE:
        # Random ids are all unknown: mix in reservations that exist.
        strategy = st.one_of(
            strategy,
            *(
                operation.as_strategy(generation_mode=mode, path_parameters={"reservation_id": i})
                for i in reservation_ids
            ),
        )

    @given(case=strategy)
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
    "/v1/sites/{site}": "/v1/sites/DC-EXAMPLE",
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

    assert len(answers) >= 6  # batch, reservations, promise, policies, safety stock, sites
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
