"""What the API process holds between requests: clients, the policy book, the known sites.

One ``ApiState`` per app, on ``app.state.atp``. The lifespan (``app.py``) connects it,
then runs its background tasks: the policy/site refresher and the outbox relay. Other
route modules may start their own with ``start_task`` (see ``app.BACKGROUND_TASKS``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Coroutine
from datetime import UTC, datetime
from typing import Any, TypeVar

from redis.exceptions import RedisError

from atp_service import metrics
from atp_service.api.auth import KeyRing
from atp_service.api.limits import RateLimiter, limits_of
from atp_service.api.middleware import ACCESS_LOG
from atp_service.api.sync_view import SyncView
from atp_service.config import EVENTS_TOPIC, Settings
from atp_service.domain import ChannelPolicy, SiteAttributes, SiteBook
from atp_service.events import KafkaPublisher, OutboxRelay, PublishStalled, relay_consumer_name
from atp_service.store import KeySpace, PolicyBook, RedisStore, StoreUnavailable
from atp_service.store.applied import AppliedStore
from atp_service.store.duty import Duty
from atp_service.store.position_cache import PositionCache
from atp_service.store.rate_limit import SharedBuckets
from atp_service.store.redis_store import (
    UNAVAILABLE_ERRORS,
    RedisClient,
    SiteTable,
    replica_wait,
)

log = logging.getLogger(__name__)

#: Errors that mean the store is (for now) out of reach.
STORE_ERRORS: tuple[type[BaseException], ...] = (StoreUnavailable, RedisError, *UNAVAILABLE_ERRORS)

POLICY_POLL_SECONDS = 0.5
#: A request's script call may take this many socket timeouts in all (then a 503).
SCRIPT_CALL_TIMEOUTS = 4
ACCESS_LOG_FLUSH_SECONDS = 0.1
SITES_POLL_SECONDS = 1.0
_KAFKA_RETRY_MAX_SECONDS = 5.0
_PRODUCER_STOP_SECONDS = 5.0

B = TypeVar("B")

#: A background task: runs until ``stop`` is set (or it is cancelled).
BackgroundTask = Callable[["ApiState", asyncio.Event], Awaitable[None]]


class ApiState:
    """The services every route reaches through ``deps``; built by ``create_app``."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.keyring = KeyRing(settings.api_keys)
        #: Per-key request budget, one for the whole service (made by ``open``, since it
        #: lives in Redis); None when rate limiting is off (the default).
        self.rate_limiter: RateLimiter | None = None
        self.keys = KeySpace(settings.key_groups)
        self.seed_policies: dict[str, ChannelPolicy] = settings.load_channel_policies()
        self._redis: RedisClient | None = None
        self._store: RedisStore | None = None
        self._applied: AppliedStore | None = None
        self._positions: PositionCache | None = None
        #: The channel policies in force, refreshed in the background; replaced, never mutated.
        self.book = PolicyBook.of({})
        self.policies_loaded = False
        #: Every site ever folded (sorted), for channels whose policy names none.
        self.sites: tuple[str, ...] = ()
        self.seed_sites: dict[str, SiteAttributes] = settings.load_sites()
        #: The sites' attributes (the promise's ship nodes), refreshed like the policy book.
        self.site_table = SiteTable(SiteBook())
        self.site_book_loaded = False
        #: The time the promise plans from (UTC); tests fix it.
        self.clock: Callable[[], datetime] = lambda: datetime.now(UTC)
        #: The ``sync`` of the answers (api/sync_view.py); replaced, never mutated.
        self.sync = SyncView.unmeasured()
        self.kafka_connected = False
        #: Whether this process has seen the mark of a dataset the workers track
        #: (keys.FOLD_EPOCH): once it has, a store without one came back empty.
        self._seen_fold_epoch = False
        self.stop = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []

    # -- clients -------------------------------------------------------------------------

    def open(self, client: RedisClient) -> None:
        """Use ``client`` from now on (the lifespan's start)."""
        self.stop = asyncio.Event()
        self.book = PolicyBook.of({})
        self.policies_loaded = False
        self.site_table = SiteTable(SiteBook())
        self.site_book_loaded = False
        self._redis = client
        settings = self.settings
        self._store = RedisStore(
            client,
            self.keys,
            dedup_window_seconds=settings.dedup_window_seconds,
            dedup_chunks=settings.dedup_chunks,
            wait=replica_wait(settings.redis_wait_replicas, settings.redis_wait_timeout_ms),
            # A request's script call, its re-routings on a Cluster and its WAIT, in all.
            call_timeout=SCRIPT_CALL_TIMEOUTS * settings.redis_timeout_seconds,
        )
        self._positions = PositionCache(
            client,
            self._store,
            max_entries=self.settings.api_position_copy_entries,
            max_staleness_seconds=self.settings.api_position_copy_max_staleness_seconds,
        )
        self._applied = AppliedStore(self._store)
        # This process's own writes reach its copy at once (a read after a write sees it).
        self._store.own_changes.append(self._positions.apply_lines)
        limits = limits_of(
            self.settings.api_rate_limit_per_second, self.settings.api_rate_limit_burst
        )
        if limits is not None:
            rate, burst = limits
            self.rate_limiter = RateLimiter(
                SharedBuckets(self._store, rate=rate, burst=burst),
                rate,
                burst,
                outage_errors=STORE_ERRORS,
            )

    @property
    def redis(self) -> RedisClient:
        if self._redis is None:
            raise RuntimeError("the app's lifespan has not started")
        return self._redis

    @property
    def store(self) -> RedisStore:
        if self._store is None:
            raise RuntimeError("the app's lifespan has not started")
        return self._store

    @property
    def positions(self) -> PositionCache:
        """The read path's positions (the in-process copy, or Redis when it is not current)."""
        if self._positions is None:
            raise RuntimeError("the app's lifespan has not started")
        return self._positions

    # -- the fold ------------------------------------------------------------------------

    async def partitions_catching_up(self) -> int:
        """Inbound partitions the workers are reading again because Redis came back holding
        less than was folded (stream_agents/_positions.py); -1 when Redis came back empty
        and no worker has noticed yet. 0: caught up."""
        if self._applied is None:
            raise RuntimeError("the app's lifespan has not started")
        state = await self._applied.state()
        if state.catching_up:
            behind = len(state.catching_up)
        elif state.epoch is None:
            behind = -1 if self._seen_fold_epoch else 0
        else:
            self._seen_fold_epoch = True
            behind = 0
        metrics.STORE_CATCHING_UP.set(1 if behind else 0)
        return behind

    # -- policies and sites --------------------------------------------------------------

    async def ensure_policies(self) -> PolicyBook:
        """The book, loading it first if no refresh has succeeded yet (raises if Redis is out)."""
        if not self.policies_loaded:
            await self.refresh_policies()
        return self.book

    async def refresh_policies(self) -> None:
        """Reload the book when its version moved; re-seed when the dataset was reset."""
        store = self.store
        if not self.policies_loaded:
            await store.migrate_legacy_keys()  # a dataset of an earlier release
        found = await _reloaded(
            loaded=self.policies_loaded,
            version=self.book.version,
            seeded=bool(self.seed_policies),
            remote_version=store.policies_version,
            seed=lambda: store.seed_channel_policies(self.seed_policies),
            load=store.policy_book,
        )
        if found is not None:
            self.install_book(found[0], force=found[1])

    def install_book(self, book: PolicyBook, *, force: bool = False) -> None:
        """Use ``book`` from now on, unless it is older than the one in use."""
        if force or book.version >= self.book.version:
            self.book = book
            self.policies_loaded = True

    @property
    def site_book(self) -> SiteBook:
        """The sites' attributes in force (what the promise plans with)."""
        return self.site_table.book

    async def ensure_site_book(self) -> SiteBook:
        """The site book, loading it first if no refresh has succeeded yet."""
        if not self.site_book_loaded:
            await self.refresh_site_book()
        return self.site_book

    async def refresh_site_book(self) -> None:
        """As ``refresh_policies``, for the sites' attributes (``ATP_SITES_FILE`` seeds)."""
        store = self.store
        found = await _reloaded(
            loaded=self.site_book_loaded,
            version=self.site_table.version,
            seeded=bool(self.seed_sites),
            remote_version=store.site_table_version,
            seed=lambda: store.seed_sites(self.seed_sites),
            load=store.site_table,
        )
        if found is not None:
            self.install_site_table(found[0], force=found[1])

    def install_site_table(self, table: SiteTable, *, force: bool = False) -> None:
        if force or table.version >= self.site_table.version:
            self.site_table = table
            self.site_book_loaded = True

    async def refresh_sites(self) -> None:
        self.sites = tuple(await self.store.known_sites())

    async def _refresh_forever(self, stop: asyncio.Event) -> None:
        loop = asyncio.get_running_loop()
        next_sites = 0.0
        failing = False
        while not stop.is_set():
            try:
                await self.refresh_policies()
                await self.refresh_site_book()
                if loop.time() >= next_sites:
                    await self.refresh_sites()
                    next_sites = loop.time() + SITES_POLL_SECONDS
                if failing:
                    log.info("policy refresh: store reachable again")
                failing = False
            except asyncio.CancelledError:
                raise
            except STORE_ERRORS as exc:
                if not failing:
                    log.warning("policy refresh: store unreachable (%r); retrying", exc)
                failing = True
            except Exception:
                log.exception("policy refresh failed; retrying")
            await wait_or_stop(stop, POLICY_POLL_SECONDS)

    # -- outbox relay ----------------------------------------------------------------------

    async def _relay_forever(self, stop: asyncio.Event) -> None:
        """Start a Kafka producer (retrying while Kafka is down), then relay the outbox."""
        from aiokafka import AIOKafkaProducer

        backoff = 0.2
        while not stop.is_set():
            producer = AIOKafkaProducer(
                bootstrap_servers=self.settings.bootstrap_servers,
                acks="all",
                linger_ms=2,
                request_timeout_ms=10_000,
            )
            try:
                await producer.start()
            except asyncio.CancelledError:
                await _stop_quietly(producer)
                raise
            except Exception as exc:
                await _stop_quietly(producer)
                log.warning("outbox relay: Kafka unreachable (%r); retrying in %.1fs", exc, backoff)
                await wait_or_stop(stop, backoff)
                backoff = min(backoff * 2, _KAFKA_RETRY_MAX_SECONDS)
                continue
            self.kafka_connected = True
            backoff = 0.2
            try:
                consumer = relay_consumer_name("api")
                relay = OutboxRelay(
                    self.store,
                    KafkaPublisher(producer),
                    topic=EVENTS_TOPIC,
                    consumer=consumer,
                    batch=self.settings.relay_batch,
                    claim_idle_ms=self.settings.relay_claim_idle_ms,
                    linger_ms=self.settings.relay_linger_ms,
                    coalesce_ms=self.settings.events_coalesce_ms,
                )
                # Workers relay; this process does only while none has lately.
                await relay.run(
                    stop, duty=Duty(self.redis, "relay", holder=consumer), stand_by=True
                )
            except PublishStalled as exc:
                metrics.OUTBOX_RELAY_FAILURES.inc()
                log.warning("outbox relay: %s; starting a new Kafka producer", exc)
            finally:
                self.kafka_connected = False
                await _stop_quietly(producer)

    # -- background tasks ------------------------------------------------------------------

    def start_task(self, name: str, coro: Coroutine[Any, Any, None]) -> None:
        """Run ``coro`` until shutdown; a crash is logged (the API keeps serving)."""
        task = asyncio.create_task(coro, name=name)
        task.add_done_callback(_log_crash)
        self._tasks.append(task)

    def start_background(self, tasks: list[BackgroundTask], *, relay: bool) -> None:
        self.start_task("atp-policy-refresh", self._refresh_forever(self.stop))
        self.start_task("atp-access-log", _flush_access_log(self.stop))
        if self.settings.api_position_copy_entries:
            self.start_task("atp-position-copy", self.positions.run(self.stop))
        if relay:
            self.start_task("atp-outbox-relay", self._relay_forever(self.stop))
        for run in tasks:
            self.start_task(
                getattr(run, "__name__", "atp-task"), _as_coroutine(run(self, self.stop))
            )

    async def stop_background(self, grace: float = 5.0) -> None:
        self.stop.set()
        if not self._tasks:
            return
        _, pending = await asyncio.wait(self._tasks, timeout=grace)
        for task in pending:
            task.cancel()
        for task in pending:
            with contextlib.suppress(BaseException):
                await task
        self._tasks.clear()


