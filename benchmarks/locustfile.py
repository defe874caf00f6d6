"""Locust scenarios for the ATP service at peak: storefronts, checkouts, the OMS, a flash sale.

Run by `make bench` (benchmarks/run.py), or by hand against any running service:

    ATP_BENCH_HOST=http://127.0.0.1:8000 ATP_BENCH_API_KEY=... ATP_BENCH_OMS_KEY=... \
    ATP_BENCH_SKUS=100000 ATP_BENCH_SITES=5 \
    locust -f benchmarks/locustfile.py --headless --processes -1

Without ``ATP_BENCH_STAGES`` the shape is a peak (ramp, spike, sustain) of storefront,
checkout (promise), OMS and flash-sale users. Environment:

- ``ATP_BENCH_HOST``: the ATP API; ``ATP_BENCH_CEILING_HOST``: the ceiling app
  (benchmarks/ceiling_app.py), for the ceiling users.
- ``ATP_BENCH_API_KEY`` (availability:read), ``ATP_BENCH_OMS_KEY`` (reservations:write;
  default: the read key). ``ATP_LOCUST_API_KEY`` (docker-compose.yml) stands for both.
- ``ATP_BENCH_SKUS``, ``ATP_BENCH_SITES``: the loaded catalogue (benchmarks/catalogue.py).
- ``ATP_BENCH_CHANNEL``: the channel asked for (default ``web``).
- ``ATP_BENCH_USER_RPS``: requests per second per user (0: no think time, closed loop).
- ``ATP_BENCH_STAGES``: JSON list of ``{"seconds", "users", "spawn_rate", "classes"}``.
- ``ATP_BENCH_PEAK_USERS``, ``ATP_BENCH_PEAK_SECONDS``: size and length of the peak.
"""

from __future__ import annotations

import json
import os
import random
import sys
from pathlib import Path
from typing import Any

from locust import FastHttpUser, LoadTestShape, User, constant, constant_throughput, events, task

# Siblings by path: this file also runs alone in the Locust image (docker-compose.yml).
sys.path.insert(0, str(Path(__file__).resolve().parent))

from catalogue import Catalogue, Popularity
from shapes import peak_stages

HOST = os.environ.get("ATP_BENCH_HOST", "http://127.0.0.1:8000")
CEILING_HOST = os.environ.get("ATP_BENCH_CEILING_HOST", "http://127.0.0.1:8001")
READ_KEY = os.environ.get("ATP_BENCH_API_KEY") or os.environ.get("ATP_LOCUST_API_KEY", "")
OMS_KEY = os.environ.get("ATP_BENCH_OMS_KEY", READ_KEY)
CHANNEL = os.environ.get("ATP_BENCH_CHANNEL", "web")
USER_RPS = float(os.environ.get("ATP_BENCH_USER_RPS", "0"))
CATALOGUE = Catalogue(
    skus=int(os.environ.get("ATP_BENCH_SKUS", "100000")),
    sites=int(os.environ.get("ATP_BENCH_SITES", "5")),
)
SITES = CATALOGUE.site_codes
POPULARITY = Popularity(CATALOGUE.skus)

READ_HEADERS = {"Authorization": f"Bearer {READ_KEY}"}
JSON_HEADERS = {"Content-Type": "application/json"}


def _pace() -> Any:
    return constant_throughput(USER_RPS) if USER_RPS > 0 else constant(0)


def _record_outcome(name: str) -> None:
    """Count a business outcome (e.g. a sold-out 409) as its own zero-time stats row."""
    events.request.fire(
        request_type="OUTCOME",
        name=name,
        response_time=0,
        response_length=0,
        exception=None,
        context={},
    )


class _AtpUser(FastHttpUser):
    abstract = True
    host = HOST
    wait_time = _pace()
    # Fail fast rather than queue forever when the service is saturated.
    network_timeout = 10.0
    connection_timeout = 5.0


# -- storefront ------------------------------------------------------------------------------


class AvailabilityUser(_AtpUser):
    """A product page: one sku, all sites of the channel."""

    @task
    def product_page(self) -> None:
        _product_page(self)


def _product_page(user: FastHttpUser) -> None:
    user.client.get(
        f"/v1/availability/{POPULARITY.sku()}?channel={CHANNEL}",
        headers=READ_HEADERS,
        name="availability",
    )


