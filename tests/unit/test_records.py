"""Decoding inbound WMS/ERP messages (contract section 3), without any I/O."""

from __future__ import annotations

import base64
import json
from datetime import UTC, date, datetime
from typing import Any

import pytest

from atp_service.domain import DEFAULT_AUTHORITY, Bucket, InventoryDelta, InventorySnapshot, Source
from stream_agents.records import (
    DecodeError,
    InboundEvent,
    dead_letter_record,
    decode,
    original_bytes,
)

WMS_TOPIC = "wms.inventory.v1"
ERP_TOPIC = "erp.inventory.v1"
KEY = b"SKU-1@DC-EAST"


def delta_body(**changes: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "schema": "inventory.delta.v1",
        "event_id": "wms-7f3a",
        "source": "wms",
        "source_seq": 1042,
        "occurred_at": "2026-11-23T05:00:00Z",
        "correlation_id": "ord-88121",
        "sku": "SKU-1",
        "site": "DC-EAST",
        "bucket": "on_hand",
        "delta": -3,
        "reason": "pick",
        "eta": None,
        "reservation_id": None,
    }
    body.update(changes)
    return {k: v for k, v in body.items() if v is not _DROP}


def snapshot_body(**changes: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "schema": "inventory.snapshot.v1",
        "event_id": "wms-snap-1",
        "source": "wms",
        "source_seq": 2000,
        "occurred_at": "2026-11-23T06:00:00Z",
        "sku": "SKU-1",
        "site": "DC-EAST",
        "quantities": {"on_hand": 40, "allocated": 5, "quarantined": 0},
    }
    body.update(changes)
    return {k: v for k, v in body.items() if v is not _DROP}


_DROP = object()


def decoded(body: object, *, key: bytes | None = KEY, topic: str = WMS_TOPIC) -> InboundEvent:
    return decode(key, json.dumps(body).encode(), topic, DEFAULT_AUTHORITY)


def refusal(
    body: object | bytes | None, *, key: bytes | None = KEY, topic: str = WMS_TOPIC
) -> DecodeError:
    raw = body if isinstance(body, bytes) or body is None else json.dumps(body).encode()
    with pytest.raises(DecodeError) as info:
        decode(key, raw, topic, DEFAULT_AUTHORITY)
    return info.value


# -- happy paths ------------------------------------------------------------------------------


def test_the_contracts_delta_example_decodes_into_a_domain_delta() -> None:
    event = decoded(delta_body())
    assert event == InventoryDelta(
        event_id="wms-7f3a",
        source=Source.WMS,
        sku="SKU-1",
        site="DC-EAST",
        bucket=Bucket.ON_HAND,
        delta=-3,
        occurred_at="2026-11-23T05:00:00Z",
        source_seq=1042,
        correlation_id="ord-88121",
        reason="pick",
    )


def test_optional_delta_fields_may_be_left_out() -> None:
    body = delta_body(source_seq=_DROP, correlation_id=_DROP, reason=_DROP, eta=_DROP)
    event = decoded({k: v for k, v in body.items() if k != "reservation_id"})
    assert isinstance(event, InventoryDelta)
    assert (event.source_seq, event.correlation_id, event.reason) == (None, None, None)


def test_an_erp_in_transit_delta_carries_its_eta() -> None:
    body = delta_body(source="erp", bucket="in_transit", delta=120, eta="2026-12-01")
    event = decoded(body, topic=ERP_TOPIC)
    assert isinstance(event, InventoryDelta)
    assert (event.bucket, event.eta) == (Bucket.IN_TRANSIT, date(2026, 12, 1))


def test_an_allocated_delta_may_name_the_reservation_it_fulfils() -> None:
    event = decoded(delta_body(bucket="allocated", delta=2, reservation_id="res-1"))
    assert isinstance(event, InventoryDelta)
    assert event.reservation_id == "res-1"


@pytest.mark.parametrize(
    "occurred_at",
    ["2026-11-23T05:00:00Z", "2026-11-23T05:00:00.123456789+02:00", "2026-11-23t05:00:00z"],
)
def test_rfc3339_times_with_an_offset_are_accepted(occurred_at: str) -> None:
    assert decoded(delta_body(occurred_at=occurred_at)).occurred_at == occurred_at


