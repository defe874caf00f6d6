"""Thin Faust agents on the inbound topics: take a batch, hand it to the folder, then ack it."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Coroutine, Sequence
from typing import Any, cast

import faust
from faust.types import AgentT, EventT, StreamT

from atp_service import metrics
from atp_service.config import INBOUND_TOPICS
from stream_agents._folding import BatchAbandoned, BatchFolder, InboundMessage

log = logging.getLogger(__name__)

AgentFun = Callable[[StreamT[Any]], Coroutine[Any, Any, None]]


def inbound_topic(app: faust.App, name: str) -> faust.TopicT:
    """An externally owned topic: never declared by us, raw bytes in, nothing dropped."""
    return app.topic(
        name,
        partitions=None,
        key_serializer="raw",
        value_serializer="raw",
        allow_empty=True,  # a null value is bad input for the dead-letter topic, not a skip
    )


def register_agents(
    app: faust.App, folder: BatchFolder, *, batch: int, within_seconds: float = 0.03
) -> list[AgentT[Any]]:
    """One agent per inbound topic, each folding batches of up to ``batch`` messages."""
    return [
        app.agent(inbound_topic(app, name), name=f"fold:{name}")(
            _fold_agent(app, folder, batch, within_seconds)
        )
        for name in INBOUND_TOPICS
    ]


def _fold_agent(app: faust.App, folder: BatchFolder, batch: int, within: float) -> AgentFun:
    async def fold(stream: StreamT[Any]) -> None:
        # take_events acks a batch when the loop asks for the next one, i.e. only after
        # handle() returned: every message in it is folded or dead-lettered by then.
        abandoned = False
        events: Sequence[EventT[Any]]
        async for events in cast(faust.Stream[Any], stream).take_events(batch, within):
            if abandoned:
                # Stopping: folding a later batch before the abandoned one (consumed again
                # after the restart) would break the order per item-site.
                _forget_without_commit(events)
                continue
            messages = [_inbound(event) for event in events]
            done = False
            try:
                await _handle_until_done(folder, messages)
                done = True
            except BatchAbandoned as exc:
                abandoned = True
                log.warning("stopping with messages not folded (%s); they will be redelivered", exc)
            finally:
                if not done:
                    _forget_without_commit(events)
            _record_lag(app, events)

    return fold


async def _handle_until_done(folder: BatchFolder, messages: Sequence[InboundMessage]) -> None:
    """handle() retries outages itself; anything else escaping it is a bug. Never let it kill
    the agent (a dead agent looks like a silently stopped consumer): log and try again."""
    delay = 0.5
    while True:
        try:
            await folder.handle(messages)
            return
        except (BatchAbandoned, asyncio.CancelledError):
            raise
        except Exception:
            log.exception("batch of %d messages failed; retrying in %.1fs", len(messages), delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 10.0)


def _inbound(event: EventT[Any]) -> InboundMessage:
    message = event.message
    return InboundMessage(
        topic=message.topic,
        partition=message.partition,
        offset=message.offset,
        key=message.key,
        value=message.value,
    )


def _forget_without_commit(events: Sequence[EventT[Any]]) -> None:
    """Mark the messages of an unfinished batch as settled *without* recording their offsets.

    Faust commits only offsets the consumer recorded as acked, up to the first gap; the ack
    that ``take_events`` sends after the batch is a no-op for a message already marked, so
    the committed offset stays before these messages and they are consumed again later.
    """
    for event in events:
        event.message.acked = True


def _record_lag(app: faust.App, events: Sequence[EventT[Any]]) -> None:
    last: dict[Any, int] = {}
    for event in events:
        last[event.message.tp] = event.message.offset
    try:
        for tp, offset in last.items():
            highwater = app.consumer.highwater(tp)
            if highwater is not None:
                metrics.CONSUMER_LAG.labels(tp.topic, str(tp.partition)).set(
                    max(0, highwater - offset - 1)
                )
    except Exception:  # lag is a nicety; never let it disturb the fold
        log.debug("consumer lag unavailable", exc_info=True)
