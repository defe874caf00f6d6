"""What the store relies on in redis-py's cluster client (redis 8.2): a test names it when it
changes. No I/O: the client is built, never connected."""

from __future__ import annotations

import inspect

from redis.asyncio.cluster import ClusterNode, NodesManager, RedisCluster
from redis.asyncio.connection import Connection

from atp_service.store._cluster import CLUSTER_MIN_CONNECTIONS, NodeConnections, seed_urls
from atp_service.store._packing import HiredisPacking, _pack
from atp_service.store.redis_store import connect


def test_the_seeds_of_atp_redis_url_are_every_node_named() -> None:
    assert seed_urls(" redis://h1:7000 ,redis://h2:7001,, ") == [
        "redis://h1:7000",
        "redis://h2:7001",
    ]


def test_a_cluster_client_is_redis_pys_own_with_every_seed_and_hiredis_packing() -> None:
    client = connect(
        "redis://10.0.0.1:7000/0,redis://10.0.0.2:7001", timeout=0.5, max_connections=4,
        cluster=True,
    )  # fmt: skip
    assert isinstance(client, RedisCluster)
    seeds = client.nodes_manager.startup_nodes
    assert set(seeds) == {"10.0.0.1:7000", "10.0.0.2:7001"}
    if _pack is not None:  # the nodes the client makes on connecting pack with hiredis too
        made = client.nodes_manager.connection_kwargs["connection_class"]
        assert issubclass(made, HiredisPacking) and issubclass(made, Connection)
        assert all(issubclass(n.connection_class, HiredisPacking) for n in seeds.values())
    assert client.nodes_manager.connection_kwargs["max_connections"] == CLUSTER_MIN_CONNECTIONS
    assert client.nodes_manager.connection_kwargs["socket_timeout"] == 0.5


def test_the_parts_of_the_cluster_client_the_node_pipes_use_are_there() -> None:
    # NodeConnections: a node's own pool; NodeScripts: the client's slot map and its repair.
    for name in ("acquire_connection", "release", "disconnect_if_needed"):
        assert callable(getattr(ClusterNode, name)), name
    assert inspect.iscoroutinefunction(ClusterNode.disconnect_if_needed)
    assert inspect.iscoroutinefunction(NodesManager.move_slot)
    assert callable(NodesManager.remap_host_port)
    assert inspect.iscoroutinefunction(RedisCluster.initialize)
    for name in ("get_node_from_key", "get_node", "get_primaries", "get_nodes", "keyslot"):
        assert callable(getattr(RedisCluster, name)), name
    node = ClusterNode("127.0.0.1", 1)
    source = NodeConnections(node)
    assert source.node is node
    connection = node.acquire_connection()
    node.release(connection)
    assert node.acquire_connection() is connection  # handed back, handed out again
