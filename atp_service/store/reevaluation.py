"""Re-evaluation without a fold: ATP that moves because a channel policy changed or a day
came (inbound entering a channel's horizon) is announced like any other change.

What it keeps (in one hash of its own slot, ``keys.REEVALUATION``):

- the policy books positions may have been evaluated under, numbered by *generation*
  (``g``): a new generation is registered once the book in force has differed from the
  latest one for ``settle_ms`` (every writer, API or worker, has loaded it by then: they
  look twice a second), so a position stamped with it is never written again under the old
  one;
- ``base``: the generation of an unstamped position (one made since its slot was last
  scanned) and of a stamp whose book is gone;
- ``done``: the generation and day under which every position is known to be evaluated
  (after a pass that ran with one target throughout), or none;
- the pass under way: its target, its day, whether it kept one target (``clean``) and a SCAN
  cursor per node, saved after each page, so that a process that dies leaves the pass where
  it was for the next lease holder.

Each position carries a stamp (``keys.F_EVALUATED``): the generation and day it was last
evaluated under. reevaluate.lua compares, inside Redis and atomically with the rest of a
group's batch, the position as it is under its stamp's book and day with the target book
and today, emits ``availability.changed`` for exactly the channels that differ (with the
earlier figure as ``previous_atp``), bumps the version and stamps it. A position whose stamp
is the target is skipped, so a page scanned twice (SCAN may return a key twice; a process
may die before saving its cursor) announces nothing twice. Two changes in quick succession
are two generations: a position the first pass reached is compared from the first change's
book, the others from the book before it.

One process at a time runs passes: the one holding ``keys.REEVALUATION_LEASE`` (a worker; an
API process stands by as for the other duties, store/duty.py). ``rate`` bounds the
item-sites visited per second, so the fold and the reads keep Redis.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, cast

from redis.commands.core import AsyncScript

from atp_service import metrics
from atp_service.store import keys as k
from atp_service.store.duty import Duty, Lease
from atp_service.store.redis_store import PolicyBook, RedisStore

log = logging.getLogger(__name__)

#: How long the book in force must have differed from the latest generation before a new
#: one is registered: longer than any writer takes to load a new book (0.5 s polls) with a
#: batch in flight.
SETTLE_MS = 3_000
#: Generations kept at most while a pass runs; beyond, a change waits for the pass to end
#: (a clean pass then lets every older generation go).
MAX_GENERATIONS = 8
#: Position keys asked of SCAN per page.
PAGE = 1000
#: How long the lease stands without renewal (a tick renews it).
LEASE_MS = 10_000
_DAY_MS = 86_400_000


# -- the plan: pure bookkeeping, no I/O ----------------------------------------------------


@dataclass(slots=True)
class Pass:
    target: int
    day: int
    started_ms: int
    clean: bool = True
    #: SCAN cursor per node still going; a node that finished is in ``finished``.
    cursors: dict[str, int] = field(default_factory=dict)
    finished: list[str] = field(default_factory=list)
    visited: int = 0
    moved: int = 0
    events: int = 0


@dataclass(slots=True)
class Plan:
    """The re-evaluation's state, as stored (``to_json``) and as the tick changes it."""

    epoch: str
    generation: int
    base: int
    #: (generation, day) every position is evaluated under, after a clean pass; or None.
    done: tuple[int, int] | None = None
    #: The book waiting to settle: its digest and since when (epoch ms), or None.
    pending: tuple[str, int] | None = None
    current: Pass | None = None

    def to_json(self) -> str:
        body: dict[str, Any] = {
            "epoch": self.epoch,
            "g": self.generation,
            "base": self.base,
            "done": list(self.done) if self.done is not None else None,
            "pending": list(self.pending) if self.pending is not None else None,
            "pass": None,
        }
        if self.current is not None:
            p = self.current
            body["pass"] = {
                "target": p.target, "day": p.day, "started": p.started_ms, "clean": p.clean,
                "cursors": p.cursors, "finished": p.finished,
                "visited": p.visited, "moved": p.moved, "events": p.events,
            }  # fmt: skip
        return json.dumps(body, separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str) -> Plan:
        body = json.loads(text)
        raw = body.get("pass")
        current = None
        if raw is not None:
            current = Pass(
                target=int(raw["target"]), day=int(raw["day"]), started_ms=int(raw["started"]),
                clean=bool(raw["clean"]), cursors={n: int(c) for n, c in raw["cursors"].items()},
                finished=list(raw["finished"]), visited=int(raw["visited"]),
                moved=int(raw["moved"]), events=int(raw["events"]),
            )  # fmt: skip
        done, pending = body.get("done"), body.get("pending")
        return cls(
            epoch=str(body["epoch"]),
            generation=int(body["g"]),
            base=int(body["base"]),
            done=(int(done[0]), int(done[1])) if done is not None else None,
            pending=(str(pending[0]), int(pending[1])) if pending is not None else None,
            current=current,
        )


