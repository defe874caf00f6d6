"""The Redis adapter: folds events, reads positions, keeps policies, feeds the outbox relay."""

from __future__ import annotations

import asyncio
import json
import time
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from hashlib import blake2b
from importlib import resources
from typing import Any, cast

import orjson
import redis.asyncio as aioredis
from redis.asyncio.cluster import RedisCluster
from redis.commands.core import AsyncScript
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError, RedisClusterException, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from atp_service.domain import (
    Bucket,
    ChannelPolicy,
    InventoryDelta,
    InventorySnapshot,
    ItemSite,
    ItemSitePosition,
    SiteAttributes,
    SiteBook,
)
from atp_service.store import keys as k
from atp_service.store._cluster import NodeScripts, connect_cluster
from atp_service.store._packing import with_hiredis_packing
from atp_service.store._pipe import ReplicaWait, ScriptPipe
from atp_service.store.applied import BEHIND, AppliedOffsets, Origin
from atp_service.store.keys import KeySpace
from atp_service.store.reservation_keys import consumed_marks, hold, reservation_keys

_EPOCH = date(1970, 1, 1)
_BUCKET_CODES = {
    Bucket.ON_HAND: k.F_ON_HAND,
    Bucket.ALLOCATED: k.F_ALLOCATED,
    Bucket.QUARANTINED: k.F_QUARANTINED,
    Bucket.IN_TRANSIT: "it",
}

#: De-duplication chunks per hash-tag group and generation (``ATP_DEDUP_CHUNKS``).
DEFAULT_DEDUP_CHUNKS = 1024

#: Errors that mean "Redis is not there right now"; callers turn them into 503 / retry.
#: (A cluster client's ``RedisClusterException``, raised when no node serves a slot or none
#: answers, is not a ``RedisError``.)
UNAVAILABLE_ERRORS = (
    RedisConnectionError, RedisTimeoutError, ConnectionError, OSError, RedisClusterException,
)  # fmt: skip


class StoreUnavailable(Exception):
    """Redis could not be reached within the configured timeout."""


#: The service's Redis client: one Redis (or primary), or a Redis Cluster.
RedisClient = aioredis.Redis | RedisCluster


def connect(
    url: str, *, timeout: float, max_connections: int, cluster: bool = False
) -> RedisClient:
    """A client whose calls fail fast in an outage; its pool waits for a free connection.

    With ``cluster``, ``url`` names one or more seed nodes, comma-separated, and the client
    is redis-py's ``RedisCluster`` (``max_connections`` per node).
    """
    if cluster:
        return connect_cluster(url, timeout=timeout, max_connections=max_connections)
    if "," in url:
        raise ValueError(f"{url!r} names several Redis nodes; a cluster client is needed")
    pool = aioredis.BlockingConnectionPool.from_url(
        url,
        max_connections=max_connections,
        timeout=timeout,
        socket_timeout=timeout,
        socket_connect_timeout=timeout,
        health_check_interval=5,
        decode_responses=True,
    )
    return aioredis.Redis(connection_pool=with_hiredis_packing(pool))


def replica_wait(replicas: int, timeout_ms: int) -> ReplicaWait | None:
    """What an HTTP write waits for (``ATP_REDIS_WAIT_REPLICAS``), or None for nothing."""
    return ReplicaWait(replicas, timeout_ms) if replicas > 0 else None


def epoch_day(value: date) -> int:
    return (value - _EPOCH).days


def date_of_epoch_day(day: int) -> date:
    return date.fromordinal(_EPOCH.toordinal() + day)


def _load_lua(name: str, libraries: Sequence[str] = ("_lib.lua",)) -> str:
    lua = resources.files("atp_service.store") / "lua"
    return "\n".join([*((lua / lib).read_text() for lib in libraries), (lua / name).read_text()])


#: What fold.lua is loaded with (it consumes reservations' holds).
FOLD_LIBRARIES = ("_lib.lua", "_holds.lua")

#: One script call: the script, its KEYS and its ARGV.
ScriptCall = tuple[AsyncScript, Sequence[Any], Sequence[Any]]


#: The channel name of ``availability.changed`` events that speak for every channel without
#: a policy of its own: they all sell with the default policy, so they share one ATP. Not a
#: valid channel code, so it never collides with a real channel.
UNLISTED_CHANNELS = "*"
DEFAULT_POLICY = ChannelPolicy()


