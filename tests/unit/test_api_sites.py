"""Sites: seeded from ATP_SITES_FILE, listed, replaced by an admin, refused when impossible."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from atp_service.config import Settings, sites_from_mapping
from atp_service.domain import SiteAttributes
from atp_service.store import keys
from tests.unit.api_harness import ADMIN, READER, Api, make_settings, running_api

DEFAULT = {
    "priority": 100, "handling_days": 0, "cutoff": None, "closed_weekdays": [],
    "transit_days": {}, "default_transit_days": 0,
}  # fmt: skip
EAST = {
    "priority": 10, "handling_days": 1, "cutoff": "15:00", "closed_weekdays": [7],
    "transit_days": {"US-EAST": 1, "US-WEST": 4}, "default_transit_days": None,
}  # fmt: skip


@pytest.fixture
async def api(tmp_path: Path) -> AsyncIterator[Api]:
    async with running_api(make_settings(tmp=tmp_path, sites={"DC-EAST": EAST})) as api:
        yield api


async def put_site(api: Api, site: str, body: Any, headers: dict[str, str] = ADMIN) -> Any:
    return await api.client.put(f"/v1/sites/{site}", json=body, headers=headers)


async def test_the_sites_in_force_are_the_seeded_ones_and_the_default(api: Api) -> None:
    response = await api.client.get("/v1/sites", headers=READER)

    assert response.status_code == 200
    body = response.json()
    assert body["default"] == DEFAULT
    assert body["sites"] == {"DC-EAST": {**EAST, "changed_by": None, "changed_at": None}}
    assert body["version"] >= 1


async def test_a_put_replaces_the_whole_site_and_every_process_sees_it(api: Api) -> None:
    response = await put_site(api, "DC-EAST", {"priority": 5, "cutoff": "09:30"})

    assert response.status_code == 200, response.text
    body = response.json()
    assert body == {
        **DEFAULT, "priority": 5, "cutoff": "09:30", "site": "DC-EAST", "changed_by": "ops",
        "changed_at": body["changed_at"], "version": body["version"],
    }  # fmt: skip
    assert body["changed_at"] is not None
    async with running_api(make_settings(), server=api.server) as other:
        listed = (await other.client.get("/v1/sites", headers=READER)).json()
    assert listed["sites"]["DC-EAST"]["priority"] == 5
    assert listed["sites"]["DC-EAST"]["handling_days"] == 0  # omitted: the default


async def test_a_site_listing_zones_delivers_only_there_unless_it_says_otherwise(api: Api) -> None:
    listed = await put_site(api, "DC-WEST", {"transit_days": {"US-WEST": 1}})
    everywhere = await put_site(api, "STORE-1", {"handling_days": 2})
    explicit = await put_site(
        api, "STORE-2", {"transit_days": {"US-WEST": 1}, "default_transit_days": 3}
    )

    assert listed.json()["default_transit_days"] is None
    assert everywhere.json()["default_transit_days"] == 0
    assert explicit.json()["default_transit_days"] == 3


async def test_a_change_is_logged_with_the_name_of_the_key_that_made_it(
    api: Api, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO, logger="atp.admin"):
        await put_site(api, "DC-WEST", {"priority": 7})

    (record,) = [r for r in caplog.records if r.getMessage() == "site put by ops"]
    assert record.__dict__["changed_by"] == "ops"
    assert record.__dict__["site"] == "DC-WEST"
    assert record.__dict__["attributes"]["priority"] == 7
    listed = (await api.client.get("/v1/sites", headers=READER)).json()
    assert listed["sites"]["DC-WEST"]["changed_by"] == "ops"


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"cutoff": "25:00"}, "body.cutoff"),
        ({"cutoff": "3pm"}, "body.cutoff"),
        ({"cutoff": "15:00:00"}, "body.cutoff"),
        ({"cutoff": 1500}, "body.cutoff"),
        ({"closed_weekdays": [8]}, "body.closed_weekdays.0"),
        ({"closed_weekdays": [6, 0]}, "body.closed_weekdays.1"),
        ({"closed_weekdays": [1, 2, 3, 4, 5, 6, 7]}, "body.closed_weekdays"),
        ({"handling_days": -1}, "body.handling_days"),
        ({"handling_days": 1.5}, "body.handling_days"),
        ({"transit_days": {"US-EAST": -1}}, "body.transit_days.US-EAST"),
        ({"transit_days": {"not a zone": 1}}, "body.transit_days.not a zone.[key]"),
        ({"default_transit_days": -2}, "body.default_transit_days"),
        ({"priority": -1}, "body.priority"),
        ({"lead_time": 3}, "body.lead_time"),
    ],
)
async def test_an_impossible_site_is_refused_naming_the_field(
    api: Api, body: dict[str, Any], field: str
) -> None:
    response = await put_site(api, "DC-EAST", body)

    assert response.status_code == 422, response.text
    assert response.json()["code"] == "validation_error"
    assert field in [e["field"] for e in response.json()["errors"]]
    listed = (await api.client.get("/v1/sites", headers=READER)).json()
    assert listed["sites"]["DC-EAST"]["priority"] == EAST["priority"]  # nothing changed
    assert listed["sites"]["DC-EAST"]["changed_by"] is None


async def test_only_an_admin_changes_a_site_and_a_bad_site_code_is_refused(api: Api) -> None:
    assert (await put_site(api, "DC-EAST", {}, headers=READER)).status_code == 403
    assert (await api.client.put("/v1/sites/DC-EAST", json={})).status_code == 401
    bad = await put_site(api, "-DC", {})
    assert bad.status_code == 422
    assert bad.json()["errors"][0]["field"] == "path.site"


async def test_the_site_book_lives_in_one_slot_beside_its_version(api: Api) -> None:
    # a change and its version bump are one MULTI: on a Cluster both keys need one slot
    def tag(key: str) -> str:
        return key[key.index("{") + 1 : key.index("}")]

    assert tag(keys.SITE_ATTRIBUTES) == tag(keys.SITE_ATTRIBUTES_VERSION)
    assert await api.redis.hget(keys.SITE_ATTRIBUTES, "DC-EAST") is not None


async def test_sites_come_back_after_the_store_lost_them(api: Api) -> None:
    await api.redis.flushall()

    await api.state.refresh_site_book()

    assert api.state.site_book.of("DC-EAST").priority == 10


# -- the file ----------------------------------------------------------------------------------


def test_a_sites_file_may_be_toml(tmp_path: Path) -> None:
    path = tmp_path / "sites.toml"
    path.write_text(
        '[sites.DC-EAST]\npriority = 10\ncutoff = "15:00"\nclosed_weekdays = [7]\n'
        "[sites.DC-EAST.transit_days]\nUS-EAST = 1\n"
    )
    settings = Settings(_env_file=None, sites_file=path)  # type: ignore[call-arg]

    east = settings.load_sites()["DC-EAST"]

    assert (east.priority, east.transit_to("US-EAST"), east.transit_to("US-WEST")) == (10, 1, None)


@pytest.mark.parametrize(
    ("raw", "complaint"),
    [
        ({"DC-EAST": {"cutoff": "24:00"}}, "site DC-EAST: cutoff: Value error"),
        ({"DC-EAST": {"closed_weekdays": [0]}}, "site DC-EAST: closed_weekdays.0"),
        ({"DC-EAST": {"handling": 1}}, "site DC-EAST: handling: Extra inputs"),
        ({"DC EAST": {}}, "not a site code"),
        ({"DC-EAST": 5}, "site DC-EAST: entry"),
    ],
)
def test_a_bad_sites_file_names_the_site_and_the_field(raw: dict[str, Any], complaint: str) -> None:
    with pytest.raises(ValueError, match=complaint):
        sites_from_mapping(raw)


def test_the_demo_sites_file_describes_every_demo_site() -> None:
    root = Path(__file__).resolve().parents[2]
    settings = Settings(
        _env_file=None,  # type: ignore[call-arg]
        sites_file=root / "examples" / "sites.json",
        channels_file=root / "examples" / "channels.json",
    )

    sites = settings.load_sites()

    named = {s for policy in settings.load_channel_policies().values() for s in policy.sites or ()}
    assert named | {"DC-EAST", "DC-WEST", "STORE-001", "STORE-002"} <= set(sites)
    assert all(isinstance(a, SiteAttributes) for a in sites.values())
    assert any(a.closed_weekdays for a in sites.values())
    assert {"US-EAST", "US-WEST"} <= {zone for a in sites.values() for zone in a.transit_days}
