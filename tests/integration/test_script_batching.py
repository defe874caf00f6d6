"""Script calls made together go to Redis as one pipeline, each answer to its caller."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
import redis.asyncio as aioredis
from redis.exceptions import ResponseError

from atp_service.store._batching import ScriptBatcher

pytestmark = pytest.mark.integration

ECHO_OR_FAIL = """
if ARGV[1] == 'fail' then return redis.error_reply('ERR asked to fail') end
return {KEYS[1], ARGV[1]}
"""


class CountingClient:
    """The real client, counting the pipelines it hands out."""

    def __init__(self, client: aioredis.Redis) -> None:
        self.client = client
        self.pipelines = 0

    def pipeline(self, **kw: Any) -> Any:
        self.pipelines += 1
        return self.client.pipeline(**kw)


async def test_concurrent_calls_share_a_pipeline_and_each_gets_its_own_answer(
    redis_client: aioredis.Redis,
) -> None:
    script = redis_client.register_script(ECHO_OR_FAIL)
    counting = CountingClient(redis_client)
    batcher = ScriptBatcher(counting)  # type: ignore[arg-type]

    answers = await asyncio.gather(
        *(batcher.call(script, [f"k{i}"], [str(i)]) for i in range(20)),
        batcher.call(script, ["k-bad"], ["fail"]),
        return_exceptions=True,
    )

    assert answers[:20] == [[f"k{i}", str(i)] for i in range(20)]
    assert isinstance(answers[20], ResponseError) and "asked to fail" in str(answers[20])
    assert counting.pipelines == 1


async def test_calls_after_redis_lost_its_scripts_still_answer(
    redis_client: aioredis.Redis,
) -> None:
    script = redis_client.register_script(ECHO_OR_FAIL + "-- flushed")
    batcher = ScriptBatcher(redis_client)
    await batcher.call(script, ["k"], ["warm"])
    await redis_client.script_flush()

    answers = await asyncio.gather(*(batcher.call(script, [f"k{i}"], [str(i)]) for i in range(5)))

    assert answers == [[f"k{i}", str(i)] for i in range(5)]


async def test_a_lone_call_goes_alone(redis_client: aioredis.Redis) -> None:
    script = redis_client.register_script(ECHO_OR_FAIL + "-- alone")
    counting = CountingClient(redis_client)
    batcher = ScriptBatcher(counting)  # type: ignore[arg-type]
    assert await batcher.call(script, ["k"], ["1"]) == ["k", "1"]
    assert counting.pipelines == 0
