"""Wire formats of the inbound topics (contract section 3), decoded into domain values.

Pure: bytes in, an ``InventoryDelta`` / ``InventorySnapshot`` or a ``DecodeError`` out.
The dead-letter record the agents write for a rejected message is built here too.

Choices where the contract is silent (also in docs):

- Unknown extra fields are ignored (additive evolution inside ``.v1``).
- A value that is JSON but not an object has no schema: ``unknown_schema``.
- ``event_id`` is a non-empty string of at most 256 characters; ``source_seq`` an
  integer from 0 to 2^53-1; ``correlation_id`` and ``reason`` strings of at most 256
  characters, ``reservation_id`` of at most 128.
- A value nested deeper than 1024 levels is ``malformed_json`` (orjson's limit).
- On the two inbound topics the event's ``source`` must be the topic's system
  (``wms.inventory.v1`` carries ``wms``, ``erp.inventory.v1`` carries ``erp``); a message
  replayed from any other topic (e.g. a DLQ replay tool) is not tied to a source.
- A snapshot carries at least one bucket and sets only the buckets it carries; each must
  be owned by its source, non-negative and at most 10^15 (exact in Redis' Lua numbers).
- ERP snapshot extension ``in_transit_by_eta``: ``{"YYYY-MM-DD" | "unknown": qty}``,
  quantities non-negative and summing to ``quantities.in_transit``; without it, a
  snapshot's in-transit units have an unknown ETA.
"""

from __future__ import annotations

import base64
import json
import re
from collections.abc import Mapping
from datetime import date, datetime
from typing import Any, Final, Literal

import orjson

from atp_service.domain import (
    Bucket,
    InventoryDelta,
    InventorySnapshot,
    Source,
    is_valid_site,
    is_valid_sku,
)
from atp_service.domain.model import MAX_ABS_DELTA

DELTA_SCHEMA: Final = "inventory.delta.v1"
SNAPSHOT_SCHEMA: Final = "inventory.snapshot.v1"
DLQ_SCHEMA: Final = "inventory.dead_letter.v1"

#: Which source system each inbound topic carries.
TOPIC_SOURCES: Final[Mapping[str, Source]] = {
    "wms.inventory.v1": Source.WMS,
    "erp.inventory.v1": Source.ERP,
}

MAX_EVENT_ID_LENGTH: Final = 256
#: Free-text and reference fields: a longer value is a producer's bug, not a reason or id.
MAX_CORRELATION_ID_LENGTH: Final = 256
MAX_REASON_LENGTH: Final = 256
MAX_RESERVATION_ID_LENGTH: Final = 128
#: orjson's nesting limit (its message says so); no inbound message comes near it.
MAX_JSON_DEPTH: Final = 1024
_ORJSON_TOO_DEEP: Final = "depth limit exceeded"
MAX_SNAPSHOT_QUANTITY: Final = 10**15
MAX_SOURCE_SEQ: Final = 2**53 - 1  # compared exactly by the Lua fold (double precision)
UNKNOWN_ETA: Final = "unknown"

ErrorCode = Literal[
    "malformed_json",
    "unknown_schema",
    "schema_violation",
    "key_mismatch",
    "not_authoritative",
    "fold_failed",
    "internal_error",
]

_RFC3339: Final = re.compile(
    r"\d{4}-\d{2}-\d{2}[Tt]\d{2}:\d{2}:\d{2}(\.\d{1,9})?([Zz]|[+-]\d{2}:\d{2})", re.ASCII
)
_DATE: Final = re.compile(r"\d{4}-\d{2}-\d{2}", re.ASCII)
_SOURCES: Final[Mapping[str, Source]] = {s.value: s for s in Source}
_BUCKETS: Final[Mapping[str, Bucket]] = {b.value: b for b in Bucket}
_VALID_TIMES: set[str] = set()


class DecodeError(Exception):
    """An inbound message that cannot be folded; ``code`` is the dead-letter error code."""

    def __init__(self, code: ErrorCode, detail: str) -> None:
        super().__init__(f"{code}: {detail}")
        self.code: ErrorCode = code
        self.detail = detail


InboundEvent = InventoryDelta | InventorySnapshot


