"""The events catalogue (docs/asyncapi.yaml): a sound AsyncAPI 3 document whose examples
match their schemas, and whose schemas match what the service's encoders write and its
decoder accepts."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from itertools import islice
from typing import Any

import pytest

from atp_service.coalescing import coalesce
from atp_service.domain import DEFAULT_AUTHORITY
from atp_service.events import EVENT_TYPES
from atp_service.reconcile import snapshot_request
from atp_service.simulate import TrafficGenerator
from stream_agents.records import ErrorCode, dead_letter_record, decode
from tests.catalogue import assert_in_catalogue, channel_messages, document, problems, validator

INBOUND = {"wms": "wms.inventory.v1", "erp": "erp.inventory.v1"}


def refs(node: Any) -> list[str]:
    if isinstance(node, dict):
        found = [node["$ref"]] if isinstance(node.get("$ref"), str) else []
        return found + [r for value in node.values() for r in refs(value)]
    if isinstance(node, list):
        return [r for value in node for r in refs(value)]
    return []


def test_the_document_is_asyncapi_3_and_every_reference_in_it_resolves() -> None:
    doc = document()
    assert doc["asyncapi"] == "3.0.0"
    assert {c["address"] for c in doc["channels"].values()} == {
        "wms.inventory.v1", "erp.inventory.v1", "atp.events.v1", "inventory.dlq.v1"
    }  # fmt: skip
    for ref in refs(doc):
        node: Any = doc
        for part in ref.removeprefix("#/").split("/"):
            node = node[part]
    for operation in doc["operations"].values():
        assert operation["action"] in ("send", "receive")


def test_the_outbound_topic_lists_exactly_the_types_the_service_emits() -> None:
    assert set(channel_messages("atpEvents")) == set(EVENT_TYPES)


def test_every_example_matches_its_message() -> None:
    examples = 0
    for name, message in document()["components"]["messages"].items():
        for example in message.get("examples", []):
            errors = list(validator(name).iter_errors(example["payload"]))
            assert not errors, (name, example.get("name"), errors)
            examples += 1
    assert examples >= 12


@pytest.mark.parametrize("name", ["InventoryDelta", "InventorySnapshot"])
def test_the_inbound_examples_are_folded_as_they_are(name: str) -> None:
    for example in document()["components"]["messages"][name]["examples"]:
        body = example["payload"]
        key = f"{body['sku']}@{body['site']}".encode()
        decode(key, json.dumps(body).encode(), INBOUND[body["source"]], DEFAULT_AUTHORITY)


def test_the_simulators_traffic_matches_the_catalogue_where_the_decoder_takes_it() -> None:
    generator = TrafficGenerator(skus=50, sites=3, seed=3, clock=lambda: datetime.now(UTC))
    for message in islice(generator, 5_000):
        if message.kind == "malformed_json":
            continue
        body = json.loads(message.value)
        channel = "wmsInventory" if message.topic == "wms.inventory.v1" else "erpInventory"
        found = problems(body, channel)
        if message.kind in ("schema_violation", "unknown_schema"):
            assert found, message
        else:
            assert not found, (message, found)


def test_a_message_the_catalogue_refuses_is_refused_by_the_decoder_too() -> None:
    good = document()["components"]["messages"]["InventoryDelta"]["examples"][0]["payload"]
    for change in ({"eta": "2026-12-01"}, {"delta": 1.5}, {"sku": "SKU 1"}, {"event_id": ""}):
        body = {**good, **change}
        assert problems(body, "wmsInventory")
        with pytest.raises(Exception, match="schema_violation"):
            decode(
                b"SKU-1@DC-EAST", json.dumps(body).encode(), "wms.inventory.v1", DEFAULT_AUTHORITY
            )


@pytest.mark.parametrize("code", ["malformed_json", "schema_violation", "fold_failed"])
def test_dead_letters_match_the_catalogue(code: ErrorCode) -> None:
    for key, value in ((b"SKU-1@DC-1", b"{not json"), (None, b"\xff\xfe")):
        record = dead_letter_record(
            key=key, value=value, topic="wms.inventory.v1", partition=1, offset=42,
            code=code, detail="why", dead_lettered_at=datetime.now(UTC),
        )  # fmt: skip
        body = json.loads(record)
        assert not problems(body, "deadLetters"), body


def test_snapshot_requests_match_the_catalogue() -> None:
    for site, skus in ((None, None), ("DC-EAST", ["SKU-1", "SKU-2"])):
        for by in ("cli", "schedule"):
            assert_in_catalogue(json.loads(snapshot_request("wms", site, skus, requested_by=by)[1]))


def test_a_coalesced_change_matches_the_catalogue() -> None:
    example = document()["components"]["messages"]["AvailabilityChanged"]["examples"][0]
    first = {**example["payload"], "atp": 30, "previous_atp": 38, "version": 16}
    records = [
        ("SKU-1@DC-EAST", json.dumps(first)),
        ("SKU-1@DC-EAST", json.dumps(example["payload"])),
    ]
    [(_, merged)] = coalesce(records)
    assert json.loads(merged)["coalesced"] == 2
    assert_in_catalogue(json.loads(merged))
