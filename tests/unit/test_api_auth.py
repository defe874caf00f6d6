"""Bearer API keys and scopes: 401 for a missing or unknown key, 403 for a missing scope."""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from atp_service.api.auth import KeyRing
from atp_service.config import ApiKeySpec
from tests.unit.api_harness import ADMIN, READER, Api, auth, make_settings, running_api

AVAILABILITY = "/v1/availability/SKU-1?channel=web"


@pytest.fixture
async def api(tmp_path: Path) -> AsyncIterator[Api]:
    async with running_api(make_settings()) as api:
        yield api


@pytest.mark.parametrize(
    "headers",
    [{}, {"Authorization": "Bearer"}, {"Authorization": "Basic dGVzdA=="}],
    ids=["no header", "no key", "other scheme"],
)
async def test_a_request_without_a_bearer_key_is_401_with_a_challenge(
    api: Api, headers: dict[str, str]
) -> None:
    response = await api.client.get(AVAILABILITY, headers=headers)

    assert response.status_code == 401
    assert response.headers["www-authenticate"].startswith("Bearer")
    assert response.headers["content-type"] == "application/problem+json"
    assert response.json()["code"] == "unauthorized"


async def test_an_unknown_key_is_401(api: Api) -> None:
    response = await api.client.get(AVAILABILITY, headers={"Authorization": "Bearer guess"})

    assert response.status_code == 401
    assert 'error="invalid_token"' in response.headers["www-authenticate"]


async def test_a_known_key_without_the_scope_is_403(api: Api) -> None:
    response = await api.client.put("/v1/policies/channels/web", json={}, headers=READER)

    assert response.status_code == 403
    body = response.json()
    assert body["code"] == "forbidden" and "admin" in body["detail"]


async def test_a_key_with_the_scope_is_let_in(api: Api) -> None:
    assert (await api.client.get(AVAILABILITY, headers=READER)).status_code == 200
    assert (await api.client.get(AVAILABILITY, headers=auth("oms"))).status_code == 200
    assert (await api.client.get("/v1/policies/channels", headers=ADMIN)).status_code == 200


async def test_the_scheme_name_is_case_insensitive(api: Api) -> None:
    headers = {"Authorization": READER["Authorization"].replace("Bearer", "bearer")}

    assert (await api.client.get(AVAILABILITY, headers=headers)).status_code == 200


async def test_a_caller_without_a_key_learns_nothing_from_validation(api: Api) -> None:
    response = await api.client.get("/v1/availability/-bad-sku")

    assert response.status_code == 401


async def test_operations_endpoints_need_no_key(api: Api) -> None:
    for path in ("/healthz", "/readyz", "/metrics"):
        assert (await api.client.get(path)).status_code == 200, path


def test_a_key_configured_by_its_digest_is_recognised() -> None:
    digest = hashlib.sha256(b"s3cret").hexdigest()
    ring = KeyRing([ApiKeySpec(name="oms", key_sha256=digest, scopes=["reservations:write"])])

    principal = ring.principal("s3cret")

    assert principal is not None and principal.name == "oms"
    assert principal.scopes == frozenset({"reservations:write"})
    assert ring.principal("s3cret ") is None and ring.principal("") is None


async def test_admin_grants_every_scope() -> None:
    ring = KeyRing([ApiKeySpec(name="ops", key="k", scopes=["admin"])])

    principal = ring.principal("k")

    assert principal is not None
    assert principal.scopes == {"admin", "availability:read", "reservations:write"}
    assert principal.reservation_caller is None  # acts on any reservation


def test_a_writer_acts_on_its_own_reservations_only() -> None:
    ring = KeyRing([ApiKeySpec(name="oms-eu", key="k", scopes=["reservations:write"])])

    principal = ring.principal("k")

    assert principal is not None and principal.reservation_caller == "oms-eu"


def test_a_key_needs_a_name() -> None:
    with pytest.raises(ValueError, match="name"):
        ApiKeySpec(name="", key="k", scopes=["admin"])
