"""The persistence benchmark's redis-server arguments and summary (no I/O)."""

from __future__ import annotations

from benchmarks.durability import SETTINGS, summarise, with_args


def test_a_setting_replaces_the_embedded_servers_persistence_arguments() -> None:
    argv = ["redis-server", "--port", "1", "--save", "", "--appendonly", "no"]

    always = with_args(argv, SETTINGS[2].redis_args)

    assert always[always.index("--appendonly") + 1] == "yes"
    assert always[always.index("--appendfsync") + 1] == "always"
    assert always.count("--appendonly") == 1 and always[:3] == argv[:3]


def test_the_summary_takes_the_median_of_each_settings_runs() -> None:
    runs = [
        {"setting": "AOF always", "rps": rps, "p50_ms": 5, "p99_ms": 9,
         "redis_cpu_us_per_request": 70.0, "store_rps": rps * 2, "store_p99_ms": 3,
         "alone_p50_ms": 0.2, "alone_p99_ms": 0.9}
        for rps in (100.0, 300.0, 200.0)
    ]  # fmt: skip

    [row] = summarise(runs)

    assert (row["setting"], row["runs"], row["rps_median"]) == ("AOF always", 3, 200.0)
    assert row["store_rps_median"] == 400.0
