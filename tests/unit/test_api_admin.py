"""Admin: channel policies and safety-stock overrides change what the API promises."""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from atp_service.domain import ChannelPolicy
from atp_service.store import keys
from atp_service.store.redis_store import outbox_records
from tests.random_refs import random_sku
from tests.unit.api_harness import ADMIN, READER, Api, make_settings, running_api

DEFAULT_POLICY = {
    "sites": None, "safety_stock": 0, "share": 100, "include_in_transit": False,
    "in_transit_horizon_days": 0,
}  # fmt: skip
SEEDED = {"changed_by": None, "changed_at": None}


@pytest.fixture
async def api(tmp_path: Path) -> AsyncIterator[Api]:
    async with running_api(make_settings({"web": {"share": 50}}, tmp_path)) as api:
        yield api


async def atp(api: Api, sku: str, channel: str, site: str = "DC-1") -> int:
    response = await api.client.get(
        f"/v1/availability/{sku}", params={"channel": channel, "site": site}, headers=READER
    )
    assert response.status_code == 200, response.text
    value: int = response.json()["atp"]
    return value


async def put_policy(api: Api, channel: str, body: dict[str, Any]) -> Any:
    return await api.client.put(f"/v1/policies/channels/{channel}", json=body, headers=ADMIN)


async def test_the_policies_in_force_are_the_seeded_ones_and_the_default(api: Api) -> None:
    response = await api.client.get("/v1/policies/channels", headers=ADMIN)

    assert response.status_code == 200
    body = response.json()
    assert body["default"] == DEFAULT_POLICY
    assert body["channels"] == {"web": {**DEFAULT_POLICY, "share": 50, **SEEDED}}
    assert body["version"] >= 1


async def test_a_policy_put_changes_the_atp_at_once(api: Api) -> None:
    sku = random_sku()
    await api.receive(sku, "DC-1", 20)
    assert await atp(api, sku, "web") == 10

    response = await put_policy(api, "web", {"share": 25, "safety_stock": 1})

    assert response.status_code == 200
    answer = response.json()
    assert answer == {
        **DEFAULT_POLICY, "share": 25, "safety_stock": 1, "channel": "web", "changed_by": "ops",
        "changed_at": answer["changed_at"], "version": answer["version"],
    }  # fmt: skip
    assert answer["changed_at"].endswith("Z")
    assert await atp(api, sku, "web") == 4


async def test_a_policy_put_replaces_the_whole_policy(api: Api) -> None:
    await put_policy(api, "web", {"share": 25, "sites": ["DC-1"]})

    await put_policy(api, "web", {"safety_stock": 3})

    listed = (await api.client.get("/v1/policies/channels", headers=ADMIN)).json()
    web = listed["channels"]["web"]
    assert web == {**DEFAULT_POLICY, "safety_stock": 3, "changed_by": "ops",
                   "changed_at": web["changed_at"]}  # fmt: skip


async def test_a_policy_naming_sites_limits_the_sites_answered(api: Api) -> None:
    sku = random_sku()
    await api.receive(sku, "DC-1", 2)
    await api.receive(sku, "DC-2", 3)

    await put_policy(api, "outlet", {"sites": ["DC-2"]})

    response = await api.client.get(
        f"/v1/availability/{sku}", params={"channel": "outlet"}, headers=READER
    )
    body = response.json()
    assert [s["site"] for s in body["sites"]] == ["DC-2"] and body["atp"] == 3


async def test_a_policy_changed_by_another_process_is_picked_up_by_the_refresh(api: Api) -> None:
    sku = random_sku()
    await api.receive(sku, "DC-1", 8)
    await api.store.put_channel_policy("store", ChannelPolicy(share=50), changed_by="ops-cli")

    await api.state.refresh_policies()

    assert await atp(api, sku, "store") == 4


async def test_a_policy_is_stored_for_every_api_process(api: Api) -> None:
    await put_policy(api, "b2b", {"include_in_transit": True, "in_transit_horizon_days": 7})

    raw: Any = await api.redis.hget(keys.POLICIES, "b2b")
    stored = json.loads(raw)
    assert stored["include_in_transit"] is True and stored["in_transit_horizon_days"] == 7


