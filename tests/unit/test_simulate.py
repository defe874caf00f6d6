"""The simulated WMS/ERP traffic: plausible, well-formed, skewed, with a trickle of bad input."""

from __future__ import annotations

import json
from collections import Counter
from datetime import UTC, date, datetime, timedelta
from functools import lru_cache
from itertools import islice

import pytest

from atp_service.simulate import (
    ERP_TOPIC,
    WMS_TOPIC,
    SimMessage,
    TrafficGenerator,
    site_names,
    sku_name,
)

NOW = datetime(2026, 11, 23, 5, 0, tzinfo=UTC)
OWNERS = {"on_hand": "wms", "allocated": "wms", "quarantined": "wms", "in_transit": "erp"}


@lru_cache(maxsize=8)
def generate(
    n: int = 50_000, *, skus: int = 200, sites: int = 4, seed: int = 7
) -> tuple[SimMessage, ...]:
    """The traffic of one seeded run (shared by the tests: generating it is the slow part)."""
    generator = TrafficGenerator(skus=skus, sites=sites, seed=seed, clock=lambda: NOW, seq_base=0)
    return tuple(islice(generator, n))


@lru_cache(maxsize=1)
def good_bodies() -> list[tuple[SimMessage, dict[str, object]]]:
    """The default run's well-formed messages with their decoded JSON."""
    messages = generate()
    return [
        (m, json.loads(m.value))
        for m in messages
        if m.kind
        not in ("malformed_json", "unknown_schema", "schema_violation", "not_authoritative")
    ]


def test_the_same_seed_gives_the_same_traffic_shape() -> None:
    first = [(m.topic, m.key, m.kind) for m in generate(2_000, seed=3)]
    second = [(m.topic, m.key, m.kind) for m in generate(2_000, seed=3)]
    assert first == second


def test_every_good_message_is_keyed_by_its_item_site_on_its_sources_topic() -> None:
    for message, body in good_bodies():
        assert message.key.decode() == f"{body['sku']}@{body['site']}"
        assert message.topic == (WMS_TOPIC if body["source"] == "wms" else ERP_TOPIC)


def test_sources_speak_only_for_the_buckets_they_own() -> None:
    for _, body in good_bodies():
        if body["schema"] == "inventory.delta.v1":
            assert OWNERS[str(body["bucket"])] == body["source"]
        else:
            assert {OWNERS[b] for b in body["quantities"]} == {body["source"]}  # type: ignore[attr-defined]


def test_event_ids_are_unique_except_for_the_deliberate_duplicates() -> None:
    messages = generate()
    ids = Counter(
        json.loads(body)["event_id"]
        for body in (m.value for m in messages if m.kind != "malformed_json")
    )
    duplicates = sum(1 for m in messages if m.kind == "duplicate")
    assert sum(n - 1 for n in ids.values()) == duplicates
    assert 0.005 * len(messages) < duplicates < 0.02 * len(messages)


def test_duplicates_are_byte_for_byte_copies_of_earlier_messages() -> None:
    messages = generate()
    seen: set[tuple[str, bytes, bytes]] = set()
    for m in messages:
        if m.kind == "duplicate":
            assert (m.topic, m.key, m.value) in seen
        seen.add((m.topic, m.key, m.value))


def test_source_seq_rises_per_source_and_item_site() -> None:
    last: dict[tuple[str, str, str], int] = {}
    for message, body in good_bodies():
        if message.kind == "duplicate":
            continue
        triple = (str(body["source"]), str(body["sku"]), str(body["site"]))
        seq = int(body["source_seq"])  # type: ignore[call-overload]
        assert seq > last.get(triple, -1)
        last[triple] = seq


