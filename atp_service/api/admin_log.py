"""Admin changes in the log: one line each, naming the API key that made it (``changed_by``).

Every admin route that changes what the service promises (channel policies, safety stock,
sites) calls ``log_admin_change`` once the change is stored, and hands the same name to the
store, which keeps it with the change and puts it, as ``changed_by``, in what the change
emits (docs/security.md, "What is logged").
"""

from __future__ import annotations

import logging
from typing import Any

from atp_service.api.auth import Principal

log = logging.getLogger("atp.admin")


def log_admin_change(principal: Principal, change: str, **details: Any) -> None:
    """``change``: what was done (``channel policy put``); ``details``: what it was, as
    JSON-able values (the log line's fields beside ``changed_by``)."""
    log.info("%s by %s", change, principal.name, extra={"changed_by": principal.name, **details})