@dataclass(frozen=True, slots=True)
class PolicyBook:
    """The channel policies in force, with their encoding for the Lua scripts made once."""

    policies: dict[str, ChannelPolicy]
    version: int = 0
    lua_json: str = field(default="", compare=False)
    _channel_json: dict[str, str] = field(default_factory=dict, compare=False, repr=False)
    #: Who put each channel's policy in force (channels an admin changed; not seeded ones).
    changes: dict[str, PolicyChange] = field(default_factory=dict, compare=False, repr=False)

    @classmethod
    def of(
        cls,
        policies: dict[str, ChannelPolicy],
        version: int = 0,
        changes: dict[str, PolicyChange] | None = None,
    ) -> PolicyBook:
        encoded = json.dumps(
            [
                {
                    "c": name,
                    "s": list(p.sites) if p.sites is not None else None,
                    "ss": p.safety_stock,
                    "sh": p.share,
                    "it": 1 if p.include_in_transit else 0,
                    "hz": p.in_transit_horizon_days,
                }
                for name, p in [*sorted(policies.items()), (UNLISTED_CHANNELS, DEFAULT_POLICY)]
            ],
            separators=(",", ":"),
        )
        return cls(
            policies=dict(policies), version=version, lua_json=encoded, changes=changes or {}
        )

    def policy(self, channel: str) -> ChannelPolicy:
        """A channel without a policy sells from every site with no restriction."""
        return self.policies.get(channel, DEFAULT_POLICY)

    def channel_lua_json(self, channel: str) -> str:
        """The encoding of ``{channel: its policy}`` alone (reserve.lua), made once per book."""
        encoded = self._channel_json.get(channel)
        if encoded is None:
            encoded = PolicyBook.of({channel: self.policy(channel)}).lua_json
            if len(self._channel_json) < 1024:  # channel names come from requests
                self._channel_json[channel] = encoded
        return encoded


#: On a Cluster, how long a relay's read of the outbox pauses when every stream is empty
#: (each stream its own slot: no one blocking read can wait on all of them).
CLUSTER_OUTBOX_POLL_MS = 20

#: The status of an event whose fold raised inside the script (the others went on).
FOLD_ERROR = "error"
#: The status of an event not folded because Redis holds less of its partition than the
#: worker recorded there (store/applied.py): it is read again from what Redis holds.
FOLD_BEHIND = BEHIND
#: Events folded by one script call at most: each call blocks Redis while it runs.
_MAX_EVENTS_PER_CALL = 200
#: De-duplication chunks outlive their generation by this much (clock differences).
_DEDUP_MARGIN_MS = 3_600_000


@dataclass(frozen=True, slots=True)
class FoldOutcome:
    status: str  # folded | unchanged | duplicate | stale | replayed | error | behind
    version: int
    changes_emitted: int
    drift: dict[str, Any] | None
    error: str | None = None
    #: The event was the allocation that consumed its reservation (every line allocated).
    reservation_consumed: bool = False


@dataclass(slots=True)
class _FoldCall:
    """One script call: the events of one group (or one consumption), their keys and
    fingerprints, and where they stand in the batch."""

    group: int
    keys: list[str]
    bodies: list[dict[str, Any]]
    fingerprints: bytes
    indexes: list[int]
    encoded: bytes = b""  # the bodies as ARGV[1], made with the rest (not while Redis waits)
    #: The Kafka partitions of the events (their bodies' "p" is 1 + the index here).
    partitions: list[str] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class PreparedFold:
    """A batch ready to fold (``RedisStore.prepare_fold``)."""

    events: Sequence[InventoryDelta | InventorySnapshot]
    generation: int
    calls: list[_FoldCall]
    sites: frozenset[str]
    origins: Sequence[Origin] | None = None


def _from_partition(call: _FoldCall, body: dict[str, Any], origin: Origin) -> None:
    """Tell fold.lua where the event was read (ARGV[6], the body's "p" and "o")."""
    partitions = call.partitions
    # A call's events come from few partitions, mostly the one of the event before.
    if partitions and partitions[-1] == origin.partition:
        body["p"] = len(partitions)
    elif origin.partition in partitions:
        body["p"] = partitions.index(origin.partition) + 1
    else:
        partitions.append(origin.partition)
        body["p"] = len(partitions)
    body["o"] = origin.offset


def _expected_json(call: _FoldCall, applied: AppliedOffsets | None) -> bytes:
    """ARGV[6] of fold.lua: each partition of the call, with the offset the worker knows
    the group recorded of it."""
    if applied is None:
        return orjson.dumps([[p, -1] for p in call.partitions])
    return orjson.dumps([[p, applied.expected(call.group, p)] for p in call.partitions])


_OCCURRED_MS: dict[str, int | None] = {}
_EPOCH_UTC = datetime(1970, 1, 1, tzinfo=UTC)
_MS = timedelta(milliseconds=1)


def occurred_ms(text: str) -> int | None:
    """Epoch ms of an RFC 3339 ``occurred_at`` (None if unreadable). Events of a batch share a
    handful of times: the ones already read are remembered."""
    ms = _OCCURRED_MS.get(text, -1)
    if ms != -1:
        return ms
    try:
        ms = (datetime.fromisoformat(text.upper()) - _EPOCH_UTC) // _MS
    except (ValueError, TypeError):  # not a time, or one without an offset
        ms = None
    if len(_OCCURRED_MS) >= 4096:
        _OCCURRED_MS.clear()
    _OCCURRED_MS[text] = ms
    return ms


