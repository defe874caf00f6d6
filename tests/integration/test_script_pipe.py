"""Script calls pipelined on a connection of their own: each answer to its caller, in order,
through errors, lost scripts, broken connections, slow replies and callers that go away."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import fakeredis
import pytest
import redis.asyncio as aioredis
from redis.exceptions import DataError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from atp_service.embedded import ManagedProcess
from atp_service.store import _pipe, connect
from atp_service.store._pipe import ScriptPipe

pytestmark = pytest.mark.integration

ECHO_OR_FAIL = """
if ARGV[1] == 'fail' then return redis.error_reply('ERR asked to fail') end
return {KEYS[1], ARGV[1]}
"""
# Busy for ARGV[1] ms of Redis TIME (scripts cannot sleep).
SPIN = """
local t = redis.call('TIME')
local until_us = tonumber(t[1]) * 1000000 + tonumber(t[2]) + tonumber(ARGV[1]) * 1000
repeat t = redis.call('TIME') until tonumber(t[1]) * 1000000 + tonumber(t[2]) >= until_us
return 'done'
"""


@pytest.fixture
async def own_client(own_redis: ManagedProcess) -> AsyncIterator[aioredis.Redis]:
    client = connect(f"redis://127.0.0.1:{own_redis.port}/0", timeout=0.5, max_connections=8)
    yield client
    await client.aclose()


async def test_concurrent_calls_each_get_their_own_answer_and_errors_stay_theirs(
    redis_client: aioredis.Redis,
) -> None:
    script = redis_client.register_script(ECHO_OR_FAIL + "-- pipe")
    await script(keys=["k"], args=["load"])
    pipe = ScriptPipe(redis_client)

    answers = await asyncio.gather(
        *(pipe.call(script, [f"k{i}"], [str(i)]) for i in range(3 * _pipe.FLUSH_AT + 1)),
        pipe.call(script, ["k-bad"], ["fail"]),
        pipe.call(script, ["k-none"], [None]),  # cannot be sent: this caller's DataError
        pipe.call(script, ["k-last"], ["last"]),
        return_exceptions=True,
    )

    n = 3 * _pipe.FLUSH_AT + 1
    assert answers[:n] == [[f"k{i}", str(i)] for i in range(n)]
    assert isinstance(answers[n], ResponseError) and "asked to fail" in str(answers[n])
    assert isinstance(answers[n + 1], DataError)
    assert answers[n + 2] == ["k-last", "last"]
    # One connection of the pool, held by the pipe, whatever the number of calls.
    assert pipe._line is not None and pipe._line.usable()


async def test_calls_after_redis_lost_its_scripts_still_answer(
    redis_client: aioredis.Redis,
) -> None:
    script = redis_client.register_script(ECHO_OR_FAIL + "-- pipe flushed")
    pipe = ScriptPipe(redis_client)
    assert await pipe.call(script, ["k"], ["warm"]) == ["k", "warm"]
    await redis_client.script_flush()

    answers = await asyncio.gather(*(pipe.call(script, [f"k{i}"], [str(i)]) for i in range(5)))

    assert answers == [[f"k{i}", str(i)] for i in range(5)]


async def test_a_caller_that_goes_away_takes_no_other_callers_answer(
    own_client: aioredis.Redis,
) -> None:
    spin = own_client.register_script(SPIN)
    echo = own_client.register_script(ECHO_OR_FAIL)
    await echo(keys=["k"], args=["load"])
    await spin(keys=[], args=["0"])
    pipe = ScriptPipe(own_client)

    slow = asyncio.ensure_future(pipe.call(spin, [], ["150"]))
    behind = asyncio.ensure_future(pipe.call(echo, ["k-behind"], ["behind"]))
    await asyncio.sleep(0.05)  # both written; Redis is busy with the first
    slow.cancel()

    assert await behind == ["k-behind", "behind"]
    assert await pipe.call(echo, ["k-next"], ["next"]) == ["k-next", "next"]
    assert slow.cancelled()


async def test_a_connection_killed_while_idle_is_replaced_and_the_call_answered(
    own_client: aioredis.Redis,
) -> None:
    echo = own_client.register_script(ECHO_OR_FAIL)
    pipe = ScriptPipe(own_client)
    assert await pipe.call(echo, ["k"], ["1"]) == ["k", "1"]
    killed = await own_client.client_kill_filter(_type="normal", skipme=True)
    assert killed >= 1

    answers = await asyncio.gather(*(pipe.call(echo, [f"k{i}"], [str(i)]) for i in range(10)))

    assert answers == [[f"k{i}", str(i)] for i in range(10)]


async def test_a_reply_slower_than_the_timeout_fails_the_calls_waiting_then_it_recovers(
    own_client: aioredis.Redis,
) -> None:
    spin = own_client.register_script(SPIN)
    echo = own_client.register_script(ECHO_OR_FAIL)
    await spin(keys=[], args=["0"])
    await echo(keys=["k"], args=["load"])
    pipe = ScriptPipe(own_client)

    answers = await asyncio.gather(
        pipe.call(spin, [], ["900"]),  # the client's timeout is 0.5 s
        pipe.call(echo, ["k-behind"], ["behind"]),
        return_exceptions=True,
    )

    assert all(isinstance(a, RedisTimeoutError) for a in answers), answers
    await asyncio.sleep(0.6)  # Redis is done with the spin
    assert await pipe.call(echo, ["k-after"], ["after"]) == ["k-after", "after"]


async def test_calls_while_redis_is_down_fail_and_answer_once_it_is_back(
    own_redis: ManagedProcess, own_client: aioredis.Redis
) -> None:
    echo = own_client.register_script(ECHO_OR_FAIL)
    pipe = ScriptPipe(own_client)
    assert await pipe.call(echo, ["k"], ["1"]) == ["k", "1"]
    own_redis.stop()

    with pytest.raises((ConnectionError, OSError, aioredis.ConnectionError)):
        await pipe.call(echo, ["k"], ["down"])

    own_redis.start()
    assert await pipe.call(echo, ["k"], ["back"]) == ["k", "back"]


async def test_a_client_without_socket_connections_gets_the_batcher() -> None:
    client = fakeredis.FakeAsyncRedis(decode_responses=True)
    echo = client.register_script(ECHO_OR_FAIL)
    pipe = ScriptPipe(client)

    answers = await asyncio.gather(*(pipe.call(echo, [f"k{i}"], [str(i)]) for i in range(3)))

    assert answers == [[f"k{i}", str(i)] for i in range(3)]
    assert pipe._fallback is not None
    await client.aclose()
