"""Figures out: results.json, a Markdown table, PNG plots over time (from Locust's history)."""

from __future__ import annotations

import csv
import json
from collections import defaultdict
from pathlib import Path
from typing import Any

TARGETS = {
    "availability_ratio": ("availability req/s / HTTP ceiling", ">=", 0.8),
    "availability_half_load_p99_ms": ("availability p99 at half the ceiling's load", "<", 10.0),
    "reservations_ratio": ("reservations req/s / Redis ceiling", ">=", 0.5),
    "fold_ratio": ("fold events/s / bare consumer", ">=", 0.5),
    "fold_events_per_s": ("fold events/s per worker", ">=", 20_000.0),
    "freshness_p99_ms": ("freshness p99 (ms)", "<=", 250.0),
    "redis_bytes_per_item_site": ("Redis bytes per item-site", "<=", 250.0),
}


def target_values(results: dict[str, Any]) -> dict[str, Any]:
    return {
        "availability_ratio": results["availability"]["ratio_to_http_ceiling"],
        "availability_half_load_p99_ms": results["availability_half_load"]["p99_ms"],
        "reservations_ratio": results["reservations"]["ratio_to_redis_ceiling"],
        "fold_ratio": results["fold"]["ratio_to_bare_consumer"],
        "fold_events_per_s": results["fold"]["events_per_s_per_worker"],
        "freshness_p99_ms": results["freshness"]["p99_ms"],
        "redis_bytes_per_item_site": results["memory"]["redis_bytes_per_item_site"],
    }


def check_targets(results: dict[str, Any]) -> dict[str, dict[str, Any]]:
    checked = {}
    for key, value in target_values(results).items():
        label, op, bound = TARGETS[key]
        met = None
        if value is not None:
            met = value >= bound if op == ">=" else value < bound if op == "<" else value <= bound
        checked[key] = {"label": label, "value": value, "target": f"{op} {bound:g}", "met": met}
    return checked


def _fmt(value: Any, digits: int = 0) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float):
        return f"{value:,.{digits}f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def _ratio(value: Any) -> str:
    return "n/a" if value is None else f"{value:.2f}"


def _mib(value: int | None) -> str:
    return "n/a" if value is None else f"{value / 2**20:,.0f} MiB"


def _promise_rows(results: dict[str, Any]) -> list[str]:
    rows = []
    for key, label in (("promise", "promise, 1 line"), ("promise20", "promise, 20 lines")):
        p = results.get(key)
        if p:
            rows.append(
                f"| {label} | {_fmt(p['rps'])} req/s |"
                f" {_fmt(p['p50_ms'])} / {_fmt(p['p95_ms'])} / {_fmt(p['p99_ms'])} | | |"
            )
    p50 = results.get("promise50")
    if p50:
        rows.append(
            f"| promise, 50 lines, one at a time (planner alone) |"
            f" {_fmt(p50['requests'])} requests |"
            f" {_fmt(p50['http_p50_ms'], 2)} / - / {_fmt(p50['http_p99_ms'], 2)}"
            f" ({_fmt(p50['plan_p50_ms'], 2)} / - / {_fmt(p50['plan_p99_ms'], 2)}) | | |"
        )
    return rows