def book_digest(lua_json: str) -> str:
    return hashlib.sha1(lua_json.encode()).hexdigest()


def minds_the_day(lua_json: str) -> bool:
    """Whether a day can move an ATP under this book: a channel promises inbound within a
    horizon (without one, every inbound unit counts whatever its ETA)."""
    return any(p["it"] == 1 and p["hz"] > 0 for p in json.loads(lua_json))


def advance(
    plan: Plan,
    books: dict[int, str],
    in_force: str,
    *,
    now_ms: int,
    settle_ms: int = SETTLE_MS,
    max_generations: int = MAX_GENERATIONS,
) -> int | None:
    """Bring ``plan`` and ``books`` (generation -> policies as the scripts read them) up to
    the book ``in_force`` and the day of ``now_ms``; start a pass when one is due.

    Returns the generation it registered, if any (its book is then in ``books``).
    """
    today = now_ms // _DAY_MS
    registered = None
    if in_force == books[plan.generation]:
        plan.pending = None
    else:
        digest = book_digest(in_force)
        if plan.pending is None or plan.pending[0] != digest:
            plan.pending = (digest, now_ms)  # (again) changed: settle from now
        elif now_ms - plan.pending[1] >= settle_ms and (
            plan.current is None or len(books) < max_generations
        ):
            plan.generation += 1
            books[plan.generation] = in_force
            plan.pending = None
            registered = plan.generation
    current = plan.current
    if current is not None:
        if current.target != plan.generation or current.day != today:
            current.clean = False  # continues with the new target; another pass follows
        return registered
    target_book = books[plan.generation]
    if plan.done is None:
        due = minds_the_day(target_book) or plan.base != plan.generation
    else:
        done_g, done_day = plan.done
        due = done_g != plan.generation or (done_day != today and minds_the_day(target_book))
        if not due and done_day != today:
            plan.done = (done_g, today)  # the day cannot move anything under this book
    if due:
        plan.current = Pass(target=plan.generation, day=today, started_ms=now_ms)
    elif plan.done is None:
        plan.done = (plan.generation, today)
    return registered


def finish(plan: Plan, books: dict[int, str]) -> list[int]:
    """The pass reached the end of every node. A clean one leaves every position evaluated
    under its target: the older generations go (returned, to delete their books)."""
    current = plan.current
    assert current is not None
    plan.current = None
    if not current.clean:
        return []
    plan.done = (current.target, current.day)
    plan.base = current.target
    gone = [g for g in books if g < current.target]
    for g in gone:
        del books[g]
    return gone


def script_books(plan: Plan, books: dict[int, str]) -> str:
    """ARGV[1] of reevaluate.lua: the books a stamp may name, as stored (no re-encoding)."""
    parts = ",".join(f'"{g}":{text}' for g, text in sorted(books.items()))
    return f'{{"base":{plan.base},"target":{plan.generation},"books":{{{parts}}}}}'


def who_changed(book: PolicyBook) -> str:
    """ARGV[2] of reevaluate.lua: per channel, who put its policy in force and the
    correlation id of that request (the events' changed_by and correlation_id)."""
    return json.dumps(
        {c: [ch.changed_by, ch.correlation_id] for c, ch in sorted(book.changes.items())},
        separators=(",", ":"),
    )


# -- the adapter: Redis ----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class TickReport:
    """What one tick did (for tests, logs and metrics)."""

    held: bool
    visited: int = 0
    moved: int = 0
    events: int = 0
    registered: int | None = None
    finished: bool = False