def _fold_body(event: InventoryDelta | InventorySnapshot) -> dict[str, Any]:
    """An event as fold.lua reads it."""
    body: dict[str, Any] = {
        "id": event.event_id,
        "src": event.source.value,
        "seq": event.source_seq if event.source_seq is not None else -1,
        "sku": event.sku,
        "site": event.site,
        "corr": event.correlation_id,
    }
    oa = occurred_ms(event.occurred_at)
    if oa is not None:
        body["oa"] = oa
    if isinstance(event, InventoryDelta):
        body["k"] = "d"
        body["b"] = _BUCKET_CODES[event.bucket]
        body["d"] = event.delta
        if event.bucket is Bucket.IN_TRANSIT:
            body["eta"] = str(epoch_day(event.eta)) if event.eta is not None else "-"
        if event.reservation_id is not None:
            body["rid"] = event.reservation_id
    else:
        body["k"] = "s"
        body["q"] = {_BUCKET_CODES[b]: qty for b, qty in event.quantities.items()}
        if Bucket.IN_TRANSIT in event.quantities:
            by_eta = event.in_transit_by_eta or {None: event.quantities[Bucket.IN_TRANSIT]}
            body["tq"] = {
                (str(epoch_day(eta)) if eta is not None else "-"): qty
                for eta, qty in by_eta.items()
                if qty != 0
            }
    return body


@dataclass(frozen=True, slots=True)
class OutboxEntry:
    """One outbox stream entry: one event, or the events of one fold call, in order."""

    stream: str
    entry_id: str
    records: list[tuple[str, str]]  # (message key, JSON value)


def outbox_records(fields: dict[str, str]) -> list[tuple[str, str]]:
    """The (key, value) records of an outbox entry's fields (``emit`` in lua/_lib.lua)."""
    batch = fields.get("b")
    if batch is None:
        return [(fields["k"], fields["v"])]
    return [tuple(line.split("\x1f", 1)) for line in batch.split("\n")]  # type: ignore[misc]


@dataclass(frozen=True, slots=True)
class PolicyChange:
    """Who put a channel's policy (or a site's attributes) in force, and when (an admin's
    PUT; one seeded from ``ATP_CHANNELS_FILE`` or ``ATP_SITES_FILE`` has none)."""

    changed_by: str
    changed_at_ms: int
    #: The X-Correlation-ID of that request: the availability.changed events the change
    #: causes (store/reevaluation.py) carry it.
    correlation_id: str | None = None


def without_errors(replies: list[Any]) -> list[Any]:
    """The replies of ``RedisStore.run_scripts``, raising the first error among them (as a
    pipeline's ``execute()`` would), once every call was made."""
    for reply in replies:
        if isinstance(reply, Exception):
            raise reply
    return replies


def policy_to_json(policy: ChannelPolicy, change: PolicyChange | None = None) -> str:
    """A policy record: the policy, and who put it in force (``changed_by``, ``changed_at``
    in epoch ms) when an admin did."""
    record: dict[str, Any] = {
        "sites": list(policy.sites) if policy.sites is not None else None,
        "safety_stock": policy.safety_stock,
        "share": policy.share,
        "include_in_transit": policy.include_in_transit,
        "in_transit_horizon_days": policy.in_transit_horizon_days,
    }
    if change is not None:
        record["changed_by"] = change.changed_by
        record["changed_at"] = change.changed_at_ms
        if change.correlation_id is not None:
            record["correlation_id"] = change.correlation_id
    return json.dumps(record)


def policy_change_from_json(text: str) -> PolicyChange | None:
    body = json.loads(text)
    by = body.get("changed_by")
    if by is None:
        return None
    corr = body.get("correlation_id")
    return PolicyChange(str(by), int(body.get("changed_at", 0)), str(corr) if corr else None)


def policy_from_json(text: str) -> ChannelPolicy:
    body = json.loads(text)
    sites = body.get("sites")
    return ChannelPolicy(
        sites=tuple(sites) if sites is not None else None,
        safety_stock=body["safety_stock"],
        share=body["share"],
        include_in_transit=body["include_in_transit"],
        in_transit_horizon_days=body["in_transit_horizon_days"],
    )


def _site_json(attributes: SiteAttributes, change: PolicyChange | None = None) -> str:
    """A site record: its attributes, and who put them in force when an admin did (as in a
    policy record: ``changed_by``, ``changed_at`` in epoch ms)."""
    record = attributes.to_mapping()
    if change is not None:
        record["changed_by"] = change.changed_by
        record["changed_at"] = change.changed_at_ms
    return json.dumps(record, separators=(",", ":"))


