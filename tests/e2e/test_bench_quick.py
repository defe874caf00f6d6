"""The benchmark's quick mode runs end to end and produces every figure (no timing asserted)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

FIGURES = {
    "availability": ("rps", "p50_ms", "p95_ms", "p99_ms", "ratio_to_http_ceiling"),
    "availability_half_load": ("rps", "target_rps", "p99_ms"),
    "batch50": ("items_per_s", "p99_ms"),
    "reservations": ("rps", "p99_ms", "ratio_to_redis_ceiling"),
    "promise": ("rps", "p50_ms", "p95_ms", "p99_ms"),
    "promise20": ("rps", "p50_ms", "p95_ms", "p99_ms"),
    "promise50": ("http_p50_ms", "http_p99_ms", "plan_p50_ms", "plan_p99_ms"),
    "fold": ("events_per_s_per_worker", "ratio_to_bare_consumer"),
    "freshness": ("p50_ms", "p99_ms", "kafka_p50_ms", "kafka_p99_ms"),
    "memory": (
        "redis_bytes_per_item_site",
        "api_rss_peak_bytes",
        "worker_rss_peak_bytes",
    ),
}
CEILINGS = {
    "http": "rps",
    "http_fixed_url": "rps",
    "redis": "rps",
    "redis_direct": "ops_per_s",
    "kafka_bare_consumer": "events_per_s",
}
PLOTS = (
    "ceiling_http",
    "ceiling_http_fixed_url",
    "availability",
    "availability_half_load",
    "batch50",
    "ceiling_redis",
    "reservations",
    "promise",
    "promise20",
    "peak",
    "freshness",
)


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("bench-quick")
    argv = [
        sys.executable, "-m", "benchmarks", "--quick",
        "--skus", "1000",
        "--phase-seconds", "2",
        "--peak-seconds", "5",
        "--freshness-seconds", "2",
        "--out", str(out),
    ]  # fmt: skip
    done = subprocess.run(
        argv,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return out


@pytest.mark.e2e
def test_quick_mode_writes_every_figure_with_its_ceiling(quick_run: Path) -> None:
    results = json.loads((quick_run / "results.json").read_text())
    for section, fields in FIGURES.items():
        for name in fields:
            assert results[section][name] is not None, f"{section}.{name} missing"
    for ceiling, name in CEILINGS.items():
        assert results["ceilings"][ceiling][name] > 0, f"ceiling {ceiling} not measured"
    assert results["catalogue"]["item_sites"] == 5_000
    assert results["fold"]["events"] == 5_000, "the catalogue went through the worker's fold"
    assert results["fold"]["dead_lettered"] == 0
    assert results["freshness"]["probes"] > 0
    assert {"availability", "reserve 2 lines", "flash sale reserve", "promise 1 line"} <= set(
        results["peak"]["rows"]
    )
    for name in ("promise", "promise20"):
        assert results[name]["failures"] == 0, f"{name}: failed requests"
        assert results[name]["requests"] > 0, name
    assert set(results["targets"]) == {
        "availability_ratio",
        "availability_half_load_p99_ms",
        "reservations_ratio",
        "fold_ratio",
        "fold_events_per_s",
        "freshness_p99_ms",
        "redis_bytes_per_item_site",
    }


@pytest.mark.e2e
def test_quick_mode_measures_the_cpu_of_every_process_per_request(quick_run: Path) -> None:
    cpu = json.loads((quick_run / "results.json").read_text())["cpu"]
    # the HTTP phases; the quick run's Kafka spans are too short to measure
    assert set(cpu) >= {
        "ceiling_http",
        "availability",
        "ceiling_redis",
        "reservations",
        "promise",
        "promise20",
    }
    for name, entry in cpu.items():
        per = entry["us_per_unit"]
        assert per["all"] > 0 and entry["busy_cores"] > 0, name
        # the roles add up to what the machine was busy (CPU times tick every 10 ms)
        assert sum(v for k, v in per.items() if k not in ("other", "all")) <= per["all"] * 1.2
    assert cpu["ceiling_http"]["us_per_unit"]["ceiling"] > 0
    assert cpu["availability"]["us_per_unit"]["api"] > 0
    assert cpu["reservations"]["us_per_unit"]["redis"] > 0
    assert cpu["promise20"]["us_per_unit"]["api"] > 0


@pytest.mark.e2e
def test_quick_mode_writes_the_table_and_a_plot_per_phase(quick_run: Path) -> None:
    table = (quick_run / "results.md").read_text()
    assert "| availability reads, 1 sku |" in table
    assert "| reservations, 2 lines |" in table
    assert "| promise, 1 line |" in table
    assert "| promise, 20 lines |" in table
    assert "| promise, 50 lines, one at a time (planner alone) |" in table
    assert "| reservation, 2 lines (held, then expired) |" in table  # the CPU table
    for name in PLOTS:
        png = quick_run / f"{name}.png"
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", f"{png.name} is not a PNG"
