"""Outbox relays in several processes over the same outbox streams: every event is published
at least once, and the events of one key in their order."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from atp_service.config import EVENTS_TOPIC
from atp_service.domain import Bucket, InventoryDelta, ItemSite, Source
from atp_service.embedded import EmbeddedStack
from atp_service.store import KeySpace, PolicyBook, RedisStore, connect
from tests.integration._worker_process import in_order_for_a_consumer, json_value, read_topic
from tests.random_refs import random_event_id, random_site, random_sku

pytestmark = [pytest.mark.integration, pytest.mark.both_redis_kinds]

KEYS = 6
VERSIONS = 250
ROOT = Path(__file__).resolve().parents[2]


class RelayProcess:
    def __init__(
        self, redis_url: str, bootstrap: str, name: str, workdir: Path, *, cluster: bool
    ) -> None:
        self.log_path = workdir / f"{name}.log"
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "tests.integration._relay_process", redis_url, bootstrap,
                 name, "1000", *(["cluster"] if cluster else [])],
                cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)}, stdout=log,
                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True,
            )  # fmt: skip

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.kill()


@pytest.fixture
def relays() -> Iterator[list[RelayProcess]]:
    """The relay processes a test starts, stopped at its end."""
    started: list[RelayProcess] = []
    yield started
    for relay in started:
        relay.stop()


async def test_two_relays_one_killed_publish_every_event_of_a_key_in_its_order(
    stack: EmbeddedStack,
    own_redis_or_cluster: tuple[str, bool],
    relays: list[RelayProcess],
    tmp_path: Path,
) -> None:
    url, cluster = own_redis_or_cluster
    client = connect(url, timeout=2.0, max_connections=16, cluster=cluster)
    store = RedisStore(client, KeySpace(16), dedup_window_seconds=86_400)
    items = [ItemSite(random_sku(), random_site()) for _ in range(KEYS)]
    try:
        # One outbox entry per change, many per stream: what two relays would share out.
        for _ in range(VERSIONS):
            for item in items:
                event = InventoryDelta(
                    random_event_id(), Source.WMS, item.sku, item.site, Bucket.ON_HAND, 1, "x"
                )
                await store.fold(event, PolicyBook.of({}))
    finally:
        await client.aclose()
    first = RelayProcess(url, stack.bootstrap, "relay-a", tmp_path, cluster=cluster)
    second = RelayProcess(url, stack.bootstrap, "relay-b", tmp_path, cluster=cluster)
    relays.extend([first, second])
    keys = {f"{item.sku}@{item.site}".encode() for item in items}

    def ours(record: Any) -> bool:
        return record.key in keys

    def some_published(found: list[Any]) -> bool:
        return len(found) >= KEYS * VERSIONS // 4

    await read_topic(stack, EVENTS_TOPIC, ours, some_published)
    first.kill()  # mid-stream, with entries it read and may not have acknowledged

    def all_published(found: list[Any]) -> bool:
        return len({(r.key, json_value(r)["version"]) for r in found}) >= KEYS * VERSIONS

    published = await read_topic(stack, EVENTS_TOPIC, ours, all_published)
    seen = in_order_for_a_consumer(published)
    for key in keys:
        assert seen[key] == list(range(1, VERSIONS + 1)), (key, first.log_path.read_text()[-2000:])
