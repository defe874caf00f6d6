"""`atp up --demo` as a user runs it: ready, availability moves, Ctrl-C leaves nothing behind."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import threading
import time
from pathlib import Path

import httpx
import pytest

from atp_service.cli import port_is_free
from atp_service.embedded import free_cluster_port_range, free_ports
from tests.e2e.conftest import atp_argv

pytestmark = pytest.mark.e2e

START_DEADLINE = 60.0
MOVE_DEADLINE = 30.0
STOP_DEADLINE = 60.0


class Output:
    """The lines a child prints, collected by a thread so the test can wait for one."""

    def __init__(self, proc: subprocess.Popen[str]) -> None:
        self.lines: list[str] = []
        self._thread = threading.Thread(target=self._read, args=(proc,), daemon=True)
        self._thread.start()

    def _read(self, proc: subprocess.Popen[str]) -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            self.lines.append(line.rstrip("\n"))

    @property
    def text(self) -> str:
        return "\n".join(self.lines)

    def wait_for(self, needle: str, proc: subprocess.Popen[str], timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while needle not in self.text:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"no {needle!r} from `atp up`; it said:\n{self.text}")
            time.sleep(0.1)


def _text(path: Path) -> str:
    return path.read_text(errors="replace") if path.exists() else ""


def processes_using(redis_url: str) -> list[int]:
    """Pids of processes started with this Redis in their environment (our children)."""
    marker = f"ATP_REDIS_URL={redis_url}".encode()
    pids = []
    for environ in Path("/proc").glob("[0-9]*/environ"):
        try:
            if marker in environ.read_bytes().split(b"\0"):
                pids.append(int(environ.parent.name))
        except OSError:
            continue
    return pids


def test_atp_up_demo_serves_moving_availability_and_stops_everything_on_ctrl_c(
    tmp_path: Path,
) -> None:
    names = ("redis", "kafka", "api", "worker-metrics")
    ports = dict(zip(names, free_ports(len(names)), strict=True))
    argv = atp_argv(
        "up", "--demo",
        "--redis-port", str(ports["redis"]),
        "--kafka-port", str(ports["kafka"]),
        "--api-port", str(ports["api"]),
        "--worker-metrics-port", str(ports["worker-metrics"]),
        "--workdir", str(tmp_path / "atp"),
        "--demo-rate", "300",
        "--demo-skus", "50",
    )  # fmt: skip
    # The demo asks the sources for snapshots every 60 s; sooner here, to see the loop.
    env = {**os.environ, "ATP_RECONCILE_EVERY_SECONDS": "2"}
    proc = subprocess.Popen(
        argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
        text=True, env=env,
    )  # fmt: skip
    output = Output(proc)
    redis_url = f"redis://127.0.0.1:{ports['redis']}/0"
    try:
        output.wait_for("Ctrl-C stops everything", proc, START_DEADLINE)
        assert "the worker asks the sources for snapshots every 2s" in output.text
        match = re.search(r"storefront\s+(dev-[0-9a-f]+)", output.text)
        assert match, output.text
        headers = {"Authorization": f"Bearer {match.group(1)}"}
        url = f"http://127.0.0.1:{ports['api']}/v1/availability/SKU-00001"

        def versions() -> tuple[int, ...]:
            response = httpx.get(url, params={"channel": "web"}, headers=headers, timeout=5.0)
            assert response.status_code == 200, response.text
            return tuple(site["version"] for site in response.json()["sites"])

        deadline = time.monotonic() + MOVE_DEADLINE
        first = versions()
        while not any(first):
            assert time.monotonic() < deadline, "the hottest sku never got any stock"
            time.sleep(0.2)
            first = versions()
        later = versions()
        while later == first:
            assert time.monotonic() < deadline, f"availability stayed at versions {first}"
            time.sleep(0.2)
            later = versions()
        assert sum(later) > sum(first)
        dashboard = f"http://127.0.0.1:{ports['api']}/dashboard"
        assert dashboard in output.text  # the operations page's address, among the others
        assert httpx.get(dashboard, timeout=5.0).status_code == 200
        assert len(processes_using(redis_url)) == 3  # worker, API, simulator

        # The reconciliation loop: the worker asks, the simulator answers with snapshots.
        simulator_log = tmp_path / "atp" / "simulator.log"
        while not re.search(r"answering snapreq-\w+: [1-9]\d* wms snapshots", _text(simulator_log)):
            assert time.monotonic() < deadline + MOVE_DEADLINE, _text(simulator_log)
            time.sleep(0.2)

        # Every port it moved is in .atp/env, and the keys by role.
        env = (tmp_path / "atp" / "env").read_text()
        assert f"export ATP_REDIS_URL='{redis_url}'" in env
        assert f"export ATP_KAFKA_BROKERS='127.0.0.1:{ports['kafka']}'" in env
        assert f"export ATP_API_URL='http://127.0.0.1:{ports['api']}'" in env
        assert f"export ATP_WORKER_METRICS_PORT='{ports['worker-metrics']}'" in env
        assert f"export ATP_STOREFRONT_KEY='{match.group(1)}'" in env

        # the demo's sites (examples/sites.json) are in force: the hottest sku is promised
        base = f"http://127.0.0.1:{ports['api']}"
        sites = httpx.get(f"{base}/v1/sites", headers=headers, timeout=5.0).json()["sites"]
        assert sites["DC-EAST"]["cutoff"] == "15:00"
        promise = httpx.post(
            f"{base}/v1/promise",
            json={
                "channel": "web",
                "ship_to": "US-EAST",
                "lines": [{"sku": "SKU-00001", "qty": 1}],
            },
            headers=headers,
            timeout=5.0,
        )
        assert promise.status_code == 200, promise.text
        (line,) = promise.json()["lines"]
        assert {f["site"] for f in line["fulfilments"]} <= {"DC-EAST", "DC-WEST"}
        assert line["promised"] == 1 or line["fulfilments"] == []

        proc.send_signal(signal.SIGINT)
        assert proc.wait(STOP_DEADLINE) == 0, output.text
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert "stopped" in output.lines[-1], output.text
    assert processes_using(redis_url) == []
    for name, port in ports.items():
        assert port_is_free(port), f"{name} port {port} still in use"


def test_atp_up_stops_everything_and_fails_when_one_of_its_processes_dies(
    tmp_path: Path,
) -> None:
    names = ("redis", "kafka", "api")
    ports = dict(zip(names, free_ports(len(names)), strict=True))
    argv = atp_argv(
        "up",
        "--redis-port", str(ports["redis"]),
        "--kafka-port", str(ports["kafka"]),
        "--api-port", str(ports["api"]),
        "--worker-metrics-port", "0",
        "--workdir", str(tmp_path / "atp"),
    )  # fmt: skip
    # The demo asks the sources for snapshots every 60 s; sooner here, to see the loop.
    env = {**os.environ, "ATP_RECONCILE_EVERY_SECONDS": "2"}
    proc = subprocess.Popen(
        argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
        text=True, env=env,
    )  # fmt: skip
    output = Output(proc)
    redis_url = f"redis://127.0.0.1:{ports['redis']}/0"
    try:
        output.wait_for("Ctrl-C stops everything", proc, START_DEADLINE)
        assert "the worker asks the sources for snapshots every 2s" in output.text
        children = {
            pid: Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
            for pid in processes_using(redis_url)
        }
        api = next(pid for pid, cmd in children.items() if b"api" in cmd)
        os.kill(api, signal.SIGKILL)
        assert proc.wait(STOP_DEADLINE) == 1, output.text
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert f"the api exited with code {-signal.SIGKILL}" in output.text
    assert processes_using(redis_url) == []
    for name, port in ports.items():
        assert port_is_free(port), f"{name} port {port} still in use"


def test_atp_up_on_a_redis_cluster_with_two_workers_and_two_api_processes_serves(
    tmp_path: Path,
) -> None:
    """`atp up --redis-cluster 3 --replicas 1 --workers 2 --api-workers 2 --demo`."""
    base = free_cluster_port_range(6)
    kafka, api = free_ports(2)
    argv = atp_argv(
        "up", "--demo",
        "--redis-cluster", "3", "--replicas", "1", "--workers", "2", "--api-workers", "2",
        "--partitions", "4",
        "--redis-port", str(base),
        "--kafka-port", str(kafka),
        "--api-port", str(api),
        "--worker-metrics-port", "0",
        "--workdir", str(tmp_path / "atp"),
        "--demo-rate", "300",
        "--demo-skus", "50",
    )  # fmt: skip
    proc = subprocess.Popen(
        argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, text=True
    )
    output = Output(proc)
    redis_url = ",".join(f"redis://127.0.0.1:{base + n}" for n in range(6))
    try:
        output.wait_for("Ctrl-C stops everything", proc, START_DEADLINE)
        reader = re.search(r"storefront\s+(dev-[0-9a-f]+)", output.text)
        oms = re.search(r"oms\s+(dev-[0-9a-f]+)", output.text)
        assert reader and oms, output.text
        url = f"http://127.0.0.1:{api}"
        env_file = (tmp_path / "atp" / "env").read_text()
        assert "ATP_REDIS_CLUSTER='true'" in env_file and redis_url in env_file

        def atp_of_the_hottest_sku() -> int:
            response = httpx.get(
                f"{url}/v1/availability/SKU-00001", params={"channel": "web"},
                headers={"Authorization": f"Bearer {reader.group(1)}"}, timeout=5.0,
            )  # fmt: skip
            assert response.status_code == 200, response.text
            return int(response.json()["atp"])

        deadline = time.monotonic() + MOVE_DEADLINE
        while atp_of_the_hottest_sku() < 2:
            assert time.monotonic() < deadline, "the demo's stock never arrived"
            time.sleep(0.2)
        sites = httpx.get(
            f"{url}/v1/availability/SKU-00001", params={"channel": "web"},
            headers={"Authorization": f"Bearer {reader.group(1)}"}, timeout=5.0,
        ).json()["sites"]  # fmt: skip
        site = max(sites, key=lambda s: s["atp"])["site"]
        placed = httpx.post(
            f"{url}/v1/reservations",
            json={"channel": "web", "lines": [{"sku": "SKU-00001", "site": site, "qty": 1}]},
            headers={"Authorization": f"Bearer {oms.group(1)}", "Idempotency-Key": "up-1"},
            timeout=5.0,
        )
        assert placed.status_code == 201, placed.text
        # 2 workers, 2 API processes (a parent and its workers), the simulator
        assert len(processes_using(redis_url)) >= 5

        proc.send_signal(signal.SIGINT)
        assert proc.wait(STOP_DEADLINE) == 0, output.text
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert "stopped" in output.lines[-1], output.text
    assert processes_using(redis_url) == []
    for port in [*range(base, base + 6), *range(base + 10_000, base + 10_006), kafka, api]:
        assert port_is_free(port), f"port {port} still in use"
