"""Which outbox streams one relay publishes: a lease per stream, so that one relay at a time
publishes each, and the events of a key (which all go to one stream) keep their order.

Relays in several processes used to read every stream through one consumer group: the
entries of a stream were shared out among them, and two relays publishing entries of one
stream at once could publish two events of one key out of order (tests/integration/
test_relays.py shows it). Now each relay holds the leases (``keys.outbox_lease``) of some
streams and reads only those; the live relays register (``keys.RELAYS``) and each takes
about its share of the streams. A relay that dies stops renewing: its leases lapse after
``lease_ms`` and another relay takes them, and first claims and publishes, in their order,
the entries the dead one read and never acknowledged, before any newer one.

A relay renews its leases in the background (``renew``, every third of ``lease_ms``) and
publishes entries of a stream only while its own clock says the lease stands (a margin
before it would lapse). One case is left: a relay paused longer than the lease *while* its
publish is on the wire may see that publish land after a newer one of the next holder.
"""

from __future__ import annotations

import asyncio
import math
import random
import time
from collections.abc import Sequence

from atp_service.store import keys as k
from atp_service.store.redis_store import RedisStore

#: Part of the lease past which a relay no longer trusts it holds it (clocks drift, calls
#: take time).
_TRUSTED_PART = 0.7


class RelayLeases:
    """The leases of one relay (``holder``) on the outbox streams of its store."""

    def __init__(self, store: RedisStore, holder: str, lease_ms: int) -> None:
        self.redis = store.redis
        self.keys = store.keys
        self.holder = holder
        self.lease_ms = lease_ms
        self._lease = store.register_script("relay_lease.lua")
        self._register = store.register_script("relay_register.lua")
        self._store = store
        #: Stream -> until when (monotonic) this relay may publish its entries.
        self._until: dict[str, float] = {}
        self._next_share = 0.0
        self._lock = asyncio.Lock()

    @property
    def every(self) -> float:
        """How often leases are renewed and the share looked at again (seconds)."""
        return self.lease_ms / 3000

    def held(self) -> list[str]:
        """The streams this relay may publish now."""
        now = time.monotonic()
        return [stream for stream, until in self._until.items() if until > now]

    def holds(self, stream: str) -> bool:
        return self._until.get(stream, 0.0) > time.monotonic()

    def share_due(self) -> bool:
        return time.monotonic() >= self._next_share

    async def share(self) -> list[str]:
        """Register, renew what this relay holds, and take or give up streams until it holds
        its share of them; returns the streams it took (their pending entries are its to
        claim). Call it only between rounds: a stream given up has nothing in flight."""
        async with self._lock:
            self._next_share = time.monotonic() + self.every
            [alive] = await self._store.run_scripts_or_raise(
                [(self._register, [k.RELAYS], (self.holder, self.lease_ms, "1"))]
            )
            fair = math.ceil(len(self.keys.outboxes) / max(1, int(alive)))
            await self._renew_locked()
            held = self.held()
            if len(held) > fair:
                await self._call(sorted(held)[fair:], "drop")
                return []
            free = [s for s in self.keys.outboxes if s not in self._until]
            random.shuffle(free)  # relays starting together take different streams
            wanted = free[: fair - len(held)]
            return await self._call(wanted, "take") if wanted else []

    async def renew(self) -> None:
        """Renew the leases this relay holds; those it lost are dropped from ``held``."""
        async with self._lock:
            await self._renew_locked()

    async def _renew_locked(self) -> None:
        if self._until:
            await self._call(list(self._until), "renew")

    async def release(self) -> None:
        """Give up every lease and leave the registry (a relay stopping or standing by)."""
        async with self._lock:
            if self._until:
                await self._call(list(self._until), "drop")
            await self._store.run_scripts_or_raise(
                [(self._register, [k.RELAYS], (self.holder, self.lease_ms, "0"))]
            )
            self._next_share = 0.0

    async def _call(self, streams: Sequence[str], mode: str) -> list[str]:
        """Run the lease script on ``streams``; returns those this relay holds afterwards."""
        started = time.monotonic()
        until = started + _TRUSTED_PART * self.lease_ms / 1000
        replies = await self._store.run_scripts_or_raise(
            [
                (self._lease, [self._lease_key(stream)], (self.holder, self.lease_ms, mode))
                for stream in streams
            ]
        )
        holding: list[str] = []
        for stream, reply in zip(streams, replies, strict=True):
            if int(reply):
                self._until[stream] = until
                holding.append(stream)
            else:
                self._until.pop(stream, None)
        return holding

    def _lease_key(self, stream: str) -> str:
        return k.outbox_lease(self.keys.outboxes.index(stream))
