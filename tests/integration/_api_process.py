"""`atp api` (``python -m atp_service api``) as a real uvicorn process, for integration tests."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import httpx

from atp_service.embedded import LOOPBACK, free_port

READ_KEY = "it-reader-key"
ADMIN_KEY = "it-admin-key"
READER = {"Authorization": f"Bearer {READ_KEY}"}
ADMIN = {"Authorization": f"Bearer {ADMIN_KEY}"}
API_KEYS = [
    {"name": "storefront", "key": READ_KEY, "scopes": ["availability:read"]},
    {"name": "ops", "key": ADMIN_KEY, "scopes": ["admin", "availability:read"]},
]
#: Long enough that only a hang (not a slow 503) trips it.
HANG = 10.0


@dataclass
class ApiProcess:
    url: str
    proc: subprocess.Popen[bytes]
    log: Path

    def client(self) -> httpx.AsyncClient:
        return httpx.AsyncClient(base_url=self.url, timeout=HANG)

    def log_tail(self) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-30:])


def start_api(workdir: Path, redis_url: str, kafka: str, **env: str) -> ApiProcess:
    """`python -m atp_service api` (the `atp api` command) on a free port."""
    port = free_port()
    workdir.mkdir(parents=True, exist_ok=True)
    log = workdir / "api.log"
    environment = {
        **os.environ,
        "ATP_REDIS_URL": redis_url,
        "ATP_KAFKA_BROKERS": kafka,
        "ATP_API_KEYS": json.dumps(API_KEYS),
        **env,
    }
    with log.open("ab") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "atp_service", "api", "--host", LOOPBACK, "--port", str(port)],
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=environment,
            cwd=workdir,  # no stray .env
        )
    api = ApiProcess(f"http://{LOOPBACK}:{port}", proc, log)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        assert proc.poll() is None, f"atp api exited with {proc.returncode}:\n{api.log_tail()}"
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(f"{api.url}/healthz", timeout=1).status_code == 200:
                return api
        time.sleep(0.1)
    raise AssertionError(f"atp api did not come up:\n{api.log_tail()}")


def stop_api(api: ApiProcess) -> None:
    if api.proc.poll() is None:
        api.proc.send_signal(signal.SIGINT)
        try:
            api.proc.wait(15)
        except subprocess.TimeoutExpired:
            api.proc.kill()
            api.proc.wait(5)
