"""Every script the service runs on a Redis Cluster touches one slot: each call's KEYS hashed
with the cluster client's own ``keyslot``, while one scenario runs every script there (a
real Cluster, which would refuse a cross-slot call with CROSSSLOT besides). A script added
to ``store/lua`` and never run here fails the test, so no cross-slot call slips back in."""

from __future__ import annotations

import asyncio
import hashlib
import uuid
from datetime import UTC, datetime
from importlib import resources
from typing import Any

import pytest
from redis.asyncio.cluster import RedisCluster

from atp_service.domain import Bucket, ChannelPolicy, InventoryDelta, ItemSite, Source
from atp_service.domain.reservations import (
    InsufficientStock,
    LineRequest,
    ReservationRequest,
    ReservationStatus,
)
from atp_service.domain.sites import SiteAttributes
from atp_service.store import PolicyBook, RedisStore
from atp_service.store.applied import NOTHING, AppliedOffsets, AppliedStore, Origin
from atp_service.store.keys import group_of, outbox_lease
from atp_service.store.rate_limit import SharedBuckets
from atp_service.store.redis_store import FOLD_LIBRARIES, _load_lua
from atp_service.store.reevaluation import Reevaluator
from atp_service.store.relay_leases import RelayLeases
from atp_service.store.replay_marks import ReplayMarks
from atp_service.store.reservation_keys import idempotency_key_and_group, reservation_keys
from atp_service.store.reservations import ReservationStore
from tests.random_refs import random_event_id, random_site, random_sku

pytestmark = pytest.mark.integration

#: Scripts a single Redis alone runs: many keys of many slots in one script, or keys only an
#: earlier single-Redis release wrote.
SINGLE_REDIS_ONLY = {"transition.lua", "migrate_config.lua", "migrate_reservation.lua"}
NOW = "2026-11-23T05:00:00Z"


@pytest.fixture
def redis_kind() -> str:
    return "cluster"


def service_scripts() -> set[str]:
    lua = resources.files("atp_service.store") / "lua"
    return {p.name for p in lua.iterdir() if p.name.endswith(".lua") and not p.name.startswith("_")}


def _sha(text: str) -> str:
    return hashlib.sha1(text.encode()).hexdigest()


def script_names_by_sha() -> dict[str, str]:
    """Each script of store/lua by the SHA1 of every text it is loaded as."""
    lua = resources.files("atp_service.store") / "lua"
    out: dict[str, str] = {}
    for name in service_scripts():
        for text in (
            (lua / name).read_text(),
            _load_lua(name),
            _load_lua(name, FOLD_LIBRARIES),
        ):
            out[_sha(text)] = name
    return out


def sku_in(site: str, group: int | None = None, not_in: set[int] | None = None) -> str:
    while True:
        sku = random_sku()
        g = group_of(sku, site, 16)
        if (group is None or g == group) and g not in (not_in or set()):
            return sku


