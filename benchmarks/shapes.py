"""Load shapes shared by the locustfile and the runner (no Locust import: no gevent here)."""

from __future__ import annotations

from typing import Any


def peak_stages(users: int, seconds: float) -> list[dict[str, Any]]:
    """Ramp to a third of the peak, spike to the peak with the flash sale, sustain 2/3."""
    base, sustain = max(1, users // 3), max(1, 2 * users // 3)
    everyday = ["StorefrontUser", "CheckoutUser", "OmsUser"]
    return [
        {"name": "ramp", "seconds": 0.3 * seconds, "users": base,
         "spawn_rate": max(1.0, base / (0.25 * seconds)), "classes": everyday},
        {"name": "spike", "seconds": 0.3 * seconds, "users": users,
         "spawn_rate": float(users), "classes": [*everyday, "FlashSaleUser"]},
        {"name": "sustain", "seconds": 0.4 * seconds, "users": sustain,
         "spawn_rate": float(users), "classes": everyday},
    ]  # fmt: skip


def one_stage(users: int, seconds: float, *classes: str) -> dict[str, Any]:
    """One stage that starts every user at once."""
    return {
        "seconds": seconds,
        "users": users,
        "spawn_rate": float(users),
        "classes": list(classes),
    }
