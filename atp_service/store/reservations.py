"""The Redis side of reservations: place, read, confirm, release, expire and audit them.

Every state change is one Lua script (``lua/reserve.lua``, ``lua/transition.lua``; the
consumption by an allocated delta lives in ``lua/fold.lua``) that changes the positions,
the reservation record, its expiry entry and writes the events to the outbox together.

A reservation record is a hash (see ``reservation_keys.py`` for where it lives):
``st`` status, ``ch`` channel, ``rf`` order ref ('' = none), ``md`` mode, ``cr``/``up``
created/updated (epoch ms, Redis TIME), ``ex`` expires (epoch ms; '' once confirmed or
ended), ``co`` the correlation id of the request that made it, ``ow`` its owner (the name
of the API key that made it; absent on records made before owners were recorded), ``ln``
its lines as JSON ``[{"s": sku, "t": site, "q": asked, "r": reserved, "a": allocated}]``.

Ownership: every read and change of one reservation takes ``caller``, the name of the API
key asking (None: any reservation, for a key with ``admin``, the sweeper and tools), and a
reservation of another key is ``ReservationNotFound``, exactly as an unknown id. The rule is
``domain.reservations.may_act_on``; it is applied inside Redis, in the read itself
(``lua/read_reservation.lua``, through ``read_visible``) and again inside each script that
changes a reservation (``owned_by`` in ``lua/_lib.lua``). A new reservation route reads
through ``read_visible`` and passes ``caller`` to its script.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import defaultdict
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import orjson
from redis.commands.core import AsyncScript

from atp_service import metrics
from atp_service.domain.reservations import (
    IdempotencyConflict,
    InsufficientStock,
    InvalidTransition,
    Reservation,
    ReservationLine,
    ReservationMode,
    ReservationNotFound,
    ReservationRequest,
    ReservationStatus,
    ShortLine,
    Transition,
    may_act_on,
)
from atp_service.store import keys as k
from atp_service.store.duty import Duty
from atp_service.store.redis_store import PolicyBook, RedisStore
from atp_service.store.reservation_keys import (
    expiry_index,
    idempotency_key,
    record_pattern,
    reservation_keys,
)

log = logging.getLogger(__name__)

_SCAN_COUNT = 1000
#: Reservations expired by one script call (Redis runs nothing else meanwhile: a few ms).
EXPIRE_CHUNK = 50


@dataclass(frozen=True, slots=True)
class Placed:
    """The answer to a reservation request: new, or the first answer to this key again."""

    reservation: Reservation
    replayed: bool


@dataclass(frozen=True, slots=True)
class AuditDifference:
    sku: str
    site: str
    reserved: int  # the position's ``rs``
    expected: int  # sum of the active reservation lines' unallocated units


def reservation_from_fields(reservation_id: str, fields: Mapping[str, Any]) -> Reservation:
    """Decode a record hash (or the snapshot of it that reserve.lua returns)."""
    lines = fields["ln"]
    raw_lines = orjson.loads(lines) if isinstance(lines, str) else lines
    expires = fields.get("ex", "")
    order_ref = fields.get("rf", "")
    corr = fields.get("co", "")
    owner = fields.get("ow")
    return Reservation(
        reservation_id=reservation_id,
        status=ReservationStatus(fields["st"]),
        channel=str(fields["ch"]),
        order_ref=str(order_ref) if order_ref not in ("", None) else None,
        mode=ReservationMode(fields["md"]),
        lines=tuple(
            ReservationLine(
                sku=ln["s"],
                site=ln["t"],
                qty=int(ln["q"]),
                reserved=int(ln["r"]),
                allocated=int(ln["a"]),
            )
            for ln in raw_lines
        ),
        created_ms=_int(fields["cr"]),
        updated_ms=_int(fields["up"]),
        expires_ms=_int(expires) if expires not in ("", None) else None,
        correlation_id=str(corr) if corr else None,
        owner=str(owner) if owner not in ("", None) else None,
    )


def _int(value: Any) -> int:
    # Lua's cjson writes integers up to 10^14 exactly, but a float-looking text is legal JSON.
    return int(value) if isinstance(value, int) else int(float(value))


class ReservationStore:
    """Reservations over the service's one Redis adapter; receives it, builds no client."""

    def __init__(
        self,
        store: RedisStore,
        *,
        idempotency_ttl_seconds: int,
        ended_retention_seconds: int | None = None,
    ) -> None:
        self.store = store
        self.redis = store.redis
        self.keys = store.keys
        self._idempotency_ttl_ms = str(idempotency_ttl_seconds * 1000)
        self._ended_retention_ms = str((ended_retention_seconds or idempotency_ttl_seconds) * 1000)
        self._reserve: AsyncScript = store.register_script("reserve.lua")
        self._transition: AsyncScript = store.register_script("transition.lua")
        self._read: AsyncScript = store.register_script("read_reservation.lua")

    # -- placing -------------------------------------------------------------------------

    async def reserve(
        self,
        request: ReservationRequest,
        *,
        reservation_id: str,
        principal: str,
        idempotency_key_value: str,
        correlation_id: str,
        book: PolicyBook,
    ) -> Placed:
        """Place ``request`` (atomically, idempotently per principal and key), owned by
        ``principal`` (the name of the API key asking).

        Raises InsufficientStock (all_or_nothing could not be met, also on a replay of such
        a request) or IdempotencyConflict (the key was used with another body).
        """
        res = reservation_keys(self.keys, reservation_id)
        script_keys = [
            idempotency_key(self.keys, principal, idempotency_key_value),
            *res.as_list(),
        ]
        for line in request.lines:
            ks = self.keys.item_site(line.sku, line.site)
            script_keys += [ks.position, ks.outbox]
        body = {
            "id": reservation_id,
            "ch": request.channel,
            "ref": request.order_ref or "",
            "md": request.mode.value,
            "ttl": request.ttl_seconds * 1000,
            "corr": correlation_id,
            "h": request.fingerprint(),
            "ow": principal,
            "lines": [{"s": ln.sku, "t": ln.site, "q": ln.qty} for ln in request.lines],
        }
        outcome, _status, payload, *announced = await self.store.run_script(
            self._reserve,
            script_keys,
            [
                orjson.dumps(body),
                book.channel_lua_json(request.channel),
                book.lua_json,
                self._idempotency_ttl_ms,
            ],
        )
        if announced:
            self.store.changed_here(announced[0])
        if outcome == "conflict":
            raise IdempotencyConflict(idempotency_key_value)
        decoded = orjson.loads(payload)
        if "lines" in decoded:  # the 409 of this request, now or the first time
            if outcome == "insufficient":
                metrics.RESERVATIONS.labels("rejected").inc()
            raise InsufficientStock(
                [
                    ShortLine(sku=ln["sku"], site=ln["site"], qty=ln["qty"], atp=ln["atp"])
                    for ln in decoded["lines"]
                ]
            )
        if outcome == "held":
            metrics.RESERVATIONS.labels(ReservationStatus.HELD.value).inc()
        return Placed(reservation_from_fields(decoded["id"], decoded), outcome == "replay")

    # -- reading -------------------------------------------------------------------------

    async def read_visible(self, reservation_id: str, *, caller: str | None) -> dict[str, str]:
        """The record's fields, if ``caller`` may see it (``may_act_on``), in one read.

        Raises ReservationNotFound for an unknown id and for another key's reservation
        alike: Redis answers both with the same empty reply (lua/read_reservation.lua).
        """
        flat = await self.store.run_script(
            self._read, [reservation_keys(self.keys, reservation_id).record], [caller or ""]
        )
        if not flat:
            raise ReservationNotFound(reservation_id)
        fields = _pairs(flat)
        if not may_act_on(caller, fields.get("ow")):  # the script's rule, kept honest
            raise ReservationNotFound(reservation_id)
        return fields

    async def get(self, reservation_id: str, *, caller: str | None) -> Reservation:
        """The reservation as ``caller`` (an API key's name; None: any) may see it."""
        return reservation_from_fields(
            reservation_id, await self.read_visible(reservation_id, caller=caller)
        )

    # -- transitions ---------------------------------------------------------------------

    async def confirm(
        self, reservation_id: str, *, caller: str | None, correlation_id: str, book: PolicyBook
    ) -> Reservation:
        return await self._change(reservation_id, Transition.CONFIRM, caller, correlation_id, book)

    async def release(
        self, reservation_id: str, *, caller: str | None, correlation_id: str, book: PolicyBook
    ) -> Reservation:
        return await self._change(reservation_id, Transition.RELEASE, caller, correlation_id, book)

    async def _change(
        self,
        reservation_id: str,
        transition: Transition,
        caller: str | None,
        correlation_id: str,
        book: PolicyBook,
    ) -> Reservation:
        fields = await self.read_visible(reservation_id, caller=caller)
        if "ln" not in fields:  # a record being written by hand, or one half deleted
            raise ReservationNotFound(reservation_id)
        script_keys, n_lines = self._transition_keys(reservation_id, fields["ln"])
        announced, outcome, flat, expired_now = await self.store.run_script(
            self._transition,
            script_keys,
            [transition.value, book.lua_json, correlation_id, self._ended_retention_ms, "1",
             caller or "", reservation_id, n_lines],
        )  # fmt: skip
        self.store.changed_here(announced)
        if outcome == "missing":
            raise ReservationNotFound(reservation_id)
        if outcome == "error":
            raise RuntimeError(f"transition of {reservation_id} failed in Redis: {flat}")
        if expired_now:  # this call found the TTL passed before the sweeper did
            metrics.RESERVATIONS.labels(ReservationStatus.EXPIRED.value).inc()
        reservation = reservation_from_fields(reservation_id, _pairs(flat))
        if outcome == "invalid":
            raise InvalidTransition(reservation, transition)
        if outcome == "changed":
            metrics.RESERVATIONS.labels(reservation.status.value).inc()
        return reservation

    def _transition_keys(
        self, reservation_id: str, lines_json: str | None
    ) -> tuple[list[str], int]:
        """transition.lua's keys of one reservation, and its number of lines (0: no record)."""
        script_keys = reservation_keys(self.keys, reservation_id).as_list()
        lines = orjson.loads(lines_json) if lines_json is not None else []
        for line in lines:
            ks = self.keys.item_site(line["s"], line["t"])
            script_keys += [ks.position, ks.outbox]
        return script_keys, len(lines)

    # -- expiry --------------------------------------------------------------------------

    async def expire_due(self, book: PolicyBook | None = None, limit: int = 500) -> int:
        """Expire held reservations whose TTL has passed (Redis TIME is the clock).

        Any number of processes may call this at once: each reservation is expired inside
        a script (up to ``EXPIRE_CHUNK`` a call) that checks, there, that it is still held
        and due, so it happens exactly once; an entry stays in the index until that script
        removes it, so a process that dies between the calls loses nothing.
        """
        seconds, micros = await self.redis.time()
        now_ms = seconds * 1000 + micros // 1000
        pipe = self.redis.pipeline(transaction=False)
        for group in range(self.keys.groups):
            pipe.zrangebyscore(expiry_index(group), "-inf", now_ms, start=0, num=limit)
        due = [rid for ids in await pipe.execute() for rid in ids]
        if not due:
            return 0
        pipe = self.redis.pipeline(transaction=False)
        for rid in due:
            pipe.hget(reservation_keys(self.keys, rid).record, "ln")
        lines = await pipe.execute()
        if book is None:
            book = await self.store.policy_book()
        # Many reservations a script call: their events go out as one outbox entry per
        # stream and their positions as one announcement (docs/benchmarks.md).
        pipe = self.redis.pipeline(transaction=False)
        chunks: list[list[str]] = []
        for start in range(0, len(due), EXPIRE_CHUNK):
            script_keys: list[str] = []
            args: list[Any] = [
                Transition.EXPIRE.value,
                book.lua_json,
                "",
                self._ended_retention_ms,
                "0",
                "",  # the sweeper acts on any reservation
            ]
            chunk = []
            for rid, ln in zip(
                due[start : start + EXPIRE_CHUNK], lines[start : start + EXPIRE_CHUNK], strict=True
            ):
                try:
                    keys_of, n_lines = self._transition_keys(rid, ln)
                except (ValueError, KeyError, TypeError) as exc:
                    # Left held and in the index (the audit reports what it holds).
                    log.warning(
                        "reservation %s has an unreadable record (%r); not expired", rid, exc
                    )
                    continue
                script_keys += keys_of
                args += [rid, n_lines]
                chunk.append(rid)
            chunks.append(chunk)
            await self._transition(keys=script_keys, args=args, client=pipe)
        expired = 0
        for chunk, result in zip(chunks, await pipe.execute(raise_on_error=False), strict=True):
            if isinstance(result, Exception):
                log.warning("expiring reservations failed: %s", result)
                continue
            self.store.changed_here(result[0])
            for rid, j in zip(chunk, range(1, len(result), 3), strict=True):
                outcome = result[j]
                if outcome == "changed":
                    expired += 1
                elif outcome == "error":
                    log.warning("expiring reservation %s failed: %s", rid, result[j + 1])
        if expired:
            metrics.RESERVATIONS.labels(ReservationStatus.EXPIRED.value).inc(expired)
        return expired

    # -- audit ---------------------------------------------------------------------------

    async def audit(self, statuses: dict[str, int] | None = None) -> list[AuditDifference]:
        """Item-sites whose ``reserved`` differs from their active reservation lines.

        Reads are not one snapshot; a difference seen once is read again (up to three
        times) and reported only if it persists, so a busy system does not cry wolf.
        ``statuses``, when given, receives the number of reservation records by status
        (those of the first pass: the scan reads every record anyway).
        """
        differences = await self._audit_pass(statuses)
        for _ in range(2):
            if not differences:
                break
            await asyncio.sleep(0.05)
            again = {(d.sku, d.site): d for d in await self._audit_pass()}
            differences = [again[(d.sku, d.site)] for d in differences if (d.sku, d.site) in again]
        return differences

    async def _audit_pass(self, statuses: dict[str, int] | None = None) -> list[AuditDifference]:
        expected: dict[tuple[str, str], int] = defaultdict(int)
        records = [
            key async for key in self.redis.scan_iter(match=record_pattern(), count=_SCAN_COUNT)
        ]
        for chunk in _chunks(records, 500):
            pipe = self.redis.pipeline(transaction=False)
            for key in chunk:
                pipe.hmget(key, "st", "ln")
            for status, lines in await pipe.execute():
                if status is None or lines is None:
                    continue
                if statuses is not None:
                    statuses[status] = statuses.get(status, 0) + 1
                if not ReservationStatus(status).active:
                    continue
                for line in orjson.loads(lines):
                    expected[(line["s"], line["t"])] += int(line["r"]) - int(line["a"])
        reserved: dict[tuple[str, str], int] = {}
        positions = [
            key
            async for key in self.redis.scan_iter(match=f"{k.PREFIX}:{{g*}}:p:*", count=_SCAN_COUNT)
        ]
        for chunk in _chunks(positions, 500):
            pipe = self.redis.pipeline(transaction=False)
            for key in chunk:
                pipe.hget(key, k.F_RESERVED)
            for key, rs in zip(chunk, await pipe.execute(), strict=True):
                sku, site = key.split(":p:", 1)[1].rsplit("@", 1)
                reserved[(sku, site)] = int(rs or 0)
        return [
            AuditDifference(sku, site, reserved.get((sku, site), 0), expected.get((sku, site), 0))
            for sku, site in sorted(set(reserved) | set(expected))
            if reserved.get((sku, site), 0) != expected.get((sku, site), 0)
        ]