async def test_every_script_the_service_runs_on_a_cluster_touches_one_slot(
    store: RedisStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    client = store.redis
    assert isinstance(client, RedisCluster)
    calls: list[tuple[str, list[Any]]] = []
    run_script, run_scripts = store.run_script, store.run_scripts

    async def recorded(script: Any, keys: Any, args: Any, **options: Any) -> Any:
        calls.append((store.script_names[script.sha], list(keys)))
        return await run_script(script, keys, args, **options)

    async def recorded_batch(batch: Any) -> list[Any]:
        calls.extend((store.script_names[s.sha], list(keys)) for s, keys, _ in batch)
        return await run_scripts(batch)

    monkeypatch.setattr(store, "run_script", recorded)
    monkeypatch.setattr(store, "run_scripts", recorded_batch)
    # Scripts some parts call on the cluster client itself (leases, re-evaluation, replays).
    names_by_sha = script_names_by_sha()
    execute = RedisCluster.execute_command

    async def recorded_command(self: RedisCluster, *args: Any, **options: Any) -> Any:
        if str(args[0]).upper() in ("EVALSHA", "EVAL") and self is client:
            sha = str(args[1]) if str(args[0]).upper() == "EVALSHA" else _sha(str(args[1]))
            calls.append((names_by_sha.get(sha, f"? {sha}"), list(args[3 : 3 + int(args[2])])))
        return await execute(self, *args, **options)

    monkeypatch.setattr(RedisCluster, "execute_command", recorded_command)
    reservations = ReservationStore(store, idempotency_ttl_seconds=86_400, step_deadline_ms=200)
    book = PolicyBook.of({"web": ChannelPolicy(safety_stock=1)})
    site = random_site()

    # An API key's shared rate limit (a bucket of its own slot).
    buckets = SharedBuckets(store, rate=100.0, burst=10)
    assert await buckets.take("oms") == 0.0
    # Configuration: seeding and replacing policies; a safety-stock override.
    await store.seed_channel_policies({"web": ChannelPolicy(safety_stock=1)})
    await store.put_channel_policy("web", ChannelPolicy(safety_stock=1), changed_by="ops")
    await store.seed_sites({"DC-SLOT": SiteAttributes(priority=5)})
    await store.put_site("DC-SLOT", SiteAttributes(priority=7), changed_by="ops")
    assert (await store.site_table()).book.sites["DC-SLOT"].priority == 7
    skus = [sku_in(site) for _ in range(6)]
    await store.set_safety_stock(
        ItemSite(skus[0], site),
        2,
        book,
        correlation_id="c",
        change_id=random_event_id(),
        changed_by="ops",
    )
    # A fold of many groups at once.
    await store.fold_many(
        [
            InventoryDelta(random_event_id(), Source.WMS, sku, site, Bucket.ON_HAND, 50, NOW)
            for sku in skus
        ],
        book,
    )

    async def place(lines: list[tuple[str, int]], key: str | None = None) -> str:
        key = key or uuid.uuid4().hex
        placed = await reservations.reserve(
            ReservationRequest("web", tuple(LineRequest(s, site, q) for s, q in lines)),
            reservation_id=reservations.new_reservation_id("oms", key),
            principal="oms", idempotency_key_value=key, correlation_id="c", book=book,
        )  # fmt: skip
        return placed.reservation.reservation_id

    # A reservation whose keys share a slot (one script), and ones across slots.
    key = uuid.uuid4().hex
    _, home = idempotency_key_and_group(store.keys, "oms", key)
    together = [sku_in(site, home), sku_in(site, home)]
    await store.fold_many(
        [
            InventoryDelta(random_event_id(), Source.WMS, sku, site, Bucket.ON_HAND, 9, NOW)
            for sku in together
        ],
        book,
    )
    await place([(together[0], 1), (together[1], 1)], key)
    a = skus[1]
    b = sku_in(site, not_in={group_of(a, site, 16)})
    await store.fold(
        InventoryDelta(random_event_id(), Source.WMS, b, site, Bucket.ON_HAND, 50, NOW), book
    )
    confirmed = await place([(a, 2), (b, 1)])
    await reservations.confirm(confirmed, caller="oms", correlation_id="c", book=book)
    released = await place([(a, 1), (b, 1)])
    await reservations.release(released, caller="oms", correlation_id="c", book=book)
    with pytest.raises(InsufficientStock):
        await place([(a, 1), (b, 999)])
    # Expiry, consumption by the WMS (the fold, then the sweeper tells the record).
    due = await place([(a, 1), (b, 1)])
    keys = reservation_keys(store.keys, due)
    await client.hset(keys.record, "ex", "1")
    await client.zadd(keys.expiry, {due: 1})
    await reservations.expire_due(book)
    for sku, qty in ((a, 2), (b, 1)):
        await store.fold(
            InventoryDelta(
                random_event_id(), Source.WMS, sku, site, Bucket.ALLOCATED, qty, NOW,
                reservation_id=confirmed,
            ),
            book,
        )  # fmt: skip
    await reservations.sweep(book)
    assert (await reservations.get(confirmed, caller=None)).status is ReservationStatus.CONSUMED

    # Recovery: a placing left half done (its decision never sent) is undone by the sweeper.
    async def dying(script: Any, keys_: Any, args: Any, **options: Any) -> Any:
        if store.script_names[script.sha] == "res_decide.lua":
            raise ConnectionError("the process died")
        return await recorded(script, keys_, args, **options)

    monkeypatch.setattr(store, "run_script", dying)
    with pytest.raises(ConnectionError):
        await place([(a, 1), (b, 1)])
    monkeypatch.setattr(store, "run_script", recorded)
    await asyncio.sleep(0.25)
    await reservations.sweep(book)

    # The dead-letter replay marks (`atp dlq replay`): scripts of one key, on the client.
    marks = ReplayMarks(client)
    where = f"0:{uuid.uuid4().int % 10**9}"
    assert await marks.claim(where, "digest", datetime.now(UTC))
    assert await marks.failed_again(where, datetime.now(UTC), "schema_violation", "again")
    # The re-evaluation of every position after the policy change above (its lease too).
    reevaluator = Reevaluator(store, holder=f"slot-{uuid.uuid4().hex[:6]}", rate=1e9, settle_ms=0)
    await reevaluator.tick()  # the book as it is
    await store.put_channel_policy("web", ChannelPolicy(safety_stock=3), changed_by="ops")
    for _ in range(200):
        await reevaluator.tick()
        if await reevaluator.idle():
            break
        await asyncio.sleep(0.01)
    await reevaluator.lease.release()

    # The fold's applied offsets (store/applied.py): a fold told where its events were read,
    # every group brought up to where the batch ended, and a check of what Redis holds.
    partition = f"t{uuid.uuid4().hex[:8]}:0"
    applied = AppliedOffsets(store.keys.groups)
    applied.reset(partition, [NOTHING] * store.keys.groups)
    await store.fold_many(
        [InventoryDelta(random_event_id(), Source.WMS, a, site, Bucket.ON_HAND, 1, NOW)],
        book,
        [Origin(partition, 0)],
        applied,
    )
    applied_store = AppliedStore(store)
    await applied_store.advance(applied, {partition: (3, "f00d")})
    await applied_store.check(applied)
    await applied_store.forget([partition])
    # The outbox streams' relay leases (store/relay_leases.py): taken, renewed, given up.
    for group in range(store.keys.groups):  # none left by a relay of another test
        await client.delete(outbox_lease(group))
    leases = RelayLeases(store, f"slot-{uuid.uuid4().hex[:6]}", lease_ms=1_000)
    assert await leases.share()
    await leases.renew()
    await leases.release()

    names = {name for name, _ in calls}
    assert names >= service_scripts() - SINGLE_REDIS_ONLY, (
        f"never run on the Cluster here: {sorted(service_scripts() - SINGLE_REDIS_ONLY - names)}"
    )
    assert not names & SINGLE_REDIS_ONLY
    for name, script_keys in calls:
        slots = {client.keyslot(key) for key in script_keys}
        assert len(slots) == 1, f"{name} crosses slots {sorted(slots)}: {script_keys}"
    assert not [d for d in await reservations.audit() if d.site == site]