def test_unknown_extra_fields_are_ignored() -> None:
    assert isinstance(decoded(delta_body(warehouse_zone="A-12")), InventoryDelta)


def test_the_contracts_snapshot_example_decodes_into_a_domain_snapshot() -> None:
    event = decoded(snapshot_body())
    assert isinstance(event, InventorySnapshot)
    assert event.quantities == {Bucket.ON_HAND: 40, Bucket.ALLOCATED: 5, Bucket.QUARANTINED: 0}
    assert (event.source_seq, event.in_transit_by_eta) == (2000, None)


def test_an_erp_snapshot_may_split_in_transit_by_eta() -> None:
    body = snapshot_body(
        source="erp",
        quantities={"in_transit": 30},
        in_transit_by_eta={"2026-12-01": 20, "unknown": 10},
    )
    event = decoded(body, topic=ERP_TOPIC)
    assert isinstance(event, InventorySnapshot)
    assert event.in_transit_by_eta == {date(2026, 12, 1): 20, None: 10}


def test_integers_beyond_64_bits_are_a_schema_violation_not_malformed_json() -> None:
    assert refusal(delta_body(delta=10**30)).code == "schema_violation"


# -- malformed_json -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "raw",
    [b"not json", b'{"schema": "inventory.delta.v1",', b"\xff\xfe{}", b'{"delta": NaN}', b"", None],
    ids=["text", "truncated", "not-utf8", "nan", "empty", "tombstone"],
)
def test_what_is_not_json_is_malformed_json(raw: bytes | None) -> None:
    assert refusal(raw).code == "malformed_json"


@pytest.mark.parametrize(
    "raw", [b"[" * 100_000, b"[" * 2_000 + b"]" * 2_000, b'{"a":' * 5_000 + b"1" + b"}" * 5_000]
)
def test_a_value_nested_too_deep_is_malformed_json_not_an_internal_error(raw: bytes) -> None:
    refused = refusal(raw)

    assert refused.code == "malformed_json"
    assert "nested deeper than 1024 levels" in refused.detail


# -- unknown_schema -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "body",
    [delta_body(schema=_DROP), delta_body(schema="inventory.delta.v2"), delta_body(schema=7), [1]],
    ids=["missing", "v2", "not-a-string", "not-an-object"],
)
def test_a_value_without_a_known_schema_is_unknown_schema(body: object) -> None:
    assert refusal(body).code == "unknown_schema"


# -- schema_violation ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "changes",
    [
        {"event_id": _DROP},
        {"event_id": ""},
        {"event_id": 17},
        {"event_id": "x" * 257},
        {"source": "pos"},
        {"sku": _DROP},
        {"sku": "-starts-with-dash"},
        {"sku": "S" * 65},
        {"site": "DC EAST"},
        {"site": 3},
        {"bucket": "reserved"},
        {"bucket": _DROP},
        {"delta": _DROP},
        {"delta": 1.5},
        {"delta": "3"},
        {"delta": True},
        {"delta": 10**9 + 1},
        {"delta": -(10**9) - 1},
        {"source_seq": -1},
        {"source_seq": False},
        {"source_seq": 2**53},
        {"occurred_at": _DROP},
        {"occurred_at": "2026-11-23T05:00:00"},
        {"occurred_at": "2026-11-23"},
        {"occurred_at": "2026-02-30T05:00:00Z"},
        {"occurred_at": "\uff12\uff10\uff12\uff16-11-23T05:00:00Z"},
        {"correlation_id": 5},
        {"reason": ["pick"]},
        {"eta": "2026-12-01"},
        {"reservation_id": "res-1"},
        {"bucket": "allocated", "reservation_id": 12},
    ],
    ids=lambda changes: ",".join(f"{k}={v!r}"[:30] for k, v in changes.items()),
)
def test_a_delta_with_a_missing_or_ill_typed_field_is_a_schema_violation(
    changes: dict[str, Any],
) -> None:
    assert refusal(delta_body(**changes)).code == "schema_violation"