class BatchReadUser(_AtpUser):
    """A listing page of exactly 50 skus (the batch figure)."""

    @task
    def listing_page(self) -> None:
        _batch(self, 50, "availability batch 50")


def _batch(user: FastHttpUser, size: int, name: str) -> None:
    items = [{"sku": sku, "site": None} for sku in POPULARITY.distinct_skus(size)]
    user.client.post(
        "/v1/availability/batch",
        data=json.dumps({"channel": CHANNEL, "items": items}),
        headers={**READ_HEADERS, **JSON_HEADERS},
        name=name,
    )


class StorefrontUser(_AtpUser):
    """Mostly product pages, sometimes a listing page of 20-50 skus."""

    weight = 8

    @task(9)
    def product_page(self) -> None:
        _product_page(self)

    @task(1)
    def listing_page(self) -> None:
        _batch(self, random.randint(20, 50), "availability batch 20-50")


# -- promise ---------------------------------------------------------------------------------

ZONES = ("US-EAST", "US-WEST")


def _promise(user: FastHttpUser, lines: int, name: str) -> None:
    """A promise of ``lines`` distinct skus, each from the channel's sites, to a random zone."""
    body = {
        "channel": CHANNEL,
        "ship_to": random.choice(ZONES),
        "lines": [{"sku": sku, "qty": 1} for sku in POPULARITY.distinct_skus(lines)],
    }
    user.client.post(
        "/v1/promise",
        data=json.dumps(body),
        headers={**READ_HEADERS, **JSON_HEADERS},
        name=name,
    )


class PromiseUser(_AtpUser):
    """A product page's "when can I have it": a promise of 1 line (the promise figure)."""

    @task
    def delivery_date(self) -> None:
        _promise(self, 1, "promise 1 line")


class Promise20User(_AtpUser):
    """A cart of exactly 20 lines at checkout (the 20-line promise figure)."""

    @task
    def checkout(self) -> None:
        _promise(self, 20, "promise 20 lines")


class CheckoutUser(_AtpUser):
    """At peak: mostly a product page's delivery date, sometimes a cart of 2-20 lines."""

    weight = 2

    @task(3)
    def delivery_date(self) -> None:
        _promise(self, 1, "promise 1 line")

    @task(1)
    def checkout(self) -> None:
        _promise(self, random.randint(2, 20), "promise 2-20 lines")


# -- OMS -----------------------------------------------------------------------------------


OMS_HEADERS = {"Authorization": f"Bearer {OMS_KEY}", **JSON_HEADERS}


class _Reserving(_AtpUser):
    abstract = True

    def headers(self) -> dict[str, str]:
        return {**OMS_HEADERS, "Idempotency-Key": os.urandom(16).hex()}

    def reserve(
        self,
        lines: list[dict[str, Any]],
        ttl: int,
        name: str,
        *,
        want_id: bool = True,
        path: str = "/v1/reservations",
    ) -> str | None:
        """The reservation id, or None when it was refused as sold out (a 409, not an error).

        ``want_id=False``: the body is not parsed (None either way), as a client that only
        places orders would not; the load generator shares the machine with the service.
        ``path``: where to send it (the Redis ceiling is asked the very same request).
        """
        with self.client.post(
            path,
            data=_reservation_body(lines, ttl),
            headers=self.headers(),
            name=name,
            catch_response=True,
        ) as response:
            if response.status_code == 201:
                return str(response.json()["reservation_id"]) if want_id else None
            if response.status_code == 409 and b"insufficient_stock" in (response.content or b""):
                response.success()
                _record_outcome(f"{name}: insufficient_stock")
                return None
            response.failure(f"{response.status_code}: {(response.text or '')[:200]}")
            return None

    def transition(self, reservation_id: str, action: str) -> None:
        self.client.post(
            f"/v1/reservations/{reservation_id}/{action}",
            headers=self.headers(),
            name=action,
        )


def _two_lines() -> list[dict[str, Any]]:
    site = random.choice(SITES)
    skus = POPULARITY.distinct_skus(2)
    return [{"sku": sku, "site": site, "qty": 1} for sku in skus]


