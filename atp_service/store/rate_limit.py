"""Per-API-key token buckets in Redis: one limit for a key across every API process.

Each key's bucket is one Redis hash (``keys.rate_bucket``, a slot of its own on Redis
Cluster), taken from by ``lua/rate_limit.lua`` on Redis' clock, so any number of API
processes share it exactly: a token granted is gone for every process, and a key is never
granted more than ``burst + rate * t`` in any ``t`` seconds, whatever the processes.

Two things keep that cheap for a busy key (what each bought: docs/security.md, measured by
``python -m benchmarks.security_costs``):

- The requests of one key waiting at once in this process (those of one event-loop turn)
  ask in one script call for as many tokens, granted in their order.
- A key busy enough to spend ``LEASE_SECONDS`` worth of its rate at a time takes that many
  tokens in one call (``lease``, at most ``MAX_LEASE``) and spends the rest in this process
  without asking Redis. The tokens are taken from the shared bucket before they are spent,
  so the limit is never exceeded; tokens a process holds and does not spend (at most one
  lease per process and key) are lost to the others: the limit can refuse slightly early,
  never late. A key whose rate is below ``1 / LEASE_SECONDS`` asks for every request.
"""

from __future__ import annotations

import asyncio

from atp_service.store import keys as k
from atp_service.store.redis_store import RedisStore

#: A busy key takes what its rate allows in this long at once (see the module's docstring).
LEASE_SECONDS = 0.02
MAX_LEASE = 64


def lease(rate: float, burst: int) -> int:
    """Tokens a process takes at once for a key: 1 (exact) unless the key is fast."""
    return max(1, min(MAX_LEASE, int(rate * LEASE_SECONDS), burst // 2))


class SharedBuckets:
    """``take(name)``: a token from the named key's bucket (``rate`` a second, ``burst``)."""

    def __init__(self, store: RedisStore, *, rate: float, burst: int) -> None:
        if rate <= 0 or burst < 1:
            raise ValueError("rate must be positive and burst at least 1")
        self.store = store
        self.rate = rate
        self.burst = burst
        self.lease = lease(rate, burst)
        #: Tokens taken from Redis and not spent yet, by key name.
        self._held: dict[str, int] = {}
        self._rate_args = [repr(float(rate)), str(burst)]
        self._script = store.register_script("rate_limit.lua")
        self._keys: dict[str, list[str]] = {}
        #: Requests waiting for a token, by key name, until the end of this loop turn.
        self._waiting: dict[str, list[asyncio.Future[float]]] = {}
        self._tasks: set[asyncio.Task[None]] = set()

    async def take(self, key_name: str) -> float:
        """0.0 if a token was taken, else the seconds until one will be there.

        Raises what the store raises when Redis cannot be asked (the caller decides).
        """
        held = self._held.get(key_name, 0)
        if held:
            self._held[key_name] = held - 1
            return 0.0
        future: asyncio.Future[float] = asyncio.get_running_loop().create_future()
        waiting = self._waiting.get(key_name)
        if waiting is None:
            self._waiting[key_name] = [future]
            asyncio.get_running_loop().call_soon(self._ask, key_name)
        else:
            waiting.append(future)
        return await future

    def _ask(self, key_name: str) -> None:
        futures = self._waiting.pop(key_name)
        task = asyncio.ensure_future(self._answer(key_name, futures))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _answer(self, key_name: str, futures: list[asyncio.Future[float]]) -> None:
        bucket = self._keys.get(key_name)
        if bucket is None:  # as many as the configured keys: requests name only those
            bucket = self._keys[key_name] = [k.rate_bucket(key_name)]
        try:
            granted, wait_ms = await self.store.run_script(
                self._script,
                bucket,
                [*self._rate_args, max(len(futures), self.lease)],
                replicated=False,  # a bucket lost in a failover is a bucket refilled
            )
        except BaseException as exc:
            for future in futures:
                if not future.done():
                    future.set_exception(exc)
            if not isinstance(exc, Exception):
                raise
            return
        granted, wait = int(granted), int(wait_ms) / 1000
        for i, future in enumerate(futures):
            if not future.done():  # a request gone meanwhile spent its token all the same
                future.set_result(0.0 if i < granted else wait)
        if granted > len(futures):
            self._held[key_name] = self._held.get(key_name, 0) + granted - len(futures)
