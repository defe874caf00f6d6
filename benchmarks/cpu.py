"""CPU seconds of every process of a run, sampled in the background: CPU per request by process.

A ratio of the benchmark says how close the service comes to a ceiling; this says why. Every
process of the run (the load generator, the API or the ceiling app, Redis, the worker, the
broker, the benchmark itself) is sampled every ``every`` seconds, and a window of a phase is
turned into CPU per request (or per event) of each: the same request measured on every
process it costs, and the machine's busy share beside it, so that what bounds a phase (one
process at a full core, or the whole machine) is read off the run rather than argued.

A process is known by its role; a role may hold several processes (uvicorn workers, Locust
processes). A window counts the processes seen at both of its edges (the phases' processes
run throughout); what the others used is left in ``other``.
``machine`` is what /proc/stat says every CPU was busy (all tenants of this machine, the
kernel included); ``other`` is ``machine`` less the roles.
"""

from __future__ import annotations

import bisect
import os
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field

import psutil


def _cpu_seconds(proc: psutil.Process) -> float:
    times = proc.cpu_times()
    return float(times.user + times.system)


def machine_busy_seconds() -> float:
    """CPU seconds every CPU of the machine has been busy since boot (not idle, not iowait)."""
    t = psutil.cpu_times()
    return float(sum(t) - t.idle - getattr(t, "iowait", 0.0))


@dataclass
class Sample:
    """One look: wall time, the machine's busy seconds, each process's CPU seconds by role."""

    at: float
    machine: float
    by_pid: dict[int, tuple[str, float]]


@dataclass
class Window:
    """CPU used by each role between two times, and the machine's busy seconds."""

    seconds: float
    cpu: dict[str, float]
    machine: float

    @property
    def busy_cores(self) -> float:
        return self.machine / self.seconds if self.seconds > 0 else 0.0

    def per_unit_us(self, units: float) -> dict[str, float]:
        """Microseconds of CPU per unit (request, event) of each role, ``other`` and ``all``."""
        if units <= 0:
            return {}
        out = {role: round(sec / units * 1e6, 1) for role, sec in self.cpu.items() if sec > 0}
        known = sum(self.cpu.values())
        out["other"] = round(max(0.0, self.machine - known) / units * 1e6, 1)
        out["all"] = round(self.machine / units * 1e6, 1)
        return out


def window_between(samples: list[Sample], start: float, end: float) -> Window | None:
    """CPU by role between the samples nearest to ``start`` and ``end`` (inside them)."""
    if len(samples) < 2 or end <= start:
        return None
    times = [s.at for s in samples]
    i = bisect.bisect_left(times, start)
    j = bisect.bisect_right(times, end) - 1
    if i >= len(samples) or j <= i:
        return None
    first, last = samples[i], samples[j]
    cpu: dict[str, float] = {}
    for pid, (role, seconds) in last.by_pid.items():
        before = first.by_pid.get(pid)
        if before is None:
            # Started inside the window, or not found yet when it began (processes are
            # looked for every ``find_every``): what it used inside is not known.
            continue
        cpu[role] = cpu.get(role, 0.0) + max(0.0, seconds - before[1])
    return Window(last.at - first.at, cpu, last.machine - first.machine)


@dataclass
class CpuMeter:
    """Samples every process of the run in a background thread (``with CpuMeter(...)``).

    ``roots`` maps a role to a callable returning the pids at the root of that role's
    processes now (their children are included); ``locust`` is found among this process's
    children by command line, ``bench`` is this process.
    """

    roots: Mapping[str, Callable[[], Iterable[int]]]
    every: float = 0.1
    #: How often the processes are looked for again (a walk of /proc, dearer than a sample).
    find_every: float = 1.0
    samples: list[Sample] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None
    _procs: dict[int, psutil.Process] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _roles: dict[int, str] = field(default_factory=dict)
    _found_at: float = float("-inf")

    def __enter__(self) -> CpuMeter:
        self.sample()
        self._thread = threading.Thread(target=self._run, name="cpu-meter", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()

    def _run(self) -> None:
        while not self._stop.wait(self.every):
            self.sample()

    def _process(self, pid: int) -> psutil.Process:
        # One psutil.Process per pid, so that a reused pid is told apart by its start time.
        proc = self._procs.get(pid)
        if proc is None:
            proc = self._procs[pid] = psutil.Process(pid)
        return proc

    def _pids_by_role(self) -> dict[int, str]:
        found: dict[int, str] = {}
        for role, roots in self.roots.items():
            for pid in roots():
                try:
                    root = self._process(pid)
                    found[root.pid] = role
                    for child in root.children(recursive=True):
                        found.setdefault(child.pid, role)
                except psutil.Error:
                    continue
        me = psutil.Process(os.getpid())
        found[me.pid] = "bench"
        for child in me.children(recursive=False):
            if child.pid in found:
                continue
            try:
                if any("locust" in part for part in child.cmdline()):
                    found[child.pid] = "locust"
                    for grandchild in child.children(recursive=True):
                        found[grandchild.pid] = "locust"
            except psutil.Error:
                continue
        return found

    def refresh(self) -> None:
        """Look for the processes of every role now (a phase's Locust has just started)."""
        self._roles = self._pids_by_role()
        self._found_at = time.monotonic()

    def sample(self) -> Sample:
        """Take a sample now (from the background thread, or to mark a span's edge)."""
        with self._lock:  # one at a time, so that the samples stay in time order
            if time.monotonic() - self._found_at >= self.find_every:
                self.refresh()
            by_pid: dict[int, tuple[str, float]] = {}
            for pid, role in list(self._roles.items()):
                try:
                    by_pid[pid] = (role, _cpu_seconds(self._process(pid)))
                except psutil.Error:
                    self._procs.pop(pid, None)
            taken = Sample(time.time(), machine_busy_seconds(), by_pid)
            self.samples.append(taken)
            return taken

    def window(self, start: float, end: float) -> Window | None:
        """CPU by role between wall times ``start`` and ``end`` (``time.time()``)."""
        with self._lock:
            samples = list(self.samples)
        return window_between(samples, start, end)
