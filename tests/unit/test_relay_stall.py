"""A relay whose publish neither succeeds nor fails in time gives up on its producer."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import fakeredis
import pytest

from atp_service.events import OutboxRelay, PublishStalled
from atp_service.store import KeySpace, RedisStore
from tests.unit.test_duty import CountingPublisher


class StuckPublisher:
    """An aiokafka producer as seen after a broker restart: the send never completes."""

    async def publish(self, topic: str, messages: Sequence[tuple[str, str]]) -> None:
        await asyncio.Event().wait()


async def test_a_stuck_publish_raises_stalled_and_its_entries_go_out_on_a_new_producer() -> None:
    store = RedisStore(
        fakeredis.FakeAsyncRedis(decode_responses=True), KeySpace(1), dedup_window_seconds=60
    )
    await store.redis.xadd(store.keys.outboxes[0], {"k": "SKU-1@DC-1", "v": "{}"})
    stuck = OutboxRelay(store, StuckPublisher(), topic="t", consumer="w", publish_timeout_s=0.2)

    with pytest.raises(PublishStalled):
        await asyncio.wait_for(stuck.run(asyncio.Event()), 5)

    # The caller starts a new producer; the same consumer name finds its entry pending.
    working = CountingPublisher()
    again = OutboxRelay(store, working, topic="t", consumer="w")
    assert await again.relay_once() == 1
    assert working.published == 1
    assert await store.outbox_backlog() == 0
