"""Reservations over real HTTP: `atp api` processes on a real Redis, real races, real expiry.

The API processes get an unreachable Kafka on purpose: their outbox relays then leave
the outbox alone, so the tests can count the events each change wrote.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import signal
import sys
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from atp_service.domain import Bucket, InventoryDelta, ItemSite, Source
from atp_service.embedded import EmbeddedStack, ManagedProcess, free_port
from atp_service.store import KeySpace, PolicyBook, RedisStore, connect
from atp_service.store.redis_store import outbox_records
from atp_service.store.reservation_keys import reservation_keys
from atp_service.store.reservations import ReservationStore
from tests.random_refs import random_event_id, random_site, random_sku

pytestmark = pytest.mark.integration

OMS_KEY = "test-oms-http-key"
OTHER_OMS_KEY = "test-marketplace-connector-http-key"
READER_KEY = "test-reader-http-key"
ADMIN_KEY = "test-admin-http-key"
API_KEYS = [
    {"name": "ops", "key": ADMIN_KEY, "scopes": ["admin"]},
    {"name": "oms", "key": OMS_KEY, "scopes": ["reservations:write", "availability:read"]},
    {"name": "connector", "key": OTHER_OMS_KEY, "scopes": ["reservations:write"]},
    {"name": "storefront", "key": READER_KEY, "scopes": ["availability:read"]},
]
OMS = {"Authorization": f"Bearer {OMS_KEY}"}
OTHER_OMS = {"Authorization": f"Bearer {OTHER_OMS_KEY}"}
ADMIN = {"Authorization": f"Bearer {ADMIN_KEY}"}
NOW = "2026-11-23T05:00:00Z"


def api_process(redis_url: str, workdir: Path, **env: str) -> ManagedProcess:
    """`atp api` on a free port (started by the caller)."""
    port = free_port()
    workdir.mkdir(parents=True, exist_ok=True)
    argv = [
        sys.executable, "-c", "import sys; from atp_service.cli import main; sys.exit(main())",
        "api", "--host", "127.0.0.1", "--port", str(port),
    ]  # fmt: skip
    return ManagedProcess(
        f"api-{port}",
        argv,
        port,
        workdir / f"api-{port}.log",
        env={
            "ATP_REDIS_URL": redis_url,
            "ATP_KAFKA_BROKERS": f"127.0.0.1:{free_port()}",  # nobody listens: no relay
            "ATP_API_KEYS": json.dumps(API_KEYS),
            "ATP_REDIS_MAX_CONNECTIONS": "128",
            "ATP_REDIS_TIMEOUT_SECONDS": "2",
            **env,
        },
    )


def base_url(proc: ManagedProcess) -> str:
    return f"http://127.0.0.1:{proc.port}"


@pytest.fixture(scope="module")
def api(stack: EmbeddedStack, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ManagedProcess]:
    proc = api_process(stack.redis_url, tmp_path_factory.mktemp("api"))
    proc.start(timeout=30)
    yield proc
    proc.stop()


@pytest.fixture
async def client(api: ManagedProcess) -> AsyncIterator[httpx.AsyncClient]:
    limits = httpx.Limits(max_connections=250, max_keepalive_connections=250)
    async with httpx.AsyncClient(base_url=base_url(api), limits=limits, timeout=30) as c:
        yield c


async def receive(store: RedisStore, sku: str, site: str, qty: int) -> None:
    await store.fold(
        InventoryDelta(random_event_id(), Source.WMS, sku, site, Bucket.ON_HAND, qty, NOW),
        PolicyBook.of({}),
    )


async def reserved(store: RedisStore, sku: str, site: str) -> int:
    [pos] = await store.read_positions([ItemSite(sku, site)])
    return pos.reserved


def body(*lines: tuple[str, str, int], **extra: Any) -> dict[str, Any]:
    return {
        "channel": "web",
        "order_ref": "ord-1",
        "lines": [{"sku": s, "site": t, "qty": q} for s, t, q in lines],
        **extra,
    }


async def reserve(
    client: httpx.AsyncClient, payload: dict[str, Any], key: str | None = None, **headers: str
) -> httpx.Response:
    return await client.post(
        "/v1/reservations",
        json=payload,
        headers={**OMS, "Idempotency-Key": key or uuid.uuid4().hex, **headers},
    )


async def outbox_events(store: RedisStore, stream: str, key: str) -> list[dict[str, Any]]:
    entries = await store.redis.xrange(stream)
    return [json.loads(v) for _, f in entries for k, v in outbox_records(f) if k == key]


# -- races -----------------------------------------------------------------------------------


async def test_200_concurrent_requests_for_25_units_hold_exactly_25(
    client: httpx.AsyncClient, store: RedisStore
) -> None:
    sku, site = random_sku("hot"), random_site()
    await receive(store, sku, site, 25)

    responses = await asyncio.gather(*(reserve(client, body((sku, site, 1))) for _ in range(200)))

    codes = Counter(r.status_code for r in responses)
    held = sum(r.json()["lines"][0]["reserved"] for r in responses if r.status_code == 201)
    in_redis = await reserved(store, sku, site)
    print(f"\nrace: 200 requests x 1 unit, 25 on hand -> {dict(codes)}, held {held}, rs {in_redis}")
    assert codes == {201: 25, 409: 175}
    assert held == in_redis == 25
    assert {r.json()["code"] for r in responses if r.status_code == 409} == {"insufficient_stock"}


async def promises_inbound(client: httpx.AsyncClient) -> str:
    """A channel of its own that promises every inbound unit, whatever its ETA."""
    channel = f"inbound-{uuid.uuid4().hex[:8]}"
    put = await client.put(
        f"/v1/policies/channels/{channel}", json={"include_in_transit": True}, headers=ADMIN
    )
    assert put.status_code == 200, put.text
    return channel


async def ship(store: RedisStore, sku: str, site: str, bucket: Bucket, qty: int) -> None:
    source = Source.ERP if bucket is Bucket.IN_TRANSIT else Source.WMS
    await store.fold(
        InventoryDelta(random_event_id(), source, sku, site, bucket, qty, NOW), PolicyBook.of({})
    )


async def test_200_concurrent_requests_for_25_inbound_units_hold_exactly_25(
    client: httpx.AsyncClient, store: RedisStore
) -> None:
    # Issue 14: with nothing on hand, every reservation of inbound units answered 201.
    channel = await promises_inbound(client)
    sku, site = random_sku("inbound"), random_site()
    await ship(store, sku, site, Bucket.IN_TRANSIT, 25)

    responses = await asyncio.gather(
        *(reserve(client, body((sku, site, 1), channel=channel)) for _ in range(200))
    )

    codes = Counter(r.status_code for r in responses)
    assert codes == {201: 25, 409: 175}, codes
    assert await reserved(store, sku, site) == 25
    left = await client.get(f"/v1/availability/{sku}", params={"channel": channel}, headers=OMS)
    assert left.json()["atp"] == 0


async def test_units_a_site_owes_are_not_reserved_out_of_its_inbound(
    client: httpx.AsyncClient, store: RedisStore
) -> None:
    # A pick reported before its receipt: 4 allocated, 0 on hand; 10 inbound leave 6.
    channel = await promises_inbound(client)
    sku, site = random_sku("owed"), random_site()
    await ship(store, sku, site, Bucket.ALLOCATED, 4)
    await ship(store, sku, site, Bucket.IN_TRANSIT, 10)

    too_many = await reserve(client, body((sku, site, 7), channel=channel))
    enough = await reserve(client, body((sku, site, 6), channel=channel))
    one_more = await reserve(client, body((sku, site, 1), channel=channel))

    assert too_many.status_code == 409
    assert too_many.json()["lines"] == [{"sku": sku, "site": site, "qty": 7, "atp": 6}]
    assert (enough.status_code, one_more.status_code) == (201, 409)


async def test_mixed_concurrent_multi_line_requests_never_oversell(
    client: httpx.AsyncClient, store: RedisStore
) -> None:
    site, a, b = random_site(), random_sku("hot-a"), random_sku("hot-b")
    await receive(store, a, site, 25)
    await receive(store, b, site, 25)
    rng = random.Random(7)
    payloads = [
        body(
            (a, site, rng.randint(1, 3)),
            (b, site, rng.randint(1, 3)),
            mode=rng.choice(["all_or_nothing", "partial"]),
        )
        for _ in range(200)
    ]

    responses = await asyncio.gather(*(reserve(client, p) for p in payloads))

    granted = {a: 0, b: 0}
    for payload, response in zip(payloads, responses, strict=True):
        assert response.status_code in (201, 409), response.text
        if response.status_code != 201:
            assert payload["mode"] == "all_or_nothing"
            continue
        for line in response.json()["lines"]:
            granted[line["sku"]] += line["reserved"]
            assert 0 <= line["reserved"] <= line["qty"]
            if payload["mode"] == "all_or_nothing":
                assert line["reserved"] == line["qty"]
    in_redis = {s: await reserved(store, s, site) for s in (a, b)}
    print(f"\nmixed race: granted {granted}, rs {in_redis} (25 on hand each)")
    assert granted == in_redis
    assert all(units <= 25 for units in granted.values())


# -- the HTTP contract -------------------------------------------------------------------------


async def test_a_reservation_is_created_read_confirmed_and_consumed(
    client: httpx.AsyncClient, store: RedisStore
) -> None:
    sku, site = random_sku(), random_site()
    await receive(store, sku, site, 10)

    created = await reserve(
        client, body((sku, site, 2), ttl_seconds=60), "k1", **{"X-Correlation-ID": "ord-88121"}
    )

    assert created.status_code == 201, created.text
    got = created.json()
    rid = got["reservation_id"]
    assert created.headers["location"] == f"/v1/reservations/{rid}"
    assert got["status"] == "held" and got["mode"] == "all_or_nothing"
    assert got["lines"] == [{"sku": sku, "site": site, "qty": 2, "reserved": 2, "allocated": 0}]
    assert got["expires_at"].endswith("Z") and got["order_ref"] == "ord-1"
    [held] = await outbox_events(store, reservation_keys(store.keys, rid).outbox, rid)
    assert held["correlation_id"] == "ord-88121"

    read = await client.get(f"/v1/reservations/{rid}", headers=OMS)
    assert read.json() == got
    confirmed = await client.post(f"/v1/reservations/{rid}/confirm", headers=OMS)
    assert confirmed.status_code == 200 and confirmed.json()["status"] == "confirmed"
    assert confirmed.json()["expires_at"] is None

    await store.fold_many(
        [
            InventoryDelta(
                random_event_id(), Source.WMS, sku, site, Bucket.ALLOCATED, 2, NOW,
                reservation_id=rid,
            )
        ],
        PolicyBook.of({}),
    )  # fmt: skip

    final = (await client.get(f"/v1/reservations/{rid}", headers=OMS)).json()
    assert final["status"] == "consumed"
    assert final["lines"][0]["allocated"] == 2
    assert await reserved(store, sku, site) == 0


async def test_a_replay_answers_as_the_first_time_and_another_body_conflicts(
    client: httpx.AsyncClient, store: RedisStore
) -> None:
    sku, site = random_sku(), random_site()
    await receive(store, sku, site, 10)
    key = uuid.uuid4().hex

    first = await reserve(client, body((sku, site, 2)), key)
    again = await reserve(client, body((sku, site, 2), mode="all_or_nothing", ttl_seconds=900), key)
    other = await reserve(client, body((sku, site, 3)), key)
    refused = await reserve(client, body((sku, site, 50)), "short-" + key)
    refused_again = await reserve(client, body((sku, site, 50)), "short-" + key)

    assert (first.status_code, again.status_code) == (201, 201)
    assert again.json() == first.json()
    assert again.headers["idempotent-replayed"] == "true"
    assert other.status_code == 409 and other.json()["code"] == "idempotency_conflict"
    assert refused.status_code == refused_again.status_code == 409
    assert refused.json() == refused_again.json()
    assert refused.json()["lines"] == [{"sku": sku, "site": site, "qty": 50, "atp": 8}]
    assert await reserved(store, sku, site) == 2


@pytest.mark.parametrize(
    ("headers", "payload", "status", "field"),
    [
        ({}, "ok", 422, "header.Idempotency-Key"),
        ({"Idempotency-Key": "x" * 256}, "ok", 422, "header.Idempotency-Key"),
        ({"Idempotency-Key": "k"}, "duplicate", 422, "body.lines.1"),
        ({"Idempotency-Key": "k"}, "ttl0", 422, "body.ttl_seconds"),
        ({"Idempotency-Key": "k"}, "ttl_big", 422, "body.ttl_seconds"),
        ({"Idempotency-Key": "k"}, "mode", 422, "body.mode"),
        ({"Idempotency-Key": "k"}, "no_lines", 422, "body.lines"),
        ({"Idempotency-Key": "k"}, "qty0", 422, "body.lines.0.qty"),
    ],
)
async def test_bad_requests_are_422_naming_the_field(
    client: httpx.AsyncClient, headers: dict[str, str], payload: str, status: int, field: str
) -> None:
    good = body(("SKU-1", "DC-1", 1))
    payloads = {
        "ok": good,
        "duplicate": body(("SKU-1", "DC-1", 1), ("SKU-1", "DC-1", 2)),
        "ttl0": {**good, "ttl_seconds": 0},
        "ttl_big": {**good, "ttl_seconds": 86_401},
        "mode": {**good, "mode": "some"},
        "no_lines": {**good, "lines": []},
        "qty0": body(("SKU-1", "DC-1", 0)),
    }

    response = await client.post(
        "/v1/reservations", json=payloads[payload], headers={**OMS, **headers}
    )

    assert response.status_code == status
    assert response.headers["content-type"].startswith("application/problem+json")
    assert field in [e["field"] for e in response.json()["errors"]]


async def test_reservations_need_the_reservations_scope(client: httpx.AsyncClient) -> None:
    payload = body(("SKU-1", "DC-1", 1))
    anonymous = await client.post(
        "/v1/reservations", json=payload, headers={"Idempotency-Key": "k"}
    )
    reader = await client.post(
        "/v1/reservations",
        json=payload,
        headers={"Authorization": f"Bearer {READER_KEY}", "Idempotency-Key": "k"},
    )
    assert (anonymous.status_code, reader.status_code) == (401, 403)


async def test_release_is_idempotent_and_then_confirm_is_an_invalid_transition(
    client: httpx.AsyncClient, store: RedisStore
) -> None:
    sku, site = random_sku(), random_site()
    await receive(store, sku, site, 10)
    rid = (await reserve(client, body((sku, site, 4)))).json()["reservation_id"]

    first = await client.post(f"/v1/reservations/{rid}/release", headers=OMS)
    second = await client.post(f"/v1/reservations/{rid}/release", headers=OMS)
    confirm = await client.post(f"/v1/reservations/{rid}/confirm", headers=OMS)

    assert (first.status_code, second.status_code) == (200, 200)
    assert second.json()["status"] == "released"
    assert confirm.status_code == 409
    problem = confirm.json()
    assert (problem["code"], problem["status"], problem["reservation_status"]) == (
        "invalid_transition",
        409,
        "released",
    )
    assert await reserved(store, sku, site) == 0


@pytest.mark.parametrize("path", ["", "/confirm", "/release"])
async def test_unknown_reservations_are_404(client: httpx.AsyncClient, path: str) -> None:
    for rid in (f"res_{uuid.uuid4().hex}", "not-an-id"):
        call = client.get if path == "" else client.post
        response = await call(f"/v1/reservations/{rid}{path}", headers=OMS)
        assert response.status_code == 404
        assert response.json()["code"] == "not_found"


# -- ownership (OWASP API1) ------------------------------------------------------------------

ROUTES = [("GET", ""), ("POST", "/confirm"), ("POST", "/release")]


async def call_route(
    client: httpx.AsyncClient, method: str, rid: str, path: str, headers: dict[str, str]
) -> httpx.Response:
    return await client.request(method, f"/v1/reservations/{rid}{path}", headers=headers)


def as_unknown(response: httpx.Response, rid: str) -> tuple[int, str, str]:
    """Status, content type and body, with the id asked for written out of the body."""
    text = response.text.replace(rid, "<id>")
    return response.status_code, response.headers["content-type"], text


async def test_two_oms_keys_each_see_and_end_only_their_own_reservations(
    client: httpx.AsyncClient, store: RedisStore
) -> None:
    sku, site = random_sku("owned"), random_site()
    await receive(store, sku, site, 10)
    mine = (await reserve(client, body((sku, site, 3)))).json()
    theirs = await reserve(client, body((sku, site, 2)), Authorization=OTHER_OMS["Authorization"])
    assert theirs.status_code == 201, theirs.text
    rid_mine, rid_theirs = mine["reservation_id"], theirs.json()["reservation_id"]
    unknown = f"res_{uuid.uuid4().hex}"

    for method, path in ROUTES:
        for rid, caller in ((rid_mine, OTHER_OMS), (rid_theirs, OMS)):
            foreign = await call_route(client, method, rid, path, caller)
            missing = await call_route(client, method, unknown, path, caller)
            assert foreign.status_code == 404, foreign.text
            assert as_unknown(foreign, rid) == as_unknown(missing, unknown)

    # Nothing the other key tried changed anything: both still held, every unit still held.
    own = await client.get(f"/v1/reservations/{rid_mine}", headers=OMS)
    other = await client.get(f"/v1/reservations/{rid_theirs}", headers=OTHER_OMS)
    assert own.json() == {**mine, "owner": "oms"}
    assert (other.json()["status"], other.json()["owner"]) == ("held", "connector")
    assert await reserved(store, sku, site) == 5
    # And each ends its own.
    confirmed = await client.post(f"/v1/reservations/{rid_mine}/confirm", headers=OMS)
    released = await client.post(f"/v1/reservations/{rid_theirs}/release", headers=OTHER_OMS)
    assert (confirmed.json()["status"], released.json()["status"]) == ("confirmed", "released")
    assert await reserved(store, sku, site) == 3


async def test_admin_reads_confirms_and_releases_any_reservation_which_keeps_its_owner(
    client: httpx.AsyncClient, store: RedisStore
) -> None:
    sku, site = random_sku("admin"), random_site()
    await receive(store, sku, site, 10)
    kept = (await reserve(client, body((sku, site, 2)))).json()["reservation_id"]
    ended = (
        await reserve(client, body((sku, site, 3)), Authorization=OTHER_OMS["Authorization"])
    ).json()["reservation_id"]

    read = await client.get(f"/v1/reservations/{ended}", headers=ADMIN)
    confirmed = await client.post(f"/v1/reservations/{kept}/confirm", headers=ADMIN)
    released = await client.post(f"/v1/reservations/{ended}/release", headers=ADMIN)

    assert [r.status_code for r in (read, confirmed, released)] == [200, 200, 200]
    assert (confirmed.json()["owner"], released.json()["owner"]) == ("oms", "connector")
    assert await reserved(store, sku, site) == 2
    events = await outbox_events(store, reservation_keys(store.keys, ended).outbox, ended)
    assert [(e["type"], e["owner"]) for e in events] == [
        ("reservation.held", "connector"),
        ("reservation.released", "connector"),
    ]
    # The owner still ends what admin confirmed.
    assert (await client.post(f"/v1/reservations/{kept}/release", headers=OMS)).status_code == 200


async def test_a_reservation_and_its_events_name_the_key_that_made_it(
    client: httpx.AsyncClient, store: RedisStore
) -> None:
    sku, site = random_sku("named"), random_site()
    await receive(store, sku, site, 10)

    created = await reserve(client, body((sku, site, 1)), Authorization=OTHER_OMS["Authorization"])
    rid = created.json()["reservation_id"]
    await client.post(f"/v1/reservations/{rid}/confirm", headers=OTHER_OMS)

    assert created.json()["owner"] == "connector"
    events = await outbox_events(store, reservation_keys(store.keys, rid).outbox, rid)
    assert [(e["type"], e["owner"]) for e in events] == [
        ("reservation.held", "connector"),
        ("reservation.confirmed", "connector"),
    ]


async def test_one_idempotency_key_from_two_api_keys_makes_two_reservations(
    client: httpx.AsyncClient, store: RedisStore
) -> None:
    sku, site = random_sku("idem"), random_site()
    await receive(store, sku, site, 10)
    key = f"shared-{uuid.uuid4().hex}"

    first = await reserve(client, body((sku, site, 2)), key)
    second = await reserve(
        client, body((sku, site, 2)), key, Authorization=OTHER_OMS["Authorization"]
    )
    replay = await reserve(client, body((sku, site, 2)), key)

    assert (first.status_code, second.status_code, replay.status_code) == (201, 201, 201)
    assert first.json()["reservation_id"] != second.json()["reservation_id"]
    assert replay.json() == first.json() and "idempotent-replayed" not in second.headers
    assert await reserved(store, sku, site) == 4


# -- expiry across processes -------------------------------------------------------------------


async def _expiry_run(redis_url: str, workdir: Path, *, kill_one: bool) -> None:
    procs = [
        api_process(redis_url, workdir / str(i), ATP_EXPIRY_SWEEP_INTERVAL_SECONDS="0.05")
        for i in range(2)
    ]
    for proc in procs:
        proc.start(timeout=30)
    redis = connect(redis_url, timeout=2.0, max_connections=8)
    store = RedisStore(redis, KeySpace(16), dedup_window_seconds=86_400)
    try:
        site = random_site()
        skus = [random_sku() for _ in range(10)]
        for sku in skus:
            await receive(store, sku, site, 100)
        clients = [httpx.AsyncClient(base_url=base_url(p), timeout=30) for p in procs]
        # ten waves 0.1 s apart, so the reservations fall due over a second while both
        # processes sweep every 0.05 s and compete for them
        rids: list[str] = []
        for wave in range(10):
            payloads = [
                body((skus[i], site, 1), (skus[(i + 3) % 10], site, 2), ttl_seconds=1)
                for i in range(6)
            ]
            live = [c for c, proc in zip(clients, procs, strict=True) if proc.running]
            responses = await asyncio.gather(
                *(reserve(live[i % len(live)], p) for i, p in enumerate(payloads))
            )
            assert [r.status_code for r in responses] == [201] * 6
            rids += [r.json()["reservation_id"] for r in responses]
            if kill_one and wave == 5:
                # the first reservations are falling due: die in the middle of the sweeps
                await asyncio.sleep(0.5)
                procs[0].signal(signal.SIGKILL)
            await asyncio.sleep(0.1)
        reservations = ReservationStore(store, idempotency_ttl_seconds=86_400)
        deadline = time.monotonic() + 20  # liveness bound only; the lag is printed below
        while time.monotonic() < deadline:
            statuses = {(await reservations.get(rid, caller=None)).status.value for rid in rids}
            if statuses == {"expired"}:
                break
            await asyncio.sleep(0.05)
        ended = [await reservations.get(rid, caller=None) for rid in rids]
        assert {r.status.value for r in ended} == {"expired"}
        lag = max(r.updated_ms - (r.created_ms + 1000) for r in ended)
        assert [await reserved(store, s, site) for s in skus] == [0] * 10
        expired_events: Counter[str] = Counter()
        for stream in store.keys.outboxes:
            for _, value in (
                record for _, f in await redis.xrange(stream) for record in outbox_records(f)
            ):
                event = json.loads(value)
                if event["type"] == "reservation.expired" and event["reservation_id"] in rids:
                    expired_events[event["reservation_id"]] += 1
        assert expired_events == dict.fromkeys(rids, 1)
        by_process = []
        for proc, c in zip(procs, clients, strict=True):
            if proc.running:
                text = (await c.get("/metrics")).text
                by_process.append(_expired_count(text))
            await c.aclose()
        print(
            f"\nexpiry: 60 reservations over 2 API processes"
            f"{' (one killed)' if kill_one else ''}: expired once each; "
            f"expired by live processes {by_process}; worst lag after TTL {lag} ms"
        )
        if not kill_one:
            assert sum(by_process) == 60
    finally:
        await redis.aclose()
        for proc in procs:
            proc.stop()


def _expired_count(metrics_text: str) -> int:
    for line in metrics_text.splitlines():
        if line.startswith('atp_reservations_total{status="expired"}'):
            return int(float(line.split()[-1]))
    return 0


async def test_two_api_processes_expire_every_reservation_exactly_once(
    own_redis: ManagedProcess, tmp_path: Path
) -> None:
    await _expiry_run(f"redis://127.0.0.1:{own_redis.port}/0", tmp_path, kill_one=False)


@pytest.mark.skipif(os.name != "posix", reason="SIGKILL")
async def test_expiry_survives_an_api_process_killed_mid_sweep(
    own_redis: ManagedProcess, tmp_path: Path
) -> None:
    await _expiry_run(f"redis://127.0.0.1:{own_redis.port}/0", tmp_path, kill_one=True)