def _reservation_body(lines: list[dict[str, Any]], ttl: int) -> str:
    return json.dumps(
        {"channel": CHANNEL, "ttl_seconds": ttl, "mode": "all_or_nothing", "lines": lines}
    )


class OmsUser(_Reserving):
    """Reserves an order of 2 lines, then confirms (60%), releases (30%) or lets it expire."""

    weight = 2

    @task
    def place_order(self) -> None:
        fate = random.random()
        ttl = 5 if fate >= 0.9 else 900
        reservation_id = self.reserve(_two_lines(), ttl, "reserve 2 lines")
        if reservation_id is None or fate >= 0.9:
            return
        self.transition(reservation_id, "confirm" if fate < 0.6 else "release")


class ReserveOnlyUser(_Reserving):
    """Only reservations of 2 lines, held 5 s then expired (the reservation figure)."""

    @task
    def place_order(self) -> None:
        self.reserve(_two_lines(), 5, "reserve 2 lines", want_id=False)


class FlashSaleUser(_Reserving):
    """Everybody wants the hot sku at the first site; most confirm what they got."""

    weight = 1

    @task
    def grab(self) -> None:
        line = {"sku": CATALOGUE.hot_sku, "site": SITES[0], "qty": 1}
        reservation_id = self.reserve([line], 60, "flash sale reserve")
        if reservation_id is not None and random.random() < 0.8:
            self.transition(reservation_id, "confirm")


# -- ceilings (benchmarks/ceiling_app.py) ----------------------------------------------------
# Each asks the ceiling app the very request of the figure it is the ceiling of (path shape,
# query, headers, body): the load generator shares the machine, so its work per request must
# be the same on both sides of a ratio. The ceiling app ignores what it is told.


class HttpCeilingUser(_AtpUser):
    """A product page's request; a constant JSON body: the framework, server and serializer."""

    host = CEILING_HOST

    @task
    def constant(self) -> None:
        self.client.get(
            f"/ceiling/http/{POPULARITY.sku()}?channel={CHANNEL}",
            headers=READ_HEADERS,
            name="ceiling http",
        )


class FixedUrlCeilingUser(_AtpUser):
    """The same body at one fixed URL, no query, no header: what the load generator's
    share of a ratio is worth (a reference beside the HTTP ceiling)."""

    host = CEILING_HOST

    @task
    def constant(self) -> None:
        self.client.get("/ceiling/http", name="ceiling http, fixed url")


class RedisCeilingUser(_Reserving):
    """A 2-line reservation's request; one Redis round trip (GET) from redis.asyncio and a
    constant reservation-shaped answer."""

    host = CEILING_HOST

    @task
    def one_get(self) -> None:
        self.reserve(_two_lines(), 5, "ceiling redis", want_id=False, path="/ceiling/redis")


USER_CLASSES: dict[str, type[User]] = {
    cls.__name__: cls
    for cls in (
        AvailabilityUser,
        BatchReadUser,
        StorefrontUser,
        OmsUser,
        ReserveOnlyUser,
        FlashSaleUser,
        PromiseUser,
        Promise20User,
        CheckoutUser,
        HttpCeilingUser,
        FixedUrlCeilingUser,
        RedisCeilingUser,
    )
}


# -- the shape --------------------------------------------------------------------------------


class PeakShape(LoadTestShape):
    """A peak (ramp, spike, sustain), or the stages of ``ATP_BENCH_STAGES``."""

    def __init__(self) -> None:
        super().__init__()
        raw = os.environ.get("ATP_BENCH_STAGES")
        self.stages: list[dict[str, Any]] = (
            json.loads(raw)
            if raw
            else peak_stages(
                int(os.environ.get("ATP_BENCH_PEAK_USERS", "48")),
                float(os.environ.get("ATP_BENCH_PEAK_SECONDS", "60")),
            )
        )

    def tick(self) -> tuple[int, float, list[type[User]] | None] | None:
        elapsed = self.get_run_time()
        for stage in self.stages:
            if elapsed < stage["seconds"]:
                classes = [USER_CLASSES[name] for name in stage["classes"]]
                return int(stage["users"]), float(stage["spawn_rate"]), classes
            elapsed -= stage["seconds"]
        return None
