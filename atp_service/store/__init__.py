"""Redis: key names, Lua scripts and the one adapter class the rest of the service uses."""

from atp_service.store.keys import KeySpace
from atp_service.store.redis_store import (
    FoldOutcome,
    OutboxEntry,
    PolicyBook,
    RedisStore,
    StoreUnavailable,
    connect,
)

__all__ = [
    "FoldOutcome",
    "KeySpace",
    "OutboxEntry",
    "PolicyBook",
    "RedisStore",
    "StoreUnavailable",
    "connect",
]