@pytest.mark.parametrize(
    ("channel", "body", "field"),
    [
        ("web", {"share": 101}, "body.share"),
        ("web", {"share": -1}, "body.share"),
        ("web", {"share": "50"}, "body.share"),
        ("web", {"safety_stock": -1}, "body.safety_stock"),
        ("web", {"in_transit_horizon_days": -2}, "body.in_transit_horizon_days"),
        ("web", {"in_transit_horizon_days": 10**9}, "body.in_transit_horizon_days"),
        ("web", {"sites": ["DC-1", "bad site"]}, "body.sites.1"),
        ("web", {"include_in_transit": "yes"}, "body.include_in_transit"),
        ("web", {"shares": 50}, "body.shares"),
        ("Web", {}, "path.channel"),
    ],
)
async def test_an_invalid_policy_is_422_naming_the_field(
    api: Api, channel: str, body: dict[str, Any], field: str
) -> None:
    response = await put_policy(api, channel, body)

    assert response.status_code == 422
    assert [e["field"] for e in response.json()["errors"]] == [field]


async def test_a_policy_with_no_sites_at_all_is_refused_saying_what_to_send_instead(
    api: Api,
) -> None:
    response = await put_policy(api, "web", {"sites": []})

    assert response.status_code == 422
    [error] = response.json()["errors"]
    assert error["field"] == "body.sites"
    assert "at least one site" in error["message"] and "share 0" in error["message"]


async def test_an_empty_policy_body_resets_the_channel_to_the_defaults(api: Api) -> None:
    await put_policy(api, "web", {"sites": ["DC-1"], "safety_stock": 3, "share": 20})

    response = await put_policy(api, "web", {})

    assert response.status_code == 200
    assert {k: v for k, v in response.json().items() if k in DEFAULT_POLICY} == DEFAULT_POLICY
    listed = await api.client.get("/v1/policies/channels", headers=ADMIN)
    web = listed.json()["channels"]["web"]
    assert {k: v for k, v in web.items() if k in DEFAULT_POLICY} == DEFAULT_POLICY
    assert web["changed_by"] == "ops"  # issue 15: the record names who reset it


async def test_a_policy_body_that_is_not_json_by_its_content_type_is_415(api: Api) -> None:
    response = await api.client.put(
        "/v1/policies/channels/web",
        content=b'{"share": 10}',
        headers={**ADMIN, "Content-Type": "text/plain"},
    )

    assert response.status_code == 415
    assert response.json()["code"] == "unsupported_media_type"


async def test_a_safety_stock_override_beats_the_channel_safety_stock(api: Api) -> None:
    sku = random_sku()
    await api.receive(sku, "DC-1", 10)
    await put_policy(api, "web", {"safety_stock": 2})

    response = await api.client.put(
        f"/v1/safety-stock/{sku}/DC-1", json={"safety_stock": 5}, headers=ADMIN
    )

    assert response.status_code == 200
    assert response.json() == {
        "sku": sku, "site": "DC-1", "safety_stock": 5, "version": 2, "changed_by": "ops",
    }  # fmt: skip
    assert await atp(api, sku, "web") == 5
    assert await atp(api, sku, "marketplace") == 5


async def test_a_null_safety_stock_clears_the_override(api: Api) -> None:
    sku = random_sku()
    await api.receive(sku, "DC-1", 10)
    await put_policy(api, "web", {"safety_stock": 2})
    await api.client.put(f"/v1/safety-stock/{sku}/DC-1", json={"safety_stock": 5}, headers=ADMIN)

    response = await api.client.put(
        f"/v1/safety-stock/{sku}/DC-1", json={"safety_stock": None}, headers=ADMIN
    )

    assert response.status_code == 200 and response.json()["safety_stock"] is None
    assert await atp(api, sku, "web") == 8


