"""An in-process copy of item-site positions for the read path, kept current by pushed changes.

Every script that changes a position also publishes the position as it now is on
``keys.CHANGES_CHANNEL`` (``announce`` in ``lua/_lib.lua``). ``PositionCache`` subscribes to
that channel, keeps a bounded copy of the positions it has been asked for, replaces an
entry whenever a newer version of it arrives, and reads what it lacks from Redis.

How stale an answer can be, and why:

- While the subscription is healthy, a change reaches the copy as soon as Redis delivers the
  message (well under a millisecond on loopback): Redis sends a connection its messages in
  the order it ran the scripts, and an entry only ever moves to a higher ``version``.
- A read that misses goes to Redis; a change published while that read is in flight is kept
  and wins if it is newer, so a fill never installs a position older than one announced.
- The subscriber pings every ``ping_seconds``; a reply proves that every change published
  before it has been applied. When nothing has come back for ``max_staleness_seconds``
  (a stalled or broken connection), reads bypass the copy and go to Redis, and the copy is
  dropped. A (re)subscription also drops it (changes may have been missed meanwhile), so
  the copy never serves anything older than ``max_staleness_seconds``.

Reservations never use this copy: they are decided by the scripts, on Redis itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Sequence
from datetime import date
from typing import Any

import redis.asyncio as aioredis

from atp_service import metrics
from atp_service.domain import ItemSite, ItemSitePosition
from atp_service.store.keys import CHANGES_CHANNEL
from atp_service.store.redis_store import RedisStore, date_of_epoch_day

log = logging.getLogger(__name__)

_NO_IN_TRANSIT: dict[date | None, int] = {}  # shared by every position without inbound
_FROM_COPY = metrics.POSITION_READS.labels("copy")
_FROM_REDIS = metrics.POSITION_READS.labels("redis")


def position_from_announcement(text: str) -> tuple[str, ItemSitePosition]:
    """Decode one message of ``announce`` (lua/_lib.lua) into (``sku@site``, position)."""
    parts = text.split(" ")
    in_transit: dict[date | None, int] = _NO_IN_TRANSIT
    if len(parts) > 8:
        in_transit = {}
        for item in parts[8:]:
            eta, _, qty = item.partition(":")
            in_transit[None if eta == "-" else date_of_epoch_day(int(eta))] = int(qty)
    ss = parts[7]
    return parts[0], ItemSitePosition(
        on_hand=int(parts[3]),
        allocated=int(parts[4]),
        quarantined=int(parts[5]),
        reserved=int(parts[6]),
        in_transit_by_eta=in_transit,
        safety_stock_override=None if ss == "-" else int(ss),
        version=int(parts[1]),
        as_of_ms=int(parts[2]),
    )


class PositionCache:
    """Positions for the read path: from the in-process copy when it is current, else Redis.

    ``run`` (a background task for the life of the process) keeps the copy current;
    until its subscription is confirmed every read goes to Redis.
    """

    def __init__(
        self,
        client: aioredis.Redis,
        store: RedisStore,
        *,
        max_entries: int,
        max_staleness_seconds: float = 1.0,
        ping_seconds: float = 0.2,
    ) -> None:
        self._redis = client
        self._store = store
        self.max_entries = max_entries
        self.max_staleness = max_staleness_seconds
        self.ping_seconds = ping_seconds
        self._entries: dict[str, ItemSitePosition] = {}
        #: Fills in flight per item-site, and the newest change announced meanwhile.
        self._filling: dict[str, int] = {}
        self._announced_while_filling: dict[str, ItemSitePosition] = {}
        #: Bumped whenever the copy is dropped; a fill started before does not install.
        self._generation = 0
        self._connected = False  # subscribed on the current connection
        self._last_heard = 0.0  # monotonic time of the last message on the subscription

    # -- reading -------------------------------------------------------------------------

    @property
    def current(self) -> bool:
        """Whether the copy may be served: subscribed and heard from recently enough."""
        if not self._connected:
            return False
        if time.monotonic() - self._last_heard > self.max_staleness:
            if self._entries:
                self._drop(f"nothing heard on the subscription for {self.max_staleness:g}s")
            return False
        return True

    def __len__(self) -> int:
        return len(self._entries)

    def lookup(self, idents: Sequence[str]) -> list[ItemSitePosition] | None:
        """The positions of ``sku@site`` idents if the copy holds every one and is current;
        else None (then ``read``). The read path's fast lane: no await, no Redis."""
        if not self.max_entries or not self.current:
            return None
        get = self._entries.get
        found: list[ItemSitePosition] = []
        for ident in idents:
            position = get(ident)
            if position is None:
                return None
            found.append(position)
        _FROM_COPY.inc(len(found))
        return found

    async def read(self, items: Sequence[ItemSite]) -> list[ItemSitePosition]:
        """Positions of ``items`` in order; an item-site never seen is all zeros."""
        if not self.max_entries or not self.current:
            _FROM_REDIS.inc(len(items))
            return await self._store.read_positions(items)
        entries = self._entries
        found: list[ItemSitePosition | None] = []
        missing: dict[str, list[int]] = {}
        for i, item in enumerate(items):
            ident = f"{item.sku}@{item.site}"
            position = entries.get(ident)
            found.append(position)
            if position is None:
                missing.setdefault(ident, []).append(i)
        if missing:
            _FROM_COPY.inc(len(items) - len(missing))
            _FROM_REDIS.inc(len(missing))
            await self._fill(items, missing, found)
        else:
            _FROM_COPY.inc(len(items))
        return found  # type: ignore[return-value]  # every None was filled

    async def _fill(
        self,
        items: Sequence[ItemSite],
        missing: dict[str, list[int]],
        found: list[ItemSitePosition | None],
    ) -> None:
        generation = self._generation
        filling = self._filling
        for ident in missing:
            filling[ident] = filling.get(ident, 0) + 1
        try:
            fetched = await self._store.read_positions([items[ix[0]] for ix in missing.values()])
        finally:
            announced = self._announced_while_filling
            for ident in missing:
                left = filling[ident] - 1
                if left:
                    filling[ident] = left
                else:
                    del filling[ident]
        for (ident, indexes), position in zip(missing.items(), fetched, strict=True):
            newer = announced.get(ident)
            if newer is not None and newer.version > position.version:
                position = newer
            if ident not in filling:
                announced.pop(ident, None)
            for i in indexes:
                found[i] = position
            if generation == self._generation:
                self._install(ident, position)

    def _install(self, ident: str, position: ItemSitePosition) -> None:
        entries = self._entries
        held = entries.get(ident)
        if held is not None:
            if position.version > held.version:
                entries[ident] = position
            return
        if len(entries) >= self.max_entries:
            del entries[next(iter(entries))]  # the oldest entry: a cheap, bounded FIFO
        entries[ident] = position

    # -- keeping current -----------------------------------------------------------------

    def apply(self, text: str) -> None:
        """One announced change (also usable by tests without a subscription)."""
        try:
            ident, position = position_from_announcement(text)
        except (ValueError, IndexError):
            log.warning("unreadable position announcement %r; dropping its entry", text[:200])
            self._entries.pop(text.partition(" ")[0], None)
            return
        held = self._entries.get(ident)
        if held is not None:
            if position.version > held.version:
                self._entries[ident] = position
        elif ident in self._filling:
            earlier = self._announced_while_filling.get(ident)
            if earlier is None or position.version > earlier.version:
                self._announced_while_filling[ident] = position
        lag = time.time() - position.as_of_ms / 1000
        if lag >= 0:
            metrics.POSITION_PUSH_LAG.observe(lag)

    def _drop(self, why: str) -> None:
        if self._entries:
            log.info("position copy dropped (%s)", why)
        self._generation += 1
        self._entries.clear()
        self._announced_while_filling.clear()
        metrics.POSITION_COPY_DROPS.inc()

    def _on_message(self, message: Any) -> None:
        self._last_heard = time.monotonic()
        if not isinstance(message, list) or not message:
            return  # a ping's reply
        kind = message[0]
        if kind == "message":
            for line in message[2].split("\n"):  # a batch announces its positions together
                self.apply(line)
        elif kind == "subscribe":
            # The first subscription, or redis-py's re-subscription after a reconnect: what
            # was published in between is lost, so start again from Redis.
            self._drop("subscribed again")
            self._connected = True

    async def run(self, stop: asyncio.Event) -> None:
        """Follow the change channel until ``stop``; survives Redis outages (reads fall back)."""
        backoff = 0.1
        while not stop.is_set():
            pubsub = self._redis.pubsub()
            try:
                await pubsub.subscribe(CHANGES_CHANNEL)
                next_ping = time.monotonic() + self.ping_seconds
                while not stop.is_set():
                    message = await pubsub.parse_response(block=False, timeout=self.ping_seconds)
                    if message is not None:
                        self._on_message(message)
                    now = time.monotonic()
                    if now >= next_ping:
                        await pubsub.ping()
                        next_ping = now + self.ping_seconds
                    backoff = 0.1
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self._connected = False
                self._drop(f"subscription failed: {exc!r}")
                log.warning("position copy: %r; resubscribing in %.1fs", exc, backoff)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), timeout=backoff)
                backoff = min(backoff * 2, 2.0)
            finally:
                self._connected = False
                try:
                    await pubsub.aclose()  # type: ignore[no-untyped-call]
                except Exception:
                    log.debug("closing the subscription", exc_info=True)
