"""What a worker knows it recorded of its partitions (store/applied.py), without Redis."""

from __future__ import annotations

import pytest

from atp_service.store.applied import NOTHING, AppliedOffsets, PartitionRecord, record_fingerprint


def test_a_partition_not_placed_expects_nothing_and_learns_nothing() -> None:
    applied = AppliedOffsets(groups=3)

    applied.note(1, "wms:0", 40)

    assert applied.expected(1, "wms:0") == NOTHING
    assert not applied.tracks("wms:0")


def test_what_a_worker_knows_only_grows_until_it_reads_redis_again() -> None:
    applied = AppliedOffsets(groups=3)
    applied.reset("wms:0", [5, NOTHING, 9])

    applied.note(0, "wms:0", 7)
    applied.note(2, "wms:0", 3)  # an older reply (another call) changes nothing

    assert [applied.expected(g, "wms:0") for g in range(3)] == [7, NOTHING, 9]
    assert (applied.lowest("wms:0"), applied.highest("wms:0")) == (NOTHING, 9)
    applied.reset("wms:0", [1, 1, 1])  # Redis read again after a loss
    assert applied.highest("wms:0") == 1


def test_forgetting_a_partition_leaves_the_others() -> None:
    applied = AppliedOffsets(groups=2)
    applied.reset("wms:0", [1, 2])
    applied.reset("erp:1", [3, 4])

    applied.forget(["wms:0"])

    assert applied.partitions == ["erp:1"]


def test_a_reset_needs_every_groups_offset() -> None:
    with pytest.raises(ValueError):
        AppliedOffsets(groups=4).reset("wms:0", [1, 2])


def test_a_partition_starts_after_what_every_group_folded() -> None:
    assert PartitionRecord([9, 4, 12], None).start == 5
    assert PartitionRecord([NOTHING, 4], None).start == 0


def test_a_checkpoint_fingerprint_tells_record_values_apart() -> None:
    assert record_fingerprint(b"a") == record_fingerprint(b"a")
    assert record_fingerprint(b"a") != record_fingerprint(b"b")
    assert record_fingerprint(None) == record_fingerprint(b"")
    assert len(record_fingerprint(b"a")) == 16