@pytest.mark.parametrize(
    ("field", "limit"), [("correlation_id", 256), ("reason", 256), ("reservation_id", 128)]
)
def test_a_reference_or_reason_longer_than_its_limit_is_a_schema_violation(
    field: str, limit: int
) -> None:
    bucket = {"bucket": "allocated"} if field == "reservation_id" else {}
    at_limit = delta_body(**bucket, **{field: "x" * limit})
    megabyte = delta_body(**bucket, **{field: "x" * 1_000_000})

    assert isinstance(decoded(at_limit), InventoryDelta)
    refused = refusal(megabyte)
    assert refused.code == "schema_violation"
    assert f"field '{field}' must have at most {limit} characters" in refused.detail


def test_a_delta_exactly_at_the_limit_is_accepted() -> None:
    assert isinstance(decoded(delta_body(delta=-(10**9))), InventoryDelta)


@pytest.mark.parametrize(
    "body",
    [
        delta_body(source="erp", bucket="in_transit", eta="2026-13-01"),
        delta_body(source="erp", bucket="in_transit", eta="01/12/2026"),
        delta_body(source="erp", bucket="in_transit", eta=20261201),
        delta_body(source="erp", bucket="in_transit", eta="\uff12\uff10\uff12\uff16-12-01"),
    ],
    ids=["no-such-month", "not-iso", "number", "non-ascii-digits"],
)
def test_an_eta_that_is_not_a_date_is_a_schema_violation(body: dict[str, Any]) -> None:
    assert refusal(body, topic=ERP_TOPIC).code == "schema_violation"


def test_an_erp_event_on_the_wms_topic_is_a_schema_violation() -> None:
    error = refusal(delta_body(source="erp", bucket="in_transit", delta=5))
    assert error.code == "schema_violation"
    assert "topic" in error.detail


def test_a_wms_event_on_the_erp_topic_is_a_schema_violation() -> None:
    assert refusal(delta_body(), topic=ERP_TOPIC).code == "schema_violation"


@pytest.mark.parametrize(
    "changes",
    [
        {"quantities": _DROP},
        {"quantities": {}},
        {"quantities": [40]},
        {"quantities": {"on_hand": -1}},
        {"quantities": {"on_hand": 4.0}},
        {"quantities": {"on_hand": True}},
        {"quantities": {"on_hand": 10**15 + 1}},
        {"quantities": {"sellable": 4}},
        {"in_transit_by_eta": {"2026-12-01": 4}},
    ],
    ids=lambda changes: ",".join(f"{k}={v!r}"[:30] for k, v in changes.items()),
)
def test_a_snapshot_with_bad_quantities_is_a_schema_violation(changes: dict[str, Any]) -> None:
    assert refusal(snapshot_body(**changes)).code == "schema_violation"


@pytest.mark.parametrize(
    "by_eta",
    [{"2026-12-01": 20}, {"2026-12-01": 40, "unknown": -10}, {"soon": 30}, [30]],
    ids=["wrong-sum", "negative", "not-a-date", "not-an-object"],
)
def test_an_in_transit_split_that_does_not_add_up_is_a_schema_violation(by_eta: object) -> None:
    body = snapshot_body(source="erp", quantities={"in_transit": 30}, in_transit_by_eta=by_eta)
    assert refusal(body, topic=ERP_TOPIC).code == "schema_violation"


# -- key_mismatch -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "key", [None, b"SKU-1@DC-WEST", b"SKU-1", b"sku-1@dc-east", b"\xff"], ids=repr
)
def test_a_message_key_other_than_sku_at_site_is_a_key_mismatch(key: bytes | None) -> None:
    assert refusal(delta_body(), key=key).code == "key_mismatch"


def test_a_snapshot_under_the_wrong_key_is_a_key_mismatch() -> None:
    assert refusal(snapshot_body(), key=b"SKU-2@DC-EAST").code == "key_mismatch"


# -- not_authoritative --------------------------------------------------------------------------


def test_a_bucket_its_source_does_not_own_is_not_authoritative() -> None:
    error = refusal(delta_body(source="erp", bucket="on_hand"), topic=ERP_TOPIC)
    assert error.code == "not_authoritative"
    assert "on_hand" in error.detail


def test_a_snapshot_carrying_any_bucket_its_source_does_not_own_is_not_authoritative() -> None:
    body = snapshot_body(quantities={"on_hand": 40, "in_transit": 3})
    assert refusal(body).code == "not_authoritative"