def decode(
    key: bytes | None,
    value: bytes | None,
    topic: str,
    authority: Mapping[Bucket, Source],
) -> InboundEvent:
    """Decode one inbound message, or raise ``DecodeError`` saying why it is refused."""
    body = _parse_json(value)
    if not isinstance(body, dict):
        raise DecodeError("unknown_schema", f"value is a JSON {type(body).__name__}, not an object")
    schema = body.get("schema")
    event: InboundEvent
    if schema == DELTA_SCHEMA:
        event = _delta(body)
    elif schema == SNAPSHOT_SCHEMA:
        event = _snapshot(body)
    elif schema is None:
        raise DecodeError("unknown_schema", "field 'schema' is missing")
    else:
        raise DecodeError("unknown_schema", f"schema {_short(schema)} is not one of this topic's")
    expected_source = TOPIC_SOURCES.get(topic)
    if expected_source is not None and event.source is not expected_source:
        raise DecodeError(
            "schema_violation",
            f"source {event.source.value!r} on topic {topic}, which carries "
            f"{expected_source.value!r} events",
        )
    expected_key = f"{event.sku}@{event.site}".encode()
    if key != expected_key:
        shown = "no key" if key is None else f"key {_short(key)}"
        raise DecodeError("key_mismatch", f"{shown}; expected {expected_key.decode()!r}")
    buckets = [event.bucket] if isinstance(event, InventoryDelta) else list(event.quantities)
    for bucket in buckets:
        owner = authority.get(bucket)
        if owner is not event.source:
            owned_by = f"owned by {owner.value!r}" if owner is not None else "owned by no source"
            raise DecodeError(
                "not_authoritative",
                f"bucket {bucket.value!r} is {owned_by}, not {event.source.value!r}",
            )
    return event


# -- parsing --------------------------------------------------------------------------------


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _parse_json(value: bytes | None) -> Any:
    if value is None:
        raise DecodeError("malformed_json", "the message has no value")
    try:
        return orjson.loads(value)
    except orjson.JSONDecodeError as exc:
        if str(exc).startswith(_ORJSON_TOO_DEEP):
            raise DecodeError(
                "malformed_json", f"value is nested deeper than {MAX_JSON_DEPTH} levels"
            ) from None
    # orjson refuses integers beyond 64 bits; the standard parser says whether that was all.
    try:
        text = value.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise DecodeError("malformed_json", f"value is not UTF-8: {exc.reason}") from None
    try:
        return json.loads(text, parse_constant=_reject_constant)
    except ValueError as exc:
        raise DecodeError("malformed_json", f"value is not JSON: {exc}") from None
    except RecursionError:  # deep nesting that orjson let through (it never should)
        raise DecodeError(
            "malformed_json", f"value is nested deeper than {MAX_JSON_DEPTH} levels"
        ) from None


