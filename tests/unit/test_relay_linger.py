"""The relay lingers after a round short of a full batch, not after a full one."""

from __future__ import annotations

import asyncio

import fakeredis

from atp_service.events import OutboxRelay
from atp_service.store import KeySpace, RedisStore
from tests.unit.test_duty import CountingPublisher


async def _rounds(sent_per_round: int, batch: int, linger_ms: int) -> int:
    store = RedisStore(
        fakeredis.FakeAsyncRedis(decode_responses=True), KeySpace(2), dedup_window_seconds=60
    )
    relay = OutboxRelay(
        store, CountingPublisher(), topic="t", consumer="w", batch=batch, linger_ms=linger_ms
    )
    rounds = 0

    async def relay_once() -> int:
        nonlocal rounds
        rounds += 1
        await asyncio.sleep(0)
        return sent_per_round

    relay.relay_once = relay_once  # type: ignore[method-assign]
    stop = asyncio.Event()
    running = asyncio.create_task(relay.run(stop))
    await asyncio.sleep(0.3)
    stop.set()
    await asyncio.wait_for(running, 5)
    return rounds


async def test_a_partial_round_waits_the_linger() -> None:
    assert await _rounds(sent_per_round=3, batch=100, linger_ms=1_000) == 1


async def test_a_full_round_goes_on_at_once() -> None:
    assert await _rounds(sent_per_round=100, batch=100, linger_ms=1_000) > 10


async def test_no_linger_goes_on_at_once() -> None:
    assert await _rounds(sent_per_round=3, batch=100, linger_ms=0) > 10


async def test_stopping_cuts_the_linger_short() -> None:
    started = asyncio.get_running_loop().time()
    await _rounds(sent_per_round=3, batch=100, linger_ms=60_000)
    assert asyncio.get_running_loop().time() - started < 10