class Reevaluator:
    """Runs re-evaluation passes in bounded ticks, one process at a time (the lease)."""

    def __init__(
        self,
        store: RedisStore,
        *,
        holder: str,
        rate: float,
        settle_ms: int = SETTLE_MS,
        page: int = PAGE,
        lease_ms: int = LEASE_MS,
    ) -> None:
        self.store = store
        self.redis = store.redis
        self.rate = rate
        self.settle_ms = settle_ms
        self.page = page
        self.lease = Lease(self.redis, k.REEVALUATION_LEASE, holder=holder, ttl_ms=lease_ms)
        self._script: AsyncScript = store.register_script("reevaluate.lua")
        self._save: AsyncScript = store.register_script("reevaluation_save.lua")
        self._budget = 0.0
        self._last_tick: float | None = None

    # -- state -------------------------------------------------------------------------

    async def _load(self) -> tuple[Plan | None, dict[int, str]]:
        raw = cast(dict[str, str], await self.redis.hgetall(k.REEVALUATION))
        books = {int(f[5:]): v for f, v in raw.items() if f.startswith("book:")}
        text = raw.get("state")
        return (Plan.from_json(text) if text else None), books

    async def _store(
        self, plan: Plan, books: dict[int, str], new_books: Sequence[int], gone: Sequence[int] = ()
    ) -> bool:
        """Write the state, the books ``new_books`` name, and delete those ``gone``, only
        while this process holds the lease: a holder that lost it (paused past its lease)
        writes nothing. Returns whether it wrote."""
        args: list[Any] = [self.lease.holder, "state", plan.to_json()]
        for g in new_books:
            if g in books:
                args += [f"book:{g}", books[g]]
        args += ["-", *(f"book:{g}" for g in gone)]
        held = await self._save(keys=[k.REEVALUATION_LEASE, k.REEVALUATION], args=args)
        return bool(held)

    async def state(self) -> Plan | None:
        """The re-evaluation's state as stored (None before the first tick)."""
        plan, _ = await self._load()
        return plan

    async def idle(self) -> bool:
        """No book waiting to settle and no pass under way (every ATP announced)."""
        plan = await self.state()
        return plan is not None and plan.pending is None and plan.current is None

    async def _redis_ms(self) -> int:
        seconds, micros = await self.redis.time()
        return int(seconds) * 1000 + int(micros) // 1000

    # -- a tick ------------------------------------------------------------------------

    async def tick(self) -> TickReport:
        """Take (or keep) the lease, follow the book and the day, and visit at most what the
        rate allows since the last tick. Raises on Redis errors (the caller retries)."""
        now = time.monotonic()
        elapsed = 1.0 if self._last_tick is None else now - self._last_tick
        self._last_tick = now
        self._budget = min(self._budget + elapsed * self.rate, self.rate)  # at most 1 s worth
        if not await self.lease.hold():
            return TickReport(held=False)
        book = await self.store.policy_book()
        now_ms = await self._redis_ms()
        plan, books = await self._load()
        fresh = plan is None
        if plan is None:
            plan = Plan(epoch=os.urandom(4).hex(), generation=1, base=1)
            books = {1: book.lua_json}
        registered = advance(plan, books, book.lua_json, now_ms=now_ms, settle_ms=self.settle_ms)
        if registered is not None:
            log.info("re-evaluation: channel policies generation %d registered", registered)
        # Books to write with the state: all of a new state, the one just registered.
        new_books = list(books) if fresh else [registered] if registered is not None else []
        if plan.current is None:
            await self._store(plan, books, new_books)
            return TickReport(held=True, registered=registered)
        report = await self._visit(plan, books, new_books, who_changed(book))
        metrics.REEVALUATED.inc(report.visited)
        metrics.REEVALUATION_EVENTS.inc(report.events)
        return TickReport(
            held=report.held, visited=report.visited, moved=report.moved,
            events=report.events, registered=registered, finished=report.finished,
        )  # fmt: skip

    async def _visit(
        self, plan: Plan, books: dict[int, str], new_books: list[int], argv_who: str
    ) -> TickReport:
        """Visit pages of the pass until the budget is spent or the pass is done, then save
        the state (once a tick: a process that dies visits at most a tick's pages again,
        which announce nothing twice)."""
        visited = moved = events = 0
        argv_books = script_books(plan, books)
        nodes = self._nodes()
        current = plan.current
        assert current is not None
        gone: list[int] = []
        finished = False
        while self._budget >= 1:
            going = [name for name in nodes if name not in current.finished]
            if not going:
                gone = finish(plan, books)
                finished = True
                log.info(
                    "re-evaluation pass done: %d item-sites, %d moved, %d events%s",
                    current.visited, current.moved, current.events,
                    "" if current.clean else " (the target moved: another pass follows)",
                )  # fmt: skip
                break
            name = going[0]
            cursor, found, n_moved, n_events = await self._page(
                nodes[name], current.cursors.get(name, 0), argv_books, argv_who, plan.epoch
            )
            if cursor == 0:
                current.finished.append(name)
                current.cursors.pop(name, None)
            else:
                current.cursors[name] = cursor
            current.visited += found
            current.moved += n_moved
            current.events += n_events
            visited, moved, events = visited + found, moved + n_moved, events + n_events
            self._budget -= max(found, 1)
        held = await self._store(plan, books, new_books, gone)
        return TickReport(held, visited, moved, events, finished=finished and held)

    def _nodes(self) -> dict[str, Any]:
        """The nodes to SCAN: every primary of a Redis Cluster, or the one Redis (None)."""
        primaries = getattr(self.redis, "get_primaries", None)
        if primaries is None:
            return {"redis": None}
        return {node.name: node for node in primaries()}

    async def _page(
        self, node: Any, cursor: int, argv_books: str, argv_who: str, epoch: str
    ) -> tuple[int, int, int, int]:
        """SCAN one page of position keys on ``node`` and re-evaluate them, one script call
        per hash-tag group; returns the next cursor and what the calls found, moved and
        emitted."""
        found_keys: list[str]
        if node is None:
            next_cursor, page = await self.redis.scan(
                cursor=cursor, match=k.POSITION_PATTERN, count=self.page
            )
            found_keys = cast(list[str], page)  # the client decodes responses
        else:  # redis-py's RedisCluster: per node, its cursor by node name
            scan: Any = self.redis.scan
            cursors, found_keys = await scan(
                cursor=cursor, match=k.POSITION_PATTERN, count=self.page, target_nodes=node
            )
            next_cursor = cursors[node.name]
        by_group: dict[int, list[tuple[str, str, str]]] = {}
        for key in found_keys:
            parsed = k.parse_position_key(key)
            if parsed is not None:
                group, sku, site = parsed
                by_group.setdefault(group, []).append((key, sku, site))
        calls = []
        for group, items in sorted(by_group.items()):
            keys = [k.outbox(group), *(key for key, _, _ in items)]
            args: list[Any] = [argv_books, argv_who, epoch, k.STAMP_DAYS]
            for _, sku, site in items:
                args += [sku, site]
            calls.append(self._script(keys=keys, args=args))
        found = moved = events = 0
        for reply in await asyncio.gather(*calls):
            found += int(reply[0])
            moved += int(reply[1])
            events += int(reply[2])
            self.store.changed_here(reply[3])
        return int(next_cursor), found, moved, events

    # -- running -----------------------------------------------------------------------

    async def run(
        self,
        stop: asyncio.Event,
        *,
        every: float = 0.25,
        duty: Duty | None = None,
        stand_by: bool = False,
    ) -> None:
        """Tick until ``stop``; with ``duty`` report each tick (a worker) or tick only while
        no worker has lately (``stand_by``: an API process). Survives Redis outages."""
        backoff = every
        try:
            while not stop.is_set():
                try:
                    if duty is not None and stand_by and await duty.taken():
                        await self.lease.release()
                        self._last_tick = None
                    else:
                        await self.tick()
                        if duty is not None and not stand_by:
                            await duty.done()
                    backoff = every
                except asyncio.CancelledError:
                    raise
                except Exception as exc:
                    metrics.REDIS_ERRORS.labels("reevaluation").inc()
                    log.warning("re-evaluation tick failed: %s", exc)
                    backoff = min(max(backoff * 2, every), 5.0)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), timeout=backoff)
        finally:
            with contextlib.suppress(Exception):
                await self.lease.release()
