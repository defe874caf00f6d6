"""The one JSON document `/dashboard` polls (``GET /v1/ops/summary``): the service at a glance.

Built from what the workers report into Redis (store/ops.py: sync lag, fold rates, dead
letters, drifts, the last audit) and the outbox's length, read in one round trip; with
``sku``, that sku's availability for every channel that has a policy (and ``*``, the
channels that have none), from the read path itself.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any

from atp_service.api.state import ApiState
from atp_service.api.sync_view import SOURCES, sync_body
from atp_service.domain.reservations import iso_from_ms
from atp_service.store.ops import LIVE_WINDOW_MS, OpsSnapshot, OpsStore, WorkerReport, merge_sync
from atp_service.store.redis_store import UNLISTED_CHANNELS

#: Latest dead letters and drifts shown.
LATEST_SHOWN = 20

#: The read path's ``availability(state, channel, queries)`` (routes/availability.py).
Availability = Callable[
    [ApiState, str, Sequence[tuple[str, str | None]]], Awaitable[list[dict[str, Any]]]
]


async def summary(state: ApiState, sku: str | None, availability: Availability) -> dict[str, Any]:
    snapshot = await OpsStore(state.redis, state.keys.outboxes).snapshot()
    body = summary_of(snapshot, int(time.time() * 1000))
    body["sku"] = await _sku(state, sku, availability) if sku is not None else None
    return body


def summary_of(snapshot: OpsSnapshot, now_ms: int) -> dict[str, Any]:
    """Everything but the sku, from what was read (pure: unit-tested as such)."""
    reports = snapshot.reports
    newest = max((r["at"] for r in reports), default=0)
    live = [r for r in reports if r["at"] >= newest - LIVE_WINDOW_MS]
    sync = merge_sync(reports, SOURCES)
    events_per_second = {source: 0.0 for source in SOURCES}
    for r in live:
        for source, figures in r["sources"].items():
            events_per_second[source] = events_per_second.get(source, 0.0) + float(
                figures.get("events_per_second", 0.0)
            )
    dead_letters_per_second = sum(float(r.get("dead_letters_per_second", 0.0)) for r in live)
    handled = sum(events_per_second.values()) + dead_letters_per_second
    return {
        "as_of": iso_from_ms(now_ms),
        "sync": sync_body(sync),
        "fold": {
            "events_per_second": {s: round(v, 1) for s, v in events_per_second.items()},
            "dead_letters_per_second": round(dead_letters_per_second, 2),
            "failure_rate": round(dead_letters_per_second / handled, 4) if handled else None,
            "totals": _totals(snapshot.folded_counts),
        },
        "workers": [_worker(r, live=r in live) for r in reports],
        "dead_letters": {
            "by_code": dict(sorted(snapshot.dead_letter_counts.items())),
            "total": sum(snapshot.dead_letter_counts.values()),
            "latest": snapshot.dead_letters[:LATEST_SHOWN],
        },
        "drift": {
            "by_bucket": _drift_counts(snapshot.drift_counts),
            "latest": snapshot.drifts[:LATEST_SHOWN],
        },
        "reservations": _reservations(snapshot.audit),
        "outbox": {"backlog": snapshot.outbox_backlog},
    }


def _worker(report: WorkerReport, *, live: bool) -> dict[str, Any]:
    return {
        "worker": report["worker"],
        "as_of": iso_from_ms(report["at"]),
        "live": live,
        "sources": {
            source: {
                "lag_seconds": figures["lag_ms"] / 1000,
                "events_per_second": figures["events_per_second"],
            }
            for source, figures in sorted(report["sources"].items())
        },
        "partitions": [
            {
                "topic": p["topic"],
                "partition": p["partition"],
                "source": p["source"],
                "lag_seconds": p["lag_ms"] / 1000,
                "lag_messages": p["lag_messages"],
            }
            for p in report["partitions"]
        ],
    }


def _totals(counts: Mapping[str, int]) -> dict[str, dict[str, int]]:
    """``{"wms:folded": n, ...}`` as ``{"wms": {"folded": n, ...}, ...}``."""
    out: dict[str, dict[str, int]] = {}
    for name, n in sorted(counts.items()):
        source, _, outcome = name.partition(":")
        out.setdefault(source, {})[outcome or "events"] = n
    return out


def _drift_counts(counts: Mapping[str, int]) -> dict[str, dict[str, int]]:
    out: dict[str, dict[str, int]] = {}
    for name, n in sorted(counts.items()):
        bucket, _, what = name.rpartition(":")
        if bucket and what in ("events", "units"):
            out.setdefault(bucket, {"events": 0, "units": 0})[what] = n
    return out


def _reservations(audit: Mapping[str, Any] | None) -> dict[str, Any]:
    if audit is None:
        return {"by_status": None, "audit": None}
    return {
        "by_status": audit.get("by_status"),
        "audit": {
            "at": audit.get("at"),
            "seconds": audit.get("seconds"),
            "mismatches": audit.get("mismatches"),
            "differences": audit.get("differences", []),
        },
    }


async def _sku(state: ApiState, sku: str, availability: Availability) -> dict[str, Any]:
    book = state.book if state.policies_loaded else await state.ensure_policies()
    channels = [*sorted(book.policies), UNLISTED_CHANNELS]
    answers = []
    sites: set[str] = set()
    for channel in channels:
        (answer,) = await availability(state, channel, ((sku, None),))
        answer.pop("sync", None)  # the summary has its own, once
        answers.append(answer)
        policy = book.policy(channel)
        sites.update(policy.sites if policy.sites is not None else state.sites)
    return {"sku": sku, "sites": sorted(sites), "channels": answers}
