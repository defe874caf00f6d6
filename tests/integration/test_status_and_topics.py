"""`atp topics create` on a broker of its own, and `atp status` saying what is down."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from atp_service.cli import main
from atp_service.embedded import LOOPBACK, ManagedProcess, free_port, tansu_process

pytestmark = pytest.mark.integration


@pytest.fixture
def bare_broker(tmp_path: Path) -> Iterator[ManagedProcess]:
    """A Tansu broker with no topics at all, as a Kafka that `atp up` did not start."""
    broker = tansu_process(free_port(), tmp_path / "kafka")
    broker.start()
    yield broker
    broker.stop()


def test_topics_create_makes_the_four_topics_once_and_reports_existing_ones(
    bare_broker: ManagedProcess,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("ATP_KAFKA_BROKERS", f"{LOOPBACK}:{bare_broker.port}")

    assert main(["topics", "create", "--partitions", "4", "--dlq-partitions", "2"]) == 0
    first = capsys.readouterr().out.splitlines()
    assert main(["topics", "create"]) == 0
    again = capsys.readouterr().out.splitlines()

    assert [line.split() for line in first] == [
        ["wms.inventory.v1", "created,", "4", "partitions"],
        ["erp.inventory.v1", "created,", "4", "partitions"],
        ["atp.events.v1", "created,", "4", "partitions"],
        ["inventory.dlq.v1", "created,", "2", "partitions"],
    ]
    assert [line.split()[:4] for line in again] == [
        ["wms.inventory.v1", "exists,", "4", "partitions"],
        ["erp.inventory.v1", "exists,", "4", "partitions"],
        ["atp.events.v1", "exists,", "4", "partitions"],
        ["inventory.dlq.v1", "exists,", "2", "partitions"],
    ]
    assert "not 8: an existing topic is kept" in again[0]


def test_status_against_a_broker_without_topics_says_which_are_missing_and_fails(
    bare_broker: ManagedProcess,
    own_redis: ManagedProcess,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("ATP_KAFKA_BROKERS", f"{LOOPBACK}:{bare_broker.port}")
    monkeypatch.setenv("ATP_REDIS_URL", f"redis://{LOOPBACK}:{own_redis.port}/0")
    monkeypatch.setenv("ATP_API_URL", f"http://{LOOPBACK}:{free_port()}")

    assert main(["status"]) == 1
    lines = {line.split()[0]: line for line in capsys.readouterr().out.splitlines()[1:]}

    assert "up" in lines["Redis"].split() and "Redis 6." in lines["Redis"]
    assert "MISSING wms.inventory.v1, erp.inventory.v1" in lines["Kafka"]
    assert "atp topics create" in lines["Kafka"]
    assert "no worker is running" in lines["workers"]
    assert lines["API"].split()[1] == "DOWN" and "refused" in lines["API"]


def test_status_with_nothing_running_says_everything_is_down_and_fails(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    kafka, redis, api = free_port(), free_port(), free_port()
    monkeypatch.setenv("ATP_KAFKA_BROKERS", f"{LOOPBACK}:{kafka}")
    monkeypatch.setenv("ATP_REDIS_URL", f"redis://{LOOPBACK}:{redis}/0")
    monkeypatch.setenv("ATP_API_URL", f"http://{LOOPBACK}:{api}")

    assert main(["status"]) == 1
    lines = capsys.readouterr().out.splitlines()

    assert [line.split()[:2] for line in lines[1:5]] == [
        ["Redis", "DOWN"], ["Kafka", "DOWN"], ["workers", "unknown"], ["API", "DOWN"],
    ]  # fmt: skip
    assert lines[5].split()[:4] == ["dead", "letters", "unknown", "(Kafka"]