@dataclass(frozen=True, slots=True)
class SiteTable:
    """The sites' attributes as stored: the book the promise plans with, and who put each
    site's attributes in force (none for a site seeded from ``ATP_SITES_FILE``)."""

    book: SiteBook
    changes: dict[str, PolicyChange] = field(default_factory=dict)

    @property
    def version(self) -> int:
        return self.book.version


def position_from_hash(raw: dict[str, str]) -> ItemSitePosition:
    """Decode a position hash (see keys.py for the field names)."""
    in_transit: dict[date | None, int] = {}
    sources: dict[str, int] = {}
    for name, value in raw.items():
        if name.startswith(k.IN_TRANSIT_PREFIX):
            eta = name[len(k.IN_TRANSIT_PREFIX) :]
            in_transit[None if eta == "-" else date_of_epoch_day(int(eta))] = int(value)
        elif name.startswith(k.SOURCE_PREFIX):
            sources[name[len(k.SOURCE_PREFIX) :]] = int(value)
    ss = raw.get(k.F_SAFETY_STOCK)
    return ItemSitePosition(
        on_hand=int(raw.get(k.F_ON_HAND, 0)),
        allocated=int(raw.get(k.F_ALLOCATED, 0)),
        quarantined=int(raw.get(k.F_QUARANTINED, 0)),
        reserved=int(raw.get(k.F_RESERVED, 0)),
        in_transit_by_eta=in_transit,
        safety_stock_override=int(ss) if ss is not None else None,
        version=int(raw.get(k.F_VERSION, 0)),
        as_of_ms=int(raw.get(k.F_AS_OF_MS, 0)),
        sources=dict(sorted(sources.items())),
    )


