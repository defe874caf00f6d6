"""An outbox relay alone in a process of its own, as each `atp worker` and `atp api` runs one:
``python -m tests.integration._relay_process <redis url> <bootstrap> <name> <claim idle ms>
[cluster]`` relays until SIGTERM (or SIGKILL); with ``cluster``, the URL names seed nodes of a
Redis Cluster."""

from __future__ import annotations

import asyncio
import signal
import sys

from atp_service.config import EVENTS_TOPIC
from atp_service.events import OutboxRelay
from atp_service.store import KeySpace, RedisStore, connect
from stream_agents._kafka import LazyProducer


async def main(
    redis_url: str, bootstrap: str, name: str, claim_idle_ms: int, cluster: bool
) -> None:
    client = connect(redis_url, timeout=2.0, max_connections=64, cluster=cluster)
    producer = LazyProducer(bootstrap, client_id=name)
    relay = OutboxRelay(
        RedisStore(client, KeySpace(16), dedup_window_seconds=86_400),
        producer,
        topic=EVENTS_TOPIC,
        consumer=name,
        batch=10,  # small rounds: many of them, racing the other relay's
        claim_idle_ms=claim_idle_ms,
    )
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    try:
        await relay.run(stop)
    finally:
        await producer.stop()
        await client.aclose()


if __name__ == "__main__":
    asyncio.run(
        main(sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), sys.argv[5:] == ["cluster"])
    )
