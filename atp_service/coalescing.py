"""Coalescing of ``availability.changed`` (``ATP_EVENTS_COALESCE_MS``): a pure step the
outbox relay applies to the records it holds for one window, before it publishes them.

Successive ``availability.changed`` of one item-site-channel become one: the latest event
(its ``atp``, ``version``, ``event_id``, ``occurred_at``, ``correlation_id``) with the
earliest ``previous_atp``, and ``coalesced``: how many changes it stands for. It takes the
place of the latest of them, so the events of a key keep their relative order. A run that
nets to nothing (``previous_atp`` equal to ``atp``) is dropped: a consumer already holds that
ATP. Every other event goes out as it came, byte for byte.

Nothing moves across an event that concerns the item-site otherwise: a reservation event
with a line there, or its drift. Such an event closes the item-site's runs (a change before
it and one after it both go out), so a consumer never sees a reservation's effect on the
ATP on the wrong side of the reservation. An event this module cannot read closes every
run.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import orjson

from atp_service.store import OutboxEntry

CHANGED = "availability.changed"


def coalesce(records: Sequence[tuple[str, str]]) -> list[tuple[str, str]]:
    """The (key, JSON value) records of one window, in order, with each item-site-channel's
    successive changes as one (see the module docstring)."""
    out: list[tuple[str, str] | None] = []
    #: item-site-channel -> where its latest change stands in ``out``, its body, and count.
    runs: dict[tuple[str, str], tuple[int, dict[str, Any], int]] = {}
    #: item-site -> the channels with a run open there.
    open_at: dict[str, set[str]] = {}
    for key, value in records:
        try:
            body = orjson.loads(value)
        except orjson.JSONDecodeError:
            body = None
        if not isinstance(body, dict):
            runs.clear()
            open_at.clear()
            out.append((key, value))
            continue
        if body.get("type") == CHANGED and _is_change(body):
            item = f"{body['sku']}@{body['site']}"
            run = (item, body["channel"])
            earlier = runs.pop(run, None)
            if earlier is None:
                runs[run] = (len(out), body, 1)
                open_at.setdefault(item, set()).add(body["channel"])
                out.append((key, value))
                continue
            index, first, count = earlier
            out[index] = None
            merged = {**body, "previous_atp": first["previous_atp"], "coalesced": count + 1}
            if merged["previous_atp"] == merged["atp"]:
                open_at[item].discard(body["channel"])
                continue  # nets to nothing: the consumer holds this ATP already
            runs[run] = (len(out), merged, count + 1)
            out.append((key, orjson.dumps(merged).decode()))
            continue
        touched = _item_sites(body)
        if touched is None:
            runs.clear()
            open_at.clear()
        else:
            for item in touched:
                for channel in open_at.pop(item, ()):
                    runs.pop((item, channel), None)
        out.append((key, value))
    return [record for record in out if record is not None]


def _is_change(body: dict[str, Any]) -> bool:
    return all(isinstance(body.get(name), str) for name in ("sku", "site", "channel")) and all(
        isinstance(body.get(name), int) for name in ("atp", "previous_atp", "version")
    )


def _item_sites(body: dict[str, Any]) -> Iterable[str] | None:
    """The item-sites an event other than a change concerns; None when that is unknown."""
    kind = body.get("type")
    if not isinstance(kind, str):
        return None
    if kind.startswith("reservation."):
        lines = body.get("lines")
        if not isinstance(lines, list):
            return None
        items: list[str] = []
        for line in lines:
            if not isinstance(line, dict) or not isinstance(line.get("sku"), str):
                return None
            allocations = line.get("allocations")
            sites = [line.get("site")]
            if isinstance(allocations, list):
                sites += [a.get("site") for a in allocations if isinstance(a, dict)]
            items += [f"{line['sku']}@{site}" for site in sites if isinstance(site, str)]
        return items
    if isinstance(body.get("sku"), str) and isinstance(body.get("site"), str):
        return [f"{body['sku']}@{body['site']}"]  # drift, or any other stock event
    return None


class Window:
    """The outbox entries a relay holds while it coalesces: from the first one it read, it
    holds what it reads for ``ms`` (or until ``max_entries``), then publishes them at once.

    Entries stay pending in the outbox meanwhile (a relay that dies leaves them to another),
    and one it reads again (its own pending entries, after a failed publish) is held once.
    """

    def __init__(self, ms: int, max_entries: int) -> None:
        self.seconds = ms / 1000
        self.max_entries = max_entries
        self.entries: list[OutboxEntry] = []
        self._ids: set[tuple[str, str]] = set()
        self._since = 0.0

    def add(self, entries: Iterable[OutboxEntry], now: float) -> None:
        for entry in entries:
            ident = (entry.stream, entry.entry_id)
            if ident in self._ids:
                continue
            if not self.entries:
                self._since = now
            self._ids.add(ident)
            self.entries.append(entry)

    def holds(self, entry: OutboxEntry) -> bool:
        return (entry.stream, entry.entry_id) in self._ids

    def due(self, now: float) -> bool:
        if not self.entries:
            return False
        return now - self._since >= self.seconds or len(self.entries) >= self.max_entries

    def left(self, now: float) -> float:
        """Seconds until the window closes (the window's length when it holds nothing)."""
        if not self.entries:
            return self.seconds
        return max(0.0, self._since + self.seconds - now)

    def clear(self) -> None:
        self.entries = []
        self._ids.clear()
