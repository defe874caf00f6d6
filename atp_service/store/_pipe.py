"""Script calls written to Redis as they are made, pipelined on a connection of their own.

The API's reservation and transition scripts used to go out as one pipeline per turn of
the event loop (``_batching.ScriptBatcher``): every request of a turn queued its call, the
pipeline went at the next turn, and the process then waited for all of its answers while
Redis ran them one after the other. Under load the two took turns, the API idle while
Redis ran a batch and Redis idle while the API handled the answers and parsed the next
requests: a reservation phase ran the API at 60-80 % of a core with nothing else saturated,
at the same throughput whatever the number of clients (see docs/benchmarks.md).

``ScriptPipe`` writes the calls (``EVALSHA``) to a connection of its own as they come: a
turn's calls in one write at the end of that turn, or at once when ``FLUSH_AT`` are waiting,
so Redis starts on them while the process parses the turn's other requests; one reader
task hands the replies, which come in order, to their callers. No pool checkout, pipeline
object or write task per call either. In a reservation phase (docs/benchmarks.md) the API's
CPU per reservation fell from 606-656 to 518-545 µs and throughput rose by a fifth.

The connection is an ordinary one of a pool (the client's, or on a Redis Cluster one
node's: ``_cluster.NodeScripts`` keeps a pipe per primary), with its URL, password, TLS,
database and timeouts, held while it works. A reply slower than the pool's socket timeout
fails every call then waiting on it with redis-py's ``TimeoutError``. A connection found
broken (Redis restarted, say, while the line sat idle) is replaced and its waiting calls
are sent once more on the new one, as redis-py retries a pipeline; the scripts sent this
way may run twice safely (a reservation's idempotency key answers the first outcome, and a
transition done is not done again). A second break fails them with redis-py's
``ConnectionError``. A call Redis answers ``NOSCRIPT`` (it lost its scripts in a restart or
a failover) goes again as text (``EVAL``), which caches the script again, on the same
connection. A client whose connections are not socket streams (fakeredis) gets the batcher
instead.

**Waiting for replicas** (``ReplicaWait``, ``ATP_REDIS_WAIT_REPLICAS``): ``WAIT n timeout``
counts the writes of its own connection, so it must follow the scripts on theirs. Each
write of calls ends with one ``WAIT``, and a call is answered only once the ``WAIT`` after
it is: with at least ``n`` replicas, its reply; with fewer, ``ReplicasBehind`` (the write
stands on the primary: the API answers 503 and a retry with the same idempotency key finds
it). One ``WAIT`` covers every call written before it (a group commit), so its cost is one
replication round trip per write, not per call.

**ASK** (a slot being migrated on a Cluster): a call may be sent with ``asking``, which
writes ``ASKING`` right before it on the same connection, as Redis requires.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import redis.asyncio as aioredis
from redis.asyncio.connection import AbstractConnection
from redis.commands.core import AsyncScript
from redis.exceptions import ConnectionError, NoScriptError, RedisError, ResponseError

from atp_service.store._batching import ScriptBatcher, settle

#: Calls written together at most: a turn's calls go out in one write (a system call costs
#: tens of µs on a busy host) unless this many are waiting, which go at once so Redis can
#: start on them while the process parses the rest of the turn's requests.
FLUSH_AT = 8


class ConnectionSource(Protocol):
    """Where a pipe takes its connection from and gives it back (a redis-py pool, or a
    cluster node's connections)."""

    async def get_connection(self) -> AbstractConnection: ...

    async def release(self, connection: AbstractConnection) -> None: ...


@dataclass(frozen=True, slots=True)
class ReplicaWait:
    """``WAIT replicas timeout_ms`` after every write of calls."""

    replicas: int
    timeout_ms: int


class ReplicasBehind(RedisError):
    """The call ran on the primary, but fewer replicas than asked confirmed it in time."""

    def __init__(self, confirmed: int, wanted: int) -> None:
        super().__init__(f"{confirmed} of {wanted} replicas confirmed the write in time")
        self.confirmed = confirmed
        self.wanted = wanted


@dataclass(slots=True)
class _Waiting:
    """A command written and not answered yet: a call (with what it takes to send it
    again), the ``WAIT`` that ends a write (``future`` None), or an ``ASKING`` whose reply
    is dropped (``script`` None)."""

    future: asyncio.Future[Any] | None
    script: AsyncScript | None = None
    keys: Sequence[Any] = ()
    args: Sequence[Any] = ()
    resent: bool = False
    by_text: bool = False  # sent as text (EVAL) rather than by digest (EVALSHA)
    asking: bool = False


_WAIT_MARK = _Waiting(None)
_ASKING_MARK = _Waiting(None, None)


class _Line:
    """One connection and the commands written to it, in order, whose replies are due."""

    def __init__(
        self,
        connection: AbstractConnection,
        writer: asyncio.StreamWriter,
        wait: ReplicaWait | None,
    ) -> None:
        self.connection = connection
        self.writer = writer
        self.waiting: deque[_Waiting] = deque()
        self.reader: asyncio.Task[None] | None = None
        self.broken = False
        self.released = False
        self.unsent: list[bytes] = []
        self.unsent_calls = 0
        self.flush_scheduled = False
        self.wait = wait
        #: Calls answered by Redis whose ``WAIT`` has not been answered yet, with the reply.
        self.unconfirmed: list[tuple[asyncio.Future[Any], Any]] = []
        self._wait_command = (
            connection.pack_command("WAIT", wait.replicas, wait.timeout_ms) if wait else []
        )

    def flush(self) -> None:
        self.flush_scheduled = False
        if self.unsent:
            if self.wait is not None and self.unsent_calls:
                self.unsent += self._wait_command
                self.waiting.append(_WAIT_MARK)
            self.writer.writelines(self.unsent)
            self.unsent = []
            self.unsent_calls = 0

    def usable(self) -> bool:
        return (
            not self.broken
            and self.connection.is_connected
            and not self.writer.transport.is_closing()
        )


class _PoolSource:
    """A redis-py connection pool as a ``ConnectionSource``."""

    def __init__(self, pool: Any) -> None:
        self._pool = pool

    async def get_connection(self) -> AbstractConnection:
        connection: AbstractConnection = await self._pool.get_connection()
        return connection

    async def release(self, connection: AbstractConnection) -> None:
        await self._pool.release(connection)


class ScriptPipe:
    """``call(script, keys, args)``: the script's reply, the call pipelined with the others."""

    def __init__(
        self,
        client: aioredis.Redis | None,
        *,
        source: ConnectionSource | None = None,
        wait: ReplicaWait | None = None,
    ) -> None:
        if source is None:
            if client is None:
                raise ValueError("a ScriptPipe needs a client or a connection source")
            source = _PoolSource(client.connection_pool)
        self._source = source
        self._line: _Line | None = None
        self._opening = asyncio.Lock()
        self._fallback: ScriptBatcher | None = None
        self._client = client
        self._wait = wait
        self._tasks: set[asyncio.Future[None]] = set()

    def _spawn(self, future: asyncio.Future[Any], awaitable: Any) -> None:
        """Settle ``future`` with ``awaitable`` in a task of its own (kept until done)."""
        task = asyncio.ensure_future(settle(future, awaitable))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def call(
        self, script: AsyncScript, keys: Sequence[Any], args: Sequence[Any], *, asking: bool = False
    ) -> Any:
        return await self._call(script, keys, args, resent=False, asking=asking)

    async def _call(
        self,
        script: AsyncScript,
        keys: Sequence[Any],
        args: Sequence[Any],
        *,
        resent: bool,
        by_text: bool = False,
        asking: bool = False,
    ) -> Any:
        if self._fallback is not None:
            return await self._fallback.call(script, keys, args)
        line = self._line
        if line is None or not line.usable():
            line = await self._open()
            if line is None:  # not a socket connection: the batcher does it
                assert self._fallback is not None
                return await self._fallback.call(script, keys, args)
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        # Packed before anything is queued: a DataError (an argument Redis cannot carry)
        # is this caller's alone.
        # EVAL (the text) when Redis has lost the script: it runs it and caches it again.
        command = ("EVAL", script.script) if by_text else ("EVALSHA", script.sha)
        packed = line.connection.pack_command(*command, len(keys), *keys, *args)
        if asking:
            line.unsent += line.connection.pack_command("ASKING")
            line.waiting.append(_ASKING_MARK)
        line.waiting.append(_Waiting(future, script, keys, args, resent, by_text, asking))
        line.unsent += packed
        line.unsent_calls += 1
        if line.unsent_calls >= FLUSH_AT:
            line.flush()
        elif not line.flush_scheduled:
            line.flush_scheduled = True
            asyncio.get_running_loop().call_soon(line.flush)
        if line.reader is None:
            line.reader = asyncio.ensure_future(self._read(line))
        return await future

    async def _open(self) -> _Line | None:
        async with self._opening:
            line = self._line
            if line is not None and line.usable():
                return line
            if line is not None:
                self._line = None
                line.broken = True
                if line.reader is None:  # else its reader gives it back when done
                    await self._release(line)
            connection = await self._source.get_connection()
            if not connection.is_connected:
                try:
                    await connection.connect()  # type: ignore[no-untyped-call]
                except BaseException:
                    with contextlib.suppress(Exception):
                        await connection.disconnect()
                    await self._source.release(connection)
                    raise
            writer = getattr(connection, "_writer", None)
            if not isinstance(writer, asyncio.StreamWriter):
                await self._source.release(connection)
                if self._client is None:
                    raise TypeError("a ScriptPipe needs socket connections")
                self._fallback = ScriptBatcher(self._client)
                return None
            self._line = _Line(connection, writer, self._wait)
            return self._line

    async def _release(self, line: _Line) -> None:
        """Give a broken line's connection back to its source (which reopens it when lent)."""
        if line.released:
            return
        line.released = True
        with contextlib.suppress(Exception):
            await line.connection.disconnect(nowait=True)
        await self._source.release(line.connection)

    def _settle_write(self, line: _Line, confirmed: Any) -> None:
        """The ``WAIT`` that ends a write answered: its calls get their replies, or fail."""
        assert line.wait is not None
        unconfirmed, line.unconfirmed = line.unconfirmed, []
        behind = (
            None
            if isinstance(confirmed, int) and confirmed >= line.wait.replicas
            else ReplicasBehind(confirmed if isinstance(confirmed, int) else 0, line.wait.replicas)
        )
        for future, reply in unconfirmed:
            if future.done():
                continue
            if behind is None:
                future.set_result(reply)
            else:
                future.set_exception(behind)

    async def _read(self, line: _Line) -> None:
        connection = line.connection
        try:
            while line.waiting:
                try:
                    reply: Any = await connection.read_response()
                except ResponseError as exc:  # this call's error; the connection is fine
                    reply = exc
                except BaseException as exc:
                    # Broken or too slow: nothing more comes on this connection in order.
                    line.broken = True
                    line.unsent = []
                    waiting, line.waiting = line.waiting, deque()
                    resend = isinstance(exc, ConnectionError)
                    # Answered by Redis but not confirmed by replicas: they ran, and are
                    # not sent again; their callers learn the write is not confirmed.
                    for answered, _ in line.unconfirmed:
                        if not answered.done():
                            if isinstance(exc, Exception):
                                answered.set_exception(exc)
                            else:
                                answered.cancel()
                    line.unconfirmed = []
                    for entry in waiting:
                        due = entry.future
                        if due is None or due.done() or entry.script is None:
                            continue
                        if not isinstance(exc, Exception):
                            due.cancel()
                        elif resend and not entry.resent:
                            again = self._call(
                                entry.script, entry.keys, entry.args,
                                resent=True, by_text=entry.by_text, asking=entry.asking,
                            )  # fmt: skip
                            self._spawn(due, again)
                        else:
                            due.set_exception(exc)
                    if not isinstance(exc, Exception):
                        raise
                    return
                entry = line.waiting.popleft()
                if entry is _WAIT_MARK:
                    self._settle_write(line, reply)
                    continue
                if entry is _ASKING_MARK:
                    continue
                caller = entry.future
                assert caller is not None and entry.script is not None
                if caller.done():  # its caller went away; the reply is read all the same
                    continue
                if isinstance(reply, NoScriptError) and not entry.by_text:
                    # Redis lost its script cache (a restart, a failover): sent again as text.
                    again = self._call(
                        entry.script, entry.keys, entry.args,
                        resent=entry.resent, by_text=True, asking=entry.asking,
                    )  # fmt: skip
                    self._spawn(caller, again)
                elif isinstance(reply, Exception):
                    caller.set_exception(reply)
                elif line.wait is not None:
                    line.unconfirmed.append((caller, reply))
                else:
                    caller.set_result(reply)
        finally:
            line.reader = None
            if line.broken:
                if self._line is line:
                    self._line = None
                await self._release(line)
