"""Every Redis key name the service uses, in one place.

Item-sites are spread over ``groups`` hash-tag groups (``{g<n>}``, n = crc32 of
``sku@site`` modulo the group count). Every key a fold of the group's events needs (their
positions and drift records, the de-duplication chunks of the group, its outbox) carries
the same tag, so on Redis Cluster a fold call stays a single-slot script. The group count
is fixed for the life of a dataset.

Reservations span item-sites by nature; their keys carry their own tag (see
``reservation_keys.py`` and docs/reservations.md: cross-slot reservations on a Cluster).
The configuration (policies, sites) shares one tag of its own, ``CONFIG_TAG``.
"""

from __future__ import annotations

import hashlib
import re
import zlib
from dataclasses import dataclass

PREFIX = "atp"

# Fields of a position hash. Short names: one hash per item-site, millions of them.
F_ON_HAND = "oh"
F_ALLOCATED = "al"
F_QUARANTINED = "qu"
F_RESERVED = "rs"
F_VERSION = "v"
F_AS_OF_MS = "ts"
F_SAFETY_STOCK = "ss"
#: The book and day its ATPs were last re-evaluated under (store/reevaluation.py):
#: ``<book generation> * STAMP_DAYS + <epoch day>``; written by reevaluate.lua alone.
F_EVALUATED = "e"
STAMP_DAYS = 100_000
IN_TRANSIT_PREFIX = "t:"  # "t:<epoch day of ETA>" or "t:-" for an unknown ETA
IN_TRANSIT_NO_ETA = "t:-"
SEQ_PREFIX = "q:"  # "q:<source>" -> last folded source_seq
SOURCE_PREFIX = "o:"  # "o:<source>" -> occurred_at (epoch ms) of the newest event it folded

BUCKET_FIELDS = {
    "on_hand": F_ON_HAND,
    "allocated": F_ALLOCATED,
    "quarantined": F_QUARANTINED,
}

#: The hash tag of the service's configuration (channel policies, sites and their
#: attributes): one slot on a Redis Cluster, so a change and its version move together and
#: one script (or MULTI) may touch any of them. Name more of them with ``config_key``.
CONFIG_TAG = "{config}"


def config_key(name: str) -> str:
    """A configuration key: ``atp:{config}:<name>``."""
    return f"{PREFIX}:{CONFIG_TAG}:{name}"


POLICIES = config_key("policies")  # hash: channel -> policy JSON
POLICIES_VERSION = config_key("policies:v")  # counter bumped on every policy change
SITES = config_key("sites")  # set of every site ever folded
#: Site attributes for the promise: hash site -> JSON, and a counter bumped on every change.
SITE_ATTRIBUTES = config_key("sites:attributes")
SITE_ATTRIBUTES_VERSION = config_key("sites:attributes:v")
#: Where these lived before they shared a slot (a single Redis moves them at start).
LEGACY_CONFIG_KEYS = {
    f"{PREFIX}:policies": POLICIES,
    f"{PREFIX}:policies:v": POLICIES_VERSION,
    f"{PREFIX}:sites": SITES,
    f"{PREFIX}:{{site-attributes}}:sites": SITE_ATTRIBUTES,
    f"{PREFIX}:{{site-attributes}}:v": SITE_ATTRIBUTES_VERSION,
}
RELAY_GROUP = "relay"  # consumer group reading the outbox streams
# hash: "<partition>:<offset>" of a dead letter in inventory.dlq.v1 -> its replay mark (dlq.py)
DLQ_REPLAYED = f"{PREFIX}:dlq:replayed"
#: The fold's record of what it re-read and whether a worker has tracked this dataset
#: (stream_agents/_positions.py): a token a restore from before the first worker loses, and
#: per inbound partition the offset a worker must re-read up to after finding the store
#: holding less than it had. Their own hash tag: one slot, read together by /readyz.
FOLD_EPOCH = f"{PREFIX}:{{fold}}:epoch"
FOLD_CATCHUP = f"{PREFIX}:{{fold}}:catchup"  # hash: "<topic>:<partition>" -> offset
#: Live outbox relays (zset: consumer name -> when its registration lapses, epoch ms); the
#: outbox streams are shared out among them (store/relay_leases.py).
RELAYS = f"{PREFIX}:relays"
#: Pub/sub channel on which every script that changes a position publishes it as it now is
#: (``announce`` in lua/_lib.lua, which spells it out too); position_cache.py follows it.
CHANGES_CHANNEL = f"{PREFIX}:changes"

