"""Per-API-key token buckets in Redis: one limit for a key across every API process.

Each key's bucket is one Redis hash (``keys.rate_bucket``, a slot of its own on Redis
Cluster), taken from by ``lua/rate_limit.lua`` on Redis' clock, so any number of API
processes share it exactly. The call goes through the store's script pipe
(``RedisStore.run_script``), pipelined with the other requests' scripts.
"""

from __future__ import annotations

from atp_service.store import keys as k
from atp_service.store.redis_store import RedisStore


class SharedBuckets:
    """``take(name)``: a token from the named key's bucket (``rate`` a second, ``burst``)."""

    def __init__(self, store: RedisStore, *, rate: float, burst: int) -> None:
        if rate <= 0 or burst < 1:
            raise ValueError("rate must be positive and burst at least 1")
        self.store = store
        self.rate = rate
        self.burst = burst
        self._args = [repr(float(rate)), str(burst)]
        self._script = store.register_script("rate_limit.lua")
        self._keys: dict[str, list[str]] = {}

    async def take(self, key_name: str) -> float:
        """0.0 if a token was taken, else the seconds until one will be there.

        Raises what the store raises when Redis cannot be asked (the caller decides).
        """
        bucket = self._keys.get(key_name)
        if bucket is None:  # as many as the configured keys: requests name only those
            bucket = self._keys[key_name] = [k.rate_bucket(key_name)]
        wait_ms = await self.store.run_script(self._script, bucket, self._args)
        return int(wait_ms) / 1000
