"""The ``sync`` of every availability answer, held in memory and refreshed in the background.

The workers write their sync lag per source into Redis about once a second (store/ops.py);
``follow_sync`` reads those reports every ``SYNC_POLL_SECONDS`` and installs a new
``SyncView``: the ``sync`` object already encoded, so an answer carries it without a Redis
call and without encoding it again (the product page's kept answer is spliced with
``tail``). An answer's ``sync`` is thus at most about two seconds behind the workers' own
measure, and its ``as_of`` says when that measure was taken.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import orjson

from atp_service.domain import Source
from atp_service.domain.reservations import iso_from_ms
from atp_service.store.ops import OpsStore, SourceSync, merge_sync

if TYPE_CHECKING:
    from atp_service.api.state import ApiState

log = logging.getLogger(__name__)

SYNC_POLL_SECONDS = 1.0
#: Every source an answer speaks for, measured or not.
SOURCES = tuple(s.value for s in Source)


@dataclass(frozen=True, slots=True)
class SyncView:
    """One ``sync`` object: as data, as a fragment for orjson, and as the tail of an answer."""

    by_source: Mapping[str, SourceSync]
    json: bytes
    fragment: orjson.Fragment
    #: ``,"sync":{...}}``: an answer encoded without its closing brace, plus this.
    tail: bytes

    @classmethod
    def of(cls, by_source: Mapping[str, SourceSync]) -> SyncView:
        encoded = orjson.dumps(sync_body(by_source))
        return cls(dict(by_source), encoded, orjson.Fragment(encoded), b',"sync":' + encoded + b"}")

    @classmethod
    def unmeasured(cls) -> SyncView:
        return cls.of({source: SourceSync(None, None) for source in SOURCES})


def sync_body(by_source: Mapping[str, SourceSync]) -> dict[str, Any]:
    """The ``sync`` object of an answer."""
    return {
        source: {
            "lag_seconds": s.lag_seconds,
            "as_of": iso_from_ms(s.as_of_ms) if s.as_of_ms is not None else None,
        }
        for source, s in by_source.items()
    }


def with_sync(answer: bytes, view: SyncView) -> bytes:
    """An encoded answer object (``{...}``) with ``sync`` as its last member."""
    return answer[:-1] + view.tail


async def follow_sync(state: ApiState, stop: asyncio.Event) -> None:
    """Keep ``state.sync`` current until ``stop`` (a background task of the API)."""
    failing = False
    while not stop.is_set():
        try:
            ops = OpsStore(state.redis)
            merged = merge_sync(await ops.worker_reports(), SOURCES)
            if merged != state.sync.by_source:
                state.sync = SyncView.of(merged)
            failing = False
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # Redis away: answers keep the last measure and its as_of
            if not failing:
                log.warning("sync refresh: %r; retrying", exc)
            failing = True
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), SYNC_POLL_SECONDS)