def markdown(results: dict[str, Any]) -> str:
    c = results["ceilings"]
    a = results["availability"]
    h = results["availability_half_load"]
    b = results["batch50"]
    r = results["reservations"]
    f = results["fold"]
    fr = results["freshness"]
    m = results["memory"]
    cat = results["catalogue"]
    users = results["config"]["users"]
    lines = [
        f"Run: {results['mode']} mode, {results['started_at']}, {results['machine']['cpus']} CPUs"
        f" ({results['machine']['note']}); catalogue {cat['skus']:,} skus x {cat['sites']} sites"
        f" = {cat['item_sites']:,} item-sites, loaded through Kafka and the worker's fold;"
        f" {users} Locust users per HTTP phase, {results['config']['phase_seconds']:g} s each,"
        f" {results['config']['locust_processes']} Locust process(es),"
        f" {results['config']['api_workers']} API worker(s).",
        "",
        "| figure | value | p50 / p95 / p99 (ms) | ceiling | ratio |",
        "|---|---|---|---|---|",
        f"| availability reads, 1 sku | {_fmt(a['rps'])} req/s |"
        f" {_fmt(a['p50_ms'])} / {_fmt(a['p95_ms'])} / {_fmt(a['p99_ms'])} |"
        f" HTTP {_fmt(c['http']['rps'])} req/s | {_ratio(a['ratio_to_http_ceiling'])} |",
        f"| availability at half the ceiling's load | {_fmt(h['rps'])} req/s"
        f" (asked {_fmt(h['target_rps'])}) |"
        f" {_fmt(h['p50_ms'])} / {_fmt(h['p95_ms'])} / {_fmt(h['p99_ms'])} | | |",
        f"| batch reads, 50 skus | {_fmt(b['items_per_s'])} items/s ({_fmt(b['rps'])} req/s) |"
        f" {_fmt(b['p50_ms'])} / {_fmt(b['p95_ms'])} / {_fmt(b['p99_ms'])} | | |",
        f"| reservations, 2 lines | {_fmt(r['rps'])} req/s"
        f" ({_fmt(r['insufficient_stock'])} of {_fmt(r['requests'])} answered sold out) |"
        f" {_fmt(r['p50_ms'])} / {_fmt(r['p95_ms'])} / {_fmt(r['p99_ms'])} |"
        f" Redis {_fmt(c['redis']['rps'])} req/s | {_ratio(r['ratio_to_redis_ceiling'])} |",
        *_promise_rows(results),
        f"| fold, per worker | {_fmt(f['events_per_s_per_worker'])} events/s | |"
        f" bare consumer {_fmt(c['kafka_bare_consumer']['events_per_s'])} events/s |"
        f" {_ratio(f['ratio_to_bare_consumer'])} |",
        f"| freshness at {_fmt(fr['rate_asked'])} events/s (produce -> visible over HTTP) |"
        f" {fr['probes']} probes, {fr['timeouts']} timeouts |"
        f" {_fmt(fr['p50_ms'], 1)} / {_fmt(fr['p95_ms'], 1)} / {_fmt(fr['p99_ms'], 1)} |"
        f" bare consumer gets them at p50 {_fmt(fr.get('kafka_p50_ms'), 1)},"
        f" p99 {_fmt(fr.get('kafka_p99_ms'), 1)} | |",
        f"| Redis memory per item-site | {_fmt(m['redis_bytes_per_item_site'])} bytes | | | |",
        f"| RSS peak: API / worker / Redis | {_mib(m['api_rss_peak_bytes'])} /"
        f" {_mib(m['worker_rss_peak_bytes'])} / {_mib(m['redis_rss_peak_bytes'])} | | | |",
        "",
        "Ceilings at the same concurrency, same run, each asked the request of its figure: HTTP "
        f"{_fmt(c['http']['rps'])} req/s (p99 {_fmt(c['http']['p99_ms'])} ms; at one fixed URL"
        f" with no query or header {_fmt(c.get('http_fixed_url', {}).get('rps'))} req/s),"
        f" Redis round trip over HTTP {_fmt(c['redis']['rps'])} req/s"
        f" (p99 {_fmt(c['redis']['p99_ms'])} ms), "
        f"redis.asyncio GET loop without HTTP {_fmt(c['redis_direct']['ops_per_s'])} ops/s, "
        f"bare aiokafka consumer {_fmt(c['kafka_bare_consumer']['events_per_s'])} events/s.",
        "",
        "| target (issue 4) | value | target | met |",
        "|---|---|---|---|",
    ]
    for item in results["targets"].values():
        value = item["value"]
        shown = _ratio(value) if isinstance(value, float) and value < 10 else _fmt(value)
        met = {True: "yes", False: "no", None: "n/a"}[item["met"]]
        lines.append(f"| {item['label']} | {shown} | {item['target']} | {met} |")
    lines += cpu_table(results.get("cpu") or {})
    peak = results.get("peak")
    if peak:
        lines += [
            "",
            "Peak (ramp, spike with flash sale, sustain), whole run:",
            "",
            "| request | count | failures | req/s | p50 / p95 / p99 (ms) |",
            "|---|---|---|---|---|",
        ]
        for name, row in peak["rows"].items():
            lines.append(
                f"| {name} | {_fmt(row['requests'])} | {_fmt(row['failures'])} |"
                f" {_fmt(row['rps'])} | {_fmt(row['p50_ms'])} / {_fmt(row['p95_ms'])} /"
                f" {_fmt(row['p99_ms'])} |"
            )
    if results.get("plots"):
        lines += ["", "Plots: " + ", ".join(f"[{p}]({p})" for p in results["plots"])]
    return "\n".join(lines) + "\n"


