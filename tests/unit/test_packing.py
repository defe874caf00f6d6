"""Commands packed by hiredis are byte for byte what redis-py's own packer sends."""

from __future__ import annotations

from typing import Any

import pytest
import redis.asyncio as aioredis
from redis.asyncio.connection import Connection, UnixDomainSocketConnection
from redis.exceptions import DataError

from atp_service.store import _packing
from atp_service.store._packing import HiredisPacking, with_hiredis_packing
from atp_service.store.redis_store import connect

pytestmark = pytest.mark.skipif(_packing._pack is None, reason="hiredis without pack_command")


def _both() -> tuple[Connection, Connection]:
    plain = Connection()
    packing = type("Packing", (HiredisPacking, Connection), {})()
    return plain, packing


@pytest.mark.parametrize(
    "args",
    [
        ("GET", "k"),
        ("SET", "k", "välue", "PX", 1000),
        ("CONFIG GET", "maxmemory"),
        (b"CLIENT SETNAME", b"x"),
        ("EVALSHA", "ab" * 20, 2, "{3}:p:SKU-1@DC", "k2", b"\x00\xff raw", 1.5, -7, 2**70),
        ("HSET", "h", "f", memoryview(b"mv")),
        ("XADD", "s", "*", "b", "x" * 20_000),  # above redis-py's buffer cutoff
        ("PING",),
    ],
)
def test_the_same_bytes_as_redis_py(args: tuple[Any, ...]) -> None:
    plain, packing = _both()
    assert b"".join(packing.pack_command(*args)) == b"".join(
        bytes(chunk) for chunk in plain.pack_command(*args)
    )


def test_a_pipeline_packs_the_same() -> None:
    plain, packing = _both()
    commands = [("GET", "a"), ("EVALSHA", "f" * 40, 1, "k", "v"), ("PING",)]
    assert b"".join(packing.pack_commands(commands)) == b"".join(plain.pack_commands(commands))


@pytest.mark.parametrize("bad", [None, True, {"a": 1}, [1]])
def test_what_the_protocol_cannot_carry_is_a_data_error(bad: object) -> None:
    plain, packing = _both()
    with pytest.raises(DataError):
        plain.pack_command("SET", "k", bad)
    with pytest.raises(DataError, match="Invalid input of type"):
        packing.pack_command("SET", "k", bad)


def test_the_service_client_packs_with_hiredis_whatever_the_url() -> None:
    client = connect("redis://127.0.0.1:1/0", timeout=1, max_connections=2)
    assert issubclass(client.connection_pool.connection_class, HiredisPacking)
    assert issubclass(client.connection_pool.connection_class, Connection)
    pool = aioredis.ConnectionPool.from_url("unix:///tmp/none.sock")
    with_hiredis_packing(pool)
    with_hiredis_packing(pool)  # once is enough
    assert pool.connection_class.__mro__[1:3] == (HiredisPacking, UnixDomainSocketConnection)
