"""Where the time goes: py-spy records a process under load; we summarise the stacks.

``py-spy record --format raw`` writes collapsed stacks (``frame;frame;... count``). The
summary gives, per function, its share of the samples as the leaf (self) and anywhere on
the stack (inclusive), which is what the next optimisation needs to start from.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

_LINE = re.compile(r"^(?P<stack>.*) (?P<count>\d+)$")
_FRAME_LINE = re.compile(r":\d+\)$")


def py_spy() -> str | None:
    candidate = Path(sys.executable).with_name("py-spy")
    return str(candidate) if candidate.exists() else shutil.which("py-spy")


@dataclass
class Recording:
    name: str
    raw_path: Path
    proc: subprocess.Popen[bytes]

    def wait(self, timeout: float) -> bool:
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.terminate()
            self.proc.wait(5)
        return self.raw_path.exists()


def start_recording(
    name: str, pid: int, seconds: float, out_dir: Path, rate: int = 200
) -> Recording | None:
    """Record ``pid`` and its subprocesses for ``seconds`` in the background."""
    binary = py_spy()
    if binary is None:
        return None
    out_dir.mkdir(parents=True, exist_ok=True)
    raw = out_dir / f"{name}.txt"
    raw.unlink(missing_ok=True)
    argv = [
        binary, "record",
        "--pid", str(pid),
        "--subprocesses",
        "--duration", str(max(1, int(seconds))),
        "--rate", str(rate),
        "--format", "raw",
        "--nonblocking",
        "--output", str(raw),
    ]  # fmt: skip
    with (out_dir / f"{name}.log").open("wb") as log:
        proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT)
    return Recording(name, raw, proc)


PROJECT = ("atp_service", "stream_agents", "benchmarks")


def _where(frame: str) -> tuple[str, str]:
    """``name (fastapi/routing.py:123)`` -> (``name (fastapi/routing.py)``, ``fastapi``)."""
    name, _, where = frame.partition(" (")
    path = _FRAME_LINE.sub(")", where).rstrip(")")
    package = path.split("/", 1)[0].removesuffix(".py") or "?"
    if package.startswith("<"):
        package = "python"
    return f"{name} ({path})", package


def summarise(raw_path: Path, top: int = 15) -> dict[str, Any]:
    """Self time by package and by function, and inclusive time of the project's functions,
    as percentages of the on-CPU samples (py-spy leaves idle threads out)."""
    own: Counter[str] = Counter()
    by_package: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    total = 0
    for line in raw_path.read_text(errors="replace").splitlines():
        match = _LINE.match(line.strip())
        if not match:
            continue
        count = int(match["count"])
        # py-spy prefixes the process ("process 123:...") and maybe the thread: drop them.
        frames = [
            _where(f)
            for f in match["stack"].split(";")
            if f and not f.startswith(("process ", "thread "))
        ]
        if not frames:
            continue
        total += count
        leaf, package = frames[-1]
        own[leaf] += count
        by_package[package] += count
        for function in {fn for fn, pkg in frames if pkg in PROJECT}:
            inclusive[function] += count

    def share(counter: Counter[str], n: int) -> list[list[Any]]:
        return (
            [[fn, round(100 * c / total, 1)] for fn, c in counter.most_common(n)] if total else []
        )

    return {
        "samples": total,
        "self_by_package_percent": share(by_package, top),
        "self_percent": share(own, top),
        "project_inclusive_percent": share(inclusive, top + 5),
    }


def render(name: str, summary: dict[str, Any]) -> str:
    lines = [f"## {name} ({summary['samples']} on-CPU samples)", "", "```", "self %  package"]
    lines += [f"{pct:6.1f}  {pkg}" for pkg, pct in summary["self_by_package_percent"]]
    lines += ["", "self %  function"]
    lines += [f"{pct:6.1f}  {fn}" for fn, pct in summary["self_percent"]]
    lines += ["", "incl %  project function (time spent in it and below)"]
    lines += [f"{pct:6.1f}  {fn}" for fn, pct in summary["project_inclusive_percent"]]
    lines += ["```"]
    return "\n".join(lines) + "\n"
