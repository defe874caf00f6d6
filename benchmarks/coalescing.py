"""Coalescing's effect: events published per second for one hot sku folding 200 events a
second, with ``ATP_EVENTS_COALESCE_MS`` 0 and 1,000 (or the windows given).

    python -m benchmarks.coalescing [--rate 200] [--seconds 20] [--windows 0 1000]

A redis-server of its own; one item-site (DC-EAST, sold by web, marketplace and b2b under
examples/channels.json's policies, and by every unlisted channel "*") receives receipts and
picks at ``--rate`` a second, each folded as it comes (``RedisStore.fold``); an
``OutboxRelay`` with the window relays the outbox to a publisher that counts what it is
given (what would reach Kafka: coalescing happens before the publish). It prints, per
window, the events published per second (over the run, after its first window), how many
per channel, and how long a change waited from its fold to its publish (p50, p99). On a
shared machine the latencies move with what else runs: say so when quoting them.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import random
import statistics
import tempfile
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from atp_service.config import Settings
from atp_service.domain import Bucket, InventoryDelta, Source
from atp_service.embedded import free_port, redis_process
from atp_service.events import OutboxRelay
from atp_service.store import KeySpace, RedisStore, connect

RESULTS = Path(__file__).resolve().parent / "results" / "coalescing.json"
CHANNELS = Path(__file__).resolve().parent.parent / "examples" / "channels.json"
SKU, SITE = "SKU-HOT", "DC-EAST"


class CountingPublisher:
    """What the relay hands Kafka: each event, and when (to time its wait from the fold)."""

    def __init__(self) -> None:
        self.published: list[tuple[float, dict[str, Any]]] = []

    async def publish(self, topic: str, messages: Sequence[tuple[str, str]]) -> None:
        now = time.time()
        self.published.extend((now, json.loads(value)) for _, value in messages)


async def run(url: str, window_ms: int, rate: float, seconds: float) -> dict[str, Any]:
    store = RedisStore(
        connect(url, timeout=5.0, max_connections=8), KeySpace(16), dedup_window_seconds=86_400
    )
    await store.redis.flushall()
    settings = Settings(_env_file=None, channels_file=CHANNELS)  # type: ignore[call-arg]
    await store.seed_channel_policies(settings.load_channel_policies())
    book = await store.policy_book()
    publisher = CountingPublisher()
    relay = OutboxRelay(
        store, publisher, topic="atp.events.v1", consumer=f"bench-{window_ms}",
        coalesce_ms=window_ms, linger_ms=20, batch=100,
    )  # fmt: skip
    stop = asyncio.Event()
    relaying = asyncio.create_task(relay.run(stop))
    rng = random.Random(7)
    folded_at: dict[int, float] = {}
    on_hand, n = 500, 0
    await store.fold(
        InventoryDelta(f"stock-{window_ms}", Source.WMS, SKU, SITE, Bucket.ON_HAND, on_hand,
                       "2026-12-04T10:00:00Z"),
        book,
    )  # fmt: skip
    await asyncio.sleep(0.5 + window_ms / 1000)  # its events out before the measure
    publisher.published.clear()
    started = time.monotonic()
    while time.monotonic() - started < seconds:
        n += 1
        qty = rng.choice((-3, -2, -1, 1, 2, 3)) if on_hand > 50 else 5
        on_hand += qty
        outcome = await store.fold(
            InventoryDelta(f"hot-{window_ms}-{n}", Source.WMS, SKU, SITE, Bucket.ON_HAND, qty,
                           "2026-12-04T10:00:00Z"),
            book,
        )  # fmt: skip
        folded_at[outcome.version] = time.time()
        await asyncio.sleep(max(0.0, started + n / rate - time.monotonic()))
    await asyncio.sleep(window_ms / 1000 + 0.5)  # the last window goes out
    stop.set()
    await relaying
    await store.redis.aclose()
    first = folded_at[min(folded_at)]
    steady = [(t, e) for t, e in publisher.published if t >= first + window_ms / 1000]
    span = max(0.001, seconds - window_ms / 1000)
    # How long a change waits to be told: at most the time to the next publish, and the
    # publishes come a window apart (a run that nets to nothing is told by no event at all:
    # the consumer holds its ATP already).
    publishes = sorted({t for t, _ in publisher.published})
    gaps = [b - a for a, b in itertools.pairwise(publishes)] or [0.0]
    waits = [
        t - folded_at[e["version"]] for t, e in publisher.published if e["version"] in folded_at
    ]
    by_channel = Counter(e["channel"] for _, e in steady)
    return {
        "window_ms": window_ms,
        "folds_per_second": round(n / seconds, 1),
        "events_published": len(publisher.published),
        "events_per_second": round(len(steady) / span, 1),
        "per_channel_per_second": {c: round(k / span, 1) for c, k in sorted(by_channel.items())},
        "coalesced_max": max((e.get("coalesced", 1) for _, e in publisher.published), default=0),
        "publish_every_ms": {
            "p50": round(statistics.median(gaps) * 1000, 1),
            "max": round(max(gaps) * 1000, 1),
        },
        "latest_change_wait_ms": {
            "p50": round(statistics.median(waits) * 1000, 1) if waits else None,
            "p99": round(sorted(waits)[int(0.99 * (len(waits) - 1))] * 1000, 1) if waits else None,
        },
    }


async def main(args: argparse.Namespace) -> list[dict[str, Any]]:
    redis = redis_process(free_port(), Path(tempfile.mkdtemp(prefix="bench-coalesce-")))
    redis.start()
    try:
        url = f"redis://127.0.0.1:{redis.port}/0"
        return [await run(url, window, args.rate, args.seconds) for window in args.windows]
    finally:
        redis.stop()


def cli() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rate", type=float, default=200.0, help="folds a second")
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--windows", type=int, nargs="+", default=[0, 1000])
    results = asyncio.run(main(parser.parse_args()))
    print(json.dumps(results, indent=2))
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    cli()
