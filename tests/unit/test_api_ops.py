"""Operations: liveness, readiness, metrics; and `atp api` refusing to run without keys."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

import atp_service
from atp_service.api import server
from atp_service.api.server import serve
from atp_service.config import Settings
from atp_service.store.keys import FOLD_CATCHUP, FOLD_EPOCH
from tests.unit.api_harness import READER, Api, make_settings, running_api


@pytest.fixture
async def api() -> AsyncIterator[Api]:
    async with running_api(make_settings()) as api:
        yield api


async def test_healthz_says_the_process_is_alive(api: Api) -> None:
    response = await api.client.get("/healthz")

    assert response.status_code == 200
    assert response.json() == {"status": "ok", "version": atp_service.__version__}


async def test_readyz_is_200_while_the_store_answers(api: Api) -> None:
    response = await api.client.get("/readyz")

    assert response.status_code == 200
    assert response.json()["store"] == "ok"
    assert response.json()["kafka"] == "unavailable"  # this app runs no relay


async def test_readyz_is_503_when_the_store_is_unreachable(api: Api) -> None:
    api.server.connected = False

    response = await api.client.get("/readyz")

    assert response.status_code == 503
    assert response.json()["code"] == "store_unavailable"
    assert "retry-after" in response.headers


async def test_readyz_is_503_while_the_workers_read_again_what_redis_lost(api: Api) -> None:
    await api.redis.set(FOLD_EPOCH, "e1")
    await api.redis.hset(FOLD_CATCHUP, mapping={"wms.inventory.v1:3": "120"})

    response = await api.client.get("/readyz")

    assert response.status_code == 503
    assert response.json()["code"] == "store_catching_up"
    assert response.json()["partitions_catching_up"] == 1
    assert "retry-after" in response.headers
    assert "atp_store_catching_up 1.0" in (await api.client.get("/metrics")).text

    await api.redis.delete(FOLD_CATCHUP)
    assert (await api.client.get("/readyz")).status_code == 200
    assert "atp_store_catching_up 0.0" in (await api.client.get("/metrics")).text


async def test_readyz_is_503_once_a_tracked_store_came_back_empty(api: Api) -> None:
    await api.redis.set(FOLD_EPOCH, "e1")
    assert (await api.client.get("/readyz")).status_code == 200

    await api.redis.flushall()  # restarted without persistence, no worker has noticed yet
    response = await api.client.get("/readyz")

    assert response.status_code == 503
    assert response.json()["code"] == "store_catching_up"
    assert response.json()["partitions_catching_up"] == -1
    # A worker noticed and read everything again: a new epoch, nothing left to catch up.
    await api.redis.set(FOLD_EPOCH, "e2")
    assert (await api.client.get("/readyz")).status_code == 200


async def test_readyz_is_200_over_a_store_no_worker_ever_tracked(api: Api) -> None:
    await api.redis.flushall()

    assert (await api.client.get("/readyz")).status_code == 200


async def test_metrics_time_requests_by_route_template_and_status(api: Api) -> None:
    await api.client.get("/v1/availability/SKU-A/1?channel=web", headers=READER)
    await api.client.get("/v1/availability/SKU-B?channel=BAD", headers=READER)
    await api.client.get("/no/such/route")

    text = (await api.client.get("/metrics")).text

    assert (
        'atp_http_request_duration_seconds_count{method="GET",'
        'route="/v1/availability/{sku:path}",status="200"}' in text
    )
    assert 'route="/v1/availability/{sku:path}",status="422"' in text
    assert 'route="unmatched",status="404"' in text
    assert "SKU-A" not in text


def test_the_api_refuses_to_start_without_api_keys(capsys: pytest.CaptureFixture[str]) -> None:
    settings = Settings(_env_file=None, api_keys=[])  # type: ignore[call-arg]

    with pytest.raises(SystemExit) as exited:
        serve(settings, "127.0.0.1", 0)

    assert exited.value.code not in (0, None)
    assert "ATP_API_KEYS" in capsys.readouterr().err


async def test_the_openapi_document_describes_the_hand_parsed_availability_route(
    api: Api,
) -> None:
    document = (await api.client.get("/openapi.json")).json()

    operation = document["paths"]["/v1/availability/{sku}"]["get"]
    assert [p["name"] for p in operation["parameters"]] == ["sku", "channel", "site"]
    assert operation["security"] == [{"ApiKey": []}]
    assert document["components"]["securitySchemes"]["ApiKey"]["scheme"] == "bearer"


def test_the_api_refuses_to_start_with_an_unreadable_channels_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    broken = tmp_path / "channels.json"
    broken.write_text('{"web": {"share": 150}}')
    settings = make_settings().model_copy(update={"channels_file": broken})

    with pytest.raises(SystemExit) as exited:
        serve(settings, "127.0.0.1", 0)

    assert exited.value.code not in (0, None)
    assert "ATP_CHANNELS_FILE" in capsys.readouterr().err


def test_the_serving_process_tunes_its_garbage_collector_before_serving(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    calls: list[str] = []
    monkeypatch.setattr(server, "tune_for_service", lambda: calls.append("tuned"))
    monkeypatch.setattr(server.uvicorn, "run", lambda app, **_: calls.append("served"))

    serve(make_settings(), "127.0.0.1", 0)

    assert calls == ["tuned", "served"]
