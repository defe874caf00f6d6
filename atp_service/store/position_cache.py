"""An in-process copy of item-site positions for the read path, kept current by pushed changes.

Every script that changes a position also publishes the position as it now is on
``keys.CHANGES_CHANNEL`` (``announce`` in ``lua/_lib.lua``). ``PositionCache`` subscribes to
that channel and keeps a bounded copy of positions: those it was asked for, and, while there
is room, every one announced (a change is a read for free); it replaces an entry whenever a
newer version of it arrives (or, at the same version, fresher sources: an unchanged fold
that was heard from its source), and reads what it lacks from Redis.

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

On a **Redis Cluster** the scripts publish on the same channel (plain ``PUBLISH``: Redis
sends it over the cluster bus to every node, so one subscription, on any node, hears every
primary; Redis 6.2 and 7). A ping on that subscription proves only its own node's messages
came in, so the copy hears from every primary instead: every ``ping_seconds`` it publishes
a heartbeat on each primary (``~<its token> <primary> <sent at>``), which comes in after
everything that primary published before it; the copy is current while the oldest of the
primaries' latest heartbeats it received was sent within ``max_staleness_seconds`` (a new
primary, after a failover, counts once it is heard from). When the subscribed node fails
the copy is dropped and subscribes on another node.

Reservations never use this copy: they are decided by the scripts, on Redis itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import os
import random
import sys
import time
from collections.abc import Sequence
from datetime import date
from typing import Any, Final

from redis.asyncio.cluster import RedisCluster

from atp_service import metrics
from atp_service.domain import ItemSite, ItemSitePosition
from atp_service.store.keys import CHANGES_CHANNEL
from atp_service.store.redis_store import RedisClient, RedisStore, date_of_epoch_day

log = logging.getLogger(__name__)

_FROM_COPY = metrics.POSITION_READS.labels("copy")
_FROM_REDIS = metrics.POSITION_READS.labels("redis")
_PUSH_LAG = metrics.POSITION_PUSH_LAG

#: A position as the copy holds it: ``ItemSitePosition``'s fields in their order, in a plain
#: tuple, in-transit as ((eta, qty), ...). Python's cyclic garbage collector stops tracking
#: a tuple of numbers, dates and such tuples (not one holding a dict), so half a million of
#: them cost a full collection nothing; as dataclass instances they cost it 100-130 ms, a
#: pause every request in flight feels.
#: ``sources`` is held as the announcement spells it (``sources_text``): one short string,
#: parsed only when a site answer is rendered from the position.
InTransit = tuple[tuple[date | None, int], ...]
RawPosition = tuple[int, int, int, int, InTransit, int | None, int, int, str]
VERSION: Final = 6  # index of ``version`` in a RawPosition
AS_OF_MS: Final = 7  # index of ``as_of_ms``
SOURCES: Final = 8  # index of the sources text
NO_SOURCES: Final = "-"


def sources_text(sources: dict[str, int]) -> str:
    """``"<source>:<ms>,..."`` by source name, ``"-"`` for none (``sources_token``, _lib.lua)."""
    if not sources:
        return NO_SOURCES
    return ",".join([f"{name}:{ms}" for name, ms in sorted(sources.items())])


def sources_of(text: str) -> dict[str, int]:
    if text == NO_SOURCES:
        return {}
    out: dict[str, int] = {}
    for item in text.split(","):
        name, _, ms = item.partition(":")
        out[name] = int(ms)
    return out


def _heard_sum(text: str) -> int:
    """Sum of the sources' times: with each source's time only ever growing (fold.lua keeps the
    newest), a larger sum at the same version is a later state of the item-site."""
    if text == NO_SOURCES:
        return 0
    return sum([int(item.partition(":")[2]) for item in text.split(",")])


def is_newer(held: RawPosition, than: RawPosition) -> bool:
    """``held`` is a later state of the item-site than ``than``: a higher version or, at the
    same version (an unchanged fold that was heard from its source), fresher sources."""
    if held[VERSION] != than[VERSION]:
        return held[VERSION] > than[VERSION]
    return held[SOURCES] != than[SOURCES] and _heard_sum(held[SOURCES]) > _heard_sum(than[SOURCES])


#: The first character of a heartbeat on the change channel (a Cluster's; never a sku's).
HEARTBEAT = "~"


def raw(position: ItemSitePosition) -> RawPosition:
    return (
        position.on_hand,
        position.allocated,
        position.quarantined,
        position.reserved,
        tuple(position.in_transit_by_eta.items()),
        position.safety_stock_override,
        position.version,
        position.as_of_ms,
        sources_text(position.sources),
    )


def position_of(held: RawPosition) -> ItemSitePosition:
    return ItemSitePosition(
        on_hand=held[0],
        allocated=held[1],
        quarantined=held[2],
        reserved=held[3],
        in_transit_by_eta=dict(held[4]),
        safety_stock_override=held[5],
        version=held[6],
        as_of_ms=held[7],
        sources=sources_of(held[8]),
    )


def position_from_announcement(text: str) -> tuple[str, ItemSitePosition]:
    """Decode one line of ``announce`` (lua/_lib.lua) into (``sku@site``, position)."""
    ident, held = _raw_from_announcement(text)
    return ident, position_of(held)


def _raw_from_announcement(text: str) -> tuple[str, RawPosition]:
    parts = text.split(" ")
    return parts[0], _raw_from_parts(parts)


def _raw_from_parts(parts: list[str]) -> RawPosition:
    in_transit: InTransit = ()
    if len(parts) > 9:
        by_eta: list[tuple[date | None, int]] = []
        for item in parts[9:]:
            eta, _, qty = item.partition(":")
            by_eta.append((None if eta == "-" else date_of_epoch_day(int(eta)), int(qty)))
        in_transit = tuple(by_eta)
    ss = parts[7]
    return (
        int(parts[3]),
        int(parts[4]),
        int(parts[5]),
        int(parts[6]),
        in_transit,
        None if ss == "-" else int(ss),
        int(parts[1]),
        int(parts[2]),
        _checked_sources(parts[8]),
    )


def _checked_sources(text: str) -> str:
    """The sources part, held as text: parsed once here so that a malformed one is refused
    on arrival (ValueError), not when an answer is rendered."""
    sources_of(text)
    return sys.intern(text) if text == NO_SOURCES else text


class PositionCache:
    """Positions for the read path: from the in-process copy when it is current, else Redis.

    ``run`` (a background task for the life of the process) keeps the copy current;
    until its subscription is confirmed every read goes to Redis.
    """

    def __init__(
        self,
        client: RedisClient,
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
        self._entries: dict[str, RawPosition] = {}
        #: Fills in flight per item-site, and the newest change announced meanwhile.
        self._filling: dict[str, int] = {}
        self._announced_while_filling: dict[str, RawPosition] = {}
        #: Bumped whenever the copy is dropped; a fill started before does not install.
        self._generation = 0
        self._connected = False  # subscribed on the current connection
        self._last_heard = 0.0  # monotonic time of the last message on the subscription
        # Counted here, handed to Prometheus by ``run`` (a counter's lock per read is dear).
        self._copy_reads = 0
        self._redis_reads = 0
        #: On a Cluster: this process's heartbeats, and when the latest one of each primary
        #: that came back was sent (monotonic).
        self._cluster = isinstance(client, RedisCluster)
        self._token = os.urandom(6).hex()
        self._beats: dict[str, float] = {}
        self._primaries: frozenset[str] = frozenset()
        self._beating: asyncio.Future[None] | None = None

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

    async def read(self, items: Sequence[ItemSite]) -> list[ItemSitePosition]:
        """Positions of ``items`` in order; an item-site never seen is all zeros."""
        return [position_of(held) for held in await self.read_raw(items)]

    def lookup_raw(self, idents: Sequence[str]) -> list[RawPosition] | None:
        """The held positions of ``sku@site`` idents if the copy has every one and is current;
        else None (then ``read_raw``). The read path's fast lane: no await, no Redis. A held
        position is replaced, never changed, when its item-site moves: the same object means
        the same position."""
        if not self.max_entries or not self.current:
            return None
        get = self._entries.get
        found: list[RawPosition] = []
        for ident in idents:
            held = get(ident)
            if held is None:
                return None
            found.append(held)
        self._copy_reads += len(found)
        return found

    async def read_raw(self, items: Sequence[ItemSite]) -> list[RawPosition]:
        """``read``, as the copy holds positions (``RawPosition``)."""
        if not self.max_entries or not self.current:
            self._redis_reads += len(items)
            return [raw(p) for p in await self._store.read_positions(items)]
        entries = self._entries
        found: list[RawPosition | None] = []
        missing: dict[str, list[int]] = {}
        for i, item in enumerate(items):
            ident = f"{item.sku}@{item.site}"
            held = entries.get(ident)
            found.append(held)
            if held is None:
                missing.setdefault(ident, []).append(i)
        if missing:
            self._copy_reads += len(items) - len(missing)
            self._redis_reads += len(missing)
            await self._fill(items, missing, found)
        else:
            self._copy_reads += len(items)
        return found  # type: ignore[return-value]  # every None was filled

    async def _fill(
        self,
        items: Sequence[ItemSite],
        missing: dict[str, list[int]],
        found: list[RawPosition | None],
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
            held = raw(position)
            newer = announced.get(ident)
            if newer is not None and is_newer(newer, held):
                held = newer
            if ident not in filling:
                announced.pop(ident, None)
            for i in indexes:
                found[i] = held
            if generation == self._generation:
                self._install(ident, held)

    def _install(self, ident: str, held: RawPosition) -> None:
        entries = self._entries
        current = entries.get(ident)
        if current is not None:
            if is_newer(held, current):
                entries[ident] = held
            return
        if len(entries) >= self.max_entries:
            self._evict()
        entries[ident] = held

    def _evict(self) -> None:
        """Drop the oldest hundredth of the copy. (One at a time would cost a scan over the
        holes earlier deletions left at the front of the dict: about 0.3 ms an insert at
        500,000 entries, measured.)"""
        entries = self._entries
        for ident in list(itertools.islice(entries, max(1, self.max_entries // 100))):
            del entries[ident]

    # -- keeping current -----------------------------------------------------------------

    def apply_lines(self, text: str) -> None:
        """Announced changes, a line each (a batch announces its positions together)."""
        apply = self._apply
        newest = 0
        for line in text.split("\n"):
            as_of_ms = apply(line)
            if as_of_ms > newest:
                newest = as_of_ms
        if newest:
            # Once per message (its newest position): a histogram's lock per line is dear.
            lag = time.time() - newest / 1000
            if lag >= 0:
                _PUSH_LAG.observe(lag)

    def apply(self, text: str) -> None:
        """One announced change (also usable by tests without a subscription)."""
        self.apply_lines(text)

    def _apply(self, text: str) -> int:
        """Take one announced line; returns its ``as_of`` ms if it was a new version to the
        copy, else 0. The version is read first: an echo of this process's own write, or an
        older version, costs no more than that (and the sources' text, at the same version)."""
        parts = text.split(" ")
        ident = parts[0]
        entries = self._entries
        current = entries.get(ident)
        new_version = True
        try:
            if current is not None:
                version = int(parts[1])
                if version < current[VERSION]:
                    return 0
                if version == current[VERSION]:
                    # An unchanged fold heard from its source: only fresher sources count.
                    if parts[8] == current[SOURCES]:
                        return 0
                    new_version = False
            elif ident not in self._filling and len(entries) >= self.max_entries:
                return 0  # full: only what was asked for is kept current
            held = _raw_from_parts(parts)
            if not new_version and not is_newer(held, current):  # type: ignore[arg-type]
                return 0
        except (ValueError, IndexError):
            log.warning("unreadable position announcement %r; dropping its entry", text[:200])
            entries.pop(ident, None)
            return 0
        if current is not None:
            entries[ident] = held
        elif ident in self._filling:
            earlier = self._announced_while_filling.get(ident)
            if earlier is None or is_newer(held, earlier):
                self._announced_while_filling[ident] = held
        else:
            entries[ident] = held  # room left: a change announced is a position read for free
        # The push lag is measured from a change's time; fresher sources change no as_of.
        return held[AS_OF_MS] if new_version else 0

    def publish_counts(self) -> None:
        """Add the reads counted since the last call to ``atp_position_reads_total``."""
        copy, redis_ = self._copy_reads, self._redis_reads
        self._copy_reads = self._redis_reads = 0
        if copy:
            _FROM_COPY.inc(copy)
        if redis_:
            _FROM_REDIS.inc(redis_)

    def _drop(self, why: str) -> None:
        if self._entries:
            log.info("position copy dropped (%s)", why)
        self._generation += 1
        self._entries.clear()
        self._announced_while_filling.clear()
        metrics.POSITION_COPY_DROPS.inc()

    def _on_message(self, message: Any) -> None:
        if not isinstance(message, list) or not message:
            self._last_heard = time.monotonic()
            return  # a ping's reply
        kind = message[0]
        if kind == "message":
            text = message[2]
            if text.startswith(HEARTBEAT):
                self._heartbeat(text)
                return
            if not self._cluster:  # one Redis: any message proves the line is alive
                self._last_heard = time.monotonic()
            self.apply_lines(text)
        elif kind == "subscribe":
            # The first subscription, or redis-py's re-subscription after a reconnect: what
            # was published in between is lost, so start again from Redis.
            self._drop("subscribed again")
            if self._cluster:
                self._note_primaries(self._primaries)  # current once every primary is heard
            else:
                self._last_heard = time.monotonic()
            self._connected = True

    def _heartbeat(self, text: str) -> None:
        """One of this process's heartbeats came back: the primary it went through has had
        everything it published before it applied."""
        parts = text[1:].split(" ")
        if len(parts) != 3 or parts[0] != self._token:
            return  # another process's
        try:
            sent = float(parts[2])
        except ValueError:
            return
        if sent > self._beats.get(parts[1], 0.0):
            self._beats[parts[1]] = sent
        self._note_primaries(self._primaries)

    def _note_primaries(self, primaries: frozenset[str]) -> None:
        """The primaries are these now: the copy is as fresh as the one heard from least
        recently (one not heard from at all: not fresh)."""
        self._primaries = primaries
        beats = self._beats
        self._last_heard = min((beats.get(name, 0.0) for name in primaries), default=0.0)

    async def run(self, stop: asyncio.Event) -> None:
        """Follow the change channel until ``stop``; survives Redis outages (reads fall back).

        On one Redis a ping on the subscription proves every change before it arrived; on a
        Cluster a heartbeat through every primary does (see the module's docstring)."""
        cluster = self._redis if isinstance(self._redis, RedisCluster) else None
        backoff = 0.1
        tried: list[str] = []  # a Cluster's nodes subscribed on lately, without success
        while not stop.is_set():
            pubsub: Any = None
            try:
                pubsub = await self._subscribe(cluster, tried)
                next_tick = time.monotonic() + (self.ping_seconds if cluster is None else 0.0)
                while not stop.is_set():
                    message = await pubsub.parse_response(block=False, timeout=self.ping_seconds)
                    if message is not None:
                        self._on_message(message)
                    now = time.monotonic()
                    if now >= next_tick:
                        if cluster is None:
                            await pubsub.ping()
                        else:
                            self._beat_every_primary(cluster, now)
                        next_tick = now + self.ping_seconds
                        self.publish_counts()
                    backoff = 0.1
                    tried.clear()
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
                if self._beating is not None:
                    self._beating.cancel()
                if pubsub is not None:
                    try:
                        await pubsub.aclose()  # type: ignore[no-untyped-call,unused-ignore]  # typed from redis-py 8
                    except Exception:
                        log.debug("closing the subscription", exc_info=True)

    async def _subscribe(self, cluster: RedisCluster | None, tried: list[str]) -> Any:
        """A subscription to the change channel: on one Redis, or on one node of a Cluster
        (not one tried lately: another when the last failed)."""
        if cluster is None:
            pubsub = self._redis.pubsub()
        else:
            await cluster.initialize()
            nodes = [n for n in cluster.get_nodes() if n.name not in tried] or cluster.get_nodes()
            node = random.choice(nodes)
            tried[:] = [*tried[-8:], node.name]
            pubsub = cluster.pubsub(node=node)
            self._beats = {}
            self._note_primaries(frozenset())
        await pubsub.subscribe(CHANGES_CHANNEL)
        return pubsub

    def _beat_every_primary(self, cluster: RedisCluster, now: float) -> None:
        """Send a heartbeat through each primary (unless the last ones are still on their way)."""
        primaries = cluster.get_primaries()
        self._note_primaries(frozenset(p.name for p in primaries))
        if self._beating is None or self._beating.done():
            self._beating = asyncio.ensure_future(self._beat(cluster, primaries, now))

    async def _beat(self, client: RedisCluster, primaries: Sequence[Any], now: float) -> None:
        """A heartbeat through each primary; one that fails (a primary down) is not heard
        from, and the copy stops being current until it (or its replacement) is."""

        async def one(node: Any) -> None:
            with contextlib.suppress(Exception):
                async with asyncio.timeout(self.max_staleness):
                    await client.publish(
                        CHANGES_CHANNEL,
                        f"{HEARTBEAT}{self._token} {node.name} {now!r}",
                        target_nodes=node,
                    )

        await asyncio.gather(*(one(node) for node in primaries))
