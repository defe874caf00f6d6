"""Re-evaluation's cost: fold events/s and read latency while a policy change re-evaluates
every item-site (500,000 by default), against the same without one.

    python -m benchmarks.reevaluation [--item-sites 500000] [--rate 20000]

A redis-server of its own (the embedded one) is loaded with the item-sites (one WMS
snapshot each, through the fold), then three processes share it, each on its own core's
worth of time as the machine allows:

- a folder: ``RedisStore.fold_many`` of 4,000 deltas at a time over random item-sites (the
  worker's batch), as fast as Redis takes them; it reports events/s every second;
- a reader: one position at a time (``read_positions``, the API's Redis path) 500 times a
  second; it reports each read's latency;
- this process: ``Reevaluator`` ticks at ``--rate`` item-sites/s (the setting
  ``ATP_REEVALUATION_RATE``), first idle (the baseline), then after a channel policy change,
  until its pass is done.

It measures Redis-side capacity (the fold without Kafka, reads without HTTP): what a pass
takes from the fold and from reads is Redis time, and that is what these see. The figures
print at the end (and go to benchmarks/results/reevaluation.json). On a shared machine they
move with what else runs: say so when quoting them.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from atp_service.domain import Bucket, ChannelPolicy, InventoryDelta, InventorySnapshot, Source
from atp_service.embedded import free_port, redis_process
from atp_service.store import KeySpace, RedisStore, connect
from atp_service.store.reevaluation import Reevaluator

RESULTS = Path(__file__).resolve().parent / "results" / "reevaluation.json"
SITES = ("DC-EAST", "DC-WEST", "STORE-001", "STORE-002", "DC-CENTRAL")
CHANNELS = {
    "web": ChannelPolicy(sites=("DC-EAST", "DC-WEST"), safety_stock=2),
    "store": ChannelPolicy(sites=("STORE-001", "STORE-002"), safety_stock=1),
    "marketplace": ChannelPolicy(sites=("DC-EAST", "DC-WEST", "DC-CENTRAL"), share=40),
}
NOW = "2026-12-04T10:00:00Z"
READS_PER_SECOND = 500


def store_at(url: str) -> RedisStore:
    return RedisStore(
        connect(url, timeout=5.0, max_connections=16), KeySpace(16), dedup_window_seconds=86_400
    )


def item_site(n: int) -> tuple[str, str]:
    return f"SKU-{n // len(SITES):06d}", SITES[n % len(SITES)]


async def load(url: str, item_sites: int) -> float:
    store = store_at(url)
    await store.seed_channel_policies(CHANNELS)
    book = await store.policy_book()
    started = time.monotonic()
    batch: list[InventoryDelta | InventorySnapshot] = []
    for n in range(item_sites):
        sku, site = item_site(n)
        batch.append(
            InventorySnapshot(
                f"load-{n}", Source.WMS, sku, site,
                {Bucket.ON_HAND: 20 + n % 50, Bucket.ALLOCATED: n % 3}, NOW,
            )
        )  # fmt: skip
        if len(batch) == 4000:
            await store.fold_many(batch, book)
            batch = []
    if batch:
        await store.fold_many(batch, book)
    await store.redis.aclose()
    return time.monotonic() - started


async def fold_role(url: str, item_sites: int, seconds: float) -> None:
    store = store_at(url)
    book = await store.policy_book()
    rng = random.Random(1)
    deadline = time.monotonic() + seconds
    second, count, n = time.monotonic() + 1, 0, 0
    while time.monotonic() < deadline:
        events = []
        for _ in range(4000):
            sku, site = item_site(rng.randrange(item_sites))
            n += 1
            events.append(
                InventoryDelta(f"f-{time.time_ns()}-{n}", Source.WMS, sku, site,
                               Bucket.ON_HAND, rng.choice((-1, 1)), NOW)
            )  # fmt: skip
        await store.fold_many(events, book)
        count += len(events)
        if time.monotonic() >= second:
            print(json.dumps({"t": time.time(), "fold": count}), flush=True)
            count, second = 0, second + 1
    await store.redis.aclose()


async def read_role(url: str, item_sites: int, seconds: float) -> None:
    from atp_service.domain import ItemSite

    store = store_at(url)
    rng = random.Random(2)
    deadline = time.monotonic() + seconds
    latencies: list[float] = []
    next_at, second = time.monotonic(), time.monotonic() + 1
    while time.monotonic() < deadline:
        sku, site = item_site(rng.randrange(item_sites))
        started = time.perf_counter()
        await store.read_positions([ItemSite(sku, site)])
        latencies.append(time.perf_counter() - started)
        next_at += 1 / READS_PER_SECOND
        await asyncio.sleep(max(0.0, next_at - time.monotonic()))
        if time.monotonic() >= second:
            print(json.dumps({"t": time.time(), "reads": latencies}), flush=True)
            latencies, second = [], second + 1
    await store.redis.aclose()


def rows_of(output: str) -> list[dict[str, Any]]:
    rows = []
    for line in output.splitlines():
        try:
            rows.append(json.loads(line))
        except ValueError:
            continue  # cut short by the end of the run
    return rows


def percentile(values: list[float], q: float) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def main(args: argparse.Namespace) -> dict[str, Any]:
    workdir = Path(tempfile.mkdtemp(prefix="bench-reeval-"))
    redis = redis_process(free_port(), workdir)
    redis.start()
    url = f"redis://127.0.0.1:{redis.port}/0"
    try:
        print(f"loading {args.item_sites} item-sites ...", flush=True)
        load_seconds = await load(url, args.item_sites)
        store = store_at(url)
        reevaluator = Reevaluator(store, holder="bench", rate=args.rate)
        await reevaluator.tick()  # the state, no pass (the book minds no day)
        total = args.baseline + args.limit
        logs = {role: (workdir / f"{role}.jsonl").open("w") for role in ("fold", "read")}
        roles = [
            await asyncio.create_subprocess_exec(
                sys.executable, "-m", "benchmarks.reevaluation", "--role", role, "--url", url,
                "--item-sites", str(args.item_sites), "--seconds", str(total),
                stdout=log,
            )
            for role, log in logs.items()
        ]  # fmt: skip
        await asyncio.sleep(args.baseline)
        changed_at = time.time()
        print("changing the web channel's policy ...", flush=True)
        await store.put_channel_policy(
            "web", ChannelPolicy(sites=("DC-EAST", "DC-WEST"), safety_stock=2, share=50),
            changed_by="bench",
        )  # fmt: skip
        events = 0
        started = finished = None
        while time.time() < changed_at + args.limit:
            report = await reevaluator.tick()
            events += report.events
            if report.visited and started is None:
                started = time.time()
            if report.finished:
                finished = time.time()
                break
            await asyncio.sleep(0.25)
        await asyncio.sleep(2)  # a last second of each, after the pass
        for role in roles:
            role.terminate()
            await role.wait()
        for log in logs.values():
            log.close()
        outputs = [(workdir / f"{role}.jsonl").read_text() for role in logs]
        await store.redis.aclose()
    finally:
        redis.stop()
    folds, reads = (rows_of(output) for output in outputs)
    end = finished or time.time()
    start = started or changed_at

    def during(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return [r for r in rows if start + 1 <= r["t"] <= end]

    def before(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return [r for r in rows if r["t"] < changed_at and r["t"] > changed_at - args.baseline + 2]

    def reads_of(rows: list[dict[str, Any]]) -> list[float]:
        return [x for r in rows for x in r["reads"]]

    result = {
        "item_sites": args.item_sites,
        "rate": args.rate,
        "load_seconds": round(load_seconds, 1),
        "pass_seconds": round(end - start, 1) if finished else None,
        "announced_after_change_seconds": round(end - changed_at, 1) if finished else None,
        "events": events,
        "fold_events_per_second": {
            "before": round(statistics.mean([r["fold"] for r in before(folds)] or [0])),
            "during": round(statistics.mean([r["fold"] for r in during(folds)] or [0])),
        },
        "read_ms": {
            phase: {
                "p50": round(percentile(reads_of(rows), 0.50) * 1000, 2),
                "p99": round(percentile(reads_of(rows), 0.99) * 1000, 2),
                "max": round(max(reads_of(rows) or [0]) * 1000, 2),
            }
            for phase, rows in (("before", before(reads)), ("during", during(reads)))
        },
    }
    return result


def cli() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--item-sites", type=int, default=500_000)
    parser.add_argument("--rate", type=float, default=20_000.0)
    parser.add_argument("--baseline", type=float, default=15.0, help="seconds before the change")
    parser.add_argument("--limit", type=float, default=120.0, help="seconds the pass may take")
    parser.add_argument("--role", choices=("fold", "read"), default=None)
    parser.add_argument("--url", default="")
    parser.add_argument("--seconds", type=float, default=0)
    args = parser.parse_args()
    if args.role == "fold":
        asyncio.run(fold_role(args.url, args.item_sites, args.seconds))
        return
    if args.role == "read":
        asyncio.run(read_role(args.url, args.item_sites, args.seconds))
        return
    result = asyncio.run(main(args))
    print(json.dumps(result, indent=2))
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    cli()
