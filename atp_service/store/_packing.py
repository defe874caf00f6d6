"""Commands packed into the Redis protocol by hiredis (C) rather than by redis-py (Python).

redis-py's synchronous client packs with ``hiredis.pack_command`` when hiredis has it
(``redis.connection.HiredisRespSerializer``); its asyncio connections (8.1) always pack in
Python, about a microsecond an argument. A fold call carries five keys an event (hundreds
of arguments), so that was a tenth of the worker's CPU, and a few per cent of every API
request that touches Redis. ``with_hiredis_packing`` gives a pool's connections the
synchronous client's packer, with redis-py's behaviour kept: the first argument split on
spaces (``"CONFIG GET"``), memoryviews sent as bytes, and a ``DataError`` for what the
protocol cannot carry (``None``, a bool, a dict...). tests/unit/test_packing.py compares the
two packers' bytes.

A ``RedisCluster`` builds its nodes' connections from one dict of keyword arguments, whose
``connection_class`` it fixes itself (no argument sets it): ``with_hiredis_packing_cluster``
replaces it there and on the seed nodes, before the client connects (redis-py 8.2's
``NodesManager.connection_kwargs`` and ``ClusterNode.connection_class``; the unit test
checks a cluster client's nodes get the class).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, cast

import hiredis
from redis.asyncio.cluster import RedisCluster
from redis.asyncio.connection import AbstractConnection, ConnectionPool
from redis.exceptions import DataError

_Packer = Callable[[tuple[Any, ...]], bytes]
_pack: _Packer | None = getattr(hiredis, "pack_command", None)


class HiredisPacking:
    """Mixin for a redis-py asyncio connection class: ``pack_command`` by hiredis."""

    def pack_command(self, *args: Any) -> list[bytes]:
        first = args[0]
        if isinstance(first, str):
            args = (*first.encode().split(), *args[1:])
        elif b" " in first:
            args = (*first.split(), *args[1:])
        pack = cast(_Packer, _pack)  # only mixed in when there (an alias: no typing per call)
        try:
            return [pack(args)]
        except TypeError:
            if any(isinstance(arg, memoryview | bytearray) for arg in args):
                as_bytes = (bytes(a) if isinstance(a, memoryview | bytearray) else a for a in args)
                return [pack(tuple(as_bytes))]
            bad = next((a for a in args if isinstance(a, bool)
                        or not isinstance(a, str | bytes | int | float)), None)  # fmt: skip
            raise DataError(
                f"Invalid input of type: '{type(bad).__name__}'. "
                "Convert to a bytes, string, int or float first."
            ) from None


_classes: dict[type[AbstractConnection], type[AbstractConnection]] = {}


def _packing_class(base: type[AbstractConnection]) -> type[AbstractConnection]:
    if issubclass(base, HiredisPacking):
        return base
    cls = _classes.get(base)
    if cls is None:
        cls = _classes[base] = type(f"Hiredis{base.__name__}", (HiredisPacking, base), {})
    return cls


def with_hiredis_packing(pool: ConnectionPool) -> ConnectionPool:
    """Make the pool's (not yet opened) connections pack with hiredis, if it can."""
    if _pack is None:
        return pool  # an older hiredis: redis-py's own packer
    pool.connection_class = _packing_class(pool.connection_class)
    return pool


def with_hiredis_packing_cluster(client: RedisCluster) -> RedisCluster:
    """Make the connections of a (not yet initialized) cluster client pack with hiredis."""
    if _pack is None:
        return client
    kwargs = client.nodes_manager.connection_kwargs
    kwargs["connection_class"] = _packing_class(kwargs["connection_class"])
    for node in client.nodes_manager.startup_nodes.values():
        node.connection_class = _packing_class(node.connection_class)  # type: ignore[assignment]
    return client
