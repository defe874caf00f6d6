"""`atp simulate`: realistic WMS/ERP traffic into the inbound topics.

The generation is pure (``TrafficGenerator``: a seeded random source, a clock and a shadow
model of every item-site) so that it can be unit-tested; ``run_simulation`` only paces it
and hands the messages to an aiokafka producer.

What the traffic looks like:

- skus with Zipf-like popularity (a few hot items, a long tail) over several sites;
- the first time an item-site is touched it gets a WMS snapshot and an ERP snapshot;
- then WMS receipts, allocations, picks (on_hand and allocated both go down), quarantine
  holds and releases (some released units are scrapped), ERP inbound with an ETA and its
  later arrival (ERP in_transit down, WMS receipt up), and occasional re-snapshots, some
  of which disagree a little with the deltas before them (a cycle count found a
  difference), which the service reports as drift;
- now and then a pick whose on_hand message never reaches the service (1 pick in 100): the
  fold then holds more on hand than the WMS, until a snapshot says otherwise;
- an answer to every ``inventory.snapshot_requested`` on atp.events.v1 (`atp reconcile`, or
  the worker every ``ATP_RECONCILE_EVERY_SECONDS``): a snapshot of each item-site asked
  for, as the source sees it, so the service finds what was lost (drift);
- about 1% exact duplicates of recent messages and about 0.2% bad messages (broken JSON,
  an unknown schema, schema violations, a bucket the source does not own).

``source_seq`` counts per (source, sku, site) from a base taken from the clock, so that a
second run against the same store is newer than the first rather than stale.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import json
import random
import signal
import sys
import time
import uuid
from collections import Counter, deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import Any, Final, TextIO

from atp_service.config import EVENTS_TOPIC, Settings

WMS_TOPIC: Final = "wms.inventory.v1"
ERP_TOPIC: Final = "erp.inventory.v1"
DELTA_SCHEMA: Final = "inventory.delta.v1"
SNAPSHOT_SCHEMA: Final = "inventory.snapshot.v1"

#: Site codes in the order ``--sites N`` takes them; the demo channel policies name these.
SITE_NAMES: Final = (
    "DC-EAST",
    "DC-WEST",
    "STORE-001",
    "STORE-002",
    "DC-CENTRAL",
    "STORE-003",
    "STORE-004",
    "STORE-005",
)

DUPLICATE_RATE: Final = 0.01
#: Picks whose on_hand message is lost (the shadow counts it; the fold never hears of it).
LOST_PICK_RATE: Final = 0.01
SNAPSHOT_REQUESTED: Final = "inventory.snapshot_requested"
MALFORMED_RATE: Final = 0.002
MALFORMED_KINDS: Final = (
    "malformed_json",
    "unknown_schema",
    "schema_violation",
    "not_authoritative",
)
ZIPF_EXPONENT: Final = 1.1


def sku_name(rank: int) -> str:
    """The sku of popularity rank ``rank`` (1 is the hottest)."""
    return f"SKU-{rank:05d}"


def site_names(count: int) -> list[str]:
    names = list(SITE_NAMES[:count])
    names.extend(f"SITE-{n:03d}" for n in range(len(names) + 1, count + 1))
    return names


@dataclass(frozen=True, slots=True)
class SimMessage:
    """One Kafka message to send, and what kind of traffic it is (for the summary)."""

    topic: str
    key: bytes
    value: bytes
    kind: str


@dataclass
class ShadowPosition:
    """What the simulated WMS and ERP believe about one item-site."""

    target: int  # the stocking level replenishment aims at
    on_hand: int = 0
    allocated: int = 0
    quarantined: int = 0
    inbound: dict[date, int] = field(default_factory=dict)  # ERP in_transit by ETA

    @property
    def free(self) -> int:
        return self.on_hand - self.allocated - self.quarantined


class TrafficGenerator:
    """An endless, plausible stream of WMS/ERP messages; no I/O.

    ``seed`` fixes the choices; event ids stay unique across runs regardless (``run_id``).
    """

    def __init__(
        self,
        *,
        skus: int,
        sites: int,
        seed: int | None = None,
        clock: Callable[[], datetime] | None = None,
        seq_base: int | None = None,
        run_id: str | None = None,
    ) -> None:
        if skus < 1 or sites < 1:
            raise ValueError("skus and sites must be at least 1")
        self.rng = random.Random(seed)
        self.clock = clock or (lambda: datetime.now(UTC))
        self.skus = [sku_name(rank) for rank in range(1, skus + 1)]
        self.sites = site_names(sites)
        self._sku_cum = _cumulative([1.0 / rank**ZIPF_EXPONENT for rank in range(1, skus + 1)])
        # Distribution centres are busier than stores.
        self._site_cum = _cumulative([3.0 if s.startswith("DC-") else 1.0 for s in self.sites])
        # A base from the clock (0.1 ms resolution, < 10^14 so Lua prints it exactly).
        self._seq_base = seq_base if seq_base is not None else int(time.time() * 10_000)
        self._seqs: dict[tuple[str, str, str], int] = {}
        self._event_counter = 0
        self._run_id = run_id or uuid.uuid4().hex[:12]
        self.shadow: dict[tuple[str, str], ShadowPosition] = {}
        self._pending: deque[SimMessage] = deque()
        self._recent: deque[SimMessage] = deque(maxlen=64)
        #: Messages the simulated WMS "lost" (never sent, though its shadow counts them).
        self.lost = 0

    # -- the stream ------------------------------------------------------------------------

    def __iter__(self) -> Iterator[SimMessage]:
        return self

    def __next__(self) -> SimMessage:
        return self.next_message()

    def next_message(self) -> SimMessage:
        if self._pending:
            return self._remember(self._pending.popleft())
        roll = self.rng.random()
        if roll < MALFORMED_RATE:
            return self._malformed()
        if roll < MALFORMED_RATE + DUPLICATE_RATE and self._recent:
            original = self.rng.choice(self._recent)
            return SimMessage(original.topic, original.key, original.value, "duplicate")
        self._pending.extend(self._action())
        return self._remember(self._pending.popleft())

    def _remember(self, message: SimMessage) -> SimMessage:
        self._recent.append(message)
        return message

    # -- choices ---------------------------------------------------------------------------

    def _pick_item_site(self) -> tuple[str, str]:
        sku = self.skus[bisect.bisect_left(self._sku_cum, self.rng.random() * self._sku_cum[-1])]
        site = self.sites[
            bisect.bisect_left(self._site_cum, self.rng.random() * self._site_cum[-1])
        ]
        return sku, site

    def _action(self) -> list[SimMessage]:
        sku, site = self._pick_item_site()
        pos = self.shadow.get((sku, site))
        if pos is None:
            return self._initial_load(sku, site)
        roll = self.rng.random() * 100
        if roll < 28 and pos.allocated > 0:
            return self._pick(sku, site, pos)
        if roll < 56 and pos.free > 0:
            return self._allocation(sku, site, pos)
        # Replenishment keeps each item-site near its stocking level: hot items move, but
        # neither run dry for good nor pile up without bound.
        if roll < 70 and pos.on_hand < pos.target:
            return self._receipt(sku, site, pos)
        if roll < 79 and pos.on_hand + sum(pos.inbound.values()) < 2 * pos.target:
            return self._inbound(sku, site, pos)
        if roll < 86 and pos.inbound:
            return self._arrival(sku, site, pos)
        if roll < 91 and pos.free > 0:
            return self._quarantine_hold(sku, site, pos)
        if roll < 95 and pos.quarantined > 0:
            return self._quarantine_release(sku, site, pos)
        if roll < 98:
            return [self._wms_snapshot(sku, site, pos, kind="resnapshot", drift=True)]
        if roll < 100 and pos.inbound:
            return [self._erp_snapshot(sku, site, pos, kind="resnapshot")]
        if pos.free > 0:
            return self._allocation(sku, site, pos)
        return self._receipt(sku, site, pos)

    # -- actions (each updates the shadow exactly as the messages it returns) ----------------

    def _initial_load(self, sku: str, site: str) -> list[SimMessage]:
        on_hand = self.rng.randint(20, 400)
        pos = ShadowPosition(
            target=on_hand,
            on_hand=on_hand,
            allocated=self.rng.randint(0, on_hand // 5),
            quarantined=self.rng.choice((0, 0, 0, self.rng.randint(1, 5))),
        )
        if self.rng.random() < 0.4:
            pos.inbound[self._eta()] = self.rng.randint(10, 200)
        self.shadow[(sku, site)] = pos
        return [
            self._wms_snapshot(sku, site, pos, kind="snapshot", drift=False),
            self._erp_snapshot(sku, site, pos, kind="snapshot"),
        ]

    def _receipt(self, sku: str, site: str, pos: ShadowPosition) -> list[SimMessage]:
        qty = self.rng.randint(pos.target // 5 + 1, pos.target // 2 + 1)
        pos.on_hand += qty
        return [self._delta("wms", sku, site, "on_hand", qty, "receipt", kind="receipt")]

    def _allocation(self, sku: str, site: str, pos: ShadowPosition) -> list[SimMessage]:
        qty = self.rng.randint(1, max(1, min(pos.free, 8)))
        pos.allocated += qty
        return [self._delta("wms", sku, site, "allocated", qty, "allocation", kind="allocation")]

    def _pick(self, sku: str, site: str, pos: ShadowPosition) -> list[SimMessage]:
        qty = self.rng.randint(1, min(pos.allocated, 8))
        pos.on_hand -= qty
        pos.allocated -= qty
        corr = f"pick-{self._next_event_number()}"
        messages = [
            self._delta("wms", sku, site, "on_hand", -qty, "pick", kind="pick", corr=corr),
            self._delta("wms", sku, site, "allocated", -qty, "pick", kind="pick", corr=corr),
        ]
        if self.rng.random() < LOST_PICK_RATE:
            self.lost += 1
            return messages[1:]
        return messages

    def _quarantine_hold(self, sku: str, site: str, pos: ShadowPosition) -> list[SimMessage]:
        qty = self.rng.randint(1, max(1, min(pos.free, 5)))
        pos.quarantined += qty
        reason = self.rng.choice(("qc_hold", "damaged", "recall"))
        return [self._delta("wms", sku, site, "quarantined", qty, reason, kind="quarantine_hold")]

    def _quarantine_release(self, sku: str, site: str, pos: ShadowPosition) -> list[SimMessage]:
        qty = self.rng.randint(1, pos.quarantined)
        pos.quarantined -= qty
        messages = [
            self._delta(
                "wms", sku, site, "quarantined", -qty, "qc_release", kind="quarantine_release"
            )
        ]
        if self.rng.random() < 0.3:  # not sellable after all: scrapped
            pos.on_hand -= qty
            messages.append(
                self._delta("wms", sku, site, "on_hand", -qty, "scrap", kind="quarantine_release")
            )
        return messages

    def _inbound(self, sku: str, site: str, pos: ShadowPosition) -> list[SimMessage]:
        qty = self.rng.randint(pos.target // 5 + 1, pos.target // 2 + 1)
        eta = self._eta()
        pos.inbound[eta] = pos.inbound.get(eta, 0) + qty
        return [
            self._delta("erp", sku, site, "in_transit", qty, "po_open", kind="inbound", eta=eta)
        ]

    def _arrival(self, sku: str, site: str, pos: ShadowPosition) -> list[SimMessage]:
        eta = min(pos.inbound)
        qty = pos.inbound.pop(eta)
        pos.on_hand += qty
        corr = f"asn-{self._next_event_number()}"
        return [
            self._delta(
                "erp", sku, site, "in_transit", -qty, "asn_received", kind="arrival", eta=eta,
                corr=corr,
            ),
            self._delta("wms", sku, site, "on_hand", qty, "receipt", kind="arrival", corr=corr),
        ]  # fmt: skip

    # -- reconciliation ----------------------------------------------------------------------

    def answer(self, request: dict[str, Any]) -> list[SimMessage]:
        """What the source a snapshot request names sends back: a snapshot of each item-site
        it knows that the request asks for (its ``site``, or every one; its ``skus``, or
        every one), as its shadow has it. Nothing for a source this simulator is not."""
        source = request.get("source")
        if request.get("type") != SNAPSHOT_REQUESTED or source not in ("wms", "erp"):
            return []
        site, skus = request.get("site"), request.get("skus")
        wanted = set(skus) if isinstance(skus, list) and skus else None
        answers = []
        for (sku, at), pos in self.shadow.items():
            if (site is not None and at != site) or (wanted is not None and sku not in wanted):
                continue
            if source == "wms":
                answers.append(self._wms_snapshot(sku, at, pos, kind="reconcile", drift=False))
            else:
                answers.append(self._erp_snapshot(sku, at, pos, kind="reconcile"))
        return answers

    # -- message builders ------------------------------------------------------------------

    def _eta(self) -> date:
        return self.clock().date() + timedelta(days=self.rng.randint(1, 21))

    def _next_event_number(self) -> int:
        self._event_counter += 1
        return self._event_counter

    def _event_id(self, source: str) -> str:
        return f"{source}-sim-{self._run_id}-{self._next_event_number()}"

    def _seq(self, source: str, sku: str, site: str) -> int:
        triple = (source, sku, site)
        value = self._seqs.get(triple, self._seq_base) + 1
        self._seqs[triple] = value
        return value

    def _now(self) -> str:
        return self.clock().isoformat(timespec="seconds").replace("+00:00", "Z")

    def _delta_body(
        self,
        source: str,
        sku: str,
        site: str,
        bucket: str,
        delta: int,
        reason: str,
        *,
        eta: date | None = None,
        corr: str | None = None,
    ) -> dict[str, Any]:
        return {
            "schema": DELTA_SCHEMA,
            "event_id": self._event_id(source),
            "source": source,
            "source_seq": self._seq(source, sku, site),
            "occurred_at": self._now(),
            "correlation_id": corr,
            "sku": sku,
            "site": site,
            "bucket": bucket,
            "delta": delta,
            "reason": reason,
            "eta": eta.isoformat() if eta is not None else None,
            "reservation_id": None,
        }

    def _delta(
        self,
        source: str,
        sku: str,
        site: str,
        bucket: str,
        delta: int,
        reason: str,
        *,
        kind: str,
        eta: date | None = None,
        corr: str | None = None,
    ) -> SimMessage:
        body = self._delta_body(source, sku, site, bucket, delta, reason, eta=eta, corr=corr)
        return _message(source, sku, site, body, kind)

    def _wms_snapshot(
        self, sku: str, site: str, pos: ShadowPosition, *, kind: str, drift: bool
    ) -> SimMessage:
        if drift and self.rng.random() < 0.3:
            # A cycle count found a few units more or fewer than the deltas said.
            pos.on_hand = max(
                pos.allocated + pos.quarantined, pos.on_hand + self.rng.randint(-3, 3)
            )
        body = {
            "schema": SNAPSHOT_SCHEMA,
            "event_id": self._event_id("wms"),
            "source": "wms",
            "source_seq": self._seq("wms", sku, site),
            "occurred_at": self._now(),
            "sku": sku,
            "site": site,
            "quantities": {
                "on_hand": pos.on_hand,
                "allocated": pos.allocated,
                "quarantined": pos.quarantined,
            },
        }
        return _message("wms", sku, site, body, kind)

    def _erp_snapshot(self, sku: str, site: str, pos: ShadowPosition, *, kind: str) -> SimMessage:
        body = {
            "schema": SNAPSHOT_SCHEMA,
            "event_id": self._event_id("erp"),
            "source": "erp",
            "source_seq": self._seq("erp", sku, site),
            "occurred_at": self._now(),
            "sku": sku,
            "site": site,
            "quantities": {"in_transit": sum(pos.inbound.values())},
            "in_transit_by_eta": {eta.isoformat(): qty for eta, qty in sorted(pos.inbound.items())},
        }
        return _message("erp", sku, site, body, kind)

    def _malformed(self) -> SimMessage:
        code = self.rng.choice(MALFORMED_KINDS)
        sku, site = self._pick_item_site()
        if code == "malformed_json":
            value = b'{"schema": "inventory.delta.v1", "event_id": "wms-broken", "sku": '
            return SimMessage(WMS_TOPIC, f"{sku}@{site}".encode(), value, code)
        if code == "unknown_schema":
            body = self._delta_body("wms", sku, site, "on_hand", 1, "receipt")
            body["schema"] = "inventory.adjustment.v7"
            return _message("wms", sku, site, body, code)
        if code == "schema_violation":
            body = self._delta_body("wms", sku, site, "on_hand", 1, "receipt")
            body["delta"] = "twelve"
            return _message("wms", sku, site, body, code)
        # not_authoritative: the WMS speaking for the ERP's in_transit bucket.
        body = self._delta_body("wms", sku, site, "in_transit", 5, "wrong_owner", eta=self._eta())
        return _message("wms", sku, site, body, code)


def _message(source: str, sku: str, site: str, body: dict[str, Any], kind: str) -> SimMessage:
    topic = WMS_TOPIC if source == "wms" else ERP_TOPIC
    value = json.dumps(body, separators=(",", ":")).encode()
    return SimMessage(topic, f"{sku}@{site}".encode(), value, kind)


def _cumulative(weights: list[float]) -> list[float]:
    total = 0.0
    out = []
    for w in weights:
        total += w
        out.append(total)
    return out


# -- I/O: pacing and producing -------------------------------------------------------------


@dataclass
class SimulationSummary:
    by_kind: Counter[str] = field(default_factory=Counter)
    by_topic: Counter[str] = field(default_factory=Counter)
    started: float = field(default_factory=time.monotonic)
    finished: float | None = None

    def count(self, message: SimMessage) -> None:
        self.by_kind[message.kind] += 1
        self.by_topic[message.topic] += 1

    @property
    def total(self) -> int:
        return sum(self.by_topic.values())

    @property
    def elapsed(self) -> float:
        return (self.finished or time.monotonic()) - self.started

    def render(self) -> str:
        elapsed = self.elapsed
        rate = self.total / elapsed if elapsed > 0 else 0.0
        lines = [f"simulated {self.total} messages in {elapsed:.1f}s ({rate:.0f}/s)"]
        lines += [f"  {topic:<20} {n}" for topic, n in sorted(self.by_topic.items())]
        lines += [f"  {kind:<20} {n}" for kind, n in sorted(self.by_kind.items())]
        return "\n".join(lines)


class _Pacer:
    """Messages due by now at ``rate`` per second; never bursts to catch up more than 1 s."""

    def __init__(self, rate: float) -> None:
        self.rate = rate
        self.start = time.monotonic()
        self.sent = 0

    def due(self) -> int:
        elapsed = time.monotonic() - self.start
        due = int(elapsed * self.rate) + 1 - self.sent
        if due > self.rate:  # we fell behind (slow broker): drop the backlog, keep the pace
            self.start = time.monotonic() - (self.sent / self.rate)
            due = int(self.rate)
        return max(0, due)

    def wait_seconds(self) -> float:
        next_at = self.start + self.sent / self.rate
        return max(0.001, min(0.05, next_at - time.monotonic()))


async def produce(
    bootstrap_servers: str,
    generator: Iterator[SimMessage],
    *,
    rate: float,
    duration: float | None,
    stop: asyncio.Event,
    summary: SimulationSummary,
    out: TextIO = sys.stdout,
    progress_every: float = 10.0,
    answers: deque[SimMessage] | None = None,
) -> None:
    """Send the generator's messages at ``rate`` per second until ``duration`` or ``stop``,
    and what lands in ``answers`` (snapshots a request asked for) as soon as it is there."""
    from aiokafka import AIOKafkaProducer

    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap_servers, acks="all", linger_ms=5, request_timeout_ms=15_000
    )
    try:
        await producer.start()
    except BaseException:
        await producer.stop()  # releases what a failed start opened
        raise
    pacer = _Pacer(rate)
    deadline = time.monotonic() + duration if duration else None
    next_progress = time.monotonic() + progress_every
    in_flight: list[asyncio.Future[Any]] = []
    try:
        while not stop.is_set():
            now = time.monotonic()
            if deadline is not None and now >= deadline:
                break
            if now >= next_progress:
                next_progress = now + progress_every
                print(f"sent {summary.total} messages", file=out, flush=True)
            while answers:
                message = answers.popleft()
                in_flight.append(await producer.send(message.topic, message.value, key=message.key))
                summary.count(message)
            due = pacer.due()
            if due == 0:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), pacer.wait_seconds())
                continue
            for _ in range(due):
                message = next(generator)
                in_flight.append(await producer.send(message.topic, message.value, key=message.key))
                summary.count(message)
                pacer.sent += 1
            if len(in_flight) >= 1000:
                await asyncio.gather(*in_flight)
                in_flight.clear()
        await asyncio.gather(*in_flight)
    finally:
        await producer.stop()


async def answer_requests(
    bootstrap_servers: str,
    generator: TrafficGenerator,
    answers: deque[SimMessage],
    stop: asyncio.Event,
    *,
    out: TextIO = sys.stdout,
    ready: asyncio.Event | None = None,
) -> None:
    """Follow atp.events.v1 (from its end) for snapshot requests and queue their answers."""
    from aiokafka import AIOKafkaConsumer, TopicPartition

    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap_servers, group_id=None, enable_auto_commit=False
    )
    await consumer.start()
    try:
        partitions = [
            TopicPartition(EVENTS_TOPIC, p)
            for p in sorted(consumer.partitions_for_topic(EVENTS_TOPIC) or ())
        ]
        consumer.assign(partitions)
        await consumer.seek_to_end(*partitions)
        for tp in partitions:
            await consumer.position(tp)  # the end as it is now, before saying ready
        if ready is not None:
            ready.set()
        while not stop.is_set():
            batch = await consumer.getmany(timeout_ms=250)
            for records in batch.values():
                for record in records:
                    if record.value is None or SNAPSHOT_REQUESTED.encode() not in record.value:
                        continue
                    with contextlib.suppress(ValueError):
                        request = json.loads(record.value)
                        replies = generator.answer(request)
                        answers.extend(replies)
                        print(
                            f"answering {request.get('event_id')}: {len(replies)} "
                            f"{request.get('source')} snapshots"
                            + (f" at {request['site']}" if request.get("site") else ""),
                            file=out, flush=True,
                        )  # fmt: skip
    finally:
        await consumer.stop()


def run_simulation(
    settings: Settings,
    *,
    rate: float = 200.0,
    skus: int = 1000,
    sites: int = 4,
    duration: float | None = None,
    seed: int | None = None,
) -> None:
    """Produce simulated traffic until ``duration`` seconds pass (None/0: until Ctrl-C/SIGTERM)."""
    if rate <= 0:
        raise ValueError("rate must be positive")
    generator = TrafficGenerator(skus=skus, sites=sites, seed=seed)
    summary = SimulationSummary()
    print(
        f"simulating WMS/ERP traffic into {settings.bootstrap_servers}: {rate:g}/s, "
        f"{skus} skus (hottest {generator.skus[0]}), sites {', '.join(generator.sites)}"
        + (f", for {duration:g}s" if duration else ", until Ctrl-C"),
        flush=True,
    )

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        answers: deque[SimMessage] = deque()
        listening = asyncio.create_task(
            answer_requests(settings.bootstrap_servers, generator, answers, stop)
        )
        try:
            await produce(
                settings.bootstrap_servers,
                generator,
                rate=rate,
                duration=duration or None,
                stop=stop,
                summary=summary,
                answers=answers,
            )
        finally:
            stop.set()
            with contextlib.suppress(Exception):
                await listening
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.remove_signal_handler(sig)

    try:
        asyncio.run(main())
    finally:
        summary.finished = time.monotonic()
        if summary.total:
            print(summary.render(), flush=True)
