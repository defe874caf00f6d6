"""`make bench-durability`: what Redis persistence, or a replica (`WAIT`), costs a reservation.

A reservation answered 201 lives only in Redis: Kafka cannot give it back (the fold can be
read again, stream_agents/_positions.py; a reservation or an idempotency key cannot). What
protects it is the persistence Redis is run with, or a replica that has it (``WAIT``). Each
setting is measured the same way, in turns, back to back (the machine may be shared: each
round runs every setting once, in a rotated order, so that a disturbance falls on all):

1. a fresh redis-server with that setting (its files on the disk of the output directory,
   not on a tmpfs, where fsync costs nothing; for ``WAIT``, a replica beside it and
   ``ATP_REDIS_WAIT_REPLICAS=1``), the embedded broker, `atp api` alone (it then relays
   the outbox and expires reservations itself, as it does without a worker);
2. the catalogue's stock folded straight into Redis;
3. a Locust phase of ``ReserveOnlyUser`` (2-line reservations held 5 s, then expired), the
   reservation figure of `make bench`: requests/s, p50 and p99, and Redis' CPU per
   reservation;
4. the same reservations placed straight through the store (``ReservationStore.reserve``,
   the API's own call, pipelined the same way, from ``--store-tasks`` tasks of this
   process), without HTTP: on a machine where the API process is the bottleneck of the
   HTTP figure, this is where what Redis pays for persistence shows; and one at a time
   (one task), where an fsync before each answer shows in its latency.

Also measured: the disk's own fsync (a 200-byte write and ``fsync``, as Redis does per
event loop turn with ``appendfsync always``).

Writes ``durability.json`` and ``durability.md`` to the output directory
(``benchmarks/results/durability/`` by default; not committed).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import shutil
import statistics
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil

from atp_service.domain import Bucket, InventorySnapshot, Source
from atp_service.domain.reservations import InsufficientStock, LineRequest, ReservationRequest
from atp_service.embedded import LOOPBACK, ManagedProcess, free_port, redis_process
from atp_service.store import KeySpace, PolicyBook, RedisStore, connect
from atp_service.store.redis_store import replica_wait
from atp_service.store.reservations import ReservationStore
from benchmarks.catalogue import Catalogue, Popularity, sku_name
from benchmarks.locust_runs import run_phase
from benchmarks.services import Services
from benchmarks.shapes import one_stage

RESULTS = Path(__file__).resolve().parent / "results" / "durability"


@dataclass(frozen=True)
class Setting:
    name: str
    redis_args: tuple[str, ...]
    guarantee: str
    #: A replica beside the primary, and every HTTP write answered once it has it
    #: (``ATP_REDIS_WAIT_REPLICAS=1``; the store path waits the same way).
    replica: bool = False


SETTINGS = (
    Setting(
        "no persistence",
        ("--appendonly", "no", "--save", ""),
        "a restart or a crash loses everything not re-read from Kafka",
    ),
    Setting(
        "AOF everysec",
        ("--appendonly", "yes", "--appendfsync", "everysec", "--save", ""),
        "a crash of the host loses up to about a second of writes",
    ),
    Setting(
        "AOF always",
        ("--appendonly", "yes", "--appendfsync", "always", "--save", ""),
        "a write is on disk before Redis answers it",
    ),
    Setting(
        "WAIT 1 replica",
        ("--appendonly", "no", "--save", ""),
        "a write is on a replica before Redis answers it (a failover to it keeps it)",
        replica=True,
    ),
)
#: How long an answer waits for the replica (``ATP_REDIS_WAIT_TIMEOUT_MS``'s default).
WAIT_TIMEOUT_MS = 200


def with_args(argv: list[str], args: tuple[str, ...]) -> list[str]:
    """``argv`` of redis-server with each ``--name value`` of ``args`` set (replaced or added)."""
    out = list(argv)
    for i in range(0, len(args), 2):
        name, value = args[i], args[i + 1]
        if name in out:
            out[out.index(name) + 1] = value
        else:
            out += [name, value]
    return out


async def load_stock(redis_url: str, catalogue: Catalogue) -> None:
    """One snapshot per item-site, folded straight into Redis (no worker needed)."""
    client = connect(redis_url, timeout=10.0, max_connections=4)
    try:
        store = RedisStore(client, KeySpace(16), dedup_window_seconds=86_400)
        book = PolicyBook.of({})
        batch: list[InventorySnapshot] = []
        for rank in range(1, catalogue.skus + 1):
            for site in catalogue.site_codes:
                qty = catalogue.stock_of(rank, site)
                batch.append(
                    InventorySnapshot(
                        f"bench-durability-{rank}-{site}", Source.WMS, sku_name(rank), site,
                        {Bucket.ON_HAND: qty, Bucket.ALLOCATED: 0, Bucket.QUARANTINED: 0},
                        "2026-12-04T00:00:00Z", source_seq=1,
                    )
                )  # fmt: skip
            if len(batch) >= 2000:
                await store.fold_many(batch, book)
                batch.clear()
        if batch:
            await store.fold_many(batch, book)
        await store.register_sites(catalogue.site_codes)
    finally:
        await client.aclose()


async def reserve_through_the_store(
    redis_url: str, catalogue: Catalogue, seconds: float, tasks: int, *, wait: bool = False
) -> dict[str, Any]:
    """2-line reservations (held 5 s) placed by ``tasks`` tasks through ``ReservationStore``
    for ``seconds`` (``wait``: each answered once a replica has it): reservations/s, p50 and
    p99 in ms."""
    client = connect(redis_url, timeout=10.0, max_connections=tasks + 4)
    store = RedisStore(
        client,
        KeySpace(16),
        dedup_window_seconds=86_400,
        wait=replica_wait(1, WAIT_TIMEOUT_MS) if wait else None,
    )
    reservations = ReservationStore(store, idempotency_ttl_seconds=86_400)
    book = PolicyBook.of({})
    popularity = Popularity(catalogue.skus, random.Random(18))
    sites = catalogue.site_codes
    took: list[float] = []
    sold_out = 0
    deadline = time.perf_counter() + seconds

    async def place() -> None:
        nonlocal sold_out
        while time.perf_counter() < deadline:
            site = random.choice(sites)
            lines = tuple(LineRequest(sku, site, 1) for sku in popularity.distinct_skus(2))
            started = time.perf_counter()
            key = os.urandom(16).hex()
            try:
                await reservations.reserve(
                    ReservationRequest("web", lines, ttl_seconds=5),
                    reservation_id=reservations.new_reservation_id("bench-durability", key),
                    principal="bench-durability",
                    idempotency_key_value=key,
                    correlation_id="bench-durability",
                    book=book,
                )
            except InsufficientStock:
                sold_out += 1
            took.append(time.perf_counter() - started)

    started = time.perf_counter()
    try:
        await asyncio.gather(*(place() for _ in range(tasks)))
    finally:
        await client.aclose()
    elapsed = time.perf_counter() - started
    ms = sorted(t * 1000 for t in took)
    return {
        "store_rps": round(len(took) / elapsed, 1),
        "store_p50_ms": round(ms[len(ms) // 2], 2),
        "store_p99_ms": round(ms[int(len(ms) * 0.99) - 1], 2),
        "store_sold_out": sold_out,
    }


def fsync_seconds(directory: Path, times: int = 200) -> list[float]:
    """How long the disk under ``directory`` takes to fsync a small append, ``times`` times."""
    path = directory / "fsync-probe"
    took: list[float] = []
    with path.open("ab") as f:
        for _ in range(times):
            f.write(b"x" * 200)
            f.flush()
            started = time.perf_counter()
            os.fsync(f.fileno())
            took.append(time.perf_counter() - started)
    path.unlink()
    return took


def measure(setting: Setting, args: argparse.Namespace, out: Path, run: int) -> dict[str, Any]:
    workdir = Path(tempfile.mkdtemp(prefix="durability-", dir=out))
    services = Services(workdir / "logs")
    redis = services.stack.redis
    redis.argv = with_args(redis.argv, ("--dir", str(workdir / "redis"), *setting.redis_args))
    (workdir / "redis").mkdir(parents=True, exist_ok=True)
    replica: ManagedProcess | None = None
    if setting.replica:
        services.extra_env["ATP_REDIS_WAIT_REPLICAS"] = "1"
        replica = redis_process(free_port(), workdir / "replica")
        replica.argv = [
            *with_args(replica.argv, setting.redis_args),
            "--replicaof", LOOPBACK, str(services.stack.redis_port),
        ]  # fmt: skip
    catalogue = Catalogue(args.skus, args.sites)
    try:
        services.start_stack()
        if replica is not None:
            replica.start()
            wait_replicated(replica)
        asyncio.run(load_stock(services.stack.redis_url, catalogue))
        services.start_api(ceiling=False)
        env = {
            **services.env(),
            "ATP_BENCH_HOST": services.api_url,
            "ATP_BENCH_API_KEY": services.read_key,
            "ATP_BENCH_OMS_KEY": services.oms_key,
            "ATP_BENCH_SKUS": str(catalogue.skus),
            "ATP_BENCH_SITES": str(catalogue.sites),
        }
        assert redis.proc is not None
        redis_proc = psutil.Process(redis.proc.pid)
        cpu_before = sum(redis_proc.cpu_times()[:2])
        phase = run_phase(
            f"reservations-{run}",
            [one_stage(args.users, args.seconds, "ReserveOnlyUser")],
            env=env,
            out_dir=workdir / "locust",
            processes=1,
        )
        redis_cpu = sum(redis_proc.cpu_times()[:2]) - cpu_before
        services.check_alive()
        row = phase.row("reserve 2 lines")
        waits = replica is not None
        direct = asyncio.run(
            reserve_through_the_store(
                services.stack.redis_url, catalogue, args.seconds, args.store_tasks, wait=waits
            )
        )
        alone = asyncio.run(
            reserve_through_the_store(
                services.stack.redis_url, catalogue, args.seconds / 2, 1, wait=waits
            )
        )
        persistence = _info(services.stack.redis_url, "persistence")
    finally:
        services.stop()
        if replica is not None:
            replica.stop()
    result = {
        "setting": setting.name,
        "run": run,
        **row.as_dict(),
        "redis_cpu_us_per_request": round(redis_cpu / max(1, row.requests) * 1e6, 1),
        **direct,
        "alone_p50_ms": alone["store_p50_ms"],
        "alone_p99_ms": alone["store_p99_ms"],
        "aof_rewrites": persistence.get("aof_rewrites"),
        "aof_delayed_fsync": persistence.get("aof_delayed_fsync"),
    }
    if not args.keep:
        shutil.rmtree(workdir, ignore_errors=True)
    return result


def wait_replicated(replica: ManagedProcess, timeout: float = 30.0) -> None:
    """Until the replica has synchronised with its primary."""
    import redis as sync_redis

    client = sync_redis.Redis(host=LOOPBACK, port=replica.port, decode_responses=True)
    deadline = time.monotonic() + timeout
    try:
        while client.info("replication").get("master_link_status") != "up":
            if time.monotonic() > deadline:
                raise RuntimeError("the replica never synchronised with its primary")
            time.sleep(0.1)
    finally:
        client.close()


def _info(url: str, section: str) -> dict[str, Any]:
    import redis as sync_redis

    client = sync_redis.Redis.from_url(url, decode_responses=True)
    try:
        return dict(client.info(section))
    finally:
        client.close()


def summarise(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out = []
    for setting in SETTINGS:
        mine = [r for r in runs if r["setting"] == setting.name]
        if not mine:
            continue
        out.append(
            {
                "setting": setting.name,
                "guarantee": setting.guarantee,
                "runs": len(mine),
                "rps_median": round(statistics.median(r["rps"] for r in mine), 1),
                "rps_each": [r["rps"] for r in mine],
                "p50_ms_median": statistics.median(r["p50_ms"] for r in mine),
                "p99_ms_median": statistics.median(r["p99_ms"] for r in mine),
                "redis_cpu_us_median": statistics.median(
                    r["redis_cpu_us_per_request"] for r in mine
                ),
                "store_rps_median": round(statistics.median(r["store_rps"] for r in mine), 1),
                "store_rps_each": [r["store_rps"] for r in mine],
                "store_p99_ms_median": statistics.median(r["store_p99_ms"] for r in mine),
                "alone_p50_ms_median": statistics.median(r["alone_p50_ms"] for r in mine),
                "alone_p99_ms_median": statistics.median(r["alone_p99_ms"] for r in mine),
            }
        )
    return out


def render(summary: list[dict[str, Any]], fsync: list[float], note: str) -> str:
    ms = sorted(t * 1000 for t in fsync)
    lines = [
        "# Redis persistence and the 2-line reservation",
        "",
        note,
        "",
        f"Disk fsync of a small append: p50 {ms[len(ms) // 2]:.2f} ms, "
        f"p99 {ms[int(len(ms) * 0.99) - 1]:.2f} ms ({len(ms)} fsyncs).",
        "",
        "| setting | over HTTP: reservations/s (median; each run) | p50 / p99 ms | Redis CPU µs "
        "/ reservation | through the store: reservations/s (median; each run) | p99 ms | "
        "one at a time: p50 / p99 ms | what a crash loses |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for s in summary:
        each = ", ".join(f"{r:,.0f}" for r in s["rps_each"])
        store_each = ", ".join(f"{r:,.0f}" for r in s["store_rps_each"])
        lines.append(
            f"| {s['setting']} | {s['rps_median']:,.0f} ({each}) | {s['p50_ms_median']:g} / "
            f"{s['p99_ms_median']:g} | {s['redis_cpu_us_median']:g} | "
            f"{s['store_rps_median']:,.0f} ({store_each}) | {s['store_p99_ms_median']:g} | "
            f"{s['alone_p50_ms_median']:g} / {s['alone_p99_ms_median']:g} | {s['guarantee']} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.durability", description=__doc__)
    parser.add_argument("--rounds", type=int, default=3, help="runs of every setting")
    parser.add_argument("--seconds", type=float, default=15.0, help="length of each phase")
    parser.add_argument("--users", type=int, default=32, help="Locust users")
    parser.add_argument(
        "--store-tasks", type=int, default=32, help="tasks placing through the store"
    )
    parser.add_argument("--skus", type=int, default=4000)
    parser.add_argument("--sites", type=int, default=5)
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--keep", action="store_true", help="keep each run's files")
    args = parser.parse_args(argv)
    out: Path = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    fsync = fsync_seconds(out)
    runs: list[dict[str, Any]] = []
    for round_ in range(args.rounds):
        order = SETTINGS[round_ % len(SETTINGS) :] + SETTINGS[: round_ % len(SETTINGS)]
        for setting in order:
            result = measure(setting, args, out, len(runs))
            print(
                f"[durability] round {round_ + 1}: {setting.name}: {result['rps']:,.0f} req/s, "
                f"p50 {result['p50_ms']} ms, p99 {result['p99_ms']} ms",
                flush=True,
            )
            runs.append(result)
    note = os.environ.get("ATP_BENCH_NOTE", "load generator, API, Redis and broker share it")
    summary = summarise(runs)
    machine = {"cpus": os.cpu_count(), "note": note}
    config = {k: v for k, v in vars(args).items() if k not in ("out", "keep")}
    record = {"machine": machine, "config": config, "fsync_s": fsync, "runs": runs}
    (out / "durability.json").write_text(json.dumps({**record, "summary": summary}, indent=2))
    text = render(summary, fsync, f"{os.cpu_count()} CPUs; {note}. Config: {config}.")
    (out / "durability.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
