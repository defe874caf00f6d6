"""The outbox relay's publisher: Kafka's partition for each key, order kept, full batches split."""

from __future__ import annotations

import asyncio
from typing import Any

from aiokafka.partitioner import DefaultPartitioner

from atp_service.events import KafkaPublisher

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