#: Phases of the CPU table, in order, and how the table names them.
CPU_PHASES = {
    "ceiling_http": "HTTP ceiling (constant JSON, asked as a product page)",
    "ceiling_http_fixed_url": "HTTP ceiling, one fixed URL (reference)",
    "availability": "availability read, 1 sku",
    "availability_half_load": "availability at half load",
    "batch50": "batch of 50 skus",
    "ceiling_redis": "Redis ceiling (asked as a reservation; one Redis GET)",
    "reservations": "reservation, 2 lines (held, then expired)",
    "promise": "promise, 1 line",
    "promise20": "promise, 20 lines",
    "bare_consumer": "bare consumer (per event)",
    "fold": "fold, until relayed (per event)",
}
CPU_COLUMNS = ("locust", "api", "ceiling", "redis", "worker", "broker", "bench", "other", "all")


def cpu_table(cpu: dict[str, dict[str, Any]]) -> list[str]:
    """CPU per request (or event) of every process, per phase: what bounds each figure."""
    if not cpu:
        return []
    lines = [
        "",
        "CPU per request (per event for the Kafka rows), microseconds, by process, over each"
        " phase's steady span (`benchmarks/cpu.py`); `bench` is the benchmark itself (the bare"
        " consumer, the freshness probes), `other` the rest of the machine; busy = cores busy"
        " of the machine's:",
        "",
        "| phase | " + " | ".join(CPU_COLUMNS) + " | busy |",
        "|---|" + "---|" * (len(CPU_COLUMNS) + 1),
    ]
    for name, label in CPU_PHASES.items():
        entry = cpu.get(name)
        if not entry:
            continue
        per = entry["us_per_unit"]
        cells = [_fmt(per.get(col)) if per.get(col) else "" for col in CPU_COLUMNS]
        lines.append(f"| {label} | " + " | ".join(cells) + f" | {entry['busy_cores']:.2f} |")
    return lines


def write(results: dict[str, Any], out_dir: Path) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    (out_dir / "results.md").write_text(markdown(results))


# -- plots --------------------------------------------------------------------------------------


def _history(path: Path) -> dict[str, list[dict[str, float]]]:
    series: dict[str, list[dict[str, float]]] = defaultdict(list)
    with path.open(newline="") as f:
        for record in csv.DictReader(f):
            if record["99%"] == "N/A":
                continue
            series[record["Name"]].append(
                {
                    "t": float(record["Timestamp"]),
                    "users": float(record["User Count"]),
                    "rps": float(record["Requests/s"]),
                    "p50": float(record["50%"]),
                    "p95": float(record["95%"]),
                    "p99": float(record["99%"]),
                }
            )
    return series


def plot_phase(history: Path, title: str, png: Path) -> bool:
    """Throughput per request name and the aggregated percentiles over time, with users."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    series = _history(history)
    if not series:
        return False
    t0 = min(point["t"] for points in series.values() for point in points)
    fig, (top, bottom) = plt.subplots(2, 1, sharex=True, figsize=(9, 6))
    names = [n for n in series if n != "Aggregated"] or ["Aggregated"]
    for name in names:
        points = series[name]
        top.plot([p["t"] - t0 for p in points], [p["rps"] for p in points], label=name)
    top.set_ylabel("requests/s")
    top.set_title(title)
    top.grid(alpha=0.3)
    agg = series.get("Aggregated") or series[names[0]]
    users = top.twinx()
    users.plot([p["t"] - t0 for p in agg], [p["users"] for p in agg], "k:", label="users")
    users.set_ylabel("users")
    handles, labels = top.get_legend_handles_labels()
    top.legend(handles + users.get_legend_handles_labels()[0], [*labels, "users"], fontsize=8)
    real = [p for p in agg]
    for q, style in (("p50", "-"), ("p95", "--"), ("p99", "-.")):
        bottom.plot([p["t"] - t0 for p in real], [p[q] for p in real], style, label=q)
    bottom.set_ylabel("latency, last 10 s window (ms)")
    bottom.set_xlabel("seconds")
    bottom.grid(alpha=0.3)
    bottom.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(png, dpi=90)
    plt.close(fig)
    return True


def plot_freshness(latencies_ms: list[float], offsets_s: list[float], png: Path) -> bool:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if not latencies_ms:
        return False
    fig, ax = plt.subplots(figsize=(9, 3.5))
    ax.plot(offsets_s, latencies_ms, ".", markersize=4)
    ax.set_xlabel("seconds (probe sent)")
    ax.set_ylabel("produce -> visible over HTTP (ms)")
    ax.set_title("Freshness under steady inbound load")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(png, dpi=90)
    plt.close(fig)
    return True
