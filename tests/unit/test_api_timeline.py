"""GET /v1/availability/{sku}/timeline, beside the plain read it shares its paths with."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import pytest

from atp_service.domain import Bucket
from tests.random_refs import random_sku
from tests.unit.api_harness import READER, Api, make_settings, running_api

TODAY = date(2026, 12, 4)
CHANNELS = {
    "web": {"sites": ["DC-EAST", "DC-WEST"], "include_in_transit": True,
            "in_transit_horizon_days": 7},
    "store": {"sites": ["DC-EAST"]},
}  # fmt: skip


@pytest.fixture
async def api(tmp_path: Path) -> AsyncIterator[Api]:
    async with running_api(make_settings(CHANNELS, tmp_path)) as api:
        api.state.clock = lambda: datetime(2026, 12, 4, 12, 0, tzinfo=UTC)
        yield api


async def timeline(api: Api, sku: str, **params: Any) -> Any:
    return await api.client.get(
        f"/v1/availability/{sku}/timeline", params={"channel": "web", **params}, headers=READER
    )


async def stocked(api: Api, sku: str) -> None:
    await api.receive(sku, "DC-EAST", 5)
    await api.receive(sku, "DC-WEST", 2)
    await api.receive(sku, "DC-EAST", 4, Bucket.IN_TRANSIT, eta=date(2026, 12, 6))
    await api.receive(sku, "DC-WEST", 3, Bucket.IN_TRANSIT, eta=date(2026, 12, 10))
    await api.receive(sku, "DC-WEST", 8, Bucket.IN_TRANSIT, eta=date(2026, 12, 30))


async def test_the_timeline_rises_with_each_eta_to_the_channels_atp(api: Api) -> None:
    sku = random_sku()
    await stocked(api, sku)

    response = await timeline(api, sku)

    assert response.status_code == 200, response.text
    body = response.json()
    assert (body["sku"], body["channel"]) == (sku, "web")
    # the default window is the horizon: 7 days, so the inbound of the 30th never comes
    assert body["points"] == [
        {"date": "2026-12-04", "atp": 7},
        {"date": "2026-12-06", "atp": 11},
        {"date": "2026-12-10", "atp": 14},
    ]
    # 14 is the channel's ATP on the 4th: 5 + 2 on hand, 4 + 3 inbound within 7 days
    plain = await api.client.get(
        f"/v1/availability/{sku}", params={"channel": "web"}, headers=READER
    )
    assert body["as_of"] == plain.json()["as_of"]


async def test_days_and_site_narrow_it_and_without_inbound_there_is_one_point(api: Api) -> None:
    sku = random_sku()
    await stocked(api, sku)

    short = (await timeline(api, sku, days=2)).json()["points"]
    east = (await timeline(api, sku, site="DC-EAST")).json()["points"]
    store = (await timeline(api, sku, channel="store")).json()["points"]

    assert short == [{"date": "2026-12-04", "atp": 7}, {"date": "2026-12-06", "atp": 11}]
    assert east == [{"date": "2026-12-04", "atp": 5}, {"date": "2026-12-06", "atp": 9}]
    assert store == [{"date": "2026-12-04", "atp": 5}]


async def test_a_sku_never_seen_is_one_point_of_zero(api: Api) -> None:
    body = (await timeline(api, random_sku())).json()

    assert body["points"] == [{"date": "2026-12-04", "atp": 0}]
    assert body["as_of"] is None


async def test_a_sku_with_slashes_has_a_timeline_and_still_a_plain_read(api: Api) -> None:
    sku = f"{random_sku()}/red/XL"
    await api.receive(sku, "DC-EAST", 6)

    read = await api.client.get(
        f"/v1/availability/{sku}", params={"channel": "web"}, headers=READER
    )
    line = await timeline(api, sku)

    assert read.status_code == 200 and read.json()["sku"] == sku and read.json()["atp"] == 6
    assert line.status_code == 200 and line.json()["sku"] == sku
    assert line.json()["points"] == [{"date": "2026-12-04", "atp": 6}]


async def test_a_path_ending_in_timeline_is_the_timeline_and_the_batch_reads_such_a_sku(
    api: Api,
) -> None:
    sku = f"{random_sku()}/timeline"
    await api.receive(sku, "DC-EAST", 6)

    by_path = await api.client.get(
        f"/v1/availability/{sku}", params={"channel": "web"}, headers=READER
    )
    by_batch = await api.client.post(
        "/v1/availability/batch", json={"channel": "web", "items": [{"sku": sku}]}, headers=READER
    )

    assert "points" in by_path.json()  # the timeline of the sku before "/timeline"
    assert by_batch.json()["items"][0]["atp"] == 6


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"days": -1}, "query.days"),
        ({"days": "a week"}, "query.days"),
        ({"site": "no such site!"}, "query.site"),
        ({"channel": "Web"}, "query.channel"),
    ],
)
async def test_bad_parameters_are_refused_naming_them(
    api: Api, params: dict[str, Any], field: str
) -> None:
    response = await timeline(api, "SKU-1", **params)

    assert response.status_code == 422
    assert field in [e["field"] for e in response.json()["errors"]]


async def test_the_channel_is_required(api: Api) -> None:
    response = await api.client.get("/v1/availability/SKU-1/timeline", headers=READER)

    assert response.status_code == 422
    assert response.json()["errors"][0]["field"] == "query.channel"
