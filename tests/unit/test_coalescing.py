"""Coalescing of availability.changed (ATP_EVENTS_COALESCE_MS): a pure step over a window."""

from __future__ import annotations

import json
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from atp_service.coalescing import Window, coalesce
from atp_service.store import OutboxEntry


def change(
    sku: str, channel: str, previous: int, atp: int, version: int, site: str = "DC-1"
) -> Any:
    body = {
        "schema": "atp.event.v1", "type": "availability.changed",
        "event_id": f"chg:{sku}:{version}:{channel}", "occurred_at": "2026-12-04T10:00:00.000Z",
        "correlation_id": None, "sku": sku, "site": site, "channel": channel,
        "atp": atp, "previous_atp": previous, "version": version,
    }  # fmt: skip
    return (f"{sku}@{site}", json.dumps(body, separators=(",", ":")))


def held(rid: str, *items: tuple[str, str]) -> Any:
    body = {
        "schema": "atp.event.v1", "type": "reservation.held", "event_id": f"res:{rid}:held",
        "reservation_id": rid, "status": "held",
        "lines": [{"sku": s, "site": t, "qty": 1, "reserved": 1, "allocated": 0} for s, t in items],
    }  # fmt: skip
    return (rid, json.dumps(body))


def bodies(records: list[tuple[str, str]]) -> list[dict[str, Any]]:
    return [json.loads(value) for _, value in records]


def test_successive_changes_of_an_item_site_channel_go_out_as_the_latest_from_the_earliest() -> (
    None
):
    out = coalesce(
        [change("A", "web", 10, 9, 1), change("A", "web", 9, 8, 2), change("A", "web", 8, 5, 3)]
    )
    [merged] = bodies(out)
    assert (merged["previous_atp"], merged["atp"], merged["version"]) == (10, 5, 3)
    assert merged["event_id"] == "chg:A:3:web" and merged["coalesced"] == 3


def test_other_channels_and_item_sites_keep_their_own_events_and_their_order() -> None:
    records = [
        change("A", "web", 10, 9, 1),
        change("A", "store", 4, 3, 1),
        change("B", "web", 1, 0, 7),
        change("A", "web", 9, 8, 2),
    ]
    out = bodies(coalesce(records))
    assert [(e["sku"], e["channel"], e["previous_atp"], e["atp"]) for e in out] == [
        ("A", "store", 4, 3),
        ("B", "web", 1, 0),
        ("A", "web", 10, 8),  # in the place of the latest
    ]


def test_a_reservation_at_the_item_site_is_never_reordered_around() -> None:
    records = [
        change("A", "web", 10, 9, 1),
        held("res-1", ("A", "DC-1")),
        change("A", "web", 9, 8, 2),
        change("A", "web", 8, 7, 3),
    ]
    out = coalesce(records)
    assert out[1] == records[1]  # byte for byte, still between the two
    assert [(e.get("type"), e.get("previous_atp"), e.get("atp")) for e in bodies(out)] == [
        ("availability.changed", 10, 9),
        ("reservation.held", None, None),
        ("availability.changed", 9, 7),
    ]


def test_a_reservation_elsewhere_does_not_stop_the_coalescing() -> None:
    out = coalesce(
        [change("A", "web", 10, 9, 1), held("res-2", ("B", "DC-1")), change("A", "web", 9, 8, 2)]
    )
    assert [(e["type"], e.get("atp")) for e in bodies(out)] == [
        ("reservation.held", None),
        ("availability.changed", 8),
    ]


def test_a_run_that_nets_to_nothing_is_dropped() -> None:
    assert coalesce([change("A", "web", 5, 4, 1), change("A", "web", 4, 5, 2)]) == []


def test_events_it_cannot_read_go_out_as_they_came_and_close_every_run() -> None:
    records = [change("A", "web", 10, 9, 1), ("x", "not json"), change("A", "web", 9, 8, 2)]
    assert coalesce(records) == records


def test_a_lone_change_goes_out_byte_for_byte() -> None:
    records = [change("A", "web", 10, 9, 1), held("res-3", ("A", "DC-1"))]
    assert coalesce(records) == records


