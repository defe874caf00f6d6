"""GET /v1/availability/{sku} and POST /v1/availability/batch over fakeredis."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Sequence
from datetime import date, timedelta
from pathlib import Path
from typing import Any

import pytest
from starlette.datastructures import QueryParams

from atp_service.api.routes import availability as availability_route
from atp_service.api.routes.availability import _channel_and_site
from atp_service.domain import Bucket, ChannelPolicy, ItemSite, ItemSitePosition
from tests.random_refs import random_sku
from tests.unit.api_harness import READER, Api, make_settings, running_api

SITE_FIELDS = {
    "site", "atp", "on_hand", "allocated", "quarantined", "reserved", "in_transit",
    "version", "as_of", "sources",
}  # fmt: skip
CHANNELS = {
    "web": {"share": 50, "safety_stock": 2},
    "store": {"sites": ["STORE-1"]},
    "b2b": {"include_in_transit": True},
}


@pytest.fixture
async def api(tmp_path: Path) -> AsyncIterator[Api]:
    async with running_api(make_settings(CHANNELS, tmp_path)) as api:
        yield api


async def get(api: Api, sku: str, channel: str = "marketplace", **params: str) -> Any:
    response = await api.client.get(
        f"/v1/availability/{sku}", params={"channel": channel, **params}, headers=READER
    )
    assert response.status_code == 200, response.text
    return response.json()


async def test_an_answer_has_exactly_the_contract_shape(api: Api) -> None:
    sku = random_sku()
    await api.receive(sku, "DC-1", 40)
    await api.receive(sku, "DC-1", 5, Bucket.ALLOCATED)

    body = await get(api, sku, site="DC-1")

    assert set(body) == {"sku", "channel", "atp", "sites", "as_of", "sync"}
    assert (body["sku"], body["channel"], body["atp"]) == (sku, "marketplace", 35)
    (site,) = body["sites"]
    assert set(site) == SITE_FIELDS
    assert site["on_hand"] == 40 and site["allocated"] == 5 and site["version"] == 2
    assert site["as_of"].endswith("Z") and body["as_of"] == site["as_of"]


async def test_a_sku_never_seen_is_atp_zero_not_404(api: Api) -> None:
    await api.receive(random_sku(), "DC-1", 3)

    body = await get(api, random_sku(), site="DC-1")

    assert body["atp"] == 0 and body["as_of"] is None
    assert body["sites"][0] == {
        "site": "DC-1", "atp": 0, "on_hand": 0, "allocated": 0, "quarantined": 0,
        "reserved": 0, "in_transit": 0, "version": 0, "as_of": None, "sources": {},
    }  # fmt: skip


@pytest.mark.parametrize("spelled", ["raw", "escaped"])
async def test_a_sku_with_slashes_is_one_sku(api: Api, spelled: str) -> None:
    sku = f"{random_sku()}/red/XL"
    await api.receive(sku, "DC-1", 7)
    path = sku if spelled == "raw" else sku.replace("/", "%2F")

    body = await get(api, path, site="DC-1")

    assert body["sku"] == sku and body["atp"] == 7


async def test_without_a_site_every_known_site_counts_for_a_channel_naming_none(api: Api) -> None:
    sku = random_sku()
    await api.receive(sku, "DC-1", 4)
    await api.receive(sku, "DC-2", 6)

    body = await get(api, sku)

    assert body["atp"] == 10
    assert [s["site"] for s in body["sites"]] == ["DC-1", "DC-2"]


async def test_without_a_site_only_the_channel_policy_sites_count(api: Api) -> None:
    sku = random_sku()
    await api.receive(sku, "DC-1", 4)
    await api.receive(sku, "STORE-1", 6)

    body = await get(api, sku, "store")

    assert [s["site"] for s in body["sites"]] == ["STORE-1"] and body["atp"] == 6


async def copy_current(api: Api) -> None:
    """The in-process copy serves (the answers below come from it, not from Redis)."""
    for _ in range(100):
        if api.state.positions.current:
            return
        await asyncio.sleep(0.01)
    raise AssertionError("the copy never became current")


async def test_a_product_page_answered_from_the_copy_follows_every_change(api: Api) -> None:
    # The whole answer is reused while its positions, sites and policies stay the same.
    sku = random_sku()
    await api.receive(sku, "DC-1", 4)
    await api.receive(sku, "DC-2", 6)
    await copy_current(api)
    first = await get(api, sku)
    assert await get(api, sku) == first  # the same positions: the same answer

    await api.receive(sku, "DC-2", -1)  # one position moves
    moved = await get(api, sku)
    await api.receive(sku, "DC-3", 5)  # a site appears
    grown = await get(api, sku)
    await api.store.put_channel_policy("marketplace", ChannelPolicy(share=50), changed_by="t")
    await api.state.refresh_policies()  # another book
    halved = await get(api, sku)

    assert (first["atp"], moved["atp"], grown["atp"], halved["atp"]) == (10, 9, 14, 6)
    assert moved["sites"][1]["on_hand"] == 5 and moved["sites"][1]["version"] == 2
    assert [s["site"] for s in grown["sites"]] == ["DC-1", "DC-2", "DC-3"]
    assert moved["as_of"] >= first["as_of"]
    assert api.state.positions.current


async def stocked_in_the_copy(api: Api, count: int, qty: int) -> list[str]:
    """``count`` new skus with ``qty`` at DC-1 each, the copy serving."""
    skus = [random_sku() for _ in range(count)]
    for sku in skus:
        await api.receive(sku, "DC-1", qty)
    await copy_current(api)
    return skus


async def test_the_product_page_answers_kept_are_bounded_over_all_channels(
    api: Api, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Channel names come from requests: a caller naming many must not grow the API.
    monkeypatch.setattr(availability_route, "_ANSWERS_MAX", 20)
    skus = await stocked_in_the_copy(api, 6, 3)

    answers = [await get(api, sku, f"outlet-{n}") for n in range(10) for sku in skus]

    assert all(a["atp"] == 3 for a in answers)
    kept = availability_route._rendered_for(api.state, api.state.book).answers
    assert 0 < len(kept) <= 20


async def test_the_site_answers_kept_are_bounded_over_all_channels(
    api: Api, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(availability_route, "_RENDERED_MAX", 30)
    skus = await stocked_in_the_copy(api, 8, 4)

    answers = [await get(api, sku, f"outlet-{n}", site="DC-1") for n in range(12) for sku in skus]

    assert all(a["atp"] == 4 for a in answers)
    by_channel = availability_route._rendered_for(api.state, api.state.book).by_channel
    assert 0 < sum(len(kept) for kept in by_channel.values()) <= 30


async def test_a_product_page_of_dated_in_transit_is_rendered_again_the_next_day(
    api: Api, monkeypatch: pytest.MonkeyPatch
) -> None:
    sku = random_sku()
    await api.store.put_channel_policy(
        "dated", ChannelPolicy(include_in_transit=True, in_transit_horizon_days=2), changed_by="t"
    )
    await api.state.refresh_policies()
    today = date.today()
    await api.receive(sku, "DC-1", 1)
    await api.receive(sku, "DC-1", 8, Bucket.IN_TRANSIT, eta=today + timedelta(days=3))
    await copy_current(api)
    before = await get(api, sku, "dated")

    real = time.time
    monkeypatch.setattr(time, "time", lambda: real() + 86_400)  # a day later: within 2 days
    after = await get(api, sku, "dated")

    assert (before["atp"], after["atp"]) == (1, 9)


async def test_a_site_outside_the_channel_policy_promises_nothing(api: Api) -> None:
    sku = random_sku()
    await api.receive(sku, "DC-1", 4)

    body = await get(api, sku, "store", site="DC-1")

    assert body["atp"] == 0 and body["sites"][0]["on_hand"] == 4


async def test_the_channel_share_and_safety_stock_shape_the_atp(api: Api) -> None:
    sku = random_sku()
    await api.receive(sku, "DC-1", 21)

    body = await get(api, sku, "web", site="DC-1")

    assert body["atp"] == 21 // 2 - 2


async def test_in_transit_is_promised_only_by_channels_that_allow_it(api: Api) -> None:
    sku = random_sku()
    await api.receive(sku, "DC-1", 3)
    await api.receive(sku, "DC-1", 8, Bucket.IN_TRANSIT, eta=date.today() + timedelta(days=3))

    b2b = await get(api, sku, "b2b", site="DC-1")
    marketplace = await get(api, sku, site="DC-1")

    assert b2b["atp"] == 11 and marketplace["atp"] == 3
    assert b2b["sites"][0]["in_transit"] == marketplace["sites"][0]["in_transit"] == 8


async def test_the_top_level_as_of_is_the_latest_change_of_any_site(api: Api) -> None:
    sku = random_sku()
    await api.receive(sku, "DC-1", 1)
    await api.receive(sku, "DC-2", 1)

    body = await get(api, sku)

    assert body["as_of"] == max(s["as_of"] for s in body["sites"])


async def test_a_batch_answers_every_item_in_order(api: Api) -> None:
    skus = [random_sku() for _ in range(5)]
    for qty, sku in enumerate(skus, start=1):
        await api.receive(sku, "DC-1", qty)
    items: list[dict[str, Any]] = [{"sku": sku, "site": "DC-1"} for sku in reversed(skus)]
    items.append({"sku": skus[0]})

    response = await api.client.post(
        "/v1/availability/batch", json={"channel": "marketplace", "items": items}, headers=READER
    )

    assert response.status_code == 200
    answers = response.json()["items"]
    assert [(a["sku"], a["atp"]) for a in answers] == [
        (skus[4], 5), (skus[3], 4), (skus[2], 3), (skus[1], 2), (skus[0], 1), (skus[0], 1),
    ]  # fmt: skip
    assert answers[0] == await get(api, skus[4], site="DC-1")


async def test_a_batch_reads_every_position_in_one_round_trip(
    api: Api, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[int] = []
    read = api.state.store.read_positions

    async def counting(items: Sequence[ItemSite]) -> list[ItemSitePosition]:
        calls.append(len(items))
        return await read(items)

    monkeypatch.setattr(api.state.store, "read_positions", counting)
    await api.receive(random_sku(), "DC-2", 1)
    items = [{"sku": random_sku()} for _ in range(30)]

    response = await api.client.post(
        "/v1/availability/batch", json={"channel": "web", "items": items}, headers=READER
    )

    assert response.status_code == 200
    assert calls == [30 * len(api.state.sites)]


async def test_a_batch_takes_1000_items(api: Api) -> None:
    items = [{"sku": f"SKU-{n}", "site": "DC-1"} for n in range(1000)]

    response = await api.client.post(
        "/v1/availability/batch", json={"channel": "web", "items": items}, headers=READER
    )

    assert response.status_code == 200 and len(response.json()["items"]) == 1000


@pytest.mark.parametrize("count", [0, 1001])
async def test_a_batch_of_no_items_or_more_than_1000_is_refused(api: Api, count: int) -> None:
    items = [{"sku": f"SKU-{n}"} for n in range(count)]

    response = await api.client.post(
        "/v1/availability/batch", json={"channel": "web", "items": items}, headers=READER
    )

    assert response.status_code == 422
    assert [e["field"] for e in response.json()["errors"]] == ["body.items"]


@pytest.mark.parametrize(
    ("path", "field"),
    [
        ("/v1/availability/-bad?channel=web", "path.sku"),
        (f"/v1/availability/{'S' * 65}?channel=web", "path.sku"),
        ("/v1/availability/SKU-1?channel=Web", "query.channel"),
        ("/v1/availability/SKU-1", "query.channel"),
        ("/v1/availability/SKU-1?channel=web&site=DC%201", "query.site"),
    ],
)
async def test_an_invalid_identifier_is_422_naming_the_field(
    api: Api, path: str, field: str
) -> None:
    response = await api.client.get(path, headers=READER)

    assert response.status_code == 422
    assert response.headers["content-type"] == "application/problem+json"
    body = response.json()
    assert body["code"] == "validation_error" and field in body["detail"]
    assert [e["field"] for e in body["errors"]] == [field]


async def test_an_invalid_batch_item_is_422_naming_its_index(api: Api) -> None:
    items = [{"sku": "SKU-1"}, {"sku": "SKU-2", "site": "no spaces"}, {"sku": "SKU-3", "x": 1}]

    response = await api.client.post(
        "/v1/availability/batch", json={"channel": "web", "items": items}, headers=READER
    )

    assert response.status_code == 422
    assert [e["field"] for e in response.json()["errors"]] == [
        "body.items.1.site",
        "body.items.2.x",
    ]


@pytest.mark.parametrize(
    "query",
    [
        b"channel=web", b"channel=web&site=DC-EAST", b"site=A&channel=b2b&channel=x",
        b"channel=w%65b", b"ch%61nnel=web&site=S+1", b"", b"channel", b"channel=&site=",
        b"x=1&channel=web", b"site=%E9", b"channel=a%2Bb", b"site=a&site=b&=c&&channel",
    ],
)  # fmt: skip
def test_the_hot_route_reads_channel_and_site_as_starlette_does(query: bytes) -> None:
    params = QueryParams(query)
    assert _channel_and_site(query) == (params.get("channel"), params.get("site"))
