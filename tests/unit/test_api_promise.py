"""POST /v1/promise: dates and sites over HTTP, from the positions in one read, or a 422."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import pytest

from atp_service.domain import Bucket, ItemSite, ItemSitePosition
from atp_service.store import RedisStore
from tests.random_refs import random_sku
from tests.unit.api_harness import ADMIN, READER, Api, auth, make_settings, running_api

FRIDAY_MORNING = datetime(2026, 12, 4, 10, 0, tzinfo=UTC)
CHANNELS = {"web": {"sites": ["DC-EAST", "DC-WEST"], "include_in_transit": True}}
#: The contract's example (tests/unit/test_promising.py has the same, in the domain).
SITES = {
    "DC-EAST": {
        "priority": 10, "cutoff": "15:00", "closed_weekdays": [1],
        "transit_days": {"US-EAST": 1, "US-WEST": 1},
    },
    "DC-WEST": {
        "priority": 20, "handling_days": 1, "cutoff": "15:00",
        "transit_days": {"US-WEST": 1, "US-EAST": 4},
    },
}  # fmt: skip


@pytest.fixture
async def api(tmp_path: Path) -> AsyncIterator[Api]:
    async with running_api(make_settings(CHANNELS, tmp_path, sites=SITES)) as api:
        api.state.clock = lambda: FRIDAY_MORNING
        yield api


async def ask(api: Api, body: dict[str, Any], headers: dict[str, str] = READER) -> Any:
    return await api.client.post("/v1/promise", json=body, headers=headers)


async def test_the_contracts_example_is_answered_as_printed(api: Api) -> None:
    sku1, sku9 = random_sku(), random_sku()
    await api.receive(sku1, "DC-WEST", 30)
    await api.receive(sku1, "DC-EAST", 20, Bucket.IN_TRANSIT, eta=date(2026, 12, 7))
    await api.receive(sku9, "DC-EAST", 5)

    response = await ask(
        api,
        {
            "channel": "web", "ship_to": "US-WEST", "strategy": "earliest", "allow_split": True,
            "lines": [{"sku": sku1, "qty": 50}, {"sku": sku9, "qty": 1, "site": "DC-EAST"}],
        },
    )  # fmt: skip

    assert response.status_code == 200, response.text
    body = response.json()
    assert body["as_of"] is not None
    assert {k: v for k, v in body.items() if k != "as_of"} == {
        "channel": "web", "ship_to": "US-WEST", "delivery_date": "2026-12-09",
        "lines": [
            {"sku": sku1, "site": None, "qty": 50, "promised": 50, "shortfall": 0,
             "delivery_date": "2026-12-09", "fulfilments": [
                {"site": "DC-WEST", "qty": 30, "supply": "on_hand", "ship_date": "2026-12-05",
                 "delivery_date": "2026-12-06"},
                {"site": "DC-EAST", "qty": 20, "supply": "in_transit", "eta": "2026-12-07",
                 "ship_date": "2026-12-08", "delivery_date": "2026-12-09"}]},
            {"sku": sku9, "site": "DC-EAST", "qty": 1, "promised": 1, "shortfall": 0,
             "delivery_date": "2026-12-05", "fulfilments": [
                {"site": "DC-EAST", "qty": 1, "supply": "on_hand", "ship_date": "2026-12-04",
                 "delivery_date": "2026-12-05"}]},
        ],
    }  # fmt: skip


async def test_a_promise_holds_nothing_and_reserved_units_are_no_supply(api: Api) -> None:
    sku = random_sku()
    await api.receive(sku, "DC-EAST", 3)
    await api.receive(sku, "DC-EAST", 2, Bucket.ALLOCATED)
    body = {"channel": "web", "lines": [{"sku": sku, "qty": 5}]}

    first, again = (await ask(api, body)).json(), (await ask(api, body)).json()

    assert first == again
    assert (first["lines"][0]["promised"], first["lines"][0]["shortfall"]) == (1, 4)
    assert first["delivery_date"] is None  # not every line is promised in full


async def test_a_site_change_moves_the_promise_at_once(api: Api) -> None:
    sku = random_sku()
    await api.receive(sku, "DC-EAST", 3)
    await api.receive(sku, "DC-WEST", 3)
    body = {"channel": "web", "ship_to": "US-EAST", "lines": [{"sku": sku, "qty": 2}]}
    assert (await ask(api, body)).json()["lines"][0]["fulfilments"][0]["site"] == "DC-EAST"

    put = await api.client.put(
        "/v1/sites/DC-EAST", json={"transit_days": {"US-WEST": 1}}, headers=ADMIN
    )

    assert put.status_code == 200
    line = (await ask(api, body)).json()["lines"][0]
    assert [f["site"] for f in line["fulfilments"]] == ["DC-WEST"]  # DC-EAST: not to US-EAST
    assert line["delivery_date"] == "2026-12-09"  # handling 1 (Saturday), then 4 days


async def test_without_a_policy_a_channel_plans_over_every_known_site(api: Api) -> None:
    sku = random_sku()
    await api.receive(sku, "STORE-9", 4)

    line = (await ask(api, {"channel": "pos", "lines": [{"sku": sku, "qty": 4}]})).json()["lines"][
        0
    ]

    assert line["promised"] == 4
    assert line["fulfilments"][0]["site"] == "STORE-9"


async def test_all_lines_are_read_in_one_round_trip(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = make_settings(CHANNELS, tmp_path, sites=SITES, api_position_copy_entries=0)
    async with running_api(settings) as api:
        skus = [random_sku() for _ in range(50)]
        for sku in skus[:5]:
            await api.receive(sku, "DC-WEST", 2)
        reads: list[int] = []
        original = RedisStore.read_positions

        async def counted(self: RedisStore, items: list[ItemSite]) -> list[ItemSitePosition]:
            reads.append(len(items))
            return await original(self, items)

        monkeypatch.setattr(RedisStore, "read_positions", counted)
        lines = [{"sku": sku, "qty": 1} for sku in skus]

        response = await ask(api, {"channel": "web", "lines": lines})

    assert response.status_code == 200
    assert reads == [100]  # 50 lines x 2 sites, one pipeline
    assert sum(line["promised"] for line in response.json()["lines"]) == 5


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"channel": "web", "strategy": "cheapest", "lines": [{"sku": "A", "qty": 1}]},
         "body.strategy"),
        ({"channel": "web", "lines": [{"sku": "A", "qty": 0}]}, "body.lines.0.qty"),
        ({"channel": "web", "lines": [{"sku": "A", "qty": -3}]}, "body.lines.0.qty"),
        ({"channel": "web", "lines": [{"sku": "A", "qty": "2"}]}, "body.lines.0.qty"),
        ({"channel": "web", "lines": [{"sku": "A", "qty": 1}] * 101}, "body.lines"),
        ({"channel": "web", "lines": []}, "body.lines"),
        ({"channel": "web", "lines": [{"sku": "A", "qty": 1, "sit": "X"}]}, "body.lines.0.sit"),
        ({"channel": "web", "ship_to": "not a zone", "lines": [{"sku": "A", "qty": 1}]},
         "body.ship_to"),
        ({"channel": "web", "allow_split": "no", "lines": [{"sku": "A", "qty": 1}]},
         "body.allow_split"),
        ({"channel": "Web!", "lines": [{"sku": "A", "qty": 1}]}, "body.channel"),
        ({"lines": [{"sku": "A", "qty": 1}]}, "body.channel"),
    ],
)  # fmt: skip
async def test_a_bad_promise_is_refused_naming_the_field(
    api: Api, body: dict[str, Any], field: str
) -> None:
    response = await ask(api, body)

    assert response.status_code == 422, response.text
    assert field in [e["field"] for e in response.json()["errors"]]


async def test_a_hundred_lines_are_accepted(api: Api) -> None:
    response = await ask(api, {"channel": "web", "lines": [{"sku": "A", "qty": 1}] * 100})

    assert response.status_code == 200
    assert len(response.json()["lines"]) == 100


async def test_a_promise_needs_the_read_scope(api: Api) -> None:
    body = {"channel": "web", "lines": [{"sku": "A", "qty": 1}]}

    assert (await api.client.post("/v1/promise", json=body)).status_code == 401
    assert (await ask(api, body, headers=auth("oms"))).status_code == 200
