"""Prometheus metrics shared by the API, the worker and the outbox relay."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

REQUEST_SECONDS = Histogram(
    "atp_http_request_duration_seconds",
    "HTTP request latency by route and status.",
    ["method", "route", "status"],
    buckets=(0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5),
)
EVENTS_FOLDED = Counter(
    "atp_events_folded_total",
    "Inbound events by topic, source and outcome (folded, unchanged, duplicate, stale, "
    "replayed: at or below the offset already folded from its partition).",
    ["topic", "source", "outcome"],
)
EVENTS_DEAD_LETTERED = Counter(
    "atp_events_dead_lettered_total", "Inbound messages sent to the dead-letter topic.", ["code"]
)
DRIFT_EVENTS = Counter(
    "atp_drift_events_total", "Snapshots that disagreed with the folded position.", ["bucket"]
)
DRIFT_UNITS = Counter(
    "atp_drift_units_total", "Absolute units of disagreement found by snapshots.", ["bucket"]
)
CONSUMER_LAG = Gauge(
    "atp_consumer_lag_messages", "Messages not yet consumed, per partition.", ["topic", "partition"]
)
SYNC_LAG = Gauge(
    "atp_sync_lag_seconds",
    "How long the oldest inbound event of the partition not yet folded has waited (0 when "
    "the fold is caught up); keeps growing while the fold is held up (Redis or Kafka out).",
    ["topic", "partition", "source"],
)
OUTBOX_PUBLISHED = Counter(
    "atp_outbox_published_total", "Outbound events relayed from the outbox to Kafka."
)
EVENTS_COALESCED = Counter(
    "atp_events_coalesced_total",
    "availability.changed events folded into a later one of their item-site-channel by the "
    "relay (ATP_EVENTS_COALESCE_MS), or dropped as netting to no change.",
)
OUTBOX_RELAY_FAILURES = Counter(
    "atp_outbox_relay_failures_total", "Relay attempts that failed (Kafka or Redis)."
)
OUTBOX_BACKLOG = Gauge(
    "atp_outbox_backlog_events",
    "Outbox entries waiting to be relayed (an entry holds one event, or a fold call's events).",
)
REDIS_ERRORS = Counter("atp_redis_errors_total", "Redis calls that failed.", ["component"])
RATE_LIMITED = Counter(
    "atp_rate_limited_total", "Requests refused 429 by the per-key rate limit.", ["key"]
)
KAFKA_ERRORS = Counter("atp_kafka_errors_total", "Kafka calls that failed.", ["component"])
RESERVATIONS = Counter(
    "atp_reservations_total", "Reservation transitions by resulting status.", ["status"]
)
RESERVATION_AUDIT_MISMATCHES = Gauge(
    "atp_reservation_audit_mismatches",
    "Item-sites whose reserved units differ from their active reservation lines (last audit).",
)
RESERVATION_AUDIT_TIME = Gauge(
    "atp_reservation_audit_last_run_timestamp_seconds",
    "When the last audit of reserved units against the reservations ran (Unix time).",
)
RESERVATIONS_BY_STATUS = Gauge(
    "atp_reservations_by_status",
    "Reservation records by status, counted by the last audit (ended ones are kept for the "
    "idempotency window).",
    ["status"],
)
POSITION_READS = Counter(
    "atp_position_reads_total",
    "Item-site positions read by the API, by where they came from (copy: the in-process copy "
    "kept current by pushed changes; redis: read from Redis).",
    ["source"],
)
POSITION_PUSH_LAG = Histogram(
    "atp_position_push_lag_seconds",
    "From a position change in Redis to its arrival in an API process's in-process copy "
    "(one observation per message on the change channel: its newest position that was new "
    "to the copy).",
    buckets=(0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0),
)
POSITION_COPY_DROPS = Counter(
    "atp_position_copy_drops_total",
    "Times an API process dropped its in-process copy of positions (resubscribed, or nothing "
    "heard on the change channel within the staleness bound).",
)
REEVALUATED = Counter(
    "atp_reevaluated_item_sites_total",
    "Item-sites visited by re-evaluation passes (a channel policy changed, or a day came).",
)
REEVALUATION_EVENTS = Counter(
    "atp_reevaluation_events_total",
    "availability.changed events re-evaluation emitted (ATP moved without a fold).",
)
FOLD_CATCHING_UP = Gauge(
    "atp_fold_catching_up_partitions",
    "Inbound partitions this worker is reading again because Redis came back holding less "
    "than was folded (restarted from an older RDB or AOF, a replica promoted too early).",
)
FOLD_REWINDS = Counter(
    "atp_fold_rewinds_total",
    "Times a worker found Redis holding less than it had folded and read its partitions again.",
)
STORE_CATCHING_UP = Gauge(
    "atp_store_catching_up",
    "1 while this API process finds the store catching up (its /readyz answers 503): Redis "
    "came back holding less than was folded and the workers have not read it all again yet.",
)