def test_an_item_site_starts_with_a_wms_and_an_erp_snapshot() -> None:
    first_seen: dict[bytes, list[dict[str, object]]] = {}
    for _, body in good_bodies():
        first_seen.setdefault(f"{body['sku']}@{body['site']}".encode(), []).append(body)
    for bodies in first_seen.values():
        if len(bodies) >= 2:
            assert [b["schema"] for b in bodies[:2]] == ["inventory.snapshot.v1"] * 2
            assert {b["source"] for b in bodies[:2]} == {"wms", "erp"}


def test_folding_the_good_messages_never_takes_on_hand_below_zero() -> None:
    positions: dict[tuple[str, str], Counter[str]] = {}
    seen: set[str] = set()
    for _, body in good_bodies():
        if body["event_id"] in seen:
            continue
        seen.add(str(body["event_id"]))
        pos = positions.setdefault((str(body["sku"]), str(body["site"])), Counter())
        if body["schema"] == "inventory.snapshot.v1":
            pos.update({})
            for bucket, qty in body["quantities"].items():  # type: ignore[attr-defined]
                pos[bucket] = qty
        else:
            pos[str(body["bucket"])] += int(body["delta"])  # type: ignore[call-overload]
        assert pos["on_hand"] >= 0
        assert pos["allocated"] >= 0
        assert pos["quarantined"] >= 0
        assert pos["in_transit"] >= 0
        # A pick reports on_hand first and allocated second: between the two, fewer are free.
        if not (body.get("reason") == "pick" and body["bucket"] == "on_hand"):
            assert pos["on_hand"] >= pos["allocated"] + pos["quarantined"]


def test_popularity_is_skewed_towards_the_first_skus() -> None:
    keys = Counter(m.key.decode().split("@")[0] for m in generate(skus=1000))
    hottest = keys[sku_name(1)]
    median_ones = [keys[sku_name(rank)] for rank in range(400, 410)]
    assert hottest > 20 * max(median_ones)


def test_every_kind_of_traffic_appears() -> None:
    kinds = Counter(m.kind for m in generate())
    for kind in (
        "snapshot", "receipt", "allocation", "pick", "quarantine_hold", "quarantine_release",
        "inbound", "arrival", "resnapshot", "duplicate",
        "malformed_json", "unknown_schema", "schema_violation", "not_authoritative",
    ):  # fmt: skip
        assert kinds[kind] > 0, kind
    bad = sum(
        kinds[k]
        for k in ("malformed_json", "unknown_schema", "schema_violation", "not_authoritative")
    )
    assert 0.001 * 50_000 < bad < 0.004 * 50_000


def test_bad_messages_are_bad_in_the_way_their_kind_says() -> None:
    for m in generate():
        if m.kind == "malformed_json":
            with pytest.raises(json.JSONDecodeError):
                json.loads(m.value)
        elif m.kind == "unknown_schema":
            assert json.loads(m.value)["schema"] not in (
                "inventory.delta.v1",
                "inventory.snapshot.v1",
            )
        elif m.kind == "schema_violation":
            assert not isinstance(json.loads(m.value)["delta"], int)
        elif m.kind == "not_authoritative":
            body = json.loads(m.value)
            assert OWNERS[body["bucket"]] != body["source"]


def test_inbound_carries_an_eta_in_the_next_three_weeks() -> None:
    for _, body in good_bodies():
        if body["schema"] == "inventory.delta.v1" and body["bucket"] == "in_transit":
            eta = date.fromisoformat(str(body["eta"]))
            assert NOW.date() < eta <= NOW.date() + timedelta(days=21)


def test_some_resnapshots_disagree_with_the_deltas_before_them() -> None:
    folded: dict[tuple[str, str], int] = {}
    disagreements = 0
    seen: set[str] = set()
    for message, body in good_bodies():
        if body["event_id"] in seen or body["source"] != "wms":
            continue
        seen.add(str(body["event_id"]))
        item = (str(body["sku"]), str(body["site"]))
        if body["schema"] == "inventory.snapshot.v1":
            on_hand = body["quantities"]["on_hand"]  # type: ignore[index]
            if message.kind == "resnapshot" and folded[item] != on_hand:
                disagreements += 1
            folded[item] = on_hand
        elif body["bucket"] == "on_hand":
            folded[item] += int(body["delta"])  # type: ignore[call-overload]
    assert disagreements > 0


