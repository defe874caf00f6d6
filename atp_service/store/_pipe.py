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

The connection is an ordinary one of the client's pool (its URL, password, TLS, database
and timeouts), held while it works. A reply slower than the pool's socket timeout fails
every call then waiting on it with redis-py's ``TimeoutError``. A connection found broken
(Redis restarted, say, while the line sat idle) is replaced and its waiting calls are sent
once more on the new one, as redis-py retries a pipeline; the scripts sent this way may
run twice safely (a reservation's idempotency key answers the first outcome, and a
transition done is not done again). A second break
fails them with redis-py's ``ConnectionError``. A call Redis answers ``NOSCRIPT`` (it lost
its scripts in a restart or a failover) goes again as text (``EVAL``), which caches the
script again, on the same connection. A client whose connections are not socket
streams (fakeredis) gets the batcher instead.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import Sequence
from typing import Any

import redis.asyncio as aioredis
from redis.asyncio.connection import AbstractConnection
from redis.commands.core import AsyncScript
from redis.exceptions import ConnectionError, NoScriptError, ResponseError

from atp_service.store._batching import ScriptBatcher, settle

#: A call written and not answered yet: its future, the call, whether it is a resend, and
#: whether it went as text (EVAL) rather than by digest (EVALSHA).
_Waiting = tuple[asyncio.Future[Any], AsyncScript, Sequence[Any], Sequence[Any], bool, bool]


#: Calls written together at most: a turn's calls go out in one write (a system call costs
#: tens of µs on a busy host) unless this many are waiting, which go at once so Redis can
#: start on them while the process parses the rest of the turn's requests.
FLUSH_AT = 8


class _Line:
    """One connection and the calls written to it, in order, whose replies are still due."""

    def __init__(self, connection: AbstractConnection, writer: asyncio.StreamWriter) -> None:
        self.connection = connection
        self.writer = writer
        self.waiting: deque[_Waiting] = deque()
        self.reader: asyncio.Task[None] | None = None
        self.broken = False
        self.released = False
        self.unsent: list[bytes] = []
        self.unsent_calls = 0
        self.flush_scheduled = False

    def flush(self) -> None:
        self.flush_scheduled = False
        if self.unsent:
            self.writer.writelines(self.unsent)
            self.unsent = []
            self.unsent_calls = 0

    def usable(self) -> bool:
        return (
            not self.broken
            and self.connection.is_connected
            and not self.writer.transport.is_closing()
        )


class ScriptPipe:
    """``call(script, keys, args)``: the script's reply, the call pipelined with the others."""

    def __init__(self, client: aioredis.Redis) -> None:
        self._pool = client.connection_pool
        self._line: _Line | None = None
        self._opening = asyncio.Lock()
        self._fallback: ScriptBatcher | None = None
        self._client = client
        self._tasks: set[asyncio.Future[None]] = set()

    def _spawn(self, future: asyncio.Future[Any], awaitable: Any) -> None:
        """Settle ``future`` with ``awaitable`` in a task of its own (kept until done)."""
        task = asyncio.ensure_future(settle(future, awaitable))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def call(self, script: AsyncScript, keys: Sequence[Any], args: Sequence[Any]) -> Any:
        return await self._call(script, keys, args, resent=False)

    async def _call(
        self,
        script: AsyncScript,
        keys: Sequence[Any],
        args: Sequence[Any],
        *,
        resent: bool,
        by_text: bool = False,
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
        line.waiting.append((future, script, keys, args, resent, by_text))
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
            connection = await self._pool.get_connection()  # type: ignore[no-untyped-call]
            writer = getattr(connection, "_writer", None)
            if not isinstance(writer, asyncio.StreamWriter):
                await self._pool.release(connection)
                self._fallback = ScriptBatcher(self._client)
                return None
            self._line = _Line(connection, writer)
            return self._line

    async def _release(self, line: _Line) -> None:
        """Give a broken line's connection back to the pool (which reopens it when lent)."""
        if line.released:
            return
        line.released = True
        with contextlib.suppress(Exception):
            await line.connection.disconnect(nowait=True)
        await self._pool.release(line.connection)

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
                    for future, script, keys, args, resent, by_text in waiting:
                        if future.done():
                            continue
                        if not isinstance(exc, Exception):
                            future.cancel()
                        elif resend and not resent:
                            again = self._call(script, keys, args, resent=True, by_text=by_text)
                            self._spawn(future, again)
                        else:
                            future.set_exception(exc)
                    if not isinstance(exc, Exception):
                        raise
                    return
                future, script, keys, args, resent, by_text = line.waiting.popleft()
                if future.done():  # its caller went away; the reply is read all the same
                    continue
                if isinstance(reply, NoScriptError) and not by_text:
                    # Redis lost its script cache (a restart, a failover): sent again as text.
                    self._spawn(future, self._call(script, keys, args, resent=resent, by_text=True))
                elif isinstance(reply, Exception):
                    future.set_exception(reply)
                else:
                    future.set_result(reply)
        finally:
            line.reader = None
            if line.broken:
                if self._line is line:
                    self._line = None
                await self._release(line)
