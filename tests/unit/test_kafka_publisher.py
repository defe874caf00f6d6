"""The outbox relay's publisher: Kafka's partition for each key, order kept, full batches split."""

from __future__ import annotations

import asyncio
import random
from typing import Any

from aiokafka.partitioner import DefaultPartitioner
from aiokafka.partitioner import murmur2 as aiokafka_murmur2

from atp_service.events import KafkaPublisher, murmur2

PARTITIONS = list(range(8))


class FakeBatch:
    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.records: list[tuple[bytes, bytes]] = []

    def append(self, *, key: bytes, value: bytes, timestamp: Any) -> object | None:
        if self.records and len(self.records) >= self.capacity:
            return None
        self.records.append((key, value))
        return object()

    def record_count(self) -> int:
        return len(self.records)

    def close(self) -> None:
        pass


class FakeProducer:
    def __init__(self, capacity: int = 1000) -> None:
        self.capacity = capacity
        self.sent: list[tuple[int, list[tuple[bytes, bytes]]]] = []

    async def partitions_for(self, topic: str) -> set[int]:
        return set(PARTITIONS)

    def create_batch(self) -> FakeBatch:
        return FakeBatch(self.capacity)

    async def send_batch(self, batch: FakeBatch, topic: str, *, partition: int) -> Any:
        self.sent.append((partition, list(batch.records)))
        done = asyncio.get_running_loop().create_future()
        done.set_result(None)
        return done


async def test_each_key_goes_to_the_partition_kafkas_default_partitioner_picks() -> None:
    producer = FakeProducer()
    messages = [(f"SKU-{n:05d}@DC-EAST", f"v{n}") for n in range(300)]
    await KafkaPublisher(producer).publish("atp.events.v1", messages)
    expected = DefaultPartitioner()
    for partition, records in producer.sent:
        for key, _ in records:
            assert expected(key, PARTITIONS, PARTITIONS) == partition
    assert sum(len(records) for _, records in producer.sent) == 300


async def test_messages_of_one_key_keep_their_order_across_full_batches() -> None:
    producer = FakeProducer(capacity=3)
    messages = [("SKU-1@DC-EAST", f"v{n}") for n in range(10)]
    publisher = KafkaPublisher(producer)
    await publisher.publish("atp.events.v1", messages)
    await publisher.publish("atp.events.v1", [("SKU-1@DC-EAST", "v10")])
    values = [value.decode() for _, records in producer.sent for _, value in records]
    assert values == [f"v{n}" for n in range(11)]
    assert [len(records) for _, records in producer.sent] == [3, 3, 3, 1, 1]


def test_murmur2_is_kafkas() -> None:
    rng = random.Random(7)
    keys = [bytes(rng.randrange(256) for _ in range(rng.randrange(0, 70))) for _ in range(3000)]
    keys += [b"", b"a", b"ab", b"abc", b"abcd", b"SKU-00001@DC-EAST", bytes(range(256))]
    assert [murmur2(k) for k in keys] == [aiokafka_murmur2(k) for k in keys]