def test_site_names_start_with_the_known_sites_and_extend_beyond_them() -> None:
    assert site_names(2) == ["DC-EAST", "DC-WEST"]
    assert len(set(site_names(12))) == 12


def test_runs_get_distinct_event_ids_and_rising_seqs() -> None:
    first = TrafficGenerator(skus=5, sites=1, seed=1, clock=lambda: NOW, seq_base=100)
    second = TrafficGenerator(skus=5, sites=1, seed=1, clock=lambda: NOW, seq_base=200)
    a = [json.loads(m.value) for m in islice(first, 50) if m.kind == "snapshot"]
    b = [json.loads(m.value) for m in islice(second, 50) if m.kind == "snapshot"]
    assert {x["event_id"] for x in a}.isdisjoint({x["event_id"] for x in b})
    assert min(x["source_seq"] for x in b) > max(x["source_seq"] for x in a)


def test_the_stream_decoder_folds_the_good_messages_and_refuses_the_bad_ones_by_kind() -> None:
    from atp_service.domain import DEFAULT_AUTHORITY
    from stream_agents.records import DecodeError, decode

    for m in generate()[:20_000]:
        if m.kind in ("malformed_json", "unknown_schema", "schema_violation", "not_authoritative"):
            with pytest.raises(DecodeError) as refused:
                decode(m.key, m.value, m.topic, DEFAULT_AUTHORITY)
            assert refused.value.code == m.kind
        else:
            decode(m.key, m.value, m.topic, DEFAULT_AUTHORITY)


def test_a_pick_now_and_then_loses_its_on_hand_message_and_the_shadow_still_counts_it() -> None:
    generator = TrafficGenerator(skus=50, sites=2, seed=11, clock=lambda: NOW, seq_base=0)
    messages = list(islice(generator, 30_000))
    picks = Counter(
        json.loads(m.value)["bucket"] for m in messages if m.kind == "pick"
    )  # each pick: an allocated part, and an on_hand part unless it was lost
    assert generator.lost > 0
    assert picks["allocated"] - picks["on_hand"] == generator.lost


def test_a_snapshot_request_is_answered_with_what_the_source_believes() -> None:
    generator = TrafficGenerator(skus=20, sites=2, seed=5, clock=lambda: NOW, seq_base=0)
    list(islice(generator, 2_000))
    request = {"type": "inventory.snapshot_requested", "source": "wms", "site": "DC-EAST"}
    answers = generator.answer(request)
    at_site = {(sku, site) for sku, site in generator.shadow if site == "DC-EAST"}
    assert {(json.loads(m.value)["sku"], json.loads(m.value)["site"]) for m in answers} == at_site
    for m in answers:
        body = json.loads(m.value)
        pos = generator.shadow[(body["sku"], body["site"])]
        assert m.topic == WMS_TOPIC and m.kind == "reconcile"
        assert body["quantities"] == {
            "on_hand": pos.on_hand, "allocated": pos.allocated, "quarantined": pos.quarantined
        }  # fmt: skip


def test_a_request_for_some_skus_of_the_erp_gets_their_inbound_alone() -> None:
    generator = TrafficGenerator(skus=20, sites=2, seed=5, clock=lambda: NOW, seq_base=0)
    list(islice(generator, 2_000))
    sku = sku_name(1)
    answers = generator.answer(
        {"type": "inventory.snapshot_requested", "source": "erp", "site": None, "skus": [sku]}
    )
    assert answers and {json.loads(m.value)["sku"] for m in answers} == {sku}
    assert {m.topic for m in answers} == {ERP_TOPIC}
    assert generator.answer({"type": "inventory.snapshot_requested", "source": "tms"}) == []