class ExpirySweeper:
    """Runs ``expire_due`` every ``interval`` seconds until stopped (workers and API processes).

    ``policy_book`` gives the book in force (for the availability.changed events an
    expiry causes); without it each sweep that finds work reads the book from Redis.
    """

    def __init__(
        self,
        reservations: ReservationStore,
        interval: float,
        policy_book: Callable[[], Awaitable[PolicyBook]] | None = None,
        *,
        duty: Duty | None = None,
        stand_by: bool = False,
    ) -> None:
        self.reservations = reservations
        self.interval = interval
        self.policy_book = policy_book
        #: With a duty: report each sweep (a worker), or sweep only while no worker has
        #: reported one lately (``stand_by``: an API process). See store/duty.py.
        self.duty = duty
        self.stand_by = stand_by

    async def run(self, stop: asyncio.Event) -> None:
        backoff = self.interval
        while not stop.is_set():
            try:
                if self.duty is not None and self.stand_by and await self.duty.taken():
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(stop.wait(), timeout=self.interval)
                    continue
                book = await self.policy_book() if self.policy_book is not None else None
                await self.reservations.expire_due(book)
                if self.duty is not None and not self.stand_by:
                    await self.duty.done()
                backoff = self.interval
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # Redis away: keep trying, the index keeps what is due
                metrics.REDIS_ERRORS.labels("expiry_sweeper").inc()
                log.warning("expiry sweep failed: %s", exc)
                backoff = min(max(backoff * 2, self.interval), 5.0)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=backoff)


def _pairs(flat: Sequence[Any]) -> dict[str, Any]:
    return {str(flat[i]): flat[i + 1] for i in range(0, len(flat), 2)}


def _chunks(items: list[str], size: int) -> list[list[str]]:
    return [items[i : i + size] for i in range(0, len(items), size)]
