"""The processes under test: the embedded Redis and Tansu, `atp api`, `atp worker`, the ceilings.

`atp api` and `atp worker` are started as a production-like deployment would start them
(the console commands, configured only by ``ATP_*`` variables); the ceiling app runs through
the same ``serve()`` with the same worker count.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import subprocess
import sys
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import psutil

from atp_service.cli import http_status
from atp_service.embedded import LOOPBACK, EmbeddedStack, free_port


class BenchError(RuntimeError):
    """The benchmark cannot go on (a process died, something never became ready)."""


@dataclass
class Child:
    name: str
    proc: subprocess.Popen[bytes]
    log_path: Path

    def alive(self) -> bool:
        return self.proc.poll() is None

    def log_tail(self, lines: int = 30) -> str:
        with contextlib.suppress(OSError):
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        return "(no log)"

    def rss_bytes(self) -> int:
        """Resident memory of the process and its children (uvicorn workers)."""
        try:
            root = psutil.Process(self.proc.pid)
            return sum(p.memory_info().rss for p in [root, *root.children(recursive=True)])
        except psutil.Error:
            return 0

    def pids(self) -> list[int]:
        try:
            root = psutil.Process(self.proc.pid)
            return [root.pid, *(p.pid for p in root.children(recursive=True))]
        except psutil.Error:
            return []

    def stop(self, timeout: float = 20.0) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


@dataclass
class Services:
    """One benchmark run's processes, keys and addresses."""

    workdir: Path
    api_workers: int = 1
    stack: EmbeddedStack = field(init=False)
    read_key: str = field(default_factory=lambda: f"bench-read-{secrets.token_hex(12)}")
    oms_key: str = field(default_factory=lambda: f"bench-oms-{secrets.token_hex(12)}")
    api_port: int = field(default_factory=free_port)
    ceiling_port: int = field(default_factory=free_port)
    worker_metrics_port: int = field(default_factory=free_port)
    children: dict[str, Child] = field(default_factory=dict)
    #: ``ATP_*`` settings of this run beyond the defaults (every process gets them).
    extra_env: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.stack = EmbeddedStack.on_free_ports(self.workdir)

    @property
    def api_url(self) -> str:
        return f"http://{LOOPBACK}:{self.api_port}"

    @property
    def ceiling_url(self) -> str:
        return f"http://{LOOPBACK}:{self.ceiling_port}"

    @property
    def worker_metrics_url(self) -> str:
        return f"http://{LOOPBACK}:{self.worker_metrics_port}/metrics"

    def env(self) -> dict[str, str]:
        keys = [
            {"name": "bench-storefront", "key": self.read_key, "scopes": ["availability:read"]},
            {
                "name": "bench-oms",
                "key": self.oms_key,
                "scopes": ["reservations:write", "availability:read"],
            },
        ]
        root = str(Path(__file__).resolve().parent.parent)
        return {
            **os.environ,
            "PYTHONUNBUFFERED": "1",
            "PYTHONPATH": os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")])),
            "ATP_REDIS_URL": self.stack.redis_url,
            "ATP_KAFKA_BROKERS": self.stack.bootstrap,
            "ATP_API_KEYS": json.dumps(keys),
            "ATP_WORKER_APP_ID": f"atp-bench-{uuid.uuid4().hex[:8]}",
            "ATP_WORKER_METRICS_PORT": str(self.worker_metrics_port),
            # the demo's ship nodes (their names are the catalogue's): promises plan over them
            "ATP_SITES_FILE": str(Path(root) / "examples" / "sites.json"),
            **self.extra_env,
        }

    # -- starting ------------------------------------------------------------------------------

    def start_stack(self) -> None:
        self.stack.start()

    def _spawn(self, name: str, argv: list[str]) -> Child:
        log_path = self.workdir / f"{name}.log"
        with log_path.open("ab") as log:
            proc = subprocess.Popen(
                argv, env=self.env(), stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
            )
        child = Child(name, proc, log_path)
        self.children[name] = child
        return child

    def start_api(self, *, ceiling: bool = True) -> None:
        """`atp api`, and (``ceiling``) the ceiling app beside it."""
        atp = [sys.executable, "-m", "atp_service"]
        self._spawn(
            "api",
            [*atp, "api", "--host", LOOPBACK, "--port", str(self.api_port),
             "--workers", str(self.api_workers)],
        )  # fmt: skip
        if ceiling:
            self._spawn(
                "ceiling",
                [sys.executable, "-m", "benchmarks.ceiling_app", "--host", LOOPBACK,
                 "--port", str(self.ceiling_port), "--workers", str(self.api_workers)],
            )  # fmt: skip
        self.wait_until(lambda: http_status(f"{self.api_url}/readyz") == 200, "the API", 60)
        if ceiling:
            self.wait_until(
                lambda: http_status(f"{self.ceiling_url}/readyz") == 200, "the ceiling app", 60
            )

    def start_worker(self) -> None:
        self._spawn("worker", [sys.executable, "-m", "atp_service", "worker"])
        self.wait_until(
            lambda: http_status(self.worker_metrics_url) == 200, "the worker's /metrics", 60
        )

    def check_alive(self) -> None:
        for child in self.children.values():
            if not child.alive():
                raise BenchError(
                    f"{child.name} exited with {child.proc.returncode}:\n{child.log_tail()}"
                )

    def wait_until(self, ready: object, what: str, timeout: float) -> None:
        assert callable(ready)
        deadline = time.monotonic() + timeout
        while not ready():
            self.check_alive()
            if time.monotonic() > deadline:
                raise BenchError(f"{what} not ready within {timeout:g}s")
            time.sleep(0.1)

    def stop(self) -> None:
        for name in ("worker", "ceiling", "api"):
            if name in self.children:
                self.children[name].stop()
        self.stack.stop()


class RssSampler:
    """Peak resident memory of each child, sampled in the background."""

    def __init__(self, services: Services, every: float = 0.5) -> None:
        self.services = services
        self.every = every
        self.peak: dict[str, int] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def sample(self) -> dict[str, int]:
        now = {name: c.rss_bytes() for name, c in list(self.services.children.items())}
        now["redis"] = _rss_of(self.services.stack.redis.proc)
        for name, value in now.items():
            self.peak[name] = max(self.peak.get(name, 0), value)
        return now

    def _run(self) -> None:
        while not self._stop.wait(self.every):
            self.sample()


def _rss_of(proc: subprocess.Popen[bytes] | None) -> int:
    if proc is None:
        return 0
    try:
        return int(psutil.Process(proc.pid).memory_info().rss)
    except psutil.Error:
        return 0
