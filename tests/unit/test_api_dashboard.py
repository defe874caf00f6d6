"""/dashboard's files and the summary it polls (GET /v1/ops/summary), over fakeredis."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from atp_service.api.ops_summary import summary_of
from atp_service.api.routes.dashboard import ASSETS
from atp_service.store.ops import OpsSnapshot, OpsStore, Tallies, WorkerReport
from tests.random_refs import random_sku
from tests.unit.api_harness import ADMIN, READER, Api, make_settings, running_api

DASHBOARD_FILES = Path(__file__).parents[2] / "atp_service" / "api" / "dashboard"


@pytest.fixture
async def api(tmp_path: Path) -> AsyncIterator[Api]:
    channels = {"web": {"sites": ["DC-1"], "safety_stock": 2}}
    async with running_api(make_settings(channels, tmp_path)) as api:
        yield api


def report(worker: str, at: int, *, wms_lag: int = 0, rate: float = 100.0) -> WorkerReport:
    return {
        "worker": worker,
        "at": at,
        "sources": {"wms": {"lag_ms": wms_lag, "events_per_second": rate}},
        "partitions": [
            {
                "topic": "wms.inventory.v1",
                "partition": 0,
                "source": "wms",
                "lag_ms": wms_lag,
                "lag_messages": 3,
            },
        ],
        "dead_letters_per_second": 1.0,
    }


async def test_the_page_and_its_assets_are_served_with_a_strict_content_policy(api: Api) -> None:
    page = await api.client.get("/dashboard")
    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    assert "script-src 'self'" in page.headers["content-security-policy"]
    assert 'id="key-form"' in page.text
    for name, media_type in ASSETS.items():
        asset = await api.client.get(f"/dashboard/{name}")
        assert (asset.status_code, asset.headers["content-type"]) == (200, media_type)
        assert f"/dashboard/{name}" in page.text  # the page refers to each of them
    missing = await api.client.get("/dashboard/secrets.txt")
    assert missing.status_code == 404
    assert missing.headers["content-type"] == "application/problem+json"


def test_the_script_sets_what_it_shows_as_text_never_as_markup() -> None:
    """A dead letter's text is anyone's input: it must never become markup beside the key."""
    script = (DASHBOARD_FILES / "dashboard.js").read_text()
    for sink in ("innerHTML", "outerHTML", "insertAdjacentHTML", "document.write", "eval("):
        assert sink not in script, sink
    assert "localStorage" not in script  # the key lives in the tab's session storage only


async def test_the_summary_needs_the_admin_scope(api: Api) -> None:
    assert (await api.client.get("/v1/ops/summary")).status_code == 401
    assert (await api.client.get("/v1/ops/summary", headers=READER)).status_code == 403
    wrong = await api.client.get("/v1/ops/summary", headers={"Authorization": "Bearer nope"})
    assert (wrong.status_code, wrong.json()["code"]) == (401, "unauthorized")
    assert (await api.client.get("/v1/ops/summary", headers=ADMIN)).status_code == 200


async def test_the_summary_shows_what_the_workers_reported(api: Api) -> None:
    now = int(time.time() * 1000)
    ops = OpsStore(api.redis)
    dead = {"code": "malformed_json", "detail": "value is not JSON", "key": "S@D"}
    drift = {"sku": "S", "site": "D", "buckets": {"on_hand": {"folded": 4, "snapshot": 6}}}
    await ops.publish(
        report("w1", now, wms_lag=2500),
        dead_letters=[dead],
        drifts=[drift],
        tallies=Tallies(
            folded={"wms:folded": 10, "wms:duplicate": 1},
            dead_letters={"malformed_json": 1},
            drift={"on_hand:events": 1, "on_hand:units": 2},
        ),
    )
    await ops.save_audit(
        {"at": "2026-12-04T10:00:00.000Z", "at_ms": now, "seconds": 0.1, "mismatches": 0,
         "differences": [], "by_status": {"held": 2, "confirmed": 1}}
    )  # fmt: skip

    body = (await api.client.get("/v1/ops/summary", headers=ADMIN)).json()

    assert body["sync"]["wms"]["lag_seconds"] == 2.5 and body["sync"]["erp"]["lag_seconds"] is None
    assert body["fold"]["events_per_second"]["wms"] == 100.0
    assert body["fold"]["totals"] == {"wms": {"duplicate": 1, "folded": 10}}
    assert body["dead_letters"]["by_code"] == {"malformed_json": 1}
    assert body["dead_letters"]["latest"] == [dead]
    assert body["drift"]["by_bucket"] == {"on_hand": {"events": 1, "units": 2}}
    assert body["drift"]["latest"] == [drift]
    assert body["reservations"]["by_status"] == {"held": 2, "confirmed": 1}
    assert body["reservations"]["audit"]["mismatches"] == 0
    assert body["outbox"]["backlog"] == 0
    [worker] = body["workers"]
    assert worker["live"] and worker["partitions"][0]["lag_messages"] == 3
    assert body["sku"] is None


async def test_the_summary_shows_a_sku_in_every_channel_with_its_sites(api: Api) -> None:
    sku = random_sku()
    await api.receive(sku, "DC-1", 40, occurred_at="2026-12-04T10:00:00Z")
    await api.receive(sku, "DC-2", 7)

    body = (await api.client.get("/v1/ops/summary", params={"sku": sku}, headers=ADMIN)).json()

    shown = body["sku"]
    assert shown["sku"] == sku and shown["sites"] == ["DC-1", "DC-2"]
    by_channel = {answer["channel"]: answer for answer in shown["channels"]}
    assert set(by_channel) == {"web", "*"}  # the policies, and every channel without one
    assert by_channel["web"]["atp"] == 38 and [s["site"] for s in by_channel["web"]["sites"]] == [
        "DC-1"
    ]
    assert by_channel["*"]["atp"] == 47
    assert by_channel["web"]["sites"][0]["sources"] == {"wms": "2026-12-04T10:00:00.000Z"}
    assert "sync" not in by_channel["web"]  # once, at the top


async def test_an_invalid_sku_is_422_naming_it(api: Api) -> None:
    response = await api.client.get("/v1/ops/summary", params={"sku": "bad sku"}, headers=ADMIN)
    assert response.status_code == 422
    assert [e["field"] for e in response.json()["errors"]] == ["query.sku"]


def test_the_failure_rate_is_the_dead_lettered_share_and_a_silent_worker_is_not_live() -> None:
    now = 1_000_000
    snapshot = OpsSnapshot(
        reports=[report("live", now, rate=99.0), report("gone", now - 60_000, rate=500.0)],
        dead_letters=[], dead_letter_counts={}, drifts=[], drift_counts={}, folded_counts={},
        audit=None, outbox_backlog=4,
    )  # fmt: skip
    body = summary_of(snapshot, now)
    assert body["fold"]["events_per_second"]["wms"] == 99.0  # the live worker's alone
    assert body["fold"]["failure_rate"] == 0.01  # 1 dead letter a second in 100 events
    assert [(w["worker"], w["live"]) for w in body["workers"]] == [("live", True), ("gone", False)]
    assert body["reservations"] == {"by_status": None, "audit": None}
