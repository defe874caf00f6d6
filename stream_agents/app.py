"""The Faust app of the stream worker, built from Settings; `run_worker` is `atp worker`.

One process holds: the inbound agent (agents.py), the outbox relay that moves
what the folds wrote to ``atp.events.v1``, the timers of the low-volume flows (re-evaluation
after a policy change or a new day, snapshot requests for reconciliation: one worker at a
time does each), and (optionally) a Prometheus /metrics server.
Redis and Kafka clients are built here and nowhere else in the worker.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import tempfile
from pathlib import Path
from typing import Any

import faust
import mode.loop
from faust.app.base import BootStrategy
from mode.types.signals import BaseSignalT
from prometheus_client import start_http_server

from atp_service import metrics
from atp_service.audit import audit_periodically
from atp_service.config import DLQ_TOPIC, EVENTS_TOPIC, INBOUND_TOPICS, Settings, get_settings
from atp_service.events import OutboxRelay, PublishStalled, relay_consumer_name
from atp_service.gc_tuning import tune_for_service
from atp_service.logs import json_logging_config
from atp_service.reconcile import ReconcileSchedule
from atp_service.store import KeySpace, RedisStore, connect
from atp_service.store.duty import Duty
from atp_service.store.ops import OpsStore
from atp_service.store.reevaluation import Reevaluator
from atp_service.store.replay_marks import ReplayMarks
from atp_service.store.reservations import ExpirySweeper, ReservationStore
from stream_agents._folding import BatchAbandoned, BatchFolder
from stream_agents._kafka import DeadLetterTopic, LazyProducer
from stream_agents.agents import InboundAgent
from stream_agents.report import WorkerReporter

log = logging.getLogger(__name__)

BACKLOG_EVERY_SECONDS = 5.0
REEVALUATE_EVERY_SECONDS = 0.25
SHUTDOWN_GRACE_SECONDS = 5.0


class WorkerRuntime:
    """The clients and long-running helpers of one worker process."""

    def __init__(self, settings: Settings, app: faust.App) -> None:
        self.redis = connect(
            settings.redis_url,
            timeout=settings.redis_timeout_seconds,
            max_connections=settings.redis_max_connections,
            cluster=settings.redis_cluster,
        )
        self.store = RedisStore(
            self.redis,
            KeySpace(settings.key_groups),
            dedup_window_seconds=settings.dedup_window_seconds,
            dedup_chunks=settings.dedup_chunks,
        )
        self.producer = LazyProducer(
            settings.bootstrap_servers, client_id=f"{settings.worker_app_id}-out"
        )
        holder = relay_consumer_name("worker")
        self.ops = OpsStore(self.redis)
        self.reporter = WorkerReporter(self.ops, holder, lambda: self.inbound.partition_lags())
        self.folder = BatchFolder(
            self.store,
            DeadLetterTopic(self.producer, DLQ_TOPIC),
            authority=settings.authority,
            initial_policies=settings.load_channel_policies(),
            should_give_up=lambda: bool(app.should_stop),
            replay_marks=ReplayMarks(self.redis),
            watcher=self.reporter,
        )
        self.inbound = InboundAgent(
            self.folder,
            bootstrap_servers=settings.bootstrap_servers,
            group_id=settings.worker_app_id,  # the consumer group, as in earlier releases
            topics=INBOUND_TOPICS,
            batch=settings.worker_fold_batch,
            fetch_max_wait_ms=settings.worker_fetch_max_wait_ms,
            # One figure for both: how long a dead worker's partitions wait (docs/worker.md).
            session_timeout_ms=settings.worker_session_timeout_ms,
            rebalance_timeout_ms=settings.worker_session_timeout_ms,
            group_instance_id=settings.worker_group_instance_id,
            should_give_up=lambda: bool(app.should_stop),
            advance_seconds=settings.worker_advance_seconds,
        )
        self.relay = OutboxRelay(
            self.store,
            self.producer,
            topic=EVENTS_TOPIC,
            consumer=relay_consumer_name("worker"),
            batch=settings.relay_batch,
            claim_idle_ms=settings.relay_claim_idle_ms,
            linger_ms=settings.relay_linger_ms,
            coalesce_ms=settings.events_coalesce_ms,
        )
        self.relay_duty = Duty(self.redis, "relay", holder=holder)
        self.reservations = ReservationStore(
            self.store, idempotency_ttl_seconds=settings.idempotency_ttl_seconds
        )
        self.sweeper = ExpirySweeper(
            self.reservations,
            settings.expiry_sweep_interval_seconds,
            duty=Duty(self.redis, "expiry", holder=holder),
        )
        self.holder = holder
        self.audit_interval = settings.worker_audit_interval_seconds
        #: Stops the report and audit loops (``close``).
        self._ops_stop = asyncio.Event()
        self.reevaluator = Reevaluator(self.store, holder=holder, rate=settings.reevaluation_rate)
        self.reevaluation_duty = Duty(self.redis, "reevaluation", holder=holder)
        self.reconcile = ReconcileSchedule(
            self.redis,
            self.producer.publish,
            every_seconds=settings.reconcile_every_seconds,
            sources=[source.value for source in settings.authority.values()],
            holder=holder,
        )
        self._seeded = False
        self._reevaluation_failing = False
        self._stop: asyncio.Event | None = None
        self._relay_done: asyncio.Event | None = None

    async def run_relay(self) -> None:
        """Seed policies, then relay the outbox and expire due reservations until shutdown
        (both survive Redis and Kafka outages). The API processes stand by for both."""
        self._stop = asyncio.Event()
        self._relay_done = asyncio.Event()
        try:
            await self.folder.start()
            self._seeded = True
            await asyncio.gather(self._relay_forever(self._stop), self.sweeper.run(self._stop))
        except BatchAbandoned:
            pass  # stopping before Redis came back
        finally:
            self._relay_done.set()

    async def _relay_forever(self, stop: asyncio.Event) -> None:
        """The relay, on a new producer whenever the one it had got stuck."""
        while not stop.is_set():
            try:
                await self.relay.run(stop, duty=self.relay_duty)
            except PublishStalled as exc:
                metrics.OUTBOX_RELAY_FAILURES.inc()
                log.warning("outbox relay: %s; starting a new Kafka producer", exc)
                await self.producer.drop()

    async def run_reports(self) -> None:
        """The operators' figures (stream_agents/report.py) and the periodic audit."""
        loops = [self.reporter.run(self._ops_stop)]
        if self.audit_interval:
            loops.append(
                audit_periodically(
                    self.reservations,
                    self.ops,
                    every_seconds=self.audit_interval,
                    holder=self.holder,
                    stop=self._ops_stop,
                )
            )
        await asyncio.gather(*loops)

    async def reevaluate(self) -> None:
        """A timer's tick of re-evaluation (store/reevaluation.py), once the configured policies
        are seeded; the API processes stand by while a worker reports ticks."""
        if not self._seeded:
            return
        try:
            await self.reevaluator.tick()
            await self.reevaluation_duty.done()
        except Exception as exc:  # Redis away: the next tick tries again
            if not self._reevaluation_failing:
                log.warning("re-evaluation tick failed: %s", exc)
            self._reevaluation_failing = True
            metrics.REDIS_ERRORS.labels("reevaluation").inc()
        else:
            self._reevaluation_failing = False

    async def ask_for_snapshots(self) -> None:
        """A timer's tick of the reconciliation schedule (``ATP_RECONCILE_EVERY_SECONDS``)."""
        try:
            await self.reconcile.tick()
        except Exception as exc:  # Redis or Kafka away: a later tick (of any worker) asks
            log.warning("snapshot request failed: %s", exc)

    async def report_backlog(self) -> None:
        try:
            metrics.OUTBOX_BACKLOG.set(await self.store.outbox_backlog())
        except Exception as exc:
            log.debug("outbox backlog unavailable: %s", exc)

    async def close(self) -> None:
        """Stop the inbound agent (its batch in flight folded and committed), let the relay
        finish its round, then close the clients."""
        await self.inbound.stop(SHUTDOWN_GRACE_SECONDS)
        self._ops_stop.set()
        with contextlib.suppress(Exception):
            await self.reevaluator.lease.release()  # another worker takes over at once
        if self._stop is not None and self._relay_done is not None:
            self._stop.set()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._relay_done.wait(), SHUTDOWN_GRACE_SECONDS)
        with contextlib.suppress(Exception):
            await self.producer.stop()
        with contextlib.suppress(Exception):
            await self.redis.aclose()


