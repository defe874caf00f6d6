"""JSON log lines carry the correlation id and never a secret."""

from __future__ import annotations

import io
import json
import logging

from atp_service.logs import AccessLog, JsonFormatter, correlation_id


def _record(msg: str, **extra: object) -> logging.LogRecord:
    record = logging.LogRecord("atp.test", logging.INFO, __file__, 1, msg, None, None)
    for k, v in extra.items():
        setattr(record, k, v)
    return record


def test_a_log_line_is_one_json_object_with_the_current_correlation_id() -> None:
    token = correlation_id.set("ord-88121")
    try:
        line = JsonFormatter().format(_record("folded", events=3))
    finally:
        correlation_id.reset(token)
    body = json.loads(line)
    assert body["msg"] == "folded"
    assert body["correlation_id"] == "ord-88121"
    assert body["events"] == 3
    assert body["level"] == "info"
    assert "\n" not in line


def test_secrets_passed_as_extras_are_redacted() -> None:
    body = json.loads(JsonFormatter().format(_record("auth", authorization="Bearer s3cret")))
    assert body["authorization"] == "[redacted]"
    assert "s3cret" not in json.dumps(body)


def test_no_correlation_id_field_outside_a_request() -> None:
    assert "correlation_id" not in json.loads(JsonFormatter().format(_record("idle")))


def test_the_access_log_writes_a_json_line_per_request_in_batches() -> None:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    access = AccessLog("atp.test.access", max_pending=3)
    access.logger.addHandler(handler)
    access.logger.setLevel(logging.INFO)
    access.logger.propagate = False
    try:
        access.record("GET", "/v1/availability/{sku:path}", 200, 1.25, "ord-1")
        access.record("POST", "/v1/reservations", 409, 3.5, "ord-2", "oms-eu")
        assert stream.getvalue() == ""  # waiting for the flush
        access.flush()
        access.flush()  # nothing new: nothing written
    finally:
        access.logger.removeHandler(handler)
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert [(x["msg"], x["status"], x["duration_ms"], x["correlation_id"]) for x in lines] == [
        ("GET /v1/availability/{sku:path} 200", 200, 1.25, "ord-1"),
        ("POST /v1/reservations 409", 409, 3.5, "ord-2"),
    ]
    assert [x["caller"] for x in lines] == [None, "oms-eu"]  # the API key's name, once known
    assert all(x["level"] == "info" and x["logger"] == "atp.test.access" for x in lines)
    assert all(x["ts"].endswith("+00:00") for x in lines)
