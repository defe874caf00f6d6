"""The `atp` command line: its options, dev keys and the refusal to start on a busy port."""

from __future__ import annotations

import json
import socket
from pathlib import Path

import pytest

from atp_service.cli import (
    CliError,
    _lazy,
    build_parser,
    check_ports,
    keys_json,
    log_tail,
    main,
    make_dev_keys,
)
from atp_service.config import (
    ALL_SCOPES,
    EMBEDDED_API_PORT,
    EMBEDDED_KAFKA_PORT,
    EMBEDDED_REDIS_PORT,
    Settings,
)


def test_up_listens_on_the_embedded_default_ports_unless_told_otherwise() -> None:
    args = build_parser().parse_args(["up"])
    assert (args.redis_port, args.kafka_port, args.api_port) == (
        EMBEDDED_REDIS_PORT,
        EMBEDDED_KAFKA_PORT,
        EMBEDDED_API_PORT,
    )
    assert not args.demo
    moved = build_parser().parse_args(["up", "--demo", "--api-port", "18080", "--demo-rate", "50"])
    assert (moved.demo, moved.api_port, moved.demo_rate) == (True, 18080, 50.0)


def test_simulate_takes_the_contracts_options() -> None:
    args = build_parser().parse_args(
        ["simulate", "--rate", "500", "--skus", "20", "--sites", "3", "--duration", "9"]
    )
    assert (args.rate, args.skus, args.sites, args.duration, args.seed) == (500, 20, 3, 9, None)


@pytest.mark.parametrize(
    "argv",
    [
        ["simulate", "--rate", "0"],
        ["simulate", "--skus", "-1"],
        ["simulate", "--duration", "-5"],
        ["up", "--api-port", "70000"],
        ["api", "--workers", "0"],
        ["dlq", "purge"],
        [],
    ],
)
def test_nonsense_arguments_are_refused_with_a_usage_error(argv: list[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        build_parser().parse_args(argv)
    assert exit_.value.code == 2


def test_api_defaults_to_loopback_and_one_worker() -> None:
    args = build_parser().parse_args(["api"])
    assert (args.host, args.port, args.workers) == ("127.0.0.1", EMBEDDED_API_PORT, 1)


def test_dev_keys_are_fresh_marked_and_scoped_per_role() -> None:
    keys = {k.name: k for k in make_dev_keys()}
    again = {k.name: k for k in make_dev_keys()}
    assert set(keys) == {"storefront", "oms", "admin"}
    assert all(k.key.startswith("dev-") and k.key != again[k.name].key for k in keys.values())
    assert keys["storefront"].scopes == ["availability:read"]
    assert set(keys["oms"].scopes) == {"reservations:write", "availability:read"}
    assert set(keys["admin"].scopes) == set(ALL_SCOPES)


def test_dev_keys_are_what_the_services_settings_accept(monkeypatch: pytest.MonkeyPatch) -> None:
    encoded = keys_json(make_dev_keys())
    monkeypatch.setenv("ATP_API_KEYS", encoded)
    settings = Settings()
    assert [spec.key for spec in settings.api_keys] == [k["key"] for k in json.loads(encoded)]


def test_a_busy_port_is_named_with_the_flag_that_moves_it() -> None:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        with pytest.raises(CliError, match=rf"port {port} \(Redis\).*--redis-port"):
            check_ports({"Kafka": (0, "--kafka-port"), "Redis": (port, "--redis-port")})


def test_two_roles_on_one_port_are_refused() -> None:
    with pytest.raises(CliError, match="API and Redis"):
        check_ports({"Redis": (45999, "--redis-port"), "API": (45999, "--api-port")})


def test_a_command_whose_module_is_missing_says_so() -> None:
    with pytest.raises(CliError, match=r"atp_service\.nowhere is not available"):
        _lazy("atp_service.nowhere", "run")
    with pytest.raises(CliError, match="no nothing_here"):
        _lazy("atp_service.config", "nothing_here")


def test_invalid_configuration_is_one_line_not_a_traceback(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("ATP_DEDUP_WINDOW_SECONDS", "5")
    assert main(["simulate", "--duration", "1"]) == 2
    err = capsys.readouterr().err
    assert "ATP_DEDUP_WINDOW_SECONDS" in err
    assert "Traceback" not in err


def test_a_dead_childs_log_shows_its_traceback(tmp_path: Path) -> None:
    log = tmp_path / "worker.log"
    lines = [f"info {n}" for n in range(50)]
    lines[10:12] = ["Traceback (most recent call last):", "FileNotFoundError: /tmp/x"]
    log.write_text("\n".join(lines))
    shown = log_tail(log)
    assert "FileNotFoundError" in shown
    assert "info 49" not in log_tail(log, lines=3)


def test_topics_create_takes_partitions_for_the_inbound_and_events_topics() -> None:
    args = build_parser().parse_args(["topics", "create"])
    assert (args.partitions, args.dlq_partitions, args.replication_factor) == (8, 3, 1)
    moved = build_parser().parse_args(
        ["topics", "create", "--partitions", "24", "--replication-factor", "3"]
    )
    assert (moved.partitions, moved.dlq_partitions, moved.replication_factor) == (24, 3, 3)


def test_dlq_replay_may_be_a_dry_run_and_its_help_explains_the_listing(
    capsys: pytest.CaptureFixture[str],
) -> None:
    args = build_parser().parse_args(["dlq", "replay", "--dry-run", "--since", "1h"])
    assert (args.action, args.dry_run, args.since) == ("replay", True, "1h")
    with pytest.raises(SystemExit):
        build_parser().parse_args(["dlq", "--help"])
    shown = capsys.readouterr().out
    for column in ("LETTER", "DEAD-LETTERED", "CODE", "FROM", "KEY", "REPLAYED", "DETAIL"):
        assert column in shown
    assert "yesterday" in shown


def test_a_since_nobody_can_read_is_a_one_line_error_naming_the_forms(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(["dlq", "list", "--since", "last tuesday"]) == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and "2026-12-01T10:00Z" in error
