"""`make bench` / `make bench-quick`: the whole benchmark in one run, with its ceilings.

1. Start the embedded Redis and Tansu on free ports, then `atp api` and the ceiling app
   (the same `serve()`, same worker count).
2. Produce one WMS snapshot per item-site to ``wms.inventory.v1``; read them back with a
   bare aiokafka consumer (the Kafka ceiling); start `atp worker` and time its fold of the
   backlog (its own counters); wait for the outbox to drain; measure Redis memory.
3. Freshness: steady inbound deltas, probes awaited over HTTP.
4. Locust phases, each at the same concurrency: HTTP ceiling, availability, availability at
   half the ceiling's load, batch of 50, Redis ceiling, reservations, promises of 1 and of
   20 lines; a 50-line promise one at a time (and the planner alone); then the peak.
5. Write results.json, results.md and the PNG plots to the output directory; print the table.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import platform
import sys
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import redis

from atp_service.store.keys import outbox
from benchmarks import profiling, promise_latency, report
from benchmarks.catalogue import Catalogue
from benchmarks.ceiling_app import CEILING_KEY
from benchmarks.cpu import CpuMeter, Window
from benchmarks.locust_runs import Phase, run_phase
from benchmarks.services import BenchError, RssSampler, Services
from benchmarks.shapes import one_stage, peak_stages
from benchmarks.streams import (
    bare_consume,
    measure_freshness,
    produce_catalogue,
    wait_folded,
)

RESULTS = Path(__file__).resolve().parent / "results"


@dataclass(frozen=True)
class Plan:
    mode: str
    skus: int
    sites: int
    users: int
    phase_seconds: float
    peak_users: int
    peak_seconds: float
    freshness_rate: float
    freshness_seconds: float
    api_workers: int
    locust_processes: int
    profile: bool
    out: Path


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="small data, short phases (< 90 s)")
    parser.add_argument("--skus", type=int, help="catalogue skus (100000; quick 4000)")
    parser.add_argument("--sites", type=int, default=5, help="catalogue sites")
    parser.add_argument("--users", type=int, help="Locust users per measured phase (32; quick 16)")
    parser.add_argument("--phase-seconds", type=float, help="length of each phase (20; quick 4)")
    parser.add_argument("--peak-seconds", type=float, help="length of the peak (60; quick 8)")
    parser.add_argument("--freshness-rate", type=float, default=2000.0, help="events/s")
    parser.add_argument("--freshness-seconds", type=float, help="(20; quick 5)")
    parser.add_argument("--api-workers", type=int, default=1, help="`atp api --workers`")
    parser.add_argument(
        "--locust-processes",
        type=int,
        default=None,
        help="Locust processes (default: one per core left beside the API workers, >= 1)",
    )
    parser.add_argument(
        "--profile", action="store_true", help="py-spy the API and the worker under load"
    )
    parser.add_argument("--out", type=Path, help="results directory")
    return parser


def make_plan(args: argparse.Namespace) -> Plan:
    quick = bool(args.quick)
    cpus = os.cpu_count() or 1
    return Plan(
        mode="quick" if quick else "full",
        skus=args.skus or (4_000 if quick else 100_000),
        sites=args.sites,
        users=args.users or (16 if quick else 32),
        phase_seconds=args.phase_seconds or (4.0 if quick else 20.0),
        peak_users=int(1.5 * (args.users or (16 if quick else 32))),
        peak_seconds=args.peak_seconds or (8.0 if quick else 60.0),
        freshness_rate=args.freshness_rate,
        freshness_seconds=args.freshness_seconds or (5.0 if quick else 20.0),
        api_workers=args.api_workers,
        locust_processes=args.locust_processes or max(1, cpus - args.api_workers),
        profile=bool(args.profile),
        out=(args.out or (RESULTS / "quick" if quick else RESULTS)).resolve(),
    )


def say(text: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {text}", flush=True)


def _row(phase: Phase, name: str) -> dict[str, Any]:
    return phase.row(name).as_dict()


def _safe_ratio(a: float | None, b: float | None) -> float | None:
    return round(a / b, 3) if a is not None and b else None


async def redis_direct_ceiling(url: str, concurrency: int, seconds: float) -> float:
    """GETs/s from ``concurrency`` tasks sharing one redis.asyncio client, no HTTP."""
    from atp_service.store import connect

    client = connect(url, timeout=2.0, max_connections=concurrency)
    done = 0
    deadline = time.perf_counter() + seconds

    async def loop() -> None:
        nonlocal done
        while time.perf_counter() < deadline:
            await client.get(CEILING_KEY)
            done += 1

    started = time.perf_counter()
    try:
        await asyncio.gather(*(loop() for _ in range(concurrency)))
    finally:
        await client.aclose()
    return done / (time.perf_counter() - started)


def wait_outbox_drained(services: Services, client: redis.Redis, groups: int = 16) -> None:
    def drained() -> bool:
        return sum(int(client.xlen(outbox(g))) for g in range(groups)) == 0

    services.wait_until(drained, "the outbox relay to drain", 300)


class Run:
    def __init__(self, plan: Plan) -> None:
        self.plan = plan
        self.catalogue = Catalogue(plan.skus, plan.sites)
        self.raw = plan.out / "raw"
        self.services = Services(self.raw / "logs", api_workers=plan.api_workers)
        self.results: dict[str, Any] = {}
        self.profiles: dict[str, Any] = {}
        self.recordings: list[profiling.Recording] = []
        self.profile_texts: list[str] = []
        self.cpu_meter = CpuMeter(self._role_roots())
        #: CPU per request (or event) by process, per phase (benchmarks/cpu.py).
        self.cpu: dict[str, dict[str, Any]] = {}

    # -- helpers -----------------------------------------------------------------------------

    def _role_roots(self) -> dict[str, Any]:
        services = self.services

        def child(name: str) -> Any:
            return lambda: [c.proc.pid] if (c := services.children.get(name)) else []

        def managed(get: Any) -> Any:
            return lambda: [proc.pid] if (proc := get().proc) is not None else []

        return {
            "api": child("api"),
            "ceiling": child("ceiling"),
            "worker": child("worker"),
            "redis": managed(lambda: services.stack.redis),
            "broker": managed(lambda: services.stack.kafka),
        }

    def mark(self) -> float:
        """A CPU sample now (the edge of a timed span); its wall time."""
        return self.cpu_meter.sample().at

    def record_cpu(
        self, name: str, window: Window | None, units: float, unit: str = "event"
    ) -> None:
        """Keep ``window``'s CPU per ``unit`` (request, event) of each process as ``name``."""
        if window is None or window.seconds < 0.2 or units <= 0:
            return  # too short a span to tell (a quick run's fold)
        self.cpu[name] = {
            "unit": unit,
            "window_s": round(window.seconds, 2),
            "units": round(units),
            "busy_cores": round(window.busy_cores, 2),
            "us_per_unit": window.per_unit_us(units),
        }

    def record_phase_cpu(self, phase: Phase, row_name: str) -> None:
        """CPU per request of ``row_name`` while every user of ``phase`` ran: each process's CPU
        rate over the steady span (a second in from each end), divided by the row's rate."""
        span = phase.steady_span()
        row = phase.rows.get(row_name)
        if span is None or row is None or not row.rps:
            return
        # A second in from each end (less on short phases): the history's times are whole
        # seconds.
        margin = min(1.0, (span[1] - span[0]) / 4)
        window = self.cpu_meter.window(span[0] + margin, span[1] - margin)
        if window is not None:
            self.record_cpu(phase.name, window, row.rps * window.seconds, "request")

    def locust_env(self) -> dict[str, str]:
        s = self.services
        return {
            **s.env(),
            "ATP_BENCH_HOST": s.api_url,
            "ATP_BENCH_CEILING_HOST": s.ceiling_url,
            "ATP_BENCH_API_KEY": s.read_key,
            "ATP_BENCH_OMS_KEY": s.oms_key,
            "ATP_BENCH_SKUS": str(self.catalogue.skus),
            "ATP_BENCH_SITES": str(self.catalogue.sites),
        }

    def phase(self, name: str, user_class: str, **extra_env: str) -> Phase:
        say(f"locust: {name} ({self.plan.users} users, {self.plan.phase_seconds:g} s)")
        self.services.check_alive()
        result = run_phase(
            name,
            [one_stage(self.plan.users, self.plan.phase_seconds, user_class)],
            env=self.locust_env(),
            out_dir=self.raw / "locust",
            processes=self.plan.locust_processes,
            extra_env=extra_env,
        )
        self.services.check_alive()
        return result

    def profile(self, name: str, child: str, seconds: float) -> None:
        if not self.plan.profile:
            return
        pid = self.services.children[child].proc.pid
        recording = profiling.start_recording(name, pid, seconds, self.raw / "profiles")
        if recording is not None:
            self.recordings.append(recording)

    def collect_profiles(self) -> None:
        for recording in self.recordings:
            if recording.wait(60) and recording.raw_path.stat().st_size:
                summary = profiling.summarise(recording.raw_path)
                self.profiles[recording.name] = summary
                self.profile_texts.append(profiling.render(recording.name, summary))
        self.recordings.clear()
        if self.profile_texts:
            (self.plan.out / "profiles.md").write_text(
                "# py-spy summaries (share of on-CPU samples)\n\n" + "\n".join(self.profile_texts)
            )

    # -- the run -----------------------------------------------------------------------------

    def execute(self) -> dict[str, Any]:
        plan = self.plan
        plan.out.mkdir(parents=True, exist_ok=True)
        started_at = datetime.now(UTC).isoformat(timespec="seconds")
        t0 = time.monotonic()
        services = self.services
        say(f"{plan.mode} run; results in {plan.out}")
        sync_redis = redis.Redis.from_url(services.stack.redis_url, decode_responses=True)
        with RssSampler(services) as rss, self.cpu_meter:
            try:
                services.start_stack()
                services.start_api()
                self._load_catalogue(sync_redis, rss)
                self._freshness()
                self._http_phases()
                self._peak()
                rss.sample()
            finally:
                self.collect_profiles()
                services.stop()
                sync_redis.close()
            self.results["memory"].update(
                api_rss_peak_bytes=rss.peak.get("api"),
                worker_rss_peak_bytes=rss.peak.get("worker"),
                redis_rss_peak_bytes=rss.peak.get("redis"),
            )
        self.results.update(
            mode=plan.mode,
            started_at=started_at,
            seconds=round(time.monotonic() - t0, 1),
            machine={
                "cpus": os.cpu_count(),
                "python": platform.python_version(),
                "platform": platform.platform(),
                "note": os.environ.get(
                    "ATP_BENCH_NOTE", "load generator, API, worker, Redis and broker share it"
                ),
            },
            config={
                "users": plan.users,
                "phase_seconds": plan.phase_seconds,
                "peak_users": plan.peak_users,
                "peak_seconds": plan.peak_seconds,
                "api_workers": plan.api_workers,
                "fold_workers": 1,
                "locust_processes": plan.locust_processes,
            },
        )
        if self.profiles:
            self.results["profiles"] = self.profiles
        self.results["cpu"] = self.cpu
        self.results["targets"] = report.check_targets(self.results)
        self._plots()
        report.write(self.results, plan.out)
        return self.results

    def _load_catalogue(self, sync_redis: redis.Redis, rss: RssSampler) -> None:
        services, catalogue = self.services, self.catalogue
        before = int(sync_redis.info("memory")["used_memory"])
        keys_before = int(sync_redis.dbsize())
        say(f"producing {catalogue.item_sites:,} snapshots to wms.inventory.v1")
        produced = asyncio.run(
            produce_catalogue(services.stack.bootstrap, catalogue, uuid.uuid4().hex[:8])
        )
        say(f"produced at {produced.per_second:,.0f} msg/s; bare consumer reading them back")
        consumed = asyncio.run(
            bare_consume(services.stack.bootstrap, catalogue.item_sites, mark=self.mark)
        )
        self.record_cpu("bare_consumer", self.cpu_meter.window(*consumed.marks), consumed.messages)
        say(f"bare consumer: {consumed.per_second:,.0f} events/s; starting the worker")
        services.start_worker()
        fold_timeout = max(120.0, catalogue.item_sites / 500)
        self.profile("worker-fold", "worker", min(30.0, catalogue.item_sites / 20_000 + 1))
        folded = wait_folded(
            services.worker_metrics_url,
            catalogue.item_sites,
            services.check_alive,
            fold_timeout,
            mark=self.mark,
        )
        say(f"folded {folded.events:,} events at {folded.per_second:,.0f}/s; draining the outbox")
        wait_outbox_drained(services, sync_redis)
        # From the first fold seen to the last event relayed: all it took to fold and publish.
        self.record_cpu(
            "fold", self.cpu_meter.window(folded.first_seen, self.mark()), folded.events
        )
        after = int(sync_redis.info("memory")["used_memory"])
        keys_after = int(sync_redis.dbsize())
        rss.sample()
        self.results["catalogue"] = {
            "skus": catalogue.skus,
            "sites": catalogue.sites,
            "item_sites": catalogue.item_sites,
            "produce_msgs_per_s": round(produced.per_second),
        }
        self.results["ceilings"] = {
            "kafka_bare_consumer": {
                "events": consumed.messages,
                "events_per_s": round(consumed.per_second),
            }
        }
        self.results["fold"] = {
            "events": folded.events,
            "dead_lettered": folded.dead_lettered,
            "seconds": round(folded.seconds, 2),
            "workers": 1,
            "events_per_s_per_worker": round(folded.per_second),
            "ratio_to_bare_consumer": _safe_ratio(folded.per_second, consumed.per_second),
        }
        sample = self._sample_key_sizes(sync_redis)
        self.results["memory"] = {
            "redis_used_memory_delta_bytes": after - before,
            "redis_bytes_per_item_site": round((after - before) / catalogue.item_sites, 1),
            "redis_keys_per_item_site": round((keys_after - keys_before) / catalogue.item_sites, 2),
            "sample_key_bytes": sample,
            "api_rss_after_load_bytes": services.children["api"].rss_bytes(),
            "worker_rss_after_load_bytes": services.children["worker"].rss_bytes(),
        }

    def _sample_key_sizes(self, sync_redis: redis.Redis) -> dict[str, int]:
        """MEMORY USAGE of one item-site's keys by kind (``p`` position, ``dr`` drift), and
        of the de-duplication chunks its group shares (``d``: their count and mean size)."""
        sizes: dict[str, int] = {}
        with contextlib.suppress(redis.RedisError):
            for key in sync_redis.scan_iter(match="atp:*SKU-00002@*", count=1000):
                kind = key.split(":")[2] if key.count(":") >= 3 else key
                if kind not in sizes:
                    sizes[kind] = int(sync_redis.memory_usage(key, samples=0) or 0)
            chunks = list(sync_redis.scan_iter(match="atp:{g*}:d:*", count=10_000))
            if chunks:
                sample = chunks[:200]
                used = [int(sync_redis.memory_usage(k, samples=0) or 0) for k in sample]
                sizes["d_chunks"] = len(chunks)
                sizes["d_chunk_mean_bytes"] = round(sum(used) / len(used))
        return sizes

    def _freshness(self) -> None:
        plan, services = self.plan, self.services
        say(f"freshness: {plan.freshness_rate:g} events/s for {plan.freshness_seconds:g} s")
        self.profile("worker-steady-2000", "worker", plan.freshness_seconds)
        fresh = asyncio.run(
            measure_freshness(
                services.stack.bootstrap,
                services.api_url,
                services.read_key,
                self.catalogue,
                rate=plan.freshness_rate,
                seconds=plan.freshness_seconds,
            )
        )
        self._freshness_raw = fresh
        self.results["freshness"] = {
            "rate_asked": plan.freshness_rate,
            "rate_sent": round(fresh.rate_sent),
            "seconds": round(fresh.seconds, 1),
            "probes": len(fresh.latencies_ms),
            "timeouts": fresh.timeouts,
            "p50_ms": _round(fresh.percentile(50)),
            "p95_ms": _round(fresh.percentile(95)),
            "p99_ms": _round(fresh.percentile(99)),
            "max_ms": _round(max(fresh.latencies_ms, default=None)),
            # the same probes, produce -> delivered to a bare consumer (aiokafka defaults)
            "kafka_p50_ms": _round(fresh.percentile(50, kafka=True)),
            "kafka_p99_ms": _round(fresh.percentile(99, kafka=True)),
        }

    def _http_phases(self) -> None:
        plan = self.plan
        users = plan.users
        self.phases: dict[str, Phase] = {}
        http = self.phases["ceiling_http"] = self.phase("ceiling_http", "HttpCeilingUser")
        fixed = self.phases["ceiling_http_fixed_url"] = self.phase(
            "ceiling_http_fixed_url", "FixedUrlCeilingUser"
        )
        self.profile("api-availability", "api", plan.phase_seconds)
        avail = self.phases["availability"] = self.phase("availability", "AvailabilityUser")
        self.collect_profiles()
        http_row, avail_row = http.row("ceiling http"), avail.row("availability")
        half = http_row.rps / 2
        half_load = self.phases["availability_half_load"] = self.phase(
            "availability_half_load", "AvailabilityUser", ATP_BENCH_USER_RPS=f"{half / users:.3f}"
        )
        self.profile("api-batch50", "api", plan.phase_seconds)
        batch = self.phases["batch50"] = self.phase("batch50", "BatchReadUser")
        say(f"redis.asyncio GET loop, {users} tasks")
        direct = asyncio.run(
            redis_direct_ceiling(self.services.stack.redis_url, users, min(5.0, plan.phase_seconds))
        )
        redis_phase = self.phases["ceiling_redis"] = self.phase("ceiling_redis", "RedisCeilingUser")
        self.profile("api-reservations", "api", plan.phase_seconds)
        reserve = self.phases["reservations"] = self.phase("reservations", "ReserveOnlyUser")
        self.collect_profiles()
        self.profile("api-promise20", "api", plan.phase_seconds)
        promise = self.phases["promise"] = self.phase("promise", "PromiseUser")
        promise20 = self.phases["promise20"] = self.phase("promise20", "Promise20User")
        self.collect_profiles()
        say("a 50-line promise, one at a time over HTTP, then the planner alone")
        promise50 = promise_latency.measure(
            self.services.api_url,
            self.services.read_key,
            self.catalogue,
            requests=50 if plan.mode == "quick" else 300,
        )
        redis_row, reserve_row = redis_phase.row("ceiling redis"), reserve.row("reserve 2 lines")
        sold_out = reserve.rows.get("reserve 2 lines: insufficient_stock")
        fixed_row = fixed.row("ceiling http, fixed url")
        for phase, row_name in (
            (http, "ceiling http"),
            (fixed, "ceiling http, fixed url"),
            (avail, "availability"),
            (half_load, "availability"),
            (batch, "availability batch 50"),
            (redis_phase, "ceiling redis"),
            (reserve, "reserve 2 lines"),
            (promise, "promise 1 line"),
            (promise20, "promise 20 lines"),
        ):
            self.record_phase_cpu(phase, row_name)
        self.results["ceilings"].update(
            http={**http_row.as_dict(), "users": users},
            http_fixed_url={**fixed_row.as_dict(), "users": users},
            redis={**redis_row.as_dict(), "users": users},
            redis_direct={"ops_per_s": round(direct), "tasks": users},
        )
        self.results["availability"] = {
            **avail_row.as_dict(),
            "users": users,
            "ratio_to_http_ceiling": _safe_ratio(avail_row.rps, http_row.rps),
        }
        half_row = half_load.row("availability")
        self.results["availability_half_load"] = {
            **half_row.as_dict(),
            "target_rps": round(half),
            "users": users,
        }
        batch_row = batch.row("availability batch 50")
        self.results["batch50"] = {
            **batch_row.as_dict(),
            "items_per_s": round(batch_row.rps * 50),
            "users": users,
        }
        self.results["reservations"] = {
            **reserve_row.as_dict(),
            "users": users,
            "lines": 2,
            "insufficient_stock": sold_out.requests if sold_out else 0,
            "ratio_to_redis_ceiling": _safe_ratio(reserve_row.rps, redis_row.rps),
        }
        self.results["promise"] = {
            **promise.row("promise 1 line").as_dict(),
            "users": users,
            "lines": 1,
        }
        self.results["promise20"] = {
            **promise20.row("promise 20 lines").as_dict(),
            "users": users,
            "lines": 20,
        }
        self.results["promise50"] = promise50.figures()

    def _peak(self) -> None:
        plan = self.plan
        # The spike offers about 1.25x what the storefront phase served; ramp and sustain less.
        capacity = self.results["availability"]["rps"] or 1000.0
        per_user = 1.25 * capacity / plan.peak_users
        say(f"locust: peak ({plan.peak_users} users at most, {plan.peak_seconds:g} s)")
        phase = self.phases["peak"] = run_phase(
            "peak",
            peak_stages(plan.peak_users, plan.peak_seconds),
            env=self.locust_env(),
            out_dir=self.raw / "locust",
            processes=plan.locust_processes,
            reset_stats=False,
            extra_env={"ATP_BENCH_USER_RPS": f"{per_user:.3f}"},
        )
        self.services.check_alive()
        self.results["peak"] = {
            "users": plan.peak_users,
            "seconds": plan.peak_seconds,
            "user_rps": round(per_user, 2),
            "rows": {name: row.as_dict() for name, row in phase.rows.items()},
        }

    def _plots(self) -> None:
        plots = []
        titles = {
            "ceiling_http": "HTTP ceiling (constant JSON, asked as a product page)",
            "ceiling_http_fixed_url": "HTTP ceiling at one fixed URL (reference)",
            "availability": "Availability reads, one sku",
            "availability_half_load": "Availability at half the HTTP ceiling's load",
            "batch50": "Availability batch of 50 skus",
            "ceiling_redis": "Redis ceiling (one GET per request, asked as a reservation)",
            "reservations": "Reservations of 2 lines",
            "promise": "Promises of 1 line",
            "promise20": "Promises of 20 lines",
            "peak": "Peak: ramp, spike (flash sale), sustain",
        }
        for name, phase in getattr(self, "phases", {}).items():
            png = self.plan.out / f"{name}.png"
            if phase.history_path.exists() and report.plot_phase(
                phase.history_path, titles.get(name, name), png
            ):
                plots.append(png.name)
        fresh = getattr(self, "_freshness_raw", None)
        if fresh is not None:
            png = self.plan.out / "freshness.png"
            if report.plot_freshness(fresh.latencies_ms, fresh.sent_at_s, png):
                plots.append(png.name)
        self.results["plots"] = plots


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 1)


def main(argv: list[str] | None = None) -> int:
    plan = make_plan(build_parser().parse_args(argv))
    try:
        results = Run(plan).execute()
    except (BenchError, TimeoutError) as exc:
        print(f"benchmark failed: {exc}", file=sys.stderr)
        return 1
    print()
    print(report.markdown(results))
    say(f"done in {results['seconds']:g} s; {plan.out / 'results.json'}")
    return 0
