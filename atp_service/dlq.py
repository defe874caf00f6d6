"""Dead-letter tooling: list what `inventory.dlq.v1` holds and re-submit it after a fix.

A replay re-produces the original key and value to the original topic. The fold
de-duplicates by ``event_id``, so replaying the same dead letter twice folds it once.
"""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, TextIO

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from atp_service.config import DLQ_TOPIC, INBOUND_TOPICS, Settings
from stream_agents.records import original_bytes


@dataclass(frozen=True, slots=True)
class DeadLetter:
    partition: int  # where the dead letter itself sits in the DLQ topic
    offset: int
    record: dict[str, Any]

    @property
    def code(self) -> str:
        return str(self.record.get("code", ""))

    @property
    def dead_lettered_at(self) -> datetime | None:
        raw = self.record.get("dead_lettered_at")
        try:
            return datetime.fromisoformat(str(raw)) if raw else None
        except ValueError:
            return None


def parse_since(text: str) -> datetime:
    """An RFC 3339 time (``2026-11-23T05:00:00Z``) or a date (``2026-11-23``, midnight UTC)."""
    value = datetime.fromisoformat(text if "T" in text else f"{text}T00:00:00+00:00")
    if value.tzinfo is None:
        raise ValueError(f"--since needs an offset or Z: {text!r}")
    return value


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
    return [letter for letter in letters if _wanted(letter, code, since)]


def _letter(partition: int, offset: int, value: bytes | None) -> DeadLetter:
    try:
        record = json.loads(value or b"{}")
    except ValueError:
        record = {"code": "unreadable_dead_letter"}
    return DeadLetter(partition, offset, record if isinstance(record, dict) else {})


def _wanted(letter: DeadLetter, code: str | None, since: datetime | None) -> bool:
    if code is not None and letter.code != code:
        return False
    if since is not None:
        at = letter.dead_lettered_at
        if at is None or at < since:
            return False
    return True


async def replay(bootstrap: str, letters: Sequence[DeadLetter]) -> tuple[int, int]:
    """Re-submit each letter's original message to its original topic.

    Returns (replayed, skipped); a letter whose topic is not an inbound topic is skipped.
    """
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all")
    await producer.start()
    replayed = skipped = 0
    try:
        futures = []
        for letter in letters:
            rec = letter.record
            topic = rec.get("topic")
            if topic not in INBOUND_TOPICS or "value_encoding" not in rec:
                skipped += 1
                continue
            key = original_bytes(rec.get("key"), str(rec.get("key_encoding", "none")))
            value = original_bytes(rec.get("value"), str(rec["value_encoding"]))
            origin = f"{DLQ_TOPIC}:{letter.partition}:{letter.offset}".encode()
            futures.append(
                await producer.send(
                    str(topic), key=key, value=value, headers=[("atp-replayed-from", origin)]
                )
            )
            replayed += 1
        await asyncio.gather(*futures)
    finally:
        await producer.stop()
    return replayed, skipped


def _print_letters(letters: Sequence[DeadLetter], out: TextIO) -> None:
    """One tab-separated line each: where, when, code, origin, original key, detail."""
    for letter in letters:
        rec = letter.record
        out.write(
            f"{letter.partition}:{letter.offset}\t{rec.get('dead_lettered_at', '-')}\t"
            f"{letter.code}\t{rec.get('topic')}:{rec.get('partition')}:{rec.get('offset')}\t"
            f"{rec.get('key')}\t{rec.get('detail', '')}\n"
        )


def run_dlq(
    settings: Settings,
    action: str,
    *,
    code: str | None = None,
    since: str | None = None,
    as_json: bool = False,
    out: TextIO = sys.stdout,
) -> int:
    """`atp dlq list|replay [--code C] [--since T]`; returns the process exit code."""
    try:
        since_at = parse_since(since) if since else None
    except ValueError as exc:
        print(f"atp dlq: {exc}", file=sys.stderr)
        return 2
    letters = asyncio.run(read_dead_letters(settings.bootstrap_servers, code=code, since=since_at))
    if action == "list":
        if as_json:
            for letter in letters:
                where = {"dlq_partition": letter.partition, "dlq_offset": letter.offset}
                out.write(json.dumps({**where, **letter.record}) + "\n")
        else:
            _print_letters(letters, out)
            out.write(f"{len(letters)} dead letter(s)\n")
        return 0
    if action == "replay":
        replayed, skipped = asyncio.run(replay(settings.bootstrap_servers, letters))
        out.write(f"replayed {replayed} dead letter(s) to their original topics")
        out.write(f", skipped {skipped}\n" if skipped else "\n")
        return 0
    print(f"atp dlq: unknown action {action!r} (list or replay)", file=sys.stderr)
    return 2
