"""A ``{name:path}`` route that leaves the paths ending in a suffix to a route after it.

``GET /v1/availability/{sku:path}`` (a sku may contain '/') matches
``/v1/availability/SKU-1/timeline`` too. Listing the timeline route first would make every
product-page read fail one match before its own: 2.4 µs a request with FastAPI 0.165 and
Starlette 1.10 (measured with ``timeit``, on top of a read that costs the API about 29 µs).
Instead the plain read's own pattern refuses the suffix with a negative lookbehind, which
costs its match 0.06 µs, and the timeline route, listed after it, takes those paths.

Relies on Starlette matching a route by its compiled ``path_regex`` (``Route.matches``);
tests/unit/test_path_suffix.py fails, naming this module, when that changes.
"""

from __future__ import annotations

import re

from starlette.routing import Route


def leave_suffix_to_later_route(route: Route, suffix: str) -> None:
    """Make ``route`` match no path ending in ``suffix``; nothing else changes (its OpenAPI
    path, its parameters, its name)."""
    pattern = route.path_regex.pattern
    if not pattern.endswith("$"):
        raise ValueError(f"{route.path!r}: a route pattern ends in '$' (Starlette's compile_path)")
    route.path_regex = re.compile(
        f"{pattern[:-1]}(?<!{re.escape(suffix)})$", route.path_regex.flags
    )