def entry(n: int, stream: str = "s") -> OutboxEntry:
    return OutboxEntry(stream, f"{n}-0", [change("A", "web", n, n + 1, n)])


def test_a_window_holds_entries_for_its_length_and_each_entry_once() -> None:
    window = Window(1_000, max_entries=100)
    window.add([entry(1)], now=10.0)
    window.add([entry(1), entry(2)], now=10.4)  # entry 1 read again (pending): held once
    assert [e.entry_id for e in window.entries] == ["1-0", "2-0"]
    assert not window.due(10.9) and window.left(10.9) > 0
    assert window.due(11.0)
    window.clear()
    assert not window.due(99.0) and window.left(99.0) == 1.0


def test_a_full_window_is_due_at_once() -> None:
    window = Window(60_000, max_entries=2)
    window.add([entry(1), entry(2)], now=0.0)
    assert window.due(0.0)


# -- properties over random windows ---------------------------------------------------------

ITEMS = ("A", "B", "C")
CHANNELS = ("web", "store")


@st.composite
def windows(draw: st.DrawFn) -> list[tuple[str, str]]:
    """A window as a fold and reservations write it: per item-site-channel a chain of
    changes (each previous_atp the atp before it), versions rising per item-site, and
    reservation events touching some item-sites."""
    atp = {(i, c): 10 for i in ITEMS for c in CHANNELS}
    version = dict.fromkeys(ITEMS, 0)
    records: list[tuple[str, str]] = []
    for n in range(draw(st.integers(0, 40))):
        if draw(st.integers(0, 5)) == 0:
            touched = draw(st.lists(st.sampled_from(ITEMS), max_size=2, unique=True))
            records.append(held(f"res-{n}", *((i, "DC-1") for i in touched)))
            continue
        item, channel = draw(st.sampled_from(ITEMS)), draw(st.sampled_from(CHANNELS))
        version[item] += 1
        new = draw(st.integers(0, 12))
        records.append(change(item, channel, atp[(item, channel)], new, version[item]))
        atp[(item, channel)] = new
    return records


def final_atps(records: list[tuple[str, str]]) -> dict[tuple[str, str], int]:
    """What a consumer holds after applying the changes (from 10 everywhere)."""
    seen = {(i, c): 10 for i in ITEMS for c in CHANNELS}
    for body in bodies(records):
        if body["type"] == "availability.changed":
            assert body["previous_atp"] == seen[(body["sku"], body["channel"])]
            seen[(body["sku"], body["channel"])] = body["atp"]
    return seen


@settings(max_examples=300, deadline=None)
@given(windows())
def test_a_consumer_ends_where_the_uncoalesced_events_would_take_it(
    records: list[tuple[str, str]],
) -> None:
    out = coalesce(records)
    assert final_atps(out) == final_atps(records)
    assert len(out) <= len(records)


@settings(max_examples=300, deadline=None)
@given(windows())
def test_no_change_crosses_a_reservation_of_its_item_site_and_the_others_keep_their_order(
    records: list[tuple[str, str]],
) -> None:
    out = coalesce(records)
    others = [r for r in records if '"availability.changed"' not in r[1]]
    assert [r for r in out if '"availability.changed"' not in r[1]] == others

    def atps_at_reservations(seq: list[tuple[str, str]]) -> dict[str, list[int]]:
        """At each reservation: what a consumer holds for the item-sites it touches."""
        seen = {(i, c): 10 for i in ITEMS for c in CHANNELS}
        at: dict[str, list[int]] = {}
        for body in bodies(seq):
            if body["type"] == "availability.changed":
                seen[(body["sku"], body["channel"])] = body["atp"]
            else:
                at[body["event_id"]] = [
                    seen[(ln["sku"], c)] for ln in body["lines"] for c in CHANNELS
                ]
        return at

    assert atps_at_reservations(out) == atps_at_reservations(records)
    versions: dict[tuple[str, str], int] = {}
    for body in bodies(out):
        if body["type"] == "availability.changed":
            run = (body["sku"], body["channel"])
            assert body["version"] > versions.get(run, 0)
            versions[run] = body["version"]