def test_the_authority_map_is_configuration() -> None:
    erp_owns_everything = dict.fromkeys(Bucket, Source.ERP)
    body = delta_body(source="erp", bucket="on_hand")
    event = decode(KEY, json.dumps(body).encode(), ERP_TOPIC, erp_owns_everything)
    assert isinstance(event, InventoryDelta)
    with pytest.raises(DecodeError) as info:
        decode(KEY, json.dumps(delta_body()).encode(), WMS_TOPIC, erp_owns_everything)
    assert info.value.code == "not_authoritative"


def test_a_bucket_no_source_owns_is_not_authoritative() -> None:
    wms_only = {Bucket.ON_HAND: Source.WMS}
    body = delta_body(bucket="quarantined")
    with pytest.raises(DecodeError) as info:
        decode(KEY, json.dumps(body).encode(), WMS_TOPIC, wms_only)
    assert info.value.code == "not_authoritative"


def test_a_message_replayed_from_another_topic_is_not_tied_to_a_source() -> None:
    body = delta_body(source="erp", bucket="in_transit")
    assert isinstance(decoded(body, topic="inventory.replay"), InventoryDelta)


# -- dead-letter records ------------------------------------------------------------------------

AT = datetime(2026, 11, 23, 5, 0, tzinfo=UTC)


def test_a_dead_letter_keeps_utf8_key_and_value_as_text() -> None:
    record = json.loads(
        dead_letter_record(
            key=KEY, value=b'{"x": 1}', topic=WMS_TOPIC, partition=3, offset=41,
            code="unknown_schema", detail="field 'schema' is missing", dead_lettered_at=AT,
        )
    )  # fmt: skip
    assert record == {
        "schema": "inventory.dead_letter.v1",
        "key": "SKU-1@DC-EAST",
        "key_encoding": "utf-8",
        "value": '{"x": 1}',
        "value_encoding": "utf-8",
        "topic": WMS_TOPIC,
        "partition": 3,
        "offset": 41,
        "code": "unknown_schema",
        "detail": "field 'schema' is missing",
        "dead_lettered_at": "2026-11-23T05:00:00Z",
    }


def test_a_dead_letter_keeps_other_bytes_as_base64_and_they_come_back_intact() -> None:
    raw = b"\xff\xfe\x00binary"
    record = json.loads(
        dead_letter_record(
            key=None, value=raw, topic=WMS_TOPIC, partition=0, offset=0,
            code="malformed_json", detail="not UTF-8", dead_lettered_at=AT,
        )
    )  # fmt: skip
    assert (record["key"], record["key_encoding"]) == (None, "none")
    assert record["value"] == base64.b64encode(raw).decode()
    assert record["value_encoding"] == "base64"
    assert original_bytes(record["value"], record["value_encoding"]) == raw
    assert original_bytes(record["key"], record["key_encoding"]) is None


# The usual message takes a one-pass check (records._common) once its time has been seen;
# any other goes the long way. Both must accept and refuse alike.
_COMMON_CHANGES = [
    {},
    {"event_id": _DROP},
    {"event_id": ""},
    {"event_id": 17},
    {"event_id": "x" * 256},
    {"event_id": "x" * 257},
    {"source": "pos"},
    {"source": ["wms"]},
    {"sku": _DROP},
    {"sku": "-starts-with-dash"},
    {"site": "DC EAST"},
    {"site": 3},
    {"source_seq": None},
    {"source_seq": -1},
    {"source_seq": False},
    {"source_seq": 2**53 - 1},
    {"source_seq": 2**53},
    {"source_seq": 1.0},
    {"correlation_id": 5},
    {"correlation_id": None},
    {"quantities": {"on_hand": 1, "sellable": 4}},
    {"quantities": {"on_hand": 10**15}},
    {"quantities": {"on_hand": 10**15 + 1}},
    {"quantities": {"on_hand": True}},
]


@pytest.mark.parametrize("changes", _COMMON_CHANGES, ids=lambda c: repr(c)[:40])
def test_a_time_seen_before_changes_no_answer(changes: dict[str, Any]) -> None:
    from stream_agents import records

    def outcome() -> object:
        try:
            return decoded(snapshot_body(**changes))
        except DecodeError as exc:
            return (exc.code, exc.detail)

    records._VALID_TIMES.clear()
    unseen = outcome()
    decoded(snapshot_body())  # its time is now known
    assert "2026-11-23T06:00:00Z" in records._VALID_TIMES
    assert outcome() == unseen
