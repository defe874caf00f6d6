"""The Lua ATP arithmetic (store/lua/_lib.lua) agrees with the domain's, on a real redis-server.

Redis runs Lua 5.1 with double-precision numbers; the domain uses Python integers. Every
example seeds a position, folds a one-unit receipt through the production fold script,
and compares the availability.changed it publishes with what the domain computes.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta

import orjson
import pytest
import redis
import redis.asyncio as aioredis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from atp_service.domain import (
    Bucket,
    ChannelPolicy,
    InventoryDelta,
    ItemSitePosition,
    Source,
    atp_for_site,
)
from atp_service.embedded import EmbeddedStack
from atp_service.store import KeySpace, PolicyBook, RedisStore
from atp_service.store.redis_store import FOLD_LIBRARIES, _load_lua, epoch_day, outbox_records
from tests.random_refs import random_event_id, random_sku

pytestmark = pytest.mark.integration

KEYS = KeySpace(16)
#: Builds the fold script's keys and arguments as the worker does (it never connects).
KEY_BUILDER = RedisStore(aioredis.Redis(), KEYS, dedup_window_seconds=86_400)
QTY = st.integers(min_value=0, max_value=10**9)


@pytest.fixture(scope="module")
def sync_redis(stack: EmbeddedStack) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(stack.redis_url, decode_responses=True)
    yield client
    client.close()


def _today() -> date:
    return datetime.now(UTC).date()


def _seed(client: redis.Redis, key: str, pos: ItemSitePosition) -> None:
    fields: dict[str, int] = {
        "oh": pos.on_hand,
        "al": pos.allocated,
        "qu": pos.quarantined,
        "rs": pos.reserved,
    }
    for eta, qty in pos.in_transit_by_eta.items():
        fields["t:-" if eta is None else f"t:{epoch_day(eta)}"] = qty
    if pos.safety_stock_override is not None:
        fields["ss"] = pos.safety_stock_override
    client.hset(key, mapping=fields)


positions_st = st.builds(
    ItemSitePosition,
    on_hand=st.integers(min_value=-(10**9), max_value=10**9),
    allocated=QTY,
    quarantined=QTY,
    reserved=QTY,
    in_transit_by_eta=st.dictionaries(
        st.none() | st.integers(min_value=-10, max_value=40).map(lambda d: _today() + timedelta(d)),
        st.integers(min_value=-(10**6), max_value=10**9),
        max_size=3,
    ),
    safety_stock_override=st.none() | QTY,
)
policies_st = st.builds(
    ChannelPolicy,
    safety_stock=st.integers(min_value=0, max_value=10**6),
    share=st.integers(min_value=0, max_value=100),
    include_in_transit=st.booleans(),
    in_transit_horizon_days=st.integers(min_value=0, max_value=30),
)


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(pos=positions_st, policy=policies_st)
def test_lua_atp_equals_domain_atp(
    sync_redis: redis.Redis, pos: ItemSitePosition, policy: ChannelPolicy
) -> None:
    sku, site = random_sku("lua"), "DC-LUA"
    keys = KEYS.item_site(sku, site)
    _seed(sync_redis, keys.position, pos)
    fold = sync_redis.register_script(_load_lua("fold.lua", FOLD_LIBRARIES))
    book = PolicyBook.of({"c": policy})
    event = InventoryDelta(
        random_event_id(), Source.WMS, sku, site, Bucket.ON_HAND, 1, "2026-11-23T00:00:00Z"
    )
    [call] = KEY_BUILDER.prepare_fold([event]).calls
    status, version, emitted, _ = fold(
        keys=call.keys,
        args=[orjson.dumps(call.bodies), book.lua_json, "86400000", call.fingerprints, "0"],
    )
    today = _today()
    before = atp_for_site(pos, policy, today)
    after_pos = ItemSitePosition(
        on_hand=pos.on_hand + 1, allocated=pos.allocated, quarantined=pos.quarantined,
        reserved=pos.reserved, in_transit_by_eta=pos.in_transit_by_eta,
        safety_stock_override=pos.safety_stock_override,
    )  # fmt: skip
    after = atp_for_site(after_pos, policy, today)
    assert status == "folded"
    # The "*" channel (every channel without a policy) sells under the default policy.
    star_moved = int(
        atp_for_site(pos, ChannelPolicy(), today) != atp_for_site(after_pos, ChannelPolicy(), today)
    )
    if before == after:
        assert int(emitted) == star_moved
        return
    assert int(emitted) == 1 + star_moved
    wanted_id = f"chg:{event.event_id}:c"
    for _, fields in sync_redis.xrevrange(keys.outbox, count=50):
        for _, value in outbox_records(fields):
            body = json.loads(value)
            if body["event_id"] != wanted_id:
                continue
            assert (body["previous_atp"], body["atp"]) == (before, after)
            assert body["version"] == int(version)
            return
    raise AssertionError(f"no {wanted_id} in the outbox")
