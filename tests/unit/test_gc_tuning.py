"""The garbage collector tuned for the serving processes (API and worker)."""

from __future__ import annotations

import gc
from collections.abc import Iterator

import pytest

from atp_service import gc_tuning
from stream_agents import app as worker_app
from tests.unit.api_harness import make_settings


@pytest.fixture
def gc_restored() -> Iterator[None]:
    threshold = gc.get_threshold()
    yield
    gc.unfreeze()
    gc.set_threshold(*threshold)


@pytest.mark.usefixtures("gc_restored")
def test_tuning_freezes_what_the_process_holds_and_collects_the_young_less_often() -> None:
    held = [[n] for n in range(100)]  # tracked containers the process keeps

    gc_tuning.tune_for_service()

    assert gc.get_freeze_count() >= len(held)
    assert gc.get_threshold()[0] == gc_tuning.YOUNG_THRESHOLD
    cycle: list[object] = []
    cycle.append(cycle)
    del cycle
    assert gc.collect() >= 1  # garbage in cycles made after it is still found


def test_the_worker_tunes_its_garbage_collector_once_built(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    calls: list[str] = []

    class Worker:
        def __init__(self, app: object, **_: object) -> None:
            calls.append("built")

        def execute_from_commandline(self) -> None:
            calls.append("ran")

    monkeypatch.setattr(worker_app.mode.loop, "use", lambda name: None)
    monkeypatch.setattr(worker_app.faust, "Worker", Worker)
    monkeypatch.setattr(worker_app, "tune_for_service", lambda: calls.append("tuned"))
    settings = make_settings().model_copy(update={"worker_metrics_port": 0})

    worker_app.run_worker(settings)

    assert calls == ["built", "tuned", "ran"]
