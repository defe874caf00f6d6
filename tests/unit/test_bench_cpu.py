"""The benchmark's CPU meter: CPU per request of each process over a window of samples."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest

from benchmarks.cpu import CpuMeter, Sample, window_between


def _sample(at: float, machine: float, **by_pid: tuple[str, float]) -> Sample:
    return Sample(at, machine, {int(pid.lstrip("p")): v for pid, v in by_pid.items()})


def test_a_window_is_each_roles_cpu_between_its_edge_samples() -> None:
    samples = [
        _sample(0.0, 10.0, p1=("api", 1.0), p2=("redis", 0.5)),
        _sample(1.0, 11.5, p1=("api", 1.6), p2=("redis", 0.7)),
        _sample(2.0, 13.0, p1=("api", 2.2), p2=("redis", 0.9)),
    ]

    window = window_between(samples, 0.0, 2.0)

    assert window is not None
    assert window.seconds == 2.0
    assert window.cpu == pytest.approx({"api": 1.2, "redis": 0.4})
    assert window.busy_cores == pytest.approx(1.5)
    # 1,000 requests in the window: 1.2 ms of API CPU each, 0.4 of Redis, 1.4 of the rest
    assert window.per_unit_us(1000) == pytest.approx(
        {"api": 1200.0, "redis": 400.0, "other": 1400.0, "all": 3000.0}
    )


def test_the_window_uses_the_samples_inside_its_times() -> None:
    samples = [_sample(float(t), 10.0 * t, p1=("api", float(t))) for t in range(5)]

    window = window_between(samples, 0.5, 3.5)  # the samples at 1 and 3

    assert window is not None
    assert (window.seconds, window.cpu["api"], window.machine) == (2.0, 2.0, 20.0)
    assert window_between(samples, 1.2, 1.8) is None  # no sample inside
    assert window_between(samples[:1], 0.0, 5.0) is None


def test_only_processes_seen_at_both_edges_are_counted() -> None:
    samples = [
        _sample(0.0, 0.0, p1=("locust", 5.0), p3=("api", 1.0), p7=("worker", 40.0)),
        _sample(1.0, 1.0, p1=("locust", 5.5), p3=("api", 1.2)),  # p7 not read this time
        _sample(2.0, 2.0, p1=("locust", 6.0), p2=("locust", 0.3), p7=("worker", 40.5)),
    ]

    window = window_between(samples, 1.0, 2.0)

    assert window is not None
    # p2 is new at the end and p7 was missed at the start: neither's share is known (their
    # whole CPU since they started would not be the window's); p3 has ended
    assert window.cpu == pytest.approx({"locust": 0.5})
    assert window.per_unit_us(1)["other"] == pytest.approx(0.5e6)


def test_the_meter_measures_a_busy_child_and_marks_a_span() -> None:
    busy = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    idle = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        meter = CpuMeter({"worker": lambda: [busy.pid], "redis": lambda: [idle.pid]}, every=0.05)
        with meter:
            start = meter.sample().at
            time.sleep(0.6)
            end = meter.sample().at
        window = meter.window(start, end)
    finally:
        busy.kill()
        idle.kill()
        busy.wait()
        idle.wait()

    assert window is not None
    assert window.seconds == pytest.approx(end - start)
    assert window.cpu["worker"] > 0.0
    assert window.cpu.get("redis", 0.0) < window.cpu["worker"]
    assert window.cpu["bench"] >= 0.0  # this process is always a role of its own
    assert [s.at for s in meter.samples] == sorted(s.at for s in meter.samples)
