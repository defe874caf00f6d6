"""Run one Locust phase headless and read its final aggregated stats.

Each measured phase is its own Locust run, so that its rows are its own: request rates are
Locust's ``total_rps`` of the final row (requests / time since the stats were reset after
the spawn), and percentiles are those of the final row, over every request of the phase.
The per-second history (``--csv-full-history``) is only for the plots.
"""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

LOCUSTFILE = Path(__file__).resolve().parent / "locustfile.py"
PERCENTILES = ("50%", "95%", "99%")


@dataclass
class Row:
    """One final row of ``*_stats.csv``."""

    name: str
    requests: int
    failures: int
    rps: float
    p50: float
    p95: float
    p99: float
    max: float

    def as_dict(self) -> dict[str, Any]:
        return {
            "requests": self.requests,
            "failures": self.failures,
            "rps": round(self.rps, 1),
            "p50_ms": self.p50,
            "p95_ms": self.p95,
            "p99_ms": self.p99,
            "max_ms": self.max,
        }


@dataclass
class Phase:
    name: str
    users: int
    seconds: float
    csv_prefix: Path
    rows: dict[str, Row] = field(default_factory=dict)
    exit_code: int = 0

    @property
    def history_path(self) -> Path:
        return Path(f"{self.csv_prefix}_stats_history.csv")

    def row(self, name: str) -> Row:
        if name not in self.rows:
            raise KeyError(f"phase {self.name!r} made no {name!r} request (log: {self.log_path})")
        return self.rows[name]

    @property
    def log_path(self) -> Path:
        return Path(f"{self.csv_prefix}.log")

    def steady_span(self) -> tuple[float, float] | None:
        """Wall times (Unix seconds) of the first and last history rows with every user of
        the phase running, inside which the load is steady; None without two such rows."""
        if not self.history_path.exists():
            return None
        stamps: list[float] = []
        with self.history_path.open(newline="") as f:
            for record in csv.DictReader(f):
                if (
                    record["Name"] == "Aggregated"
                    and int(_number(record["User Count"])) == self.users
                ):
                    stamps.append(_number(record["Timestamp"]))
        if len(stamps) < 2:
            return None
        return min(stamps), max(stamps)


def _number(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        return 0.0


def read_stats(path: Path) -> dict[str, Row]:
    rows: dict[str, Row] = {}
    with path.open(newline="") as f:
        for record in csv.DictReader(f):
            rows[record["Name"]] = Row(
                name=record["Name"],
                requests=int(record["Request Count"]),
                failures=int(record["Failure Count"]),
                rps=_number(record["Requests/s"]),
                p50=_number(record["50%"]),
                p95=_number(record["95%"]),
                p99=_number(record["99%"]),
                max=_number(record["Max Response Time"]),
            )
    return rows


def run_phase(
    name: str,
    stages: list[dict[str, Any]],
    *,
    env: dict[str, str],
    out_dir: Path,
    processes: int,
    reset_stats: bool = True,
    extra_env: dict[str, str] | None = None,
) -> Phase:
    """Run Locust headless through ``stages`` (see locustfile.PeakShape); read its final rows."""
    out_dir.mkdir(parents=True, exist_ok=True)
    prefix = out_dir / name
    for old in out_dir.glob(f"{name}_*.csv"):
        old.unlink()
    argv = [
        sys.executable, "-m", "locust",
        "-f", str(LOCUSTFILE),
        "--headless",
        "--csv", str(prefix),
        "--csv-full-history",
        "--only-summary",
        "--loglevel", "WARNING",
        "--stop-timeout", "2",
    ]  # fmt: skip
    if processes > 1:
        argv += ["--processes", str(processes)]
    if reset_stats:
        argv.append("--reset-stats")
    run_env = {
        **env,
        **(extra_env or {}),
        "ATP_BENCH_STAGES": json.dumps(stages),
        "PYTHONPATH": os.pathsep.join(
            filter(None, [str(LOCUSTFILE.parent.parent), env.get("PYTHONPATH")])
        ),
    }
    phase = Phase(
        name,
        users=max(int(s["users"]) for s in stages),
        seconds=sum(float(s["seconds"]) for s in stages),
        csv_prefix=prefix,
    )
    with phase.log_path.open("wb") as log:
        done = subprocess.run(
            argv, env=run_env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
        )
    phase.exit_code = done.returncode
    stats = Path(f"{prefix}_stats.csv")
    if not stats.exists():
        raise RuntimeError(f"Locust phase {name!r} wrote no stats; see {phase.log_path}")
    phase.rows = read_stats(stats)
    return phase
