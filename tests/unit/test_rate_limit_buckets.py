"""The shared token buckets (store/rate_limit.py) over one fake Redis: never more than the
burst, one script call per loop turn, and a busy key's tokens spent without asking."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

import fakeredis
from redis.exceptions import ConnectionError as RedisConnectionError

from atp_service.store import KeySpace, RedisStore
from atp_service.store.rate_limit import MAX_LEASE, SharedBuckets, lease

SLOW = 0.001  # a token every 1000 s: nothing refills while a test runs


class CountingStore(RedisStore):
    """A store that counts its script calls."""

    calls = 0

    async def run_script(
        self, script: Any, keys: Sequence[Any], args: Sequence[Any], **options: Any
    ) -> Any:
        self.calls += 1
        return await super().run_script(script, keys, args, **options)


def a_process(server: fakeredis.FakeServer) -> CountingStore:
    redis = fakeredis.FakeAsyncRedis(server=server, decode_responses=True)
    return CountingStore(redis, KeySpace(16), dedup_window_seconds=86_400)


async def test_two_processes_never_grant_a_key_more_than_its_burst() -> None:
    server = fakeredis.FakeServer()
    one = SharedBuckets(a_process(server), rate=SLOW, burst=10)
    two = SharedBuckets(a_process(server), rate=SLOW, burst=10)

    waits = await asyncio.gather(*(b.take("oms") for b in [one, two] * 15))

    assert sum(1 for w in waits if w == 0.0) == 10
    assert all(w > 100 for w in waits if w)  # the next token of a slow bucket is far off
    assert await one.take("connector") == 0.0  # another key, another bucket


async def test_the_requests_of_one_turn_ask_redis_in_one_call() -> None:
    store = a_process(fakeredis.FakeServer())
    buckets = SharedBuckets(store, rate=SLOW, burst=10)

    waits = await asyncio.gather(*(buckets.take("oms") for _ in range(16)))

    assert waits[:10] == [0.0] * 10 and all(w > 0 for w in waits[10:])  # in their order
    assert store.calls == 1


async def test_a_busy_key_spends_its_lease_here_without_asking_redis() -> None:
    store = a_process(fakeredis.FakeServer())
    buckets = SharedBuckets(store, rate=1000, burst=100)
    assert buckets.lease == 20

    first = await buckets.take("storefront")
    rest = [await buckets.take("storefront") for _ in range(19)]
    calls_for_twenty = store.calls
    await buckets.take("storefront")

    assert first == 0.0 and rest == [0.0] * 19
    assert (calls_for_twenty, store.calls) == (1, 2)


async def test_tokens_held_by_one_process_are_never_granted_by_another() -> None:
    server = fakeredis.FakeServer()
    one = SharedBuckets(a_process(server), rate=SLOW, burst=10)
    two = SharedBuckets(a_process(server), rate=SLOW, burst=10)
    one.lease = two.lease = 4

    waits = [await b.take("oms") for _ in range(10) for b in (one, two)]

    granted = sum(1 for w in waits if w == 0.0)
    assert 10 - 2 * 3 <= granted <= 10  # early refusals, at most a lease each, never late


def test_a_lease_is_one_token_unless_the_key_is_fast() -> None:
    assert lease(4, 10) == 1
    assert lease(49, 100) == 1
    assert lease(1000, 100) == 20
    assert lease(1000, 6) == 3  # never more than half the burst
    assert lease(1e9, 10**9) == MAX_LEASE


async def test_an_outage_fails_every_waiting_request_for_the_limiter_to_decide() -> None:
    server = fakeredis.FakeServer()
    buckets = SharedBuckets(a_process(server), rate=SLOW, burst=10)
    server.connected = False

    results = await asyncio.gather(*(buckets.take("oms") for _ in range(3)), return_exceptions=True)

    assert len(results) == 3 and all(isinstance(r, RedisConnectionError) for r in results)
    server.connected = True
    assert await buckets.take("oms") == 0.0  # nothing was held while it failed
