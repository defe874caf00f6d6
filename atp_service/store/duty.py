"""Background duties (the outbox relay, the reservation expiry sweeper, re-evaluation) and
who does them.

The relay and the sweeper are safe to run in any number of processes at once (the relay is
a consumer group; an expiry is one script that re-checks it is due); re-evaluation runs in
one process at a time, the holder of its ``Lease``. The workers do them; an API process
stands by and does them only while no worker has reported a successful round for
``lease_ms``, so an API alone (no worker running) still publishes and expires, and an API
beside workers spends its CPU on requests.
"""

from __future__ import annotations

import time
from importlib import resources

from redis.commands.core import AsyncScript

from atp_service.store.keys import duty_key
from atp_service.store.redis_store import RedisClient

#: How long a worker's report of a successful round stands.
DUTY_LEASE_MS = 3_000
#: How often a worker reports, and a standing-by process looks, at most.
_REPORT_EVERY_SECONDS = 1.0
_LOOK_EVERY_SECONDS = 0.5


class Duty:
    """One duty as seen by one process: ``done()`` after a successful round (a worker),
    ``taken()`` before doing a round (an API process on stand-by)."""

    def __init__(
        self, client: RedisClient, name: str, *, holder: str, lease_ms: int = DUTY_LEASE_MS
    ) -> None:
        self._redis = client
        self.key = duty_key(name)
        self.holder = holder
        self.lease_ms = lease_ms
        self._next_report = 0.0
        self._next_look = 0.0
        self._taken = False

    async def done(self) -> None:
        """A round succeeded: the processes standing by may leave the duty to this one."""
        now = time.monotonic()
        if now >= self._next_report:
            await self._redis.set(self.key, self.holder, px=self.lease_ms)
            self._next_report = now + _REPORT_EVERY_SECONDS

    async def taken(self) -> bool:
        """Whether a worker did the duty within the lease (looked up at most twice a second)."""
        now = time.monotonic()
        if now >= self._next_look:
            self._taken = bool(await self._redis.exists(self.key))
            self._next_look = now + _LOOK_EVERY_SECONDS
        return self._taken


class Lease:
    """One process at a time: ``hold()`` takes the lease or keeps it (for ``ttl_ms`` more)
    and says whether this process holds it; a holder that stops renewing loses it."""

    def __init__(self, client: RedisClient, key: str, *, holder: str, ttl_ms: int) -> None:
        self.key = key
        self.holder = holder
        self.ttl_ms = ttl_ms
        text = (resources.files("atp_service.store") / "lua" / "lease.lua").read_text()
        self._script: AsyncScript = client.register_script(text)

    async def hold(self) -> bool:
        return bool(await self._script(keys=[self.key], args=[self.holder, self.ttl_ms, "hold"]))

    async def release(self) -> None:
        await self._script(keys=[self.key], args=[self.holder, self.ttl_ms, "release"])
