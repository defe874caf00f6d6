"""How long one large promise takes: 50 lines over HTTP one at a time, and the plan alone.

The Locust phases measure promises of 1 and 20 lines under load; this measures the latency
of a 50-line promise with nothing else running (sequential requests against the loaded
catalogue), and the planner itself in this process (``plan_promise`` over the same shape of
data, no HTTP, no Redis), so the two can be told apart.
"""

from __future__ import annotations

import json
import random
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx

from atp_service.config import Settings
from atp_service.domain import (
    ChannelPolicy,
    ItemSite,
    ItemSitePosition,
    PromiseLine,
    PromiseRequest,
    SiteBook,
    plan_promise,
)
from benchmarks.catalogue import Catalogue, Popularity
from benchmarks.streams import percentile

SITES_FILE = Path(__file__).resolve().parent.parent / "examples" / "sites.json"
ZONES = ("US-EAST", "US-WEST")


@dataclass(frozen=True)
class Latency:
    requests: int
    lines: int
    http_ms: list[float]
    plan_ms: list[float]

    def figures(self) -> dict[str, object]:
        def r(value: float | None) -> float | None:
            return None if value is None else round(value, 2)

        return {
            "requests": self.requests,
            "lines": self.lines,
            "http_p50_ms": r(percentile(self.http_ms, 50)),
            "http_p99_ms": r(percentile(self.http_ms, 99)),
            "plan_p50_ms": r(percentile(self.plan_ms, 50)),
            "plan_p99_ms": r(percentile(self.plan_ms, 99)),
        }


def _body(popularity: Popularity, lines: int) -> dict[str, object]:
    return {
        "channel": "web",
        "ship_to": random.choice(ZONES),
        "lines": [{"sku": sku, "qty": 1} for sku in popularity.distinct_skus(lines)],
    }


def measure(
    api_url: str, read_key: str, catalogue: Catalogue, *, lines: int = 50, requests: int = 200
) -> Latency:
    """``requests`` promises of ``lines`` skus over HTTP, one after the other (after 20 to
    warm up), then as many plans of the same shape in this process."""
    popularity = Popularity(catalogue.skus, random.Random(11))
    headers = {"Authorization": f"Bearer {read_key}", "Content-Type": "application/json"}
    http_ms: list[float] = []
    with httpx.Client(base_url=api_url, headers=headers, timeout=10.0) as client:
        for n in range(requests + 20):
            body = json.dumps(_body(popularity, lines))
            started = time.perf_counter()
            response = client.post("/v1/promise", content=body)
            elapsed = (time.perf_counter() - started) * 1000
            response.raise_for_status()
            if n >= 20:
                http_ms.append(elapsed)
    return Latency(requests, lines, http_ms, _plan_ms(catalogue, popularity, lines, requests))


def _plan_ms(
    catalogue: Catalogue, popularity: Popularity, lines: int, requests: int
) -> list[float]:
    """The planner alone, on positions as the catalogue loads them plus some inbound."""
    sites = tuple(catalogue.site_codes)
    book = SiteBook(
        Settings(_env_file=None, sites_file=SITES_FILE).load_sites()  # type: ignore[call-arg]
    )
    now = datetime.now(UTC)
    policy = ChannelPolicy(include_in_transit=True, in_transit_horizon_days=7)
    timings: list[float] = []
    for _ in range(requests):
        skus = popularity.distinct_skus(lines)
        positions = {
            ItemSite(sku, site): ItemSitePosition(
                on_hand=random.randint(0, 20),
                in_transit_by_eta={now.date() + timedelta(days=random.randint(1, 9)): 10},
            )
            for sku in skus
            for site in sites
        }
        request = PromiseRequest(
            tuple(PromiseLine(sku, random.randint(1, 30)) for sku in skus),
            policy,
            sites,
            ship_to=random.choice(ZONES),
        )
        started = time.perf_counter()
        plan_promise(request, positions, book, now)
        timings.append((time.perf_counter() - started) * 1000)
    return timings