class _WorkerBoot(BootStrategy):
    """Faust runs the process (signals, logging, tasks, timers); it reads no topic and
    produces nothing itself: the inbound agent has its own consumer group, the dead letters
    and the relay their own producer (agents.py says why)."""

    enable_kafka = False


def create_app(settings: Settings | None = None) -> faust.App:
    """The worker's Faust app: agents, relay and timers wired to clients built from settings."""
    settings = settings or get_settings()
    datadir = Path(tempfile.gettempdir()) / "atp-worker" / settings.worker_app_id
    datadir.parent.mkdir(parents=True, exist_ok=True)  # Faust makes the last level itself
    app = faust.App(
        settings.worker_app_id,
        broker=[f"kafka://{server}" for server in settings.kafka_brokers],
        store="memory://",
        web_enabled=False,
        # The inbound, dead-letter and events topics are owned outside the worker, and
        # the worker keeps no tables: it creates no topic (Tansu and managed Kafka
        # clusters alike may refuse to), not even Faust's leader topic.
        topic_allow_declare=False,
        topic_disable_leader=True,
        datadir=str(datadir),
    )
    app.boot_strategy = _WorkerBoot(app)
    runtime = WorkerRuntime(settings, app)
    app.task(runtime.inbound.run)
    app.task(runtime.run_relay)
    app.task(runtime.run_reports)
    app.timer(BACKLOG_EVERY_SECONDS)(runtime.report_backlog)
    app.timer(REEVALUATE_EVERY_SECONDS)(runtime.reevaluate)
    if settings.reconcile_every_seconds > 0:
        app.timer(min(1.0, settings.reconcile_every_seconds))(runtime.ask_for_snapshots)

    async def close_runtime(
        sender: Any, /, *args: Any, signal: BaseSignalT[Any], **kwargs: Any
    ) -> None:
        await runtime.close()

    app.on_before_shutdown.connect(close_runtime)
    return app


def run_worker(settings: Settings) -> None:
    """Run the stream worker until SIGINT/SIGTERM (blocking)."""
    # uvloop, as the API: the worker's time is mostly socket I/O to Redis and the broker.
    mode.loop.use("uvloop")
    app = create_app(settings)
    if settings.worker_metrics_port:
        start_http_server(settings.worker_metrics_port, addr=settings.worker_metrics_host)
    worker = faust.Worker(
        app, loglevel=settings.log_level, logging_config=json_logging_config(settings.log_level)
    )
    tune_for_service()  # the app and the worker built: what they hold is frozen
    try:
        worker.execute_from_commandline()
    except SystemExit as exc:
        if exc.code not in (None, 0):
            raise