async def _reloaded(
    *,
    loaded: bool,
    version: int,
    seeded: bool,
    remote_version: Callable[[], Awaitable[int]],
    seed: Callable[[], Awaitable[None]],
    load: Callable[[], Awaitable[B]],
) -> tuple[B, bool] | None:
    """A versioned table of Redis held here (the policy book, the site book): (the table, and
    whether to install it whatever its version) when it must be loaded, else None. Its first
    load, or a dataset that lost it (Redis restarted without persistence: its version went
    back, or to 0 while there are seeds), seeds it from configuration first."""
    remote = await remote_version()
    reset = remote < version or (remote == 0 and seeded)
    if not loaded or reset:
        await seed()
        return await load(), True
    if remote != version:
        return await load(), False
    return None


async def _flush_access_log(stop: asyncio.Event) -> None:
    """Hand the request lines to logging every 0.1 s, and once more at the end."""
    try:
        while not stop.is_set():
            await wait_or_stop(stop, ACCESS_LOG_FLUSH_SECONDS)
            ACCESS_LOG.flush()
    finally:
        ACCESS_LOG.flush()


async def wait_or_stop(stop: asyncio.Event, seconds: float) -> None:
    """Sleep ``seconds`` unless ``stop`` is set first."""
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), timeout=seconds)


async def _as_coroutine(awaitable: Awaitable[None]) -> None:
    await awaitable


async def _stop_quietly(producer: Any) -> None:
    with contextlib.suppress(Exception):  # TimeoutError too: a stuck producer is dropped
        await asyncio.wait_for(producer.stop(), _PRODUCER_STOP_SECONDS)


def _log_crash(task: asyncio.Task[None]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.error("background task %s crashed", task.get_name(), exc_info=task.exception())