class RedisStore:
    """The one adapter between the service and Redis. Receives its client; builds none.

    ``client`` is one Redis (or primary) or a Redis Cluster (``RedisCluster``); on a Cluster
    every script call touches one slot (tests/integration/test_single_slot.py), and the
    scripts of a request go to their primaries' pipes (``_cluster.NodeScripts``). With
    ``wait``, a script call is answered once that many replicas have it (``_pipe``).
    ``call_timeout`` bounds each script call of a request (a Cluster's client retries
    inside; a failover must be a quick 503, not a hang).
    """

    def __init__(
        self,
        client: RedisClient,
        keys: KeySpace,
        *,
        dedup_window_seconds: int,
        dedup_chunks: int = DEFAULT_DEDUP_CHUNKS,
        wait: ReplicaWait | None = None,
        call_timeout: float | None = None,
    ):
        self.redis = client
        self.keys = keys
        self.cluster = isinstance(client, RedisCluster)
        self._window = dedup_window_seconds * 1000
        self._window_ms = str(self._window)
        self._dedup_chunks = dedup_chunks
        self.wait = wait
        self._call_timeout = call_timeout
        self._scripts: ScriptPipe | NodeScripts = (
            NodeScripts(client, wait=wait)
            if isinstance(client, RedisCluster)
            else ScriptPipe(client, wait=wait)
        )
        #: For calls no replica needs to confirm (reads, rate limits): without WAIT.
        self._unwaited: ScriptPipe | NodeScripts = self._scripts
        if wait is not None:
            self._unwaited = (
                NodeScripts(client) if isinstance(client, RedisCluster) else ScriptPipe(client)
            )
        #: Each registered script's file, by its SHA1 (for logs and tests).
        self.script_names: dict[str, str] = {}
        #: Told, right away, of the positions this process's own scripts changed (the API's
        #: in-process copy: a read after a write sees the write). Lines as ``announce``.
        self.own_changes: list[Callable[[str], None]] = []
        self._group_prefixes = [f"{k.PREFIX}:{k.tag(g)}:" for g in range(keys.groups)]
        self._fold: AsyncScript = self.register_script("fold.lua", FOLD_LIBRARIES)
        self._set_safety_stock = self.register_script("set_safety_stock.lua")
        self._put_versioned_script = self.register_script("put_versioned.lua")
        self._migrate_config = self.register_script("migrate_config.lua")

    def changed_here(self, announced: Any) -> None:
        """Hand what a script of this process announced to the ``own_changes`` listeners."""
        if announced and self.own_changes:
            text = announced.decode() if isinstance(announced, bytes) else str(announced)
            for listener in self.own_changes:
                listener(text)

    async def run_script(
        self,
        script: AsyncScript,
        keys: Sequence[Any],
        args: Sequence[Any],
        *,
        replicated: bool = True,
    ) -> Any:
        """Run ``script``, written at once and pipelined with other requests' calls (_pipe.py),
        on the primary of its slot on a Cluster; answered once replicated when ``wait``
        (unless not ``replicated``: a read, a rate limit, whose loss costs nothing)."""
        scripts = self._scripts if replicated else self._unwaited
        if self._call_timeout is None:
            return await scripts.call(script, keys, args)
        async with asyncio.timeout(self._call_timeout):
            return await scripts.call(script, keys, args)

    async def run_scripts(self, calls: Sequence[ScriptCall]) -> list[Any]:
        """Run many script calls in one pipelined round trip (on a Cluster, one pipeline per
        primary, by the cluster client), each reply or error in its place. Not waited for
        by replicas: for the worker and the sweepers, not for requests.

        EVALSHA itself: a script called through the pipeline would make redis-py ask Redis
        whether the script exists first, a round trip before the batch is even written. The
        calls a Redis answers NOSCRIPT (it lost its scripts: a restart, a failover) did not
        run: the scripts are loaded again and those calls sent again, in their order.
        """
        replies: list[Any] = [None] * len(calls)
        todo = list(range(len(calls)))
        for attempt in range(2):
            pipe = self.redis.pipeline(transaction=False)
            for i in todo:
                script, keys, args = calls[i]
                pipe.evalsha(script.sha, len(keys), *keys, *args)
            for i, reply in zip(todo, await pipe.execute(raise_on_error=False), strict=True):
                replies[i] = reply
            lost = [i for i in todo if isinstance(replies[i], NoScriptError)]
            if not lost or attempt:
                break
            for script in {id(calls[i][0]): calls[i][0] for i in lost}.values():
                await self.redis.script_load(script.script)
            todo = lost
        return replies

    async def run_scripts_or_raise(self, calls: Sequence[ScriptCall]) -> list[Any]:
        """``run_scripts``, raising the first error a call met (once every call was made)."""
        return without_errors(await self.run_scripts(calls))

    def register_script(self, name: str, libraries: Sequence[str] = ("_lib.lua",)) -> AsyncScript:
        """Load ``lua/<name>`` with the shared helpers prepended (for other adapters' scripts)."""
        script: AsyncScript = self.redis.register_script(_load_lua(name, libraries))
        self.script_names[script.sha] = name
        return script

    async def scan_keys(self, pattern: str, count: int = 1000) -> list[str]:
        """Every key matching ``pattern``: SCAN on the one Redis, or on every primary of a
        Cluster in turn (each a SCAN of its own)."""
        client = self.redis
        if isinstance(client, RedisCluster):
            await client.initialize()
            found: list[str] = []
            for node in client.get_primaries():
                found += [
                    key
                    async for key in client.scan_iter(match=pattern, count=count, target_nodes=node)
                ]
            return found
        return [key async for key in client.scan_iter(match=pattern, count=count)]

    async def migrate_legacy_keys(self) -> None:
        """Move the configuration keys of an older layout (one Redis only) to their place."""
        if self.cluster:
            return
        pairs = [name for pair in k.LEGACY_CONFIG_KEYS.items() for name in pair]
        await self.run_script(self._migrate_config, pairs, [])

    # -- health ----------------------------------------------------------------------------

    async def ping(self) -> bool:
        return bool(await self.redis.ping())

    # -- folding -----------------------------------------------------------------------------

    def prepare_fold(
        self,
        events: Sequence[InventoryDelta | InventorySnapshot],
        origins: Sequence[Origin] | None = None,
    ) -> PreparedFold:
        """Everything a fold needs but Redis, done ahead (no I/O): see ``fold_prepared``.
        ``origins`` (one per event) say where each was read in Kafka (store/applied.py)."""
        generation = self._generation()
        return PreparedFold(
            events=events,
            generation=generation,
            calls=self._fold_calls(events, generation, origins),
            sites=frozenset(event.site for event in events),
            origins=origins,
        )

    async def fold_prepared(
        self, prepared: PreparedFold, book: PolicyBook, applied: AppliedOffsets | None = None
    ) -> list[FoldOutcome]:
        """Fold the prepared events in order, in one pipelined round trip.

        One script call folds the events of one hash-tag group (in their order); an allocated
        delta for a reservation goes alone, in its place in the order. Each event is folded on
        its own: one that fails comes back with status ``error`` and the others go on.

        Events prepared with origins: one at or below the offset its group recorded for its
        partition is ``replayed`` (not folded again); when a group holds less than
        ``applied`` knows it recorded, none of that call's events is folded, each comes back
        ``behind``, and ``applied`` learns what the other calls recorded.
        """
        if not prepared.events:
            return []
        generation = self._generation()
        calls = prepared.calls
        if generation != prepared.generation:  # prepared before a generation began
            calls = self._fold_calls(prepared.events, generation, prepared.origins)
        expires_at = str((generation + 2) * self._window + _DEDUP_MARGIN_MS)
        window = self._window_ms
        policies = book.lua_json
        fold = self._fold
        replies = await self.run_scripts(
            [
                (fold, call.keys,
                 [call.encoded, policies, window, call.fingerprints, expires_at,
                  _expected_json(call, applied)])
                for call in calls
            ]
        )  # fmt: skip
        replies = without_errors(replies)  # the caller then folds one event at a time
        outcomes: list[FoldOutcome | None] = [None] * len(prepared.events)
        for call, flat in zip(calls, replies, strict=True):
            if flat[0] == FOLD_BEHIND:
                for index in call.indexes:
                    outcomes[index] = FoldOutcome(FOLD_BEHIND, 0, 0, None)
                continue
            events = len(call.indexes)
            after = 4 * events + len(call.partitions)  # past the recorded offsets
            if applied is not None:
                recorded = flat[4 * events : after]
                for partition, offset in zip(call.partitions, recorded, strict=True):
                    applied.note(call.group, partition, int(offset))
            consumed = events == 1 and len(flat) > after and flat[after] == "consumed"
            for n, index in enumerate(call.indexes):
                status, version, emitted, detail = flat[4 * n : 4 * n + 4]
                if status == FOLD_ERROR:
                    outcomes[index] = FoldOutcome(FOLD_ERROR, 0, 0, None, error=str(detail))
                else:
                    outcomes[index] = FoldOutcome(
                        str(status), int(version), int(emitted),
                        orjson.loads(detail) if detail else None,
                        reservation_consumed=consumed,
                    )  # fmt: skip
        return outcomes  # type: ignore[return-value]  # one call covers every event

    async def fold_many(
        self,
        events: Sequence[InventoryDelta | InventorySnapshot],
        book: PolicyBook,
        origins: Sequence[Origin] | None = None,
        applied: AppliedOffsets | None = None,
    ) -> list[FoldOutcome]:
        """Fold events in order, in one pipelined round trip; each fold is atomic on its own."""
        return await self.fold_prepared(self.prepare_fold(events, origins), book, applied)

    async def fold(
        self, event: InventoryDelta | InventorySnapshot, book: PolicyBook
    ) -> FoldOutcome:
        [outcome] = await self.fold_many([event], book)
        return outcome

    def _generation(self) -> int:
        return int(time.time() * 1000) // self._window

    def _fold_calls(
        self,
        events: Sequence[InventoryDelta | InventorySnapshot],
        generation: int,
        origins: Sequence[Origin] | None = None,
    ) -> list[_FoldCall]:
        keys, chunks, groups = self.keys, self._dedup_chunks, self.keys.groups
        # The key names of keys.py, spelt out here for speed (tests/unit/test_keys.py checks).
        prefixes = self._group_prefixes
        before, now, after = generation - 1, generation, generation + 1
        calls: list[_FoldCall] = []
        by_group: dict[int, _FoldCall] = {}
        for index, event in enumerate(events):
            ident = f"{event.sku}@{event.site}"
            group = zlib.crc32(ident.encode()) % groups
            digest = blake2b(event.event_id.encode(), digest_size=16).digest()
            chunk = int.from_bytes(digest[12:], "little") % chunks
            prefix = prefixes[group]
            event_keys = [
                f"{prefix}p:{ident}",
                f"{prefix}dr:{ident}",
                f"{prefix}d:{before}:{chunk}",
                f"{prefix}d:{now}:{chunk}",
                f"{prefix}d:{after}:{chunk}",
            ]
            if (
                isinstance(event, InventoryDelta)
                and event.reservation_id is not None
                and event.bucket is Bucket.ALLOCATED
            ):
                # Consumption touches the reservation's hold in this group, and its group's
                # marks of allocated holds (fold.lua's [consumption]); on a single Redis also
                # the reservation's record (another group). Alone, in its place, after what
                # came before it.
                by_group.clear()
                rid = event.reservation_id
                body = _fold_body(event)
                call_keys = [keys.outboxes[group], keys.applied[group], *event_keys,
                             hold(group, rid), consumed_marks(group)]  # fmt: skip
                body["hk"], body["mk"], body["hg"] = 8, 9, group
                if not self.cluster:
                    body["rk"] = 10
                    call_keys += reservation_keys(keys, rid).as_list()
                alone = _FoldCall(group, call_keys, [body], digest[:12], [index])
                calls.append(alone)
                if origins is not None:
                    _from_partition(alone, body, origins[index])
                continue
            call = by_group.get(group)
            if call is None or len(call.indexes) >= _MAX_EVENTS_PER_CALL:
                call = by_group[group] = _FoldCall(
                    group, [keys.outboxes[group], keys.applied[group]], [], b"", []
                )
                calls.append(call)
            body = _fold_body(event)
            call.keys.extend(event_keys)
            call.bodies.append(body)
            call.fingerprints += digest[:12]
            call.indexes.append(index)
            if origins is not None:
                partition, body["o"] = origins[index]
                partitions = call.partitions
                # A call's events come from few partitions, mostly the one of the event before.
                if partitions and partitions[-1] == partition:
                    body["p"] = len(partitions)
                else:
                    _from_partition(call, body, origins[index])
        for call in calls:
            call.encoded = orjson.dumps(call.bodies)
        return calls

    # -- reading -----------------------------------------------------------------------------

    async def read_positions(self, items: Sequence[ItemSite]) -> list[ItemSitePosition]:
        """Positions of many item-sites in one round trip; an unknown item-site is all zeros."""
        pipe = self.redis.pipeline(transaction=False)
        for item in items:
            pipe.hgetall(self.keys.position(item.sku, item.site))
        if self._call_timeout is None:
            raws = await pipe.execute()
        else:  # a request's read: a Cluster's client retries inside, bounded here
            async with asyncio.timeout(self._call_timeout):
                raws = await pipe.execute()
        return [position_from_hash(cast(dict[str, str], raw)) for raw in raws]

    async def last_drift(self, item: ItemSite) -> dict[str, Any] | None:
        """The last disagreement a snapshot found at the item-site (within the window)."""
        raw = await self.redis.get(self.keys.item_site(item.sku, item.site).drift)
        return json.loads(raw) if raw else None

    # -- sites -------------------------------------------------------------------------------

    async def known_sites(self) -> list[str]:
        return sorted(str(site) for site in await self.redis.smembers(k.SITES))

    async def register_sites(self, sites: Sequence[str]) -> None:
        if sites:
            await self.redis.sadd(k.SITES, *sites)

    # -- channel policies and safety stock ---------------------------------------------------

    async def policy_book(self) -> PolicyBook:
        version, raw = await self._read_versioned(k.POLICIES, k.POLICIES_VERSION)
        policies = {name: policy_from_json(text) for name, text in raw.items()}
        changes = {
            name: change
            for name, text in raw.items()
            if (change := policy_change_from_json(text)) is not None
        }
        return PolicyBook.of(policies, version, changes)

    async def policies_version(self) -> int:
        return int(await self.redis.get(k.POLICIES_VERSION) or 0)

    async def put_channel_policy(
        self,
        channel: str,
        policy: ChannelPolicy,
        *,
        changed_by: str,
        correlation_id: str | None = None,
    ) -> int:
        """Store a channel's policy, put in force by ``changed_by`` (the name of the admin's
        API key, kept in the record, with the request's ``correlation_id``); returns the new
        policies version."""
        change = PolicyChange(changed_by, int(time.time() * 1000), correlation_id)
        return await self._put_versioned(
            k.POLICIES, k.POLICIES_VERSION, channel, policy_to_json(policy, change)
        )

    async def seed_channel_policies(self, policies: dict[str, ChannelPolicy]) -> None:
        """Install initial policies for channels that have none yet (an admin's change wins)."""
        await self._seed_versioned(
            k.POLICIES,
            k.POLICIES_VERSION,
            {name: policy_to_json(policy) for name, policy in policies.items()},
        )

    # -- site attributes (the promise's ship nodes) ------------------------------------------

    async def site_table(self) -> SiteTable:
        version, raw = await self._read_versioned(k.SITE_ATTRIBUTES, k.SITE_ATTRIBUTES_VERSION)
        sites = {site: SiteAttributes.from_mapping(json.loads(text)) for site, text in raw.items()}
        changes = {
            site: change
            for site, text in raw.items()
            if (change := policy_change_from_json(text)) is not None
        }
        return SiteTable(SiteBook(sites, version), changes)

    async def site_table_version(self) -> int:
        return int(await self.redis.get(k.SITE_ATTRIBUTES_VERSION) or 0)

    async def put_site(self, site: str, attributes: SiteAttributes, *, changed_by: str) -> int:
        """Store a site's attributes, put in force by ``changed_by`` (the name of the admin's
        API key, kept in the record); returns the new version of the site book."""
        change = PolicyChange(changed_by, int(time.time() * 1000))
        return await self._put_versioned(
            k.SITE_ATTRIBUTES, k.SITE_ATTRIBUTES_VERSION, site, _site_json(attributes, change)
        )

    async def seed_sites(self, sites: dict[str, SiteAttributes]) -> None:
        """Install initial attributes for sites that have none yet (an admin's change wins)."""
        await self._seed_versioned(
            k.SITE_ATTRIBUTES,
            k.SITE_ATTRIBUTES_VERSION,
            {site: _site_json(attributes) for site, attributes in sites.items()},
        )

    # -- versioned tables: a hash of JSON entries and a counter bumped by every change -------

    # The table and its counter share a slot (keys.CONFIG_TAG); a change is a script, so that
    # it goes by the pipe an HTTP write goes by (waited for by replicas with ``wait``).

    async def _read_versioned(self, table: str, version: str) -> tuple[int, dict[str, str]]:
        pipe = self.redis.pipeline(transaction=True)
        pipe.get(version)
        pipe.hgetall(table)
        number, raw = await pipe.execute()
        return int(number or 0), raw

    async def _put_versioned(self, table: str, version: str, name: str, text: str) -> int:
        number = await self.run_script(
            self._put_versioned_script, [table, version], ["put", name, text]
        )
        return int(number)

    async def _seed_versioned(self, table: str, version: str, entries: dict[str, str]) -> None:
        if not entries:
            return
        pairs = [item for name, text in entries.items() for item in (name, text)]
        await self.run_script(self._put_versioned_script, [table, version], ["seed", *pairs])

    async def set_safety_stock(
        self,
        item: ItemSite,
        safety_stock: int | None,
        book: PolicyBook,
        *,
        correlation_id: str,
        change_id: str,
        changed_by: str,
    ) -> int:
        """Set (or with None clear) the item-site's safety-stock override; returns version.

        ``changed_by`` (the name of the admin's API key) is carried by every
        ``availability.changed`` the change causes."""
        ks = self.keys.item_site(item.sku, item.site)
        version, announced = await self.run_script(
            self._set_safety_stock,
            [ks.position, ks.outbox],
            [
                item.sku,
                item.site,
                "" if safety_stock is None else str(safety_stock),
                book.lua_json,
                change_id,
                correlation_id,
                changed_by,
            ],
        )
        self.changed_here(announced)
        return int(version)

    # -- outbox ------------------------------------------------------------------------------

    async def ensure_relay_groups(self) -> None:
        """Create the relay consumer group on every outbox stream (idempotent)."""
        pipe = self.redis.pipeline(transaction=False)
        for stream in self.keys.outboxes:
            pipe.xgroup_create(stream, k.RELAY_GROUP, id="0", mkstream=True)
        for result in await pipe.execute(raise_on_error=False):
            if isinstance(result, ResponseError) and "BUSYGROUP" not in str(result):
                raise result

    async def read_outbox(
        self,
        consumer: str,
        count: int,
        block_ms: int | None,
        *,
        pending: bool = False,
        streams: Sequence[str] | None = None,
    ) -> list[OutboxEntry]:
        """New entries of ``streams`` (all by default) for this relay consumer, or
        (``pending``) those it read but never acknowledged, in their order.

        On one Redis, one XREADGROUP over the streams, blocking up to ``block_ms`` for new
        ones. On a Cluster each stream is in a slot of its own, and one command may not name
        two: one XREADGROUP per stream, pipelined, none blocking; when all come back empty,
        a pause of ``CLUSTER_OUTBOX_POLL_MS`` (at most ``block_ms``) before the answer.
        """
        start = "0" if pending else ">"
        wanted = self.keys.outboxes if streams is None else streams
        if not self.cluster:
            ids: dict[Any, Any] = dict.fromkeys(wanted, start)
            reply = await self.redis.xreadgroup(
                k.RELAY_GROUP, consumer, ids, count=count, block=None if pending else block_ms
            )
            return self._entries(reply)
        pipe = self.redis.pipeline(transaction=False)
        for stream in wanted:
            pipe.xreadgroup(k.RELAY_GROUP, consumer, {stream: start}, count=count)
        entries: list[OutboxEntry] = []
        for reply in await pipe.execute():
            entries += self._entries(reply)
        if not entries and not pending and block_ms:
            await asyncio.sleep(min(block_ms, CLUSTER_OUTBOX_POLL_MS) / 1000)
        return entries

    async def claim_pending(self, streams: Sequence[str], consumer: str) -> int:
        """Make every entry of ``streams`` read and never acknowledged (by a relay that holds
        them no more) this consumer's; returns how many."""
        claimed = 0
        for stream in streams:
            start = "0-0"
            while True:
                reply = await self.redis.xautoclaim(
                    stream, k.RELAY_GROUP, consumer, min_idle_time=0, start_id=start, count=500
                )
                start = str(reply[0])
                claimed += len(reply[1])
                if start == "0-0":
                    break
        return claimed

    @staticmethod
    def _entries(reply: Any) -> list[OutboxEntry]:
        out: list[OutboxEntry] = []
        if isinstance(reply, dict):  # RESP3 shape
            reply = list(reply.items())
        for stream, entries in reply or []:
            for entry_id, fields in entries:
                if fields:  # a pending entry deleted meanwhile comes back empty
                    out.append(OutboxEntry(stream, entry_id, outbox_records(fields)))
        return out

    async def ack_outbox(self, entries: Sequence[OutboxEntry]) -> None:
        """Acknowledge and delete published entries."""
        by_stream: dict[str, list[str]] = {}
        for e in entries:
            by_stream.setdefault(e.stream, []).append(e.entry_id)
        pipe = self.redis.pipeline(transaction=False)
        for stream, ids in by_stream.items():
            pipe.xack(stream, k.RELAY_GROUP, *ids)
            pipe.xdel(stream, *ids)
        await pipe.execute()

    async def outbox_backlog(self) -> int:
        pipe = self.redis.pipeline(transaction=False)
        for stream in self.keys.outboxes:
            pipe.xlen(stream)
        return sum(int(n) for n in await pipe.execute())
