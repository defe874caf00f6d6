"""The benchmark's catalogue and shapes: the same names as `atp simulate`, valid inbound
messages, a peak that ramps, spikes and sustains, and a scenario Locust's image can load."""

from __future__ import annotations

import ast
import random
import sys
from pathlib import Path

from atp_service import simulate
from atp_service.domain import DEFAULT_AUTHORITY, InventoryDelta, InventorySnapshot
from benchmarks import catalogue
from benchmarks.catalogue import Catalogue, Popularity, delta_message
from benchmarks.shapes import peak_stages
from stream_agents.records import decode

BENCHMARKS = Path(catalogue.__file__).resolve().parent


def test_names_are_those_of_atp_simulate() -> None:
    for rank in (1, 42, 99_999, 100_000, 1_234_567):
        assert catalogue.sku_name(rank) == simulate.sku_name(rank)
    for count in range(1, 12):
        assert catalogue.site_names(count) == simulate.site_names(count)
    assert catalogue.ZIPF_EXPONENT == simulate.ZIPF_EXPONENT


def test_catalogue_snapshots_and_deltas_are_valid_inbound_events() -> None:
    cat = Catalogue(skus=10, sites=5)
    key, value = cat.snapshot(3, "DC-WEST", "run1", "2026-11-23T05:00:00.000Z")
    snapshot = decode(key, value, "wms.inventory.v1", DEFAULT_AUTHORITY)
    assert isinstance(snapshot, InventorySnapshot)
    assert key == b"SKU-00003@DC-WEST"

    key, value = delta_message("SKU-00003", "DC-WEST", -1, "bench-1")
    delta = decode(key, value, "wms.inventory.v1", DEFAULT_AUTHORITY)
    assert isinstance(delta, InventoryDelta)


def test_the_hot_sku_has_deep_stock_and_the_tail_has_some() -> None:
    cat = Catalogue(skus=1000, sites=5)
    assert cat.stock_of(1, "DC-EAST") == catalogue.HOT_STOCK
    assert all(20 <= cat.stock_of(rank, site) < 520 for rank in (2, 500) for site in cat.site_codes)


def test_popularity_is_skewed_towards_the_first_ranks() -> None:
    popularity = Popularity(10_000, random.Random(1))
    ranks = [popularity.rank() for _ in range(20_000)]
    assert ranks.count(1) > 20 * ranks.count(100) > 0
    assert min(ranks) >= 1 and max(ranks) <= 10_000


def test_a_listing_page_names_distinct_skus_even_from_a_small_catalogue() -> None:
    popularity = Popularity(30, random.Random(2))
    page = popularity.distinct_skus(50)
    assert len(page) == len(set(page)) == 30


def test_the_peak_ramps_then_spikes_with_the_flash_sale_then_sustains() -> None:
    ramp, spike, sustain = peak_stages(48, 60)
    assert [s["name"] for s in (ramp, spike, sustain)] == ["ramp", "spike", "sustain"]
    assert ramp["users"] < sustain["users"] < spike["users"] == 48
    assert "FlashSaleUser" in spike["classes"]
    assert "FlashSaleUser" not in ramp["classes"] + sustain["classes"]
    assert sum(s["seconds"] for s in (ramp, spike, sustain)) == 60


def test_the_locust_scenario_needs_only_locust_and_the_standard_library() -> None:
    # docker-compose.yml mounts benchmarks/ alone into the Locust image.
    siblings = {p.stem for p in BENCHMARKS.glob("*.py")}
    allowed = set(sys.stdlib_module_names) | {"locust", "__future__"} | siblings
    pending, seen = ["locustfile"], set()
    while pending:
        name = pending.pop()
        seen.add(name)
        tree = ast.parse((BENCHMARKS / f"{name}.py").read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                modules = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                modules = [node.module]
            else:
                continue
            for module in modules:
                top = module.split(".")[0]
                assert top in allowed, f"{name}.py imports {module}"
                if top in siblings and top not in seen:
                    pending.append(top)
    assert {"locustfile", "catalogue", "shapes"} <= seen