# What the workers report for operators (store/ops.py): not stock, only about it.
OPS_WORKERS = f"{PREFIX}:ops:workers"  # hash: worker -> its last report (JSON)
OPS_DEAD_LETTERS = f"{PREFIX}:ops:dlq"  # list: the latest dead letters, newest first
OPS_DEAD_LETTER_COUNTS = f"{PREFIX}:ops:dlq:counts"  # hash: code -> dead letters
OPS_DRIFTS = f"{PREFIX}:ops:drift"  # list: the latest drift records, newest first
OPS_DRIFT_COUNTS = f"{PREFIX}:ops:drift:counts"  # hash: "<bucket>:events" / ":units" -> n
OPS_FOLDED_COUNTS = f"{PREFIX}:ops:folded"  # hash: "<source>:<outcome>" -> inbound events
OPS_AUDIT = f"{PREFIX}:ops:audit"  # the last audit's result (JSON)
OPS_AUDIT_LOCK = f"{PREFIX}:ops:audit:lock"  # held by the worker auditing, one interval long


def group_of(sku: str, site: str, groups: int) -> int:
    return zlib.crc32(f"{sku}@{site}".encode()) % groups


def tag(group: int) -> str:
    return f"{{g{group}}}"


def outbox(group: int) -> str:
    return f"{PREFIX}:{tag(group)}:outbox"


#: Every position key, on any node (SCAN MATCH; a glob, so the braces are literal).
POSITION_PATTERN = f"{PREFIX}:{{g*}}:p:*"
_POSITION_KEY = re.compile(rf"^{PREFIX}:\{{g(\d+)\}}:p:([^@]+)@(.+)$")


def parse_position_key(key: str) -> tuple[int, str, str] | None:
    """(group, sku, site) of a position key (``KeySpace.position``); None for another key."""
    found = _POSITION_KEY.match(key)
    if found is None:
        return None
    return int(found.group(1)), found.group(2), found.group(3)


#: The re-evaluation's state (store/reevaluation.py): a hash with its progress and the
#: policy books positions may have been evaluated under, and its lease. One slot of their own.
REEVALUATION = f"{PREFIX}:{{reeval}}:state"
REEVALUATION_LEASE = f"{PREFIX}:{{reeval}}:lease"
#: Set (NX, expiring after the period) by the worker that asks the sources for snapshots
#: this period (ATP_RECONCILE_EVERY_SECONDS; reconcile.py).
RECONCILE_DUE = f"{PREFIX}:reconcile:due"


def applied_offsets(group: int) -> str:
    """The highest Kafka offset folded into the group, per inbound partition (field
    ``partition_field``; written by fold.lua in the same call as the positions it moved, and
    by advance.lua), and beside it (field ``<partition>#``) a checkpoint: an offset and the
    fingerprint of the record there, which tells a log that was replaced from the one
    folded."""
    return f"{PREFIX}:{tag(group)}:applied"


def partition_field(topic: str, partition: int) -> str:
    return f"{topic}:{partition}"


def outbox_lease(group: int) -> str:
    """Who relays the group's outbox stream (one relay at a time keeps its order)."""
    return f"{PREFIX}:{tag(group)}:outbox:lease"


def duty_key(name: str) -> str:
    """Set by a worker after a successful round of a background duty (store/duty.py)."""
    return f"{PREFIX}:duty:{name}"


def rate_bucket(key_name: str) -> str:
    """The token bucket of one API key (by its configured name), shared by every API
    process (store/rate_limit.py). Its own hash tag: one slot per key on Redis Cluster.
    The name is hashed, so any text makes a safe key (no brace cuts the tag short)."""
    digest = hashlib.sha256(key_name.encode()).hexdigest()[:32]
    return f"{PREFIX}:{{rl:{digest}}}"


def dedup_chunk(group: int, generation: int, chunk: int) -> str:
    """A hash of folded events' fingerprints: one generation (a de-duplication window long)
    of one group, one ``chunk`` of the fingerprint space (so each stays a small, compactly
    encoded hash)."""
    return f"{PREFIX}:{tag(group)}:d:{generation}:{chunk}"


@dataclass(frozen=True, slots=True)
class ItemSiteKeys:
    position: str
    drift: str  # the last drift a snapshot found (JSON string, expires with the window)
    outbox: str


class KeySpace:
    """Key names for a dataset with a given number of hash-tag groups."""

    def __init__(self, groups: int) -> None:
        self.groups = groups
        self.outboxes = [outbox(g) for g in range(groups)]
        self.applied = [applied_offsets(g) for g in range(groups)]

    def item_site(self, sku: str, site: str) -> ItemSiteKeys:
        group = group_of(sku, site, self.groups)
        t = tag(group)
        ident = f"{sku}@{site}"
        return ItemSiteKeys(
            position=f"{PREFIX}:{t}:p:{ident}",
            drift=f"{PREFIX}:{t}:dr:{ident}",
            outbox=self.outboxes[group],
        )

    def position(self, sku: str, site: str) -> str:
        return f"{PREFIX}:{tag(group_of(sku, site, self.groups))}:p:{sku}@{site}"