def _short(value: object, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _violation(detail: str) -> DecodeError:
    return DecodeError("schema_violation", detail)


def _required(body: dict[str, Any], name: str) -> Any:
    if name not in body or body[name] is None:
        raise _violation(f"field '{name}' is required")
    return body[name]


def _string(
    body: dict[str, Any], name: str, *, required: bool, max_length: int | None = None
) -> str | None:
    value = _required(body, name) if required else body.get(name)
    if value is None:
        return None
    if not isinstance(value, str):
        raise _violation(f"field '{name}' must be a string, got {type(value).__name__}")
    if max_length is not None and len(value) > max_length:
        raise _violation(
            f"field '{name}' must have at most {max_length} characters, got {len(value)}"
        )
    return value


def _integer(value: Any, name: str) -> int:
    # bool is an int in Python, never in this contract (``type`` tells them apart).
    if type(value) is not int:
        raise _violation(f"field '{name}' must be an integer, got {_short(value)}")
    return value


def _common(body: dict[str, Any]) -> dict[str, Any]:
    # The usual message, checked in one pass; anything unusual goes the long way below,
    # which says what is wrong (the same checks: tests/unit/test_records.py).
    get = body.get
    event_id, source_name, sku, site = get("event_id"), get("source"), get("sku"), get("site")
    occurred_at, seq, corr = get("occurred_at"), get("source_seq"), get("correlation_id")
    source = _SOURCES.get(source_name) if type(source_name) is str else None
    if (
        type(event_id) is str
        and 0 < len(event_id) <= MAX_EVENT_ID_LENGTH
        and source is not None
        and type(sku) is str
        and is_valid_sku(sku)
        and type(site) is str
        and is_valid_site(site)
        and type(occurred_at) is str
        and occurred_at in _VALID_TIMES
        and (seq is None or (type(seq) is int and 0 <= seq <= MAX_SOURCE_SEQ))
        and (corr is None or (type(corr) is str and len(corr) <= MAX_CORRELATION_ID_LENGTH))
    ):
        return _fields(event_id, source, sku, site, occurred_at, seq, corr)
    return _common_checked(body)


def _fields(
    event_id: str,
    source: Source,
    sku: str,
    site: str,
    occurred_at: str,
    seq: int | None,
    corr: str | None,
) -> dict[str, Any]:
    """The fields every inbound event has, as the domain types take them."""
    return {
        "event_id": event_id,
        "source": source,
        "sku": sku,
        "site": site,
        "occurred_at": occurred_at,
        "source_seq": seq,
        "correlation_id": corr,
    }


def _common_checked(body: dict[str, Any]) -> dict[str, Any]:
    event_id = _string(body, "event_id", required=True)
    assert event_id is not None
    if not event_id or len(event_id) > MAX_EVENT_ID_LENGTH:
        raise _violation(f"field 'event_id' must have 1 to {MAX_EVENT_ID_LENGTH} characters")
    source_name = _string(body, "source", required=True)
    assert source_name is not None
    source = _SOURCES.get(source_name)
    if source is None:
        raise _violation(
            f"field 'source' must be one of {[s.value for s in Source]}, got {_short(source_name)}"
        )
    sku = _string(body, "sku", required=True)
    assert sku is not None
    if not is_valid_sku(sku):
        raise _violation(f"field 'sku' is not a valid sku: {_short(sku)}")
    site = _string(body, "site", required=True)
    assert site is not None
    if not is_valid_site(site):
        raise _violation(f"field 'site' is not a valid site: {_short(site)}")
    occurred_at = _string(body, "occurred_at", required=True)
    assert occurred_at is not None
    if not _is_rfc3339(occurred_at):
        raise _violation(
            f"field 'occurred_at' must be an RFC 3339 time with offset, got {_short(occurred_at)}"
        )
    seq = body.get("source_seq")
    if seq is not None:
        seq = _integer(seq, "source_seq")
        if not 0 <= seq <= MAX_SOURCE_SEQ:
            raise _violation(f"field 'source_seq' must be between 0 and {MAX_SOURCE_SEQ}")
    corr = _string(body, "correlation_id", required=False, max_length=MAX_CORRELATION_ID_LENGTH)
    return _fields(event_id, source, sku, site, occurred_at, seq, corr)


def _is_rfc3339(text: str) -> bool:
    # Events of one batch share a handful of times: remember the ones already checked.
    if text in _VALID_TIMES:
        return True
    if _RFC3339.fullmatch(text) is None:
        return False
    try:
        datetime.fromisoformat(text.upper())
    except ValueError:
        return False
    if len(_VALID_TIMES) >= 4096:
        _VALID_TIMES.clear()
    _VALID_TIMES.add(text)
    return True


def _date(text: Any, name: str) -> date:
    if not isinstance(text, str) or _DATE.fullmatch(text) is None:
        raise _violation(f"{name} must be a date YYYY-MM-DD, got {_short(text)}")
    try:
        return date.fromisoformat(text)
    except ValueError:
        raise _violation(f"{name} is not a calendar date: {_short(text)}") from None


def _bucket(value: Any, name: str) -> Bucket:
    bucket = _BUCKETS.get(value) if isinstance(value, str) else None
    if bucket is None:
        raise _violation(f"{name} must be one of {[b.value for b in Bucket]}, got {_short(value)}")
    return bucket


def _delta(body: dict[str, Any]) -> InventoryDelta:
    common = _common(body)
    bucket = _bucket(_required(body, "bucket"), "field 'bucket'")
    qty = _integer(_required(body, "delta"), "delta")
    if abs(qty) > MAX_ABS_DELTA:
        raise _violation(f"field 'delta' must be within ±{MAX_ABS_DELTA}, got {qty}")
    eta_value = body.get("eta")
    eta = None if eta_value is None else _date(eta_value, "field 'eta'")
    if eta is not None and bucket is not Bucket.IN_TRANSIT:
        raise _violation(f"field 'eta' is for in_transit deltas only, not {bucket.value}")
    reservation_id = _string(
        body, "reservation_id", required=False, max_length=MAX_RESERVATION_ID_LENGTH
    )
    if reservation_id is not None and bucket is not Bucket.ALLOCATED:
        raise _violation(f"field 'reservation_id' is for allocated deltas only, not {bucket.value}")
    return InventoryDelta(
        bucket=bucket,
        delta=qty,
        reason=_string(body, "reason", required=False, max_length=MAX_REASON_LENGTH),
        eta=eta,
        reservation_id=reservation_id,
        **common,
    )


def _snapshot(body: dict[str, Any]) -> InventorySnapshot:
    common = _common(body)
    raw = _required(body, "quantities")
    if not isinstance(raw, dict) or not raw:
        raise _violation("field 'quantities' must be a non-empty object of bucket: quantity")
    quantities: dict[Bucket, int] = {}
    for name, qty in raw.items():
        bucket = _BUCKETS.get(name)
        if bucket is None or type(qty) is not int or not 0 <= qty <= MAX_SNAPSHOT_QUANTITY:
            bucket = _bucket(name, "a key of 'quantities'")  # raises, saying what is wrong
            qty = _quantity(qty, f"quantities.{name}")
        quantities[bucket] = qty
    by_eta = _in_transit_by_eta(body.get("in_transit_by_eta"), quantities)
    return InventorySnapshot(quantities=quantities, in_transit_by_eta=by_eta, **common)


def _quantity(value: Any, name: str) -> int:
    qty = _integer(value, name)
    if not 0 <= qty <= MAX_SNAPSHOT_QUANTITY:
        raise _violation(f"field '{name}' must be between 0 and {MAX_SNAPSHOT_QUANTITY}")
    return qty


def _in_transit_by_eta(raw: Any, quantities: dict[Bucket, int]) -> dict[date | None, int] | None:
    if raw is None:
        return None
    if Bucket.IN_TRANSIT not in quantities:
        raise _violation("field 'in_transit_by_eta' needs quantities.in_transit")
    if not isinstance(raw, dict):
        raise _violation("field 'in_transit_by_eta' must be an object of date: quantity")
    by_eta: dict[date | None, int] = {}
    for eta, qty in raw.items():
        day = None if eta == UNKNOWN_ETA else _date(eta, "a key of 'in_transit_by_eta'")
        by_eta[day] = _quantity(qty, f"in_transit_by_eta.{eta}")
    total = sum(by_eta.values())
    if total != quantities[Bucket.IN_TRANSIT]:
        raise _violation(
            f"field 'in_transit_by_eta' sums to {total}, "
            f"not quantities.in_transit = {quantities[Bucket.IN_TRANSIT]}"
        )
    return by_eta


# -- dead letters ---------------------------------------------------------------------------


def _as_text(raw: bytes | None) -> tuple[str | None, str]:
    if raw is None:
        return None, "none"
    try:
        return raw.decode("utf-8"), "utf-8"
    except UnicodeDecodeError:
        return base64.b64encode(raw).decode("ascii"), "base64"


def dead_letter_record(
    *,
    key: bytes | None,
    value: bytes | None,
    topic: str,
    partition: int,
    offset: int,
    code: str,
    detail: str,
    dead_lettered_at: datetime,
) -> bytes:
    """The JSON value written to ``inventory.dlq.v1`` for a refused message.

    ``key``/``value`` hold the original bytes as text when they are UTF-8 (``*_encoding``
    ``"utf-8"``), else base64 (``"base64"``); a missing key or value is null (``"none"``).
    """
    key_text, key_encoding = _as_text(key)
    value_text, value_encoding = _as_text(value)
    record = {
        "schema": DLQ_SCHEMA,
        "key": key_text,
        "key_encoding": key_encoding,
        "value": value_text,
        "value_encoding": value_encoding,
        "topic": topic,
        "partition": partition,
        "offset": offset,
        "code": code,
        "detail": detail,
        "dead_lettered_at": dead_lettered_at.isoformat().replace("+00:00", "Z"),
    }
    return orjson.dumps(record)


def original_bytes(text: str | None, encoding: str) -> bytes | None:
    """Inverse of the dead-letter encoding, for a replay tool: the original key or value."""
    if encoding == "none" or text is None:
        return None
    if encoding == "base64":
        return base64.b64decode(text)
    return text.encode("utf-8")
