"""Redis Cluster: the client built from seed URLs, and script calls routed by its slot map.

Everything routes through redis-py's own ``RedisCluster``: its slot map, its nodes and their
connections, its handling of MOVED, failovers and a changed slot map. This module builds
the client, and sends the store's script calls on a pipe per primary (``NodeScripts``:
the speed of ``_pipe.ScriptPipe``, and ``WAIT`` on the connection the script ran on).
It relies on redis-py 8.2's ``ClusterNode.acquire_connection``/``release``/
``disconnect_if_needed`` and ``NodesManager.move_slot``/``remap_host_port``
(tests/unit/test_cluster_client.py fails, naming them, when they change).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.asyncio.connection import AbstractConnection, Connection, parse_url
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialWithJitterBackoff
from redis.commands.core import AsyncScript
from redis.exceptions import (
    AskError,
    ClusterDownError,
    ConnectionError,
    MovedError,
    SlotNotCoveredError,
    TimeoutError,
    TryAgainError,
)

from atp_service.store._packing import with_hiredis_packing_cluster
from atp_service.store._pipe import ReplicaWait, ScriptPipe

#: The cluster client's own retries of a failed command (on a connection error, CLUSTERDOWN,
#: TRYAGAIN, ...), each after a refresh of its slot map when one is due. Few: the service
#: answers 503 and its caller retries, and a retried call must not outlast the caller's
#: bound (every call is bounded besides, see ``store/_bounded.py``).
CLUSTER_RETRIES = 2
#: Connections per node at least: a cluster node's pool does not wait for a free connection
#: as the single Redis pool does, it fails the command (``MaxConnectionsError``, a 503), so
#: it must hold as many as the process may use at once. They are opened as needed.
CLUSTER_MIN_CONNECTIONS = 256


def seed_urls(url: str) -> list[str]:
    """The seed nodes of ``ATP_REDIS_URL`` (``redis://h1:p1,redis://h2:p2``)."""
    seeds = [part.strip() for part in url.split(",") if part.strip()]
    if not seeds:
        raise ValueError("ATP_REDIS_URL names no Redis Cluster node")
    return seeds


def connect_cluster(url: str, *, timeout: float, max_connections: int) -> RedisCluster:
    """redis-py's cluster client over the seeds of ``url``; the first seed's URL also gives
    the credentials, TLS and options every node is reached with."""
    first, *others = seed_urls(url)
    startup: list[ClusterNode] = []
    for seed in others:
        parsed = parse_url(seed)
        startup.append(
            ClusterNode(str(parsed.get("host", "127.0.0.1")), int(parsed.get("port", 6379)))
        )
    client = RedisCluster.from_url(
        first,
        startup_nodes=startup,
        max_connections=max(max_connections, CLUSTER_MIN_CONNECTIONS),
        socket_timeout=timeout,
        socket_connect_timeout=timeout,
        health_check_interval=5,
        decode_responses=True,
        retry=Retry(ExponentialWithJitterBackoff(cap=timeout, base=0.05), retries=CLUSTER_RETRIES),
    )
    return with_hiredis_packing_cluster(client)


class NodeConnections:
    """One cluster node's connections as a ``ConnectionSource`` for a ``ScriptPipe``: taken
    from and given back to the node's own pool (redis-py 8.2's ``ClusterNode``), as the
    cluster client's commands take theirs."""

    def __init__(self, node: ClusterNode) -> None:
        self.node = node

    async def get_connection(self) -> AbstractConnection:
        connection = self.node.acquire_connection()
        await self.node.disconnect_if_needed(connection)
        return connection

    async def release(self, connection: AbstractConnection) -> None:
        assert isinstance(connection, Connection)  # the node's own
        await self.node.disconnect_if_needed(connection)
        self.node.release(connection)


#: Errors after which a call is tried again, on the node the slot map then names: the call
#: did not run (MOVED, ASK, TRYAGAIN, CLUSTERDOWN), or its node is gone (the call may have
#: run there; every script of the service may run twice safely, see ``_pipe``).
_REROUTE_ERRORS = (MovedError, TryAgainError, ClusterDownError, ConnectionError, TimeoutError)
#: Tries of one call at most (the first and the re-routed ones).
_TRIES = 3


class NodeScripts:
    """Script calls on a Redis Cluster, each pipelined (``ScriptPipe``) on a connection of
    the primary that serves its slot, as the cluster client's slot map says.

    The slot map, its repairs and the nodes are the client's: a MOVED reply moves the slot
    in it (``NodesManager.move_slot``, what the client does on one); an ASK is followed by
    sending the call with ``ASKING`` to the node named; after CLUSTERDOWN, TRYAGAIN or a lost
    node, one command of the cluster client's own (``EXISTS`` of the call's first key),
    which refreshes the slot map and retries as the client does, points the call at the
    node serving the slot now. A call is tried ``_TRIES`` times at most, then fails with the
    last error; the caller bounds how long it waits in all.
    """

    def __init__(self, client: RedisCluster, *, wait: ReplicaWait | None = None) -> None:
        self._client = client
        self._wait = wait
        self._pipes: dict[str, tuple[ClusterNode, ScriptPipe]] = {}

    def _pipe(self, node: ClusterNode) -> ScriptPipe:
        held = self._pipes.get(node.name)
        if held is None or held[0] is not node:  # a node object replaced by a refresh
            held = self._pipes[node.name] = (
                node,
                ScriptPipe(None, source=NodeConnections(node), wait=self._wait),
            )
        return held[1]

    async def call(self, script: AsyncScript, keys: Sequence[Any], args: Sequence[Any]) -> Any:
        client = self._client
        await client.initialize()  # at once unless a refresh is due (the client's own rule)
        asked: ClusterNode | None = None
        for attempt in range(_TRIES):
            node = asked or client.get_node_from_key(keys[0])
            if node is None:
                raise SlotNotCoveredError(f"no node serves the slot of {keys[0]!r}")
            try:
                return await self._pipe(node).call(script, keys, args, asking=asked is not None)
            except MovedError as exc:  # before AskError: a MovedError is an AskError
                asked = None
                await client.nodes_manager.move_slot(exc)
                if attempt == _TRIES - 1:
                    raise
            except AskError as exc:
                host, port = client.nodes_manager.remap_host_port(exc.host or node.host, exc.port)
                asked = client.get_node(host=host, port=port)
                if asked is None or attempt == _TRIES - 1:
                    raise
            except _REROUTE_ERRORS:
                asked = None
                if attempt == _TRIES - 1:
                    raise
                # The client's own command repairs its slot map (or fails as it would).
                await client.exists(keys[0])
        raise AssertionError("unreachable")
