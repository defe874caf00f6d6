"""The benchmark catalogue: sku and site names, skewed popularity, inbound messages.

Shared by the runner (which loads the catalogue through Kafka) and the Locust users (which
pick skus from it). Standard library only: the Locust container of docker-compose.yml
mounts benchmarks/ alone, without this project. The names are those of `atp simulate`
(``SKU-00001`` is the hottest; tests/unit/test_bench_catalogue.py keeps them equal).
"""

from __future__ import annotations

import bisect
import json
import random
import zlib
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

ZIPF_EXPONENT = 1.1  # as `atp simulate`
SITE_NAMES = (
    "DC-EAST",
    "DC-WEST",
    "STORE-001",
    "STORE-002",
    "DC-CENTRAL",
    "STORE-003",
    "STORE-004",
    "STORE-005",
)
#: The flash sale's item: the hottest sku, at the first site, with deep stock.
HOT_SKU_RANK = 1
HOT_STOCK = 5_000


def sku_name(rank: int) -> str:
    """The sku of popularity rank ``rank`` (1 is the hottest)."""
    return f"SKU-{rank:05d}"


def site_names(count: int) -> list[str]:
    names = list(SITE_NAMES[:count])
    names.extend(f"SITE-{n:03d}" for n in range(len(names) + 1, count + 1))
    return names


def _json(body: dict[str, Any]) -> bytes:
    return json.dumps(body, separators=(",", ":")).encode()


def now_rfc3339() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


@dataclass(frozen=True)
class Catalogue:
    """``skus`` skus (ranks 1..skus) at each of ``sites`` sites."""

    skus: int
    sites: int

    @property
    def site_codes(self) -> list[str]:
        return site_names(self.sites)

    @property
    def item_sites(self) -> int:
        return self.skus * self.sites

    @property
    def hot_sku(self) -> str:
        return sku_name(HOT_SKU_RANK)

    def stock_of(self, rank: int, site: str) -> int:
        """A deterministic on-hand level: deep for the hot sku, 20..520 otherwise."""
        if rank == HOT_SKU_RANK:
            return HOT_STOCK
        return 20 + zlib.crc32(f"{rank}@{site}".encode()) % 500

    def snapshot(self, rank: int, site: str, run_id: str, occurred_at: str) -> tuple[bytes, bytes]:
        """(key, value) of the WMS snapshot that loads one item-site."""
        sku = sku_name(rank)
        body = {
            "schema": "inventory.snapshot.v1",
            "event_id": f"bench-snap-{run_id}-{rank}-{site}",
            "source": "wms",
            "source_seq": 1,
            "occurred_at": occurred_at,
            "sku": sku,
            "site": site,
            "quantities": {"on_hand": self.stock_of(rank, site), "allocated": 0, "quarantined": 0},
        }
        return f"{sku}@{site}".encode(), _json(body)


def delta_message(sku: str, site: str, qty: int, event_id: str) -> tuple[bytes, bytes]:
    """(key, value) of a WMS on-hand delta (no ``source_seq``: ordered by the partition)."""
    body: dict[str, Any] = {
        "schema": "inventory.delta.v1",
        "event_id": event_id,
        "source": "wms",
        "source_seq": None,
        "occurred_at": now_rfc3339(),
        "correlation_id": None,
        "sku": sku,
        "site": site,
        "bucket": "on_hand",
        "delta": qty,
        "reason": "receipt" if qty > 0 else "pick",
        "eta": None,
        "reservation_id": None,
    }
    return f"{sku}@{site}".encode(), _json(body)


class Popularity:
    """Zipf-like choice of sku ranks: a few hot items, a long tail."""

    def __init__(self, skus: int, rng: random.Random | None = None) -> None:
        self.rng = rng or random.Random()
        total = 0.0
        self._cumulative: list[float] = []
        for rank in range(1, skus + 1):
            total += 1.0 / rank**ZIPF_EXPONENT
            self._cumulative.append(total)
        self._total = total

    def rank(self) -> int:
        return bisect.bisect_left(self._cumulative, self.rng.random() * self._total) + 1

    def sku(self) -> str:
        return sku_name(self.rank())

    def distinct_skus(self, count: int) -> list[str]:
        chosen: dict[str, None] = {}
        count = min(count, len(self._cumulative))
        while len(chosen) < count:
            chosen[self.sku()] = None
        return list(chosen)
