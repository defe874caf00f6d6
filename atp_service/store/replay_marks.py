"""Which dead letters `atp dlq replay` re-submitted: one mark per letter, in one Redis hash.

``atp:dlq:replayed``: ``"<partition>:<offset>"`` of a letter in ``inventory.dlq.v1`` ->
``{"digest", "replayed_at"}``, and ``failed_again_at``, ``code``, ``detail`` once the worker
refused the replayed message again. The digest (of the letter's bytes) tells a mark of this
letter from a mark left by a dead-letter topic of the same name made before. A letter is
replayed while it has a mark of its own that did not fail again; taking a mark is atomic, so
two replays at once send a letter once.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from atp_service.store.keys import DLQ_REPLAYED
from atp_service.store.redis_store import RedisClient, _load_lua

#: The header a replayed message carries: ``inventory.dlq.v1:<partition>:<offset>``.
REPLAYED_FROM_HEADER = "atp-replayed-from"


@dataclass(frozen=True, slots=True)
class ReplayMark:
    replayed_at: str
    failed_again_at: str | None = None
    code: str | None = None

    def describe(self) -> str:
        if self.failed_again_at is None:
            return self.replayed_at
        return f"{self.replayed_at}, failed again ({self.code}) at {self.failed_again_at}"


def stamp(at: datetime) -> str:
    return at.astimezone(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def _decoded(value: Any) -> dict[str, Any] | None:
    if value is None:
        return None
    try:
        mark = json.loads(value)
    except ValueError:
        return None
    return mark if isinstance(mark, dict) else None


class ReplayMarks:
    def __init__(self, client: RedisClient) -> None:
        self.redis = client
        self._claim = client.register_script(_load_lua("claim_replay.lua"))
        self._failed_again = client.register_script(_load_lua("replay_failed_again.lua"))

    async def of(self, letters: Sequence[tuple[str, str]]) -> dict[str, ReplayMark]:
        """The marks of ``(where, digest)`` letters that have one of their own."""
        if not letters:
            return {}
        raw = await self.redis.hmget(DLQ_REPLAYED, [where for where, _ in letters])
        found: dict[str, ReplayMark] = {}
        for (where, digest), value in zip(letters, raw, strict=True):
            mark = _decoded(value)
            if mark is not None and mark.get("digest") == digest:
                found[where] = ReplayMark(
                    str(mark.get("replayed_at", "?")), mark.get("failed_again_at"), mark.get("code")
                )
        return found

    async def claim(self, where: str, digest: str, at: datetime) -> bool:
        """Mark the letter replayed; False when it already is (and did not fail again)."""
        mark = json.dumps({"digest": digest, "replayed_at": stamp(at)})
        return bool(await self._claim(keys=[DLQ_REPLAYED], args=[where, digest, mark]))

    async def release(self, wheres: Sequence[str]) -> None:
        """Forget marks whose send failed: a later replay sends those letters."""
        if wheres:
            await self.redis.hdel(DLQ_REPLAYED, *wheres)

    async def failed_again(self, where: str, at: datetime, code: str, detail: str) -> bool:
        """The worker refused a replayed message again; False when its letter has no mark."""
        args = [where, stamp(at), code, detail]
        return bool(await self._failed_again(keys=[DLQ_REPLAYED], args=args))

    async def count(self) -> int:
        return int(await self.redis.hlen(DLQ_REPLAYED))


def replayed_from(headers: Sequence[tuple[str, bytes]] | None) -> str | None:
    """``"<partition>:<offset>"`` of the dead letter a message was replayed from, if it was."""
    for name, value in headers or ():
        if name == REPLAYED_FROM_HEADER:
            _topic, _, where = value.decode("utf-8", "replace").partition(":")
            return where or None
    return None
