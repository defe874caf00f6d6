"""The Redis side of reservations: place, read, confirm, release, expire and audit them.

A reservation is a *record* in the group of its id, and a *hold* in each group of its lines'
item-sites (``reservation_keys.py``; the Lua in ``lua/_holds.lua``): the holds are where its
units are counted in ``reserved``, and where the fold consumes them (``lua/fold.lua``).

When every key a change touches shares one slot (always on a single Redis), the change is
one script: ``lua/reserve.lua``, ``lua/transition.lua``. On a Redis Cluster a reservation
whose keys span slots is placed in three steps (docs/reservations.md): ``res_begin`` claims
the idempotency key and writes the record ``pending`` with a deadline in its group's
recovery index; ``res_hold`` checks and holds each group's lines (in parallel); ``res_decide``
makes it ``held`` (or answers 409 and the holds are released). A transition that gives units
back begins in the record's slot (``res_transition``: ``releasing``, ``expiring``), releases
each hold (``res_unhold``) and ends there (``res_finish``). Every step is idempotent, so a
step may be repeated (a retry, another process resuming it, the sweeper); a process that
dies between steps leaves the record in the recovery index, and the sweeper rolls it
forward (an ending) or back (a placing: its holds released, its key freed) once it is
overdue (``recover_due``).

The record is a hash: ``st`` status (also the steps' ``pending``, ``failed``, ``aborted``,
``releasing``, ``expiring``, ``consuming``), ``ch`` channel, ``rf`` order ref ('' = none),
``md`` mode, ``cr``/``up`` created/updated (epoch ms, Redis TIME), ``ex`` expires (epoch
ms; '' once confirmed or ended), ``co`` the correlation id of the request that made it,
``ln`` its lines as JSON ``[{"s": sku, "t": site, "q": asked, "r": reserved, "g": group}]``
(and ``"a"``, allocated, once it ended: while it is active the holds have that), ``cg`` the
groups whose holds are fully allocated (a Cluster), ``dl`` a step's deadline, ``ps``/``tc``
the status an ending began from and its correlation id, ``ik`` its idempotency record while
it is being placed across slots, ``ow`` its owner (the name of the API key that made it;
absent on records made before owners were recorded).

Ownership: every read and change of one reservation takes ``caller``, the name of the API
key asking (None: any reservation, for a key with ``admin``, the sweeper and tools), and a
reservation of another key is ``ReservationNotFound``, exactly as an unknown id. The rule is
``domain.reservations.may_act_on``; it is applied inside Redis, in the read itself
(``lua/read_reservation.lua``, through ``read_visible``) and again inside each script that
changes a reservation (``owned_by`` in ``lua/_lib.lua``, through ``begin_transition``). A new
reservation route reads through ``read_visible`` and passes ``caller`` to its script.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import defaultdict
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, cast

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
from atp_service.store.keys import group_of
from atp_service.store.redis_store import PolicyBook, RedisStore, ScriptCall, StoreUnavailable
from atp_service.store.reservation_keys import (
    consumed_marks,
    expiry_index,
    hold,
    hold_pattern,
    id_in_group,
    idempotency_key_and_group,
    new_reservation_id,
    record_pattern,
    recovery_index,
    reservation_group,
    reservation_keys,
)

log = logging.getLogger(__name__)

_SCAN_COUNT = 1000
#: Reservations expired by one script call (Redis runs nothing else meanwhile: a few ms).
EXPIRE_CHUNK = 50
#: How long placing a reservation across slots may take (its holds are refused after it,
#: and the sweeper aborts it); also how long an ending may take before the sweeper ends it.
STEP_DEADLINE_MS = 5_000
#: How long a refused hold, or the void mark of a hold never made, is kept: longer than any
#: step may take, so that a late step of the same reservation finds it.
MARK_TTL_MS = 60_000
#: How long a released hold is kept (an ending repeated by the sweeper reads it again).
RELEASED_HOLD_TTL_MS = 3_600_000
_LIBRARIES = ("_lib.lua", "_holds.lua")
#: The dataset's layout version: 2 once reservations have holds (``migrate_legacy``).
_LAYOUT = k.config_key("layout")
_HOLDS_LAYOUT = 2
#: Internal statuses of a record, as the reservation's status its callers see.
_SHOWN_AS = {"releasing": "released", "expiring": "expired", "consuming": "consumed"}
_NOT_A_RESERVATION = frozenset({"pending", "failed", "aborted"})
_WANTED = {
    Transition.CONFIRM: ReservationStatus.CONFIRMED,
    Transition.RELEASE: ReservationStatus.RELEASED,
    Transition.EXPIRE: ReservationStatus.EXPIRED,
}


class ReservationBusy(StoreUnavailable):
    """The reservation is being placed (or undone) by another request right now: try again
    shortly (a 503 with ``Retry-After``)."""


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


def _status(raw: Any) -> ReservationStatus:
    text = str(raw)
    return ReservationStatus(_SHOWN_AS.get(text, text))


def reservation_from_fields(
    reservation_id: str, fields: Mapping[str, Any], allocated: Sequence[int] | None = None
) -> Reservation:
    """Decode a record hash (or the snapshot of it that the scripts return); ``allocated``:
    what each line has allocated (from its hold), else the record's own ``a``."""
    lines = fields["ln"]
    raw_lines = orjson.loads(lines) if isinstance(lines, str) else lines
    expires = fields.get("ex", "")
    order_ref = fields.get("rf", "")
    corr = fields.get("co", "")
    owner = fields.get("ow")
    return Reservation(
        reservation_id=reservation_id,
        status=_status(fields["st"]),
        channel=str(fields["ch"]),
        order_ref=str(order_ref) if order_ref not in ("", None) else None,
        mode=ReservationMode(fields["md"]),
        lines=tuple(
            ReservationLine(
                sku=ln["s"],
                site=ln["t"],
                qty=int(ln["q"]),
                reserved=int(ln.get("r", 0)),
                allocated=int(allocated[i] if allocated is not None else ln.get("a", 0)),
            )
            for i, ln in enumerate(raw_lines)
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


def _json_list(raw: Any) -> list[Any]:
    """A JSON list from a script (cjson writes an empty list as ``{}``)."""
    value = orjson.loads(raw) if isinstance(raw, str | bytes) else raw
    return value if isinstance(value, list) else []


@dataclass(slots=True)
class _Ending:
    """A reservation whose holds are being released across slots: its record's lines (by
    group) and what the release steps need."""

    rid: str
    lines: list[dict[str, Any]]
    label: str = ""  # the status the hold's events name
    corr: str = ""
    alloc: list[int] | None = None


class ReservationStore:
    """Reservations over the service's one Redis adapter; receives it, builds no client."""

    def __init__(
        self,
        store: RedisStore,
        *,
        idempotency_ttl_seconds: int,
        ended_retention_seconds: int | None = None,
        step_deadline_ms: int = STEP_DEADLINE_MS,
    ) -> None:
        self.store = store
        #: How long a step across slots may take before the sweeper ends it (see above).
        self.step_deadline_ms = step_deadline_ms
        self.redis = store.redis
        self.keys = store.keys
        self.cluster = store.cluster
        self._idempotency_ttl_ms = str(idempotency_ttl_seconds * 1000)
        self._ended_retention_ms = str((ended_retention_seconds or idempotency_ttl_seconds) * 1000)
        register = store.register_script
        self._reserve: AsyncScript = register("reserve.lua", _LIBRARIES)
        self._transition: AsyncScript = register("transition.lua", _LIBRARIES)
        self._begin: AsyncScript = register("res_begin.lua", _LIBRARIES)
        self._hold: AsyncScript = register("res_hold.lua", _LIBRARIES)
        self._decide: AsyncScript = register("res_decide.lua", _LIBRARIES)
        self._unhold: AsyncScript = register("res_unhold.lua", _LIBRARIES)
        self._begin_transition: AsyncScript = register("res_transition.lua", _LIBRARIES)
        self._finish: AsyncScript = register("res_finish.lua", _LIBRARIES)
        self._note_consumed: AsyncScript = register("res_note_consumed.lua", _LIBRARIES)
        self._migrate: AsyncScript = register("migrate_reservation.lua", _LIBRARIES)
        self._read: AsyncScript = register("read_reservation.lua")

    # -- placing -------------------------------------------------------------------------

    def new_reservation_id(self, principal: str, idempotency_key_value: str) -> str:
        """An id for a new reservation of this key: on a Cluster, in the group of the key's
        idempotency record (the record and its idempotency record share a slot)."""
        if not self.cluster:
            return new_reservation_id()
        _, group = idempotency_key_and_group(self.keys, principal, idempotency_key_value)
        return id_in_group(group, self.keys.groups)

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
        a request), IdempotencyConflict (the key was used with another body), or
        ReservationBusy (the key's request is being placed by another call right now).
        """
        idem, idem_group = idempotency_key_and_group(self.keys, principal, idempotency_key_value)
        groups = self.keys.groups
        if self.cluster and reservation_group(reservation_id, groups) != idem_group:
            raise ValueError(
                f"{reservation_id} is not in the group of its idempotency record: "
                "take it from new_reservation_id()"
            )
        line_groups = [group_of(ln.sku, ln.site, groups) for ln in request.lines]
        body = {
            "id": reservation_id,
            "ch": request.channel,
            "ref": request.order_ref or "",
            "md": request.mode.value,
            "ttl": request.ttl_seconds * 1000,
            "corr": correlation_id,
            "h": request.fingerprint(),
            "ow": principal,
            "lines": [
                {"s": ln.sku, "t": ln.site, "q": ln.qty, "g": g}
                for ln, g in zip(request.lines, line_groups, strict=True)
            ],
        }
        if not self.cluster or set(line_groups) == {idem_group}:
            outcome, _status_code, payload = await self._reserve_in_one_slot(
                request, body, idem, line_groups, book
            )
        else:
            outcome, _status_code, payload = await self._reserve_across_slots(
                request, body, idem, idem_group, line_groups, book
            )
        if outcome == "conflict":
            raise IdempotencyConflict(idempotency_key_value)
        if outcome == "busy":
            raise ReservationBusy(f"the request of Idempotency-Key {idempotency_key_value!r} is "
                                  "being placed right now; try again shortly")  # fmt: skip
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
        reservation = reservation_from_fields(decoded["id"], decoded)
        return Placed(reservation, outcome == "replay")

    async def _reserve_in_one_slot(
        self,
        request: ReservationRequest,
        body: dict[str, Any],
        idem: str,
        line_groups: list[int],
        book: PolicyBook,
    ) -> tuple[str, int, str]:
        rid = body["id"]
        res = reservation_keys(self.keys, rid)
        script_keys = [idem, res.record, res.expiry, res.outbox]
        outboxes = self.keys.outboxes
        for line, g in zip(request.lines, line_groups, strict=True):
            script_keys += [self.keys.position(line.sku, line.site), outboxes[g], hold(g, rid)]
        outcome, status, payload, *announced = await self.store.run_script(
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
        return str(outcome), int(status), str(payload)

    async def _reserve_across_slots(
        self,
        request: ReservationRequest,
        body: dict[str, Any],
        idem: str,
        idem_group: int,
        line_groups: list[int],
        book: PolicyBook,
    ) -> tuple[str, int, str]:
        run = self.store.run_script
        # 1. Begin: claim the key, the record pending (or find the key's placing under way).
        for _ in range(2):
            res = reservation_keys(self.keys, body["id"])
            begun = await run(
                self._begin,
                [idem, res.record, res.recovery],
                [orjson.dumps(body), self._idempotency_ttl_ms, self.step_deadline_ms],
            )
            if begun[0] != "other":
                break
            body = {**body, "id": str(begun[1])}  # resume the key's placing under its id
        outcome = str(begun[0])
        if outcome in ("conflict", "busy", "other"):
            return ("busy" if outcome == "other" else outcome), 0, ""
        if outcome == "replay":
            return "replay", int(begun[1]), str(begun[2])
        rid, deadline = body["id"], int(begun[1])
        # 2. Hold each group's lines, every group at once.
        by_group: dict[int, list[int]] = defaultdict(list)
        for i, g in enumerate(line_groups):
            by_group[g].append(i)
        channel_policy = book.channel_lua_json(request.channel)
        outboxes = self.keys.outboxes

        async def hold_group(g: int, indexes: list[int]) -> Any:
            keys = [hold(g, rid)]
            for i in indexes:
                line = request.lines[i]
                keys += [self.keys.position(line.sku, line.site), outboxes[g]]
            step = {
                "id": rid, "md": body["md"], "corr": body["corr"], "dl": deadline,
                "lines": [
                    {"i": i + 1, "s": request.lines[i].sku, "t": request.lines[i].site,
                     "q": request.lines[i].qty}
                    for i in indexes
                ],
            }  # fmt: skip
            return await run(
                self._hold,
                keys,
                [orjson.dumps(step), channel_policy, book.lua_json, MARK_TTL_MS],
            )

        held = await asyncio.gather(
            *(hold_group(g, ix) for g, ix in by_group.items()), return_exceptions=True
        )
        failure = next((h for h in held if isinstance(h, BaseException)), None)
        if failure is not None:
            # Undecided: the caller's retry resumes it, or the sweeper undoes it once overdue.
            raise failure
        n = len(request.lines)
        grants, atps = [0] * n, [0] * n
        refused = late = False
        for (_, indexes), reply in zip(by_group.items(), held, strict=True):
            state, announced, atps_json, grants_json = cast(list[Any], reply)
            self.store.changed_here(announced)
            refused |= state == "refused"
            late |= state in ("late", "void")
            for i, atp, grant in zip(
                indexes, _json_list(atps_json), _json_list(grants_json), strict=False
            ):
                atps[i], grants[i] = int(atp), int(grant)
        # 3. Decide, in the record's slot.
        res = reservation_keys(self.keys, rid)
        decided = await run(
            self._decide,
            [idem, res.record, res.expiry, res.recovery, res.outbox],
            [
                orjson.dumps(body),
                orjson.dumps({"grants": grants, "atps": atps, "refused": refused, "late": late}),
                self._idempotency_ttl_ms,
            ],
        )
        outcome = str(decided[0])
        if outcome in ("insufficient", "aborted"):
            # Nothing is held when the 409 is answered: every hold released first (if this
            # fails, the answer is a 503 and the sweeper releases them).
            ending = _Ending(rid, body["lines"], label="failed", corr=body["corr"])
            await self._release_holds([ending], book, request=True)
            await self._finish_all([ending], request=True)
            if outcome == "aborted":
                return "busy", 0, ""
        return outcome, int(decided[1]), str(decided[2])

    # -- reading -------------------------------------------------------------------------

    async def read_visible(self, reservation_id: str, *, caller: str | None) -> dict[str, str]:
        """The record's fields, if ``caller`` may see it (``may_act_on``), in one read.

        Raises ReservationNotFound for an unknown id and for another key's reservation
        alike: Redis answers both with the same empty reply (lua/read_reservation.lua); and
        for a record that is no reservation yet (being placed across slots) or any more.
        """
        flat = await self.store.run_script(
            self._read,
            [reservation_keys(self.keys, reservation_id).record],
            [caller or ""],
            replicated=False,  # a read
        )
        if not flat:
            raise ReservationNotFound(reservation_id)
        fields = _pairs(flat)
        if not may_act_on(caller, fields.get("ow")):  # the script's rule, kept honest
            raise ReservationNotFound(reservation_id)
        if fields.get("st") in _NOT_A_RESERVATION:
            raise ReservationNotFound(reservation_id)
        return fields

    async def get(self, reservation_id: str, *, caller: str | None) -> Reservation:
        """The reservation as ``caller`` (an API key's name; None: any) may see it."""
        fields = await self.read_visible(reservation_id, caller=caller)
        if "ln" not in fields:  # a record being written by hand, or one half deleted
            raise ReservationNotFound(reservation_id)
        allocated = None
        if fields["st"] in ("held", "confirmed", *_SHOWN_AS):
            allocated = await self._allocations(reservation_id, orjson.loads(fields["ln"]))
        return reservation_from_fields(reservation_id, fields, allocated)

    async def _allocations(self, rid: str, lines: list[dict[str, Any]]) -> list[int]:
        """What each line of an active reservation has allocated, read from its holds."""
        groups = sorted({self._group(line) for line in lines})
        pipe = self.redis.pipeline(transaction=False)
        for g in groups:
            pipe.hget(hold(g, rid), "ln")
        allocated = [int(line.get("a", 0)) for line in lines]
        for raw in await pipe.execute():
            for line in _json_list(raw) if raw else []:
                allocated[int(line["i"]) - 1] = int(line["a"])
        return allocated

    def _group(self, line: Mapping[str, Any]) -> int:
        g = line.get("g")
        return int(g) if g is not None else group_of(line["s"], line["t"], self.keys.groups)

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
        if self.cluster:
            return await self._change_across_slots(
                reservation_id, transition, caller, correlation_id, book,
                orjson.loads(fields["ln"]),
            )  # fmt: skip
        script_keys, n_lines = self._transition_keys(reservation_id, fields["ln"])
        announced, outcome, flat, expired_now, alloc = await self.store.run_script(
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
        reservation = reservation_from_fields(reservation_id, _pairs(flat), _json_list(alloc))
        if outcome == "invalid":
            raise InvalidTransition(reservation, transition)
        if outcome == "changed":
            metrics.RESERVATIONS.labels(reservation.status.value).inc()
        return reservation

    async def _change_across_slots(
        self,
        rid: str,
        transition: Transition,
        caller: str | None,
        correlation_id: str,
        book: PolicyBook,
        lines: list[dict[str, Any]],
    ) -> Reservation:
        res = reservation_keys(self.keys, rid)
        allocated = await self._allocations(rid, lines)
        if any(int(ln.get("r", 0)) > 0 for ln in lines) and all(
            a >= int(ln.get("r", 0)) for a, ln in zip(allocated, lines, strict=True)
        ):
            # Every line allocated, and the record not told yet (the sweeper would): tell it
            # first, so the answer is the one it will have (consumed).
            await self.apply_consumed(groups={self._group(ln) for ln in lines}, only=rid)
        outcome, flat, expired_now = await self.store.run_script(
            self._begin_transition,
            [res.record, res.expiry, res.recovery, res.outbox, res.record],
            [transition.value, correlation_id, self.step_deadline_ms, "1", caller or "", rid,
             orjson.dumps(allocated)],
        )  # fmt: skip
        if outcome == "missing":
            raise ReservationNotFound(rid)
        if outcome == "error":
            raise RuntimeError(f"transition of {rid} failed in Redis: {flat}")
        fields = _pairs(flat)
        if expired_now:
            metrics.RESERVATIONS.labels(ReservationStatus.EXPIRED.value).inc()
        if outcome in ("start", "unhold"):
            ending = self._ending_of(rid, fields)
            await self._release_holds([ending], book, request=True)
            [(_, _, flat_after)] = await self._finish_all([ending], request=True)
            fields = _pairs(flat_after)
            allocated = ending.alloc or allocated
            if not fields:
                raise ReservationNotFound(rid)
        elif outcome == "wait":
            raise ReservationBusy(f"reservation {rid} is changing right now; try again shortly")
        reservation = reservation_from_fields(rid, fields, allocated)
        wanted = _WANTED[transition]
        if outcome == "invalid" or (
            outcome in ("start", "unhold") and reservation.status != wanted
        ):
            raise InvalidTransition(reservation, transition)
        if outcome == "changed" or (outcome == "start" and reservation.status == wanted):
            metrics.RESERVATIONS.labels(reservation.status.value).inc()
        return reservation

    def _ending_of(self, rid: str, fields: Mapping[str, Any]) -> _Ending:
        """A record being ended (or undone), as read back from res_transition."""
        status = str(fields.get("st", ""))
        label = _SHOWN_AS.get(status, status)
        corr = str(fields.get("tc") or fields.get("co") or "")
        return _Ending(rid, orjson.loads(fields["ln"]), label=label, corr=corr)

    async def _release_holds(
        self, endings: Sequence[_Ending], book: PolicyBook, *, request: bool = False
    ) -> None:
        """Release the holds of ``endings`` in every group they hold in (res_unhold, one
        call per group and chunk), and note what each line had allocated. ``request``: for
        a request (its pipes, waited for by replicas), not a sweep (one batch)."""
        by_group: dict[int, list[tuple[_Ending, list[int]]]] = defaultdict(list)
        for ending in endings:
            ending.alloc = [int(line.get("a", 0)) for line in ending.lines]
            indexes: dict[int, list[int]] = defaultdict(list)
            for i, line in enumerate(ending.lines):
                indexes[self._group(line)].append(i)
            for g, ix in indexes.items():
                by_group[g].append((ending, ix))
        calls: list[ScriptCall] = []
        placed: list[list[tuple[_Ending, list[int]]]] = []
        for g, items in by_group.items():
            for start in range(0, len(items), EXPIRE_CHUNK):
                chunk = items[start : start + EXPIRE_CHUNK]
                keys: list[str] = []
                args: list[Any] = [book.lua_json, RELEASED_HOLD_TTL_MS, MARK_TTL_MS]
                for ending, ix in chunk:
                    keys.append(hold(g, ending.rid))
                    for i in ix:
                        line = ending.lines[i]
                        keys += [self.keys.position(line["s"], line["t"]), self.keys.outboxes[g]]
                    args += [ending.rid, len(ix), ending.label, ending.corr]
                calls.append((self._unhold, keys, args))
                placed.append(chunk)
        replies = await self._run(calls, request=request)
        for chunk, reply in zip(placed, replies, strict=True):
            if isinstance(reply, Exception):
                raise reply
            self.store.changed_here(reply[0])
            for (ending, _), state, lines_json in zip(chunk, reply[1::2], reply[2::2], strict=True):
                if state == "error":
                    raise RuntimeError(f"releasing {ending.rid}'s hold failed: {lines_json}")
                assert ending.alloc is not None
                for line in _json_list(lines_json):
                    ending.alloc[int(line["i"]) - 1] = int(line["a"])

    async def _finish_all(
        self, endings: Sequence[_Ending], *, request: bool = False
    ) -> list[tuple[str, str, Any]]:
        """End ``endings`` in their records' slots (res_finish, one call per group and
        chunk); per ending, in order: outcome, status, the record as a flat HGETALL."""
        by_group: dict[int, list[int]] = defaultdict(list)
        for n, ending in enumerate(endings):
            by_group[reservation_group(ending.rid, self.keys.groups)].append(n)
        calls: list[ScriptCall] = []
        placed: list[list[int]] = []
        for _, members in by_group.items():
            for start in range(0, len(members), EXPIRE_CHUNK):
                chunk = members[start : start + EXPIRE_CHUNK]
                keys: list[str] = []
                args: list[Any] = [self._ended_retention_ms]
                for n in chunk:
                    ending = endings[n]
                    res = reservation_keys(self.keys, ending.rid)
                    keys += [res.record, res.expiry, res.recovery, res.outbox]
                    args += [ending.rid, orjson.dumps(ending.alloc or [])]
                calls.append((self._finish, keys, args))
                placed.append(chunk)
        out: list[tuple[str, str, Any] | None] = [None] * len(endings)
        for chunk, reply in zip(placed, await self._run(calls, request=request), strict=True):
            if isinstance(reply, Exception):
                raise reply
            for n, j in zip(chunk, range(0, len(reply), 3), strict=True):
                outcome, status, flat = reply[j : j + 3]
                if outcome == "error":
                    raise RuntimeError(f"ending {endings[n].rid} failed in Redis: {status}")
                out[n] = (str(outcome), str(status), flat)
        return cast(list[tuple[str, str, Any]], out)

    async def _run(self, calls: Sequence[ScriptCall], *, request: bool) -> list[Any]:
        """A request's calls each through its primary's pipe, all at once (waited for by
        replicas, as its writes are); a sweep's in one pipelined batch."""
        if request:
            return list(
                await asyncio.gather(
                    *(self.store.run_script(s, keys, args) for s, keys, args in calls),
                    return_exceptions=True,
                )
            )
        return await self.store.run_scripts(calls)

    def _transition_keys(
        self, reservation_id: str, lines_json: str | None
    ) -> tuple[list[str], int]:
        """transition.lua's keys of one reservation, and its number of lines (0: no record)."""
        script_keys = reservation_keys(self.keys, reservation_id).as_list()
        lines = orjson.loads(lines_json) if lines_json is not None else []
        outboxes = self.keys.outboxes
        for line in lines:
            g = self._group(line)
            script_keys += [
                self.keys.position(line["s"], line["t"]),
                outboxes[g],
                hold(g, reservation_id),
            ]
        return script_keys, len(lines)

    # -- expiry, recovery, consumption: the sweeper's rounds -------------------------------

    async def _now_ms(self) -> int:
        seconds, micros = await self.redis.time()
        return int(seconds) * 1000 + int(micros) // 1000

    async def _due(self, index: Callable[[int], str], now_ms: int, limit: int) -> list[str]:
        pipe = self.redis.pipeline(transaction=False)
        for group in range(self.keys.groups):
            pipe.zrangebyscore(index(group), "-inf", now_ms, start=0, num=limit)
        return [str(rid) for ids in await pipe.execute() for rid in ids]

    async def expire_due(self, book: PolicyBook | None = None, limit: int = 500) -> int:
        """Expire held reservations whose TTL has passed (Redis TIME is the clock).

        Any number of processes may call this at once: each reservation is expired by a
        script that checks, there, that it is still held and due, so it happens exactly
        once; an entry stays in the index until it is expired, so a process that dies
        between the calls loses nothing (across slots, the ending is in the recovery index
        meanwhile, and ``recover_due`` finishes it).
        """
        due = await self._due(expiry_index, await self._now_ms(), limit)
        if not due:
            return 0
        if book is None:
            book = await self.store.policy_book()
        if self.cluster:
            return await self._end_across_slots(Transition.EXPIRE.value, due, book)
        pipe = self.redis.pipeline(transaction=False)
        for rid in due:
            pipe.hget(reservation_keys(self.keys, rid).record, "ln")
        lines = await pipe.execute()
        # Many reservations a script call: their events go out as one outbox entry per
        # stream and their positions as one announcement (docs/benchmarks.md).
        calls: list[ScriptCall] = []
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
            if chunk:
                chunks.append(chunk)
                calls.append((self._transition, script_keys, args))
        expired = 0
        for chunk, result in zip(chunks, await self.store.run_scripts(calls), strict=True):
            if isinstance(result, Exception):
                log.warning("expiring reservations failed: %s", result)
                continue
            self.store.changed_here(result[0])
            for rid, j in zip(chunk, range(1, len(result), 4), strict=True):
                outcome = result[j]
                if outcome == "changed":
                    expired += 1
                elif outcome == "error":
                    log.warning("expiring reservation %s failed: %s", rid, result[j + 1])
        if expired:
            metrics.RESERVATIONS.labels(ReservationStatus.EXPIRED.value).inc(expired)
        return expired

    async def recover_due(self, book: PolicyBook | None = None, limit: int = 500) -> int:
        """Across slots: end the steps a process left overdue (it died, or lost Redis): a
        placing is rolled back (its holds released, its key freed for a new try), an ending
        rolled forward. Returns how many were ended. (On a single Redis every change is one
        script: nothing is ever left between steps.)"""
        if not self.cluster:
            return 0
        due = await self._due(recovery_index, await self._now_ms(), limit)
        if not due:
            return 0
        if book is None:
            book = await self.store.policy_book()
        return await self._end_across_slots("recover", due, book)

    async def _end_across_slots(self, action: str, due: list[str], book: PolicyBook) -> int:
        """Begin ``action`` ('expire' or 'recover') for ``due`` in their records' slots,
        release the holds of those it began or found ending, and end them."""
        pipe = self.redis.pipeline(transaction=False)
        for rid in due:
            pipe.hmget(reservation_keys(self.keys, rid).record, ["ln", "ik"])
        found = await pipe.execute()
        by_group: dict[int, list[tuple[str, str]]] = defaultdict(list)
        for rid, (ln, ik) in zip(due, found, strict=True):
            if ln is not None:
                try:
                    orjson.loads(ln)
                except orjson.JSONDecodeError:
                    log.warning("reservation %s has an unreadable record; left as it is", rid)
                    continue
            by_group[reservation_group(rid, self.keys.groups)].append((rid, str(ik or "")))
        calls: list[ScriptCall] = []
        placed: list[list[str]] = []
        for _, members in by_group.items():
            for start in range(0, len(members), EXPIRE_CHUNK):
                keys: list[str] = []
                args: list[Any] = [action, "", self.step_deadline_ms, "1", ""]  # any owner's
                for rid, ik in members[start : start + EXPIRE_CHUNK]:
                    res = reservation_keys(self.keys, rid)
                    keys += [res.record, res.expiry, res.recovery, res.outbox, ik or res.record]
                    args += [rid, ""]
                calls.append((self._begin_transition, keys, args))
                placed.append([rid for rid, _ in members[start : start + EXPIRE_CHUNK]])
        endings: list[_Ending] = []
        begun = 0
        for chunk, reply in zip(placed, await self.store.run_scripts(calls), strict=True):
            if isinstance(reply, Exception):
                log.warning("%s of reservations failed: %s", action, reply)
                continue
            for rid, j in zip(chunk, range(0, len(reply), 3), strict=True):
                outcome, flat, _ = reply[j : j + 3]
                if outcome == "error":
                    log.warning("%s of reservation %s failed: %s", action, rid, flat)
                elif outcome in ("start", "unhold"):
                    begun += outcome == "start"
                    endings.append(self._ending_of(rid, _pairs(flat)))
        if not endings:
            return 0
        await self._release_holds(endings, book)
        ended = 0
        for outcome, status, _ in await self._finish_all(endings):
            if outcome == "changed" and status == ReservationStatus.EXPIRED.value:
                ended += 1
        if ended:
            metrics.RESERVATIONS.labels(ReservationStatus.EXPIRED.value).inc(ended)
        return ended if action == "expire" else len(endings)

    async def apply_consumed(
        self, limit: int = 500, *, groups: set[int] | None = None, only: str | None = None
    ) -> int:
        """Across slots: tell the records of the holds the fold found fully allocated
        (``consumed_marks``); a reservation whose every hold is becomes consumed. Returns how
        many marks were taken. (``groups``, ``only``: the marks of one reservation.)"""
        if not self.cluster:
            return 0
        wanted = sorted(groups) if groups is not None else list(range(self.keys.groups))
        pipe = self.redis.pipeline(transaction=False)
        for group in wanted:
            if only is None:
                pipe.hgetall(consumed_marks(group))
            else:
                pipe.hget(consumed_marks(group), only)
        marks: list[tuple[int, str, dict[str, Any]]] = []
        for group, found in zip(wanted, await pipe.execute(), strict=True):
            if only is not None:
                found = {only: found} if found is not None else {}
            for rid, raw in list(found.items())[:limit]:
                try:
                    mark = orjson.loads(raw)
                except orjson.JSONDecodeError:
                    mark = {}
                marks.append((group, str(rid), mark if isinstance(mark, dict) else {}))
        if not marks:
            return 0
        by_home: dict[int, list[tuple[int, str, dict[str, Any]]]] = defaultdict(list)
        for mark in marks:
            by_home[reservation_group(mark[1], self.keys.groups)].append(mark)
        calls: list[ScriptCall] = []
        for _, members in by_home.items():
            for start in range(0, len(members), EXPIRE_CHUNK):
                keys: list[str] = []
                args: list[Any] = [self._ended_retention_ms]
                for group, rid, mark in members[start : start + EXPIRE_CHUNK]:
                    res = reservation_keys(self.keys, rid)
                    keys += [res.record, res.expiry, res.outbox]
                    corr = mark.get("c")
                    args += [rid, group, corr if isinstance(corr, str) else "", mark.get("e", "")]
                calls.append((self._note_consumed, keys, args))
        failed = False
        consumed = 0
        for reply in await self.store.run_scripts(calls):
            if isinstance(reply, Exception) or "error" in reply:
                log.warning("telling reservations of their allocated holds failed: %s", reply)
                failed = True
            else:
                consumed += sum(1 for outcome in reply if outcome == "consumed")
        if consumed:
            metrics.RESERVATIONS.labels(ReservationStatus.CONSUMED.value).inc(consumed)
        if failed:
            return 0  # the marks stay, and are told again (note_consumed is idempotent)
        pipe = self.redis.pipeline(transaction=False)
        for group, rid, _ in marks:
            pipe.hdel(consumed_marks(group), rid)
        await pipe.execute()
        return len(marks)

    async def sweep(self, book: PolicyBook | None = None) -> int:
        """One round of the sweeper: expire what is due, end what was left between steps,
        and tell records of their allocated holds. Returns how many reservations expired."""
        expired = await self.expire_due(book)
        if self.cluster:
            await self.recover_due(book)
            await self.apply_consumed()
        return expired

    # -- a single Redis from an earlier release ------------------------------------------

    async def migrate_legacy(self) -> int:
        """Give the active reservations of an earlier release (whose lines' units were
        counted in the record itself) their holds. One Redis only, where they can exist;
        idempotent. Returns how many were migrated."""
        if self.cluster or int(await self.redis.get(_LAYOUT) or 0) >= _HOLDS_LAYOUT:
            return 0
        migrated = 0
        for key in await self.store.scan_keys(record_pattern(), _SCAN_COUNT):
            rid = key.rsplit(":r:", 1)[1]
            lines_json = await self.redis.hget(key, "ln")
            if lines_json is None:
                continue
            try:
                lines = orjson.loads(lines_json)
            except orjson.JSONDecodeError:
                continue
            if not isinstance(lines, list) or all("g" in line for line in lines):
                continue
            holds = [hold(self._group(line), rid) for line in lines]
            groups = [self._group(line) for line in lines]
            migrated += int(
                await self.store.run_script(self._migrate, [key, *holds], [orjson.dumps(groups)])
            )
        return migrated

    # -- audit ---------------------------------------------------------------------------

    async def audit(self, statuses: dict[str, int] | None = None) -> list[AuditDifference]:
        """Item-sites whose ``reserved`` differs from their active reservations' holds.

        Reads are not one snapshot; a difference seen once is read again (up to three
        times) and reported only if it persists, so a busy system does not cry wolf. Every
        primary of a Cluster is scanned. ``statuses``, when given, receives the number of
        reservation records by status (the status callers see; records being placed or
        undone are none), read in the first pass.
        """
        differences = await self._audit_pass(statuses)
        for _ in range(2):
            if not differences:
                break
            await asyncio.sleep(0.05)
            again = {(d.sku, d.site): d for d in await self._audit_pass()}
            differences = [again[(d.sku, d.site)] for d in differences if (d.sku, d.site) in again]
        return differences

    async def _count_statuses(self, statuses: dict[str, int]) -> None:
        """Reservation records by the status callers see (every primary of a Cluster)."""
        records = await self.store.scan_keys(record_pattern(), _SCAN_COUNT)
        for chunk in _chunks(records, 500):
            pipe = self.redis.pipeline(transaction=False)
            for key in chunk:
                pipe.hget(key, "st")
            for status in await pipe.execute():
                if status is None or status in _NOT_A_RESERVATION:
                    continue
                shown = _SHOWN_AS.get(status, status)
                statuses[shown] = statuses.get(shown, 0) + 1

    async def _audit_pass(self, statuses: dict[str, int] | None = None) -> list[AuditDifference]:
        expected: dict[tuple[str, str], int] = defaultdict(int)
        if statuses is not None:
            await self._count_statuses(statuses)
        holds = await self.store.scan_keys(hold_pattern(), _SCAN_COUNT)
        for chunk in _chunks(holds, 500):
            pipe = self.redis.pipeline(transaction=False)
            for key in chunk:
                pipe.hmget(key, ["st", "ln"])
            for status, lines in await pipe.execute():
                if status != "held" or lines is None:
                    continue
                for line in orjson.loads(lines):
                    expected[(line["s"], line["t"])] += int(line["r"]) - int(line["a"])
        reserved: dict[tuple[str, str], int] = {}
        positions = await self.store.scan_keys(f"{k.PREFIX}:{{g*}}:p:*", _SCAN_COUNT)
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
    """Runs the reservations' sweep (``ReservationStore.sweep``: expiry, and on a Cluster
    recovery and consumption) every ``interval`` seconds until stopped (workers and API
    processes).

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
        migrated = False
        while not stop.is_set():
            try:
                if not migrated:
                    await self.reservations.migrate_legacy()
                    migrated = True
                if self.duty is not None and self.stand_by and await self.duty.taken():
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(stop.wait(), timeout=self.interval)
                    continue
                book = await self.policy_book() if self.policy_book is not None else None
                await self.reservations.sweep(book)
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