async def test_a_safety_stock_change_is_announced_with_the_request_correlation_id(
    api: Api,
) -> None:
    sku = random_sku()
    await api.receive(sku, "DC-1", 10)
    outbox = api.store.keys.item_site(sku, "DC-1").outbox
    before = await api.redis.xlen(outbox)

    await api.client.put(
        f"/v1/safety-stock/{sku}/DC-1",
        json={"safety_stock": 4},
        headers={**ADMIN, "X-Correlation-ID": "ticket-4711"},
    )

    entries: Any = await api.redis.xrange(outbox)
    events = [json.loads(v) for _, fields in entries[before:] for _, v in outbox_records(fields)]
    events = [e for e in events if e["channel"] == "web"]  # "*" speaks for unlisted channels
    assert [(e["type"], e["channel"], e["atp"], e["previous_atp"]) for e in events] == [
        ("availability.changed", "web", 1, 5)
    ]
    assert events[0]["correlation_id"] == "ticket-4711"
    assert events[0]["changed_by"] == "ops"  # the name of the admin's API key


async def test_admin_changes_are_logged_with_the_name_of_the_key(
    api: Api, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="atp.admin")

    await put_policy(api, "web", {"share": 30})
    await api.client.put("/v1/safety-stock/SKU-9/DC-1", json={"safety_stock": 2}, headers=ADMIN)

    lines = [r for r in caplog.records if r.name == "atp.admin"]
    assert [(r.getMessage(), getattr(r, "changed_by", None)) for r in lines] == [
        ("channel policy put by ops", "ops"),
        ("safety stock put by ops", "ops"),
    ]
    assert lines[0].channel == "web" and lines[0].policy["share"] == 30
    assert (lines[1].sku, lines[1].safety_stock) == ("SKU-9", 2)


async def test_the_policy_record_keeps_who_put_it_in_force(api: Api) -> None:
    await put_policy(api, "b2b", {"share": 70})

    stored = json.loads(await api.redis.hget(keys.POLICIES, "b2b"))
    listed = (await api.client.get("/v1/policies/channels", headers=ADMIN)).json()

    assert stored["changed_by"] == "ops" and stored["changed_at"] > 0
    assert listed["channels"]["b2b"]["changed_by"] == "ops"
    assert listed["channels"]["web"]["changed_by"] is None  # seeded from the channels file


async def test_a_safety_stock_can_be_set_for_a_sku_with_slashes(api: Api) -> None:
    sku = f"{random_sku()}/blue/M"
    await api.receive(sku, "DC-1", 10)

    response = await api.client.put(
        f"/v1/safety-stock/{sku}/DC-1", json={"safety_stock": 3}, headers=ADMIN
    )

    assert response.status_code == 200 and response.json()["sku"] == sku
    assert await atp(api, sku, "marketplace") == 7


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({}, "body.safety_stock"),
        ({"safety_stock": -1}, "body.safety_stock"),
        ({"safety_stock": 1.5}, "body.safety_stock"),
    ],
)
async def test_an_invalid_safety_stock_is_422(api: Api, body: dict[str, Any], field: str) -> None:
    response = await api.client.put("/v1/safety-stock/SKU-1/DC-1", json=body, headers=ADMIN)

    assert response.status_code == 422
    assert [e["field"] for e in response.json()["errors"]] == [field]


async def test_the_seeded_policies_come_back_when_the_store_comes_back_empty(api: Api) -> None:
    await api.redis.flushall()

    await api.state.refresh_policies()

    listed = (await api.client.get("/v1/policies/channels", headers=ADMIN)).json()
    assert listed["channels"] == {"web": {**DEFAULT_POLICY, "share": 50, **SEEDED}}


async def test_an_api_process_starting_later_keeps_an_admin_change_over_its_seed(
    api: Api,
) -> None:
    await put_policy(api, "web", {"share": 10})

    async with running_api(api.state.settings, api.server) as later:
        listed = (await later.client.get("/v1/policies/channels", headers=ADMIN)).json()

    assert listed["channels"]["web"]["share"] == 10
