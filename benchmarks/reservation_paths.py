"""2-line reservations through the store alone (no HTTP): how many a second, and the CPU each
costs this process and Redis, per way of placing them.

    python -m benchmarks.reservation_paths [--seconds 8] [--concurrency 32] [--paths ...]

Paths: ``one-script`` (a single Redis: every reservation one script, reserve.lua),
``per-slot`` (the same single Redis made to run the steps a Cluster runs across slots:
res_begin, res_hold per group, res_decide), ``cluster`` (a Redis Cluster of 3 primaries on
this machine: the steps across slots, each on its primary). Each path gets a fresh server.
Each reservation is released right after (one transition), so stock stays; both counted.
Figures only: this machine's numbers, disturbed by whatever else runs on it.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from atp_service.domain import Bucket, InventoryDelta, Source
from atp_service.domain.reservations import LineRequest, ReservationRequest
from atp_service.embedded import EmbeddedRedisCluster, free_port, redis_process
from atp_service.store import KeySpace, PolicyBook, RedisStore, connect
from atp_service.store.keys import group_of
from atp_service.store.reservations import ReservationStore

BOOK = PolicyBook.of({})
PATHS = ("one-script", "per-slot", "cluster")


async def redis_cpu(store: RedisStore) -> float:
    """CPU seconds the server(s) used so far."""
    client: Any = store.redis
    if store.cluster:
        infos = (await client.info("cpu", target_nodes=client.PRIMARIES)).values()
    else:
        infos = [await client.info("cpu")]
    return sum(float(i["used_cpu_sys"]) + float(i["used_cpu_user"]) for i in infos)


async def script_usec(store: RedisStore) -> float:
    """Microseconds Redis itself spent running scripts so far (INFO commandstats)."""
    client: Any = store.redis
    if getattr(store, "cluster", False):
        infos = (await client.info("commandstats", target_nodes=client.PRIMARIES)).values()
    else:
        infos = [await client.info("commandstats")]
    return sum(
        float(info.get(name, {}).get("usec", 0))
        for info in infos
        for name in ("cmdstat_evalsha", "cmdstat_eval")
    )


async def run(
    store: RedisStore, *, per_slot: bool, seconds: float, concurrency: int
) -> dict[str, float]:
    reservations = ReservationStore(store, idempotency_ttl_seconds=86_400)
    if per_slot:
        reservations.cluster = True  # the steps across slots, on a single Redis
    site = "DC-BENCH"
    skus = [f"SKU-B{n:03d}" for n in range(40)]
    await store.fold_many(
        [
            InventoryDelta(f"seed-{uuid.uuid4().hex}", Source.WMS, sku, site, Bucket.ON_HAND,
                           10**8, "2026-11-23T05:00:00Z")
            for sku in skus
        ],
        BOOK,
    )  # fmt: skip
    # Pairs of skus in different groups: a 2-line reservation across slots on a Cluster.
    pairs = [
        (a, b) for a in skus for b in skus
        if a < b and group_of(a, site, 16) != group_of(b, site, 16)
    ][:200]  # fmt: skip
    done = 0
    stop_at = 0.0

    async def worker(n: int) -> None:
        nonlocal done
        i = n
        while time.perf_counter() < stop_at:
            a, b = pairs[i % len(pairs)]
            i += concurrency
            key = uuid.uuid4().hex
            request = ReservationRequest("web", (LineRequest(a, site, 1), LineRequest(b, site, 1)))
            placed = await reservations.reserve(
                request, reservation_id=reservations.new_reservation_id("bench", key),
                principal="bench", idempotency_key_value=key, correlation_id="c", book=BOOK,
            )  # fmt: skip
            await reservations.release(
                placed.reservation.reservation_id, caller="bench", correlation_id="c", book=BOOK
            )
            done += 1

    # warm-up, then the measured run
    stop_at = time.perf_counter() + 1.0
    await asyncio.gather(*(worker(n) for n in range(concurrency)))
    done = 0
    scripts = await script_usec(store)
    cpu_redis, cpu_here, started = await redis_cpu(store), time.process_time(), time.perf_counter()
    stop_at = started + seconds
    await asyncio.gather(*(worker(n) for n in range(concurrency)))
    elapsed = time.perf_counter() - started
    cpu_here = time.process_time() - cpu_here
    cpu_redis = await redis_cpu(store) - cpu_redis
    scripts = await script_usec(store) - scripts
    return {
        "script_us": scripts / done,
        "reservations_per_s": done / elapsed,
        "client_cpu_us": cpu_here / done * 1e6,
        "redis_cpu_us": cpu_redis / done * 1e6,
    }


async def measure(path: str, seconds: float, concurrency: int, workdir: Path) -> dict[str, float]:
    if path == "cluster":
        cluster = EmbeddedRedisCluster(3, 0, workdir / "cluster")
        cluster.start()
        try:
            client = connect(cluster.url, timeout=5.0, max_connections=64, cluster=True)
            store = RedisStore(client, KeySpace(16), dedup_window_seconds=86_400)
            try:
                return await run(store, per_slot=False, seconds=seconds, concurrency=concurrency)
            finally:
                await client.aclose()
        finally:
            cluster.stop()
    server = redis_process(free_port(), workdir / path)
    server.start()
    try:
        client = connect(f"redis://127.0.0.1:{server.port}/0", timeout=5.0, max_connections=64)
        store = RedisStore(client, KeySpace(16), dedup_window_seconds=86_400)
        try:
            return await run(
                store, per_slot=path == "per-slot", seconds=seconds, concurrency=concurrency
            )
        finally:
            await client.aclose()
    finally:
        server.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--paths", nargs="+", choices=PATHS, default=list(PATHS))
    args = parser.parse_args(argv)
    workdir = Path(tempfile.mkdtemp(prefix="atp-bench-paths-"))
    print(f"2-line reservations (each placed, then released), {args.concurrency} at once, "
          f"{args.seconds:g} s a path; {os.cpu_count()} cores, shared")  # fmt: skip
    for path in args.paths:
        figures = asyncio.run(measure(path, args.seconds, args.concurrency, workdir))
        print(
            f"  {path:<11} {figures['reservations_per_s']:8.0f} reservations/s   "
            f"this process {figures['client_cpu_us']:6.0f} µs each   "
            f"Redis {figures['redis_cpu_us']:6.0f} µs each, in its scripts "
            f"{figures['script_us']:5.0f} µs"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
