"""Unique references so tests can share one store without seeing each other's data."""

from __future__ import annotations

import uuid


def _suffix() -> str:
    return uuid.uuid4().hex[:8]


def random_sku(name: str = "") -> str:
    return f"SKU-{name}-{_suffix()}" if name else f"SKU-{_suffix()}"


def random_site(name: str = "") -> str:
    return f"DC-{name}-{_suffix()}" if name else f"DC-{_suffix()}"


def random_event_id(prefix: str = "ev") -> str:
    return f"{prefix}-{uuid.uuid4().hex}"
