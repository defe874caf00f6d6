"""Redis coming back holding less than was folded, under a running worker: it notices by itself,
reads again from Kafka what was lost, and every position ends as the fold of every event once.
"""

from __future__ import annotations

import random
import re
import signal
from collections import defaultdict
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest
from aiokafka import AIOKafkaProducer

from atp_service.domain import ItemSite
from atp_service.embedded import LOOPBACK, EmbeddedStack, ManagedProcess, free_port
from atp_service.store import KeySpace, RedisStore, connect
from tests.integration._api_process import ApiProcess, start_api, stop_api
from tests.integration._worker_process import (
    WorkerProcess,
    eventually,
    forget_event_ids,
    produce_receipts,
    versions_folded,
)
from tests.random_refs import random_site, random_sku

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def redis_url(module_redis: ManagedProcess) -> str:
    """The module's redis-server: the tests kill it and start it again, from its dump.rdb
    (SAVE) or from nothing."""
    return f"redis://{LOOPBACK}:{module_redis.port}/0"


@pytest.fixture(scope="module")
def worker(
    stack: EmbeddedStack, redis_url: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[WorkerProcess]:
    """One worker over that Redis, running through every test of the module."""
    process = WorkerProcess(stack, tmp_path_factory.mktemp("worker"))
    process.env["ATP_REDIS_URL"] = redis_url
    process.env["ATP_WORKER_METRICS_PORT"] = str(free_port())
    # Every group's record is brought up to where the batches ended only once a minute:
    # between two, only the offsets each fold call recorded stand between a re-read and a
    # second fold (once the de-duplication window is forgotten, below).
    process.env["ATP_WORKER_ADVANCE_SECONDS"] = "60"
    process.start()
    yield process
    process.stop()


@pytest.fixture(scope="module")
def api(
    stack: EmbeddedStack, redis_url: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ApiProcess]:
    process = start_api(tmp_path_factory.mktemp("api"), redis_url, stack.bootstrap)
    yield process
    stop_api(process)


@pytest.fixture
async def store(redis_url: str) -> AsyncIterator[RedisStore]:
    client = connect(redis_url, timeout=2.0, max_connections=8)
    yield RedisStore(client, KeySpace(16), dedup_window_seconds=86_400)
    await client.aclose()


class Receipts:
    """A stream of receipts over item-sites on every partition, and what folding it once gives."""

    def __init__(self, seed: int, items: int = 24) -> None:
        self.items = [ItemSite(random_sku(), random_site()) for _ in range(items)]
        self.rng = random.Random(seed)
        self.totals: dict[ItemSite, int] = defaultdict(int)
        self.counts: dict[ItemSite, int] = defaultdict(int)

    def next(self, n: int) -> list[tuple[ItemSite, int]]:
        stream = [(self.rng.choice(self.items), self.rng.randint(1, 5)) for _ in range(n)]
        for item, qty in stream:
            self.totals[item] += qty
            self.counts[item] += 1
        return stream

    @property
    def events(self) -> int:
        return sum(self.counts.values())

    async def folded_once(self, store: RedisStore) -> bool:
        """Every position is the fold of every receipt so far, each once."""
        positions = await store.read_positions(self.items)
        return all(
            (pos.on_hand, pos.version) == (self.totals[item], self.counts[item])
            for item, pos in zip(self.items, positions, strict=True)
        )


async def restart(server: ManagedProcess, store: RedisStore, *, from_dump: bool) -> None:
    """SIGKILL, then start again: from the dump.rdb of the last SAVE, or empty."""
    server.signal(signal.SIGKILL)
    assert server.proc is not None
    server.proc.wait(10)
    dump = Path(server.argv[server.argv.index("--dir") + 1]) / "dump.rdb"
    if not from_dump:
        dump.unlink(missing_ok=True)
    server.start()
    await store.redis.connection_pool.disconnect()  # the test's own connections broke


def rewinds(worker: WorkerProcess) -> float:
    port = worker.env["ATP_WORKER_METRICS_PORT"]
    text = httpx.get(f"http://{LOOPBACK}:{port}/metrics", timeout=5).text
    found = re.search(r"^atp_fold_rewinds_total (\S+)$", text, re.M)
    return float(found.group(1)) if found else 0.0


async def test_a_redis_restored_from_an_older_rdb_under_a_running_worker_catches_up(
    worker: WorkerProcess,
    module_redis: ManagedProcess,
    store: RedisStore,
    producer: AIOKafkaProducer,
) -> None:
    receipts = Receipts(seed=18)
    await produce_receipts(producer, receipts.next(200))
    await eventually(lambda: receipts.folded_once(store), worker)
    await store.redis.save()  # the RDB Redis will come back from
    await produce_receipts(producer, receipts.next(300))
    await eventually(lambda: receipts.folded_once(store), worker)
    rewinds_before = rewinds(worker)

    worker.pause()  # so that what Redis comes back with can be looked at first
    try:
        await restart(module_redis, store, from_dump=True)
        assert await versions_folded(store, receipts.items) == 200  # the older state
        await forget_event_ids(store)
    finally:
        worker.resume()

    await eventually(lambda: receipts.folded_once(store), worker)
    assert rewinds(worker) > rewinds_before
    worker.assert_alive()  # the same process, never restarted


async def test_a_redis_that_comes_back_empty_is_refilled_and_readyz_says_catching_up_meanwhile(
    worker: WorkerProcess,
    api: ApiProcess,
    module_redis: ManagedProcess,
    store: RedisStore,
    producer: AIOKafkaProducer,
) -> None:
    receipts = Receipts(seed=19)
    await produce_receipts(producer, receipts.next(300))
    await eventually(lambda: receipts.folded_once(store), worker)
    async with api.client() as client:

        async def ready() -> bool:
            return (await client.get("/readyz")).status_code == 200

        await eventually(ready)  # the API has seen the store the worker tracks

        worker.pause()
        try:
            await restart(module_redis, store, from_dump=False)
            # Before any worker noticed: the API knows that the store it saw came back empty.
            seen = (await client.get("/readyz")).json()
            assert (seen["code"], seen["partitions_catching_up"]) == ("store_catching_up", -1)
        finally:
            worker.resume()

        answers: list[str] = []

        async def ready_again() -> bool:
            response = await client.get("/readyz")
            answers.append(response.json().get("code", "ready"))
            if response.status_code != 200:
                return False
            # Ready means caught up: every position is whole again.
            assert await receipts.folded_once(store)
            return True

        await eventually(ready_again, worker, every=0.02)
    assert set(answers) <= {"store_catching_up", "store_unavailable", "ready"}
    assert answers[0] == "store_catching_up"
    worker.assert_alive()
