"""Dead-letter tooling: list what `inventory.dlq.v1` holds and re-submit it after a fix.

A replay re-produces the original key and value to the original topic, with a header
naming the letter, and marks the letter replayed in Redis (store/replay_marks.py). A
letter is re-submitted once: a second replay finds it marked and sends nothing. When the
worker refuses a replayed message again (the fix was not enough), it writes no new letter:
it notes "failed again" on the letter's mark, and the next replay sends that letter again.
So the dead-letter topic never grows with copies, and whatever is refused stays in it.
(The fold de-duplicates by ``event_id`` besides: a message sent twice folds once.)
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import re
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, TextIO

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from redis.exceptions import RedisError

from atp_service.config import DLQ_TOPIC, INBOUND_TOPICS, Settings
from atp_service.store import connect
from atp_service.store.replay_marks import REPLAYED_FROM_HEADER, ReplayMark, ReplayMarks
from stream_agents.records import original_bytes


@dataclass(frozen=True, slots=True)
class DeadLetter:
    partition: int  # where the dead letter itself sits in the DLQ topic
    offset: int
    record: dict[str, Any]
    digest: str = ""  # of the letter's bytes: tells a replay mark of this letter from another's

    @property
    def code(self) -> str:
        return str(self.record.get("code", ""))

    @property
    def where(self) -> str:
        return f"{self.partition}:{self.offset}"

    @property
    def dead_lettered_at(self) -> datetime | None:
        raw = self.record.get("dead_lettered_at")
        try:
            return datetime.fromisoformat(str(raw)) if raw else None
        except ValueError:
            return None

    @property
    def replayable(self) -> bool:
        return self.record.get("topic") in INBOUND_TOPICS and "value_encoding" in self.record


# -- --since ----------------------------------------------------------------------------------

SINCE_FORMS = (
    "a date (2026-12-01, midnight UTC), a time (2026-12-01T10:00Z, 2026-12-01 10:00:00+01:00; "
    "UTC when it has no offset), a span back from now (90s, 15m, 1h, 2d, 1w; '1h ago' too), "
    "or now / today / yesterday (midnight UTC)"
)
_SPAN = re.compile(
    r"(\d+(?:\.\d+)?)\s*(s|sec|secs|seconds?|m|min|mins|minutes?|h|hours?|d|days?|w|weeks?)"
    r"(?:\s+ago)?",
    re.IGNORECASE,
)
_SPAN_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86_400, "w": 604_800}


def parse_since(text: str, now: datetime | None = None) -> datetime:
    """What people type for "from then on"; ``ValueError`` naming the accepted forms."""
    now = now or datetime.now(UTC)
    value = text.strip()
    word = value.lower()
    midnight = now.astimezone(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    if word == "now":
        return now
    if word == "today":
        return midnight
    if word == "yesterday":
        return midnight - timedelta(days=1)
    span = _SPAN.fullmatch(value)
    if span is not None:
        unit = span.group(2).lower()
        key = "m" if unit.startswith("m") else unit[0]
        return now - timedelta(seconds=float(span.group(1)) * _SPAN_SECONDS[key])
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        raise ValueError(f"--since {text!r} is not a time this reads: give {SINCE_FORMS}") from None
    return parsed if parsed.tzinfo is not None else parsed.replace(tzinfo=UTC)


# -- reading the topic ------------------------------------------------------------------------

#: A fetch that waits this long and brings nothing ends the reading of the topic.
_QUIET_MS = 300


async def read_dead_letters(
    bootstrap: str, *, code: str | None = None, since: datetime | None = None
) -> list[DeadLetter]:
    """Every dead letter now in the topic (from the start to the current end), filtered.

    Read until each partition is past its reported end *and* a fetch brings nothing more:
    Tansu reports the end of a partition whose last write held several records as one past
    that write's first record, so the reported end alone would leave its last records out.
    """
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap, enable_auto_commit=False, group_id=None
    )
    await consumer.start()
    try:
        partitions = consumer.partitions_for_topic(DLQ_TOPIC)
        if partitions is None:
            await consumer.topics()  # refresh metadata once
            partitions = consumer.partitions_for_topic(DLQ_TOPIC) or set()
        tps = [TopicPartition(DLQ_TOPIC, p) for p in sorted(partitions)]
        if not tps:
            return []
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        ends = await consumer.end_offsets(tps)
        letters: list[DeadLetter] = []
        while True:
            batch = await consumer.getmany(*tps, timeout_ms=_QUIET_MS)
            for messages in batch.values():
                letters.extend(_letter(m.partition, m.offset, m.value) for m in messages)
            if not batch and all([await consumer.position(tp) >= ends[tp] for tp in tps]):
                break
    finally:
        await consumer.stop()
    letters.sort(key=lambda x: (x.partition, x.offset))
    return [letter for letter in letters if _wanted(letter, code, since)]


def _letter(partition: int, offset: int, value: bytes | None) -> DeadLetter:
    try:
        record = json.loads(value or b"{}")
    except ValueError:
        record = {"code": "unreadable_dead_letter"}
    digest = hashlib.blake2b(value or b"", digest_size=8).hexdigest()
    return DeadLetter(partition, offset, record if isinstance(record, dict) else {}, digest)


def _wanted(letter: DeadLetter, code: str | None, since: datetime | None) -> bool:
    if code is not None and letter.code != code:
        return False
    if since is not None:
        at = letter.dead_lettered_at
        if at is None or at < since:
            return False
    return True


@dataclass
class ReplayResult:
    replayed: list[DeadLetter] = field(default_factory=list)
    already: list[DeadLetter] = field(default_factory=list)  # replayed before: not sent again
    skipped: list[DeadLetter] = field(default_factory=list)  # not from an inbound topic

    def counts(self) -> tuple[int, int, int]:
        return len(self.replayed), len(self.already), len(self.skipped)


async def replay(
    bootstrap: str, letters: Sequence[DeadLetter], marks: ReplayMarks, *, dry_run: bool = False
) -> ReplayResult:
    """Re-submit each letter not replayed before to its original topic, and mark it.

    The mark is taken before the send (two replays at once send a letter once) and given
    back when the send fails. ``dry_run`` sends and marks nothing: it says what would go.
    """
    result = ReplayResult()
    marked = await marks.of([(x.where, x.digest) for x in letters])
    for letter in letters:
        mark = marked.get(letter.where)
        if not letter.replayable:
            result.skipped.append(letter)
        elif mark is not None and mark.failed_again_at is None:
            result.already.append(letter)
        else:
            result.replayed.append(letter)
    if dry_run or not result.replayed:
        return result
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all")
    await producer.start()
    sending: list[tuple[DeadLetter, asyncio.Future[Any]]] = []
    unsent: list[DeadLetter] = []
    try:
        now = datetime.now(UTC)
        for letter in list(result.replayed):
            if not await marks.claim(letter.where, letter.digest, now):
                result.replayed.remove(letter)
                result.already.append(letter)
                continue
            unsent.append(letter)
            rec = letter.record
            key = original_bytes(rec.get("key"), str(rec.get("key_encoding", "none")))
            value = original_bytes(rec.get("value"), str(rec["value_encoding"]))
            origin = f"{DLQ_TOPIC}:{letter.where}".encode()
            future = await producer.send(
                str(rec["topic"]), key=key, value=value, headers=[(REPLAYED_FROM_HEADER, origin)]
            )
            unsent.remove(letter)
            sending.append((letter, future))
    finally:
        outcomes = await asyncio.gather(*(f for _, f in sending), return_exceptions=True)
        await producer.stop()
        failed = [
            x for (x, _), o in zip(sending, outcomes, strict=True) if isinstance(o, Exception)
        ]
        # Not known to be sent: their marks go, so a later replay sends them.
        await marks.release([x.where for x in (*unsent, *failed)])
    errors = [o for o in outcomes if isinstance(o, Exception)]
    if errors:
        raise errors[0]
    return result


# -- the command ------------------------------------------------------------------------------

#: What each column of `atp dlq list` holds (also in `atp dlq --help`).
COLUMNS = (
    ("LETTER", "where the dead letter sits in inventory.dlq.v1: partition:offset"),
    ("DEAD-LETTERED", "when the worker refused the message (UTC)"),
    ("CODE", "why (docs/worker.md, Decoding): malformed_json, schema_violation, ..."),
    ("FROM", "the refused message's topic:partition:offset"),
    ("KEY", "the refused message's key"),
    (
        "REPLAYED",
        "when `atp dlq replay` re-submitted it, and whether the worker refused it again (the "
        "next replay then sends it again); - never; ? Redis unreachable",
    ),
    ("DETAIL", "what exactly was wrong"),
)


def columns_help() -> str:
    width = max(len(name) for name, _ in COLUMNS)
    return "\n".join(f"  {name:<{width}}  {text}" for name, text in COLUMNS)


def _print_letters(
    letters: Sequence[DeadLetter], marks: dict[str, ReplayMark] | None, out: TextIO
) -> None:
    """A header, then one line per letter, in the columns of ``COLUMNS`` (aligned)."""
    rows = [[name for name, _ in COLUMNS]]
    for letter in letters:
        rec = letter.record
        found = None if marks is None else marks.get(letter.where)
        mark = "?" if marks is None else found.describe() if found else "-"
        origin = f"{rec.get('topic')}:{rec.get('partition')}:{rec.get('offset')}"
        when = str(rec.get("dead_lettered_at", "-"))
        rows.append(
            [letter.where, when, letter.code, origin, str(rec.get("key")), mark,
             str(rec.get("detail", ""))]
        )  # fmt: skip
    widths = [max(len(row[i]) for row in rows) for i in range(len(COLUMNS) - 1)]
    for row in rows:
        cells = [cell.ljust(width) for cell, width in zip(row, widths, strict=False)]
        out.write("  ".join([*cells, row[-1]]).rstrip() + "\n")


async def _run(
    settings: Settings,
    action: str,
    *,
    code: str | None,
    since: datetime | None,
    as_json: bool,
    dry_run: bool,
    out: TextIO,
) -> int:
    letters = await read_dead_letters(settings.bootstrap_servers, code=code, since=since)
    client = connect(
        settings.redis_url,
        timeout=settings.redis_timeout_seconds,
        max_connections=4,
        cluster=settings.redis_cluster,
    )
    try:
        marks = ReplayMarks(client)
        if action == "list":
            try:
                found: dict[str, ReplayMark] | None = await marks.of(
                    [(x.where, x.digest) for x in letters]
                )
            except (RedisError, OSError) as exc:
                print(f"atp dlq: Redis unreachable ({exc}); REPLAYED unknown", file=sys.stderr)
                found = None
            if as_json:
                for letter in letters:
                    where = {"dlq_partition": letter.partition, "dlq_offset": letter.offset}
                    mark = None if found is None else found.get(letter.where)
                    replayed = {
                        "replayed_at": mark.replayed_at if mark else None,
                        "failed_again_at": mark.failed_again_at if mark else None,
                    }
                    out.write(json.dumps({**where, **letter.record, **replayed}) + "\n")
            else:
                _print_letters(letters, found, out)
                done = "?" if found is None else str(len(found))
                out.write(f"{len(letters)} dead letter(s), {done} of them replayed\n")
            return 0
        try:
            result = await replay(settings.bootstrap_servers, letters, marks, dry_run=dry_run)
        except (RedisError, OSError) as exc:
            print(
                f"atp dlq: Redis at {settings.redis_url} is unreachable ({exc}): a replay "
                "needs it to remember what it sent; nothing was sent",
                file=sys.stderr,
            )
            return 1
        if dry_run:
            _print_letters(result.replayed, {}, out)
        sent, already, skipped = result.counts()
        verb = "would replay" if dry_run else "replayed"
        out.write(f"{verb} {sent} dead letter(s) to their original topics")
        if already:
            out.write(f"; {already} replayed before, not sent again")
        if skipped:
            out.write(f"; {skipped} not from an inbound topic, skipped")
        out.write("\n")
        return 0
    finally:
        await client.aclose()


def run_dlq(
    settings: Settings,
    action: str,
    *,
    code: str | None = None,
    since: str | None = None,
    as_json: bool = False,
    dry_run: bool = False,
    out: TextIO | None = None,
) -> int:
    """`atp dlq list|replay [--code C] [--since T] [--dry-run]`; returns the exit code."""
    if action not in ("list", "replay"):
        print(f"atp dlq: unknown action {action!r} (list or replay)", file=sys.stderr)
        return 2
    try:
        since_at = parse_since(since) if since else None
    except ValueError as exc:
        print(f"atp dlq: {exc}", file=sys.stderr)
        return 2
    return asyncio.run(
        _run(
            settings,
            action,
            code=code,
            since=since_at,
            as_json=as_json,
            dry_run=dry_run,
            out=out or sys.stdout,  # looked up now: a test may have replaced it
        )
    )
