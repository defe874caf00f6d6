"""Settings read from the environment (contract section 6); builds no clients."""

from __future__ import annotations

import hashlib
import json
import re
import tomllib
from datetime import time
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Any, Literal, cast

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictInt,
    StringConstraints,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from atp_service.domain import DEFAULT_AUTHORITY, Bucket, ChannelPolicy, SiteAttributes, Source
from atp_service.domain.model import EMPTY_SITES, SITE_PATTERN, ZONE_PATTERN, is_valid_site
from atp_service.domain.sites import DEFAULT_PRIORITY, MAX_DAYS, MAX_PRIORITY, WEEKDAYS

Scope = Literal["availability:read", "reservations:write", "admin"]
ALL_SCOPES: tuple[Scope, ...] = ("availability:read", "reservations:write", "admin")

# Where `atp up` puts its embedded servers; the defaults of `atp api` and `atp worker`
# point there so that either can be started by hand beside a running `atp up`.
EMBEDDED_REDIS_PORT = 16379
EMBEDDED_KAFKA_PORT = 19092
EMBEDDED_API_PORT = 8000

INBOUND_TOPICS = ("wms.inventory.v1", "erp.inventory.v1")
EVENTS_TOPIC = "atp.events.v1"
DLQ_TOPIC = "inventory.dlq.v1"


class ApiKeySpec(BaseModel):
    """One API key: the plain key or its SHA-256 (hex), and the scopes it grants."""

    name: str = Field(min_length=1, max_length=128)
    """Who the key is (``oms-eu``): it owns the reservations the key makes, names the key's
    rate limit, idempotency keys and log lines. Keys sharing a name (a rotation: the old key
    and the new) are one caller."""
    key: str | None = None
    key_sha256: str | None = None
    scopes: list[Scope]

    @model_validator(mode="after")
    def _exactly_one_secret(self) -> ApiKeySpec:
        if (self.key is None) == (self.key_sha256 is None):
            raise ValueError(f"API key {self.name!r}: give exactly one of 'key' or 'key_sha256'")
        if self.key_sha256 is not None:
            digest = self.key_sha256.lower()
            if len(digest) != 64 or any(c not in "0123456789abcdef" for c in digest):
                raise ValueError(f"API key {self.name!r}: key_sha256 must be 64 hex digits")
        return self

    @property
    def digest(self) -> str:
        if self.key_sha256 is not None:
            return self.key_sha256.lower()
        assert self.key is not None
        return hashlib.sha256(self.key.encode()).hexdigest()


#: The contract's example of a site's attributes (the OpenAPI document shows it).
SITE_EXAMPLE: dict[str, Any] = {
    "priority": 10,
    "handling_days": 1,
    "cutoff": "15:00",
    "closed_weekdays": [7],
    "transit_days": {"US-EAST": 1, "US-WEST": 4},
    "default_transit_days": None,
}
_CUTOFF_PATTERN = r"^([01][0-9]|2[0-3]):[0-5][0-9]$"
_Days = Annotated[StrictInt, Field(ge=0, le=MAX_DAYS)]


class SiteSpec(BaseModel):
    """A site's attributes as ``ATP_SITES_FILE`` and ``PUT /v1/sites/{site}`` give them: the
    whole of them, omitted fields taking their defaults, unknown fields refused."""

    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [SITE_EXAMPLE]})

    priority: Annotated[StrictInt, Field(ge=0, le=MAX_PRIORITY)] = Field(
        default=DEFAULT_PRIORITY, description="Lower sources first under `priority`."
    )
    handling_days: _Days = Field(default=0, description="Shipping days from release to shipment.")
    cutoff: str | None = Field(
        default=None,
        description="UTC time of day, HH:MM; an order placed after it is released the next "
        "shipping day. Null: no cutoff.",
        json_schema_extra={"pattern": _CUTOFF_PATTERN},
    )
    closed_weekdays: list[Annotated[StrictInt, Field(ge=1, le=7)]] = Field(
        default=[], description="ISO weekdays (1 = Monday) on which the site does not ship."
    )
    transit_days: dict[
        Annotated[str, StringConstraints(pattern=f"^(?:{ZONE_PATTERN})$")], _Days
    ] = Field(default={}, description="Days from shipment to delivery, per ship-to zone.")
    default_transit_days: _Days | None = Field(
        default=None,
        description="Days to zones not in `transit_days`; null: the site does not deliver "
        "there. Omitted: 0 when `transit_days` is empty (the site delivers everywhere, at "
        "once), else null (it delivers to the zones listed only).",
    )

    @field_validator("cutoff")
    @classmethod
    def _time_of_day(cls, value: str | None) -> str | None:
        if value is not None and re.fullmatch(_CUTOFF_PATTERN, value) is None:
            raise ValueError("must be a UTC time of day, HH:MM (00:00 to 23:59)")
        return value

    @field_validator("closed_weekdays")
    @classmethod
    def _some_shipping_day(cls, value: list[int]) -> list[int]:
        if set(value) >= set(WEEKDAYS):
            raise ValueError("must leave at least one shipping day")
        return value

    def to_attributes(self) -> SiteAttributes:
        default = self.default_transit_days
        if "default_transit_days" not in self.model_fields_set:
            default = None if self.transit_days else 0
        return SiteAttributes(
            priority=self.priority,
            handling_days=self.handling_days,
            cutoff=time.fromisoformat(self.cutoff) if self.cutoff is not None else None,
            closed_weekdays=frozenset(self.closed_weekdays),
            transit_days=dict(self.transit_days),
            default_transit_days=default,
        )


def sites_from_mapping(raw: dict[str, Any]) -> dict[str, SiteAttributes]:
    """Every site of a sites file (``{"DC-EAST": {...}, ...}``); a ValueError names the site
    and the field of the first entry that is not valid."""
    sites: dict[str, SiteAttributes] = {}
    for site, body in raw.items():
        if not is_valid_site(site):
            raise ValueError(f"site {site!r}: not a site code ({SITE_PATTERN})")
        try:
            sites[site] = SiteSpec.model_validate(body).to_attributes()
        except ValidationError as exc:
            problems = "; ".join(
                f"{'.'.join(str(p) for p in e['loc']) or 'entry'}: {e['msg']}" for e in exc.errors()
            )
            raise ValueError(f"site {site}: {problems}") from None
    return sites


def read_config_file(path: Path, table: str) -> dict[str, Any]:
    """A JSON or TOML (by its ``.toml`` suffix) file of entries keyed by name; in TOML the
    entries may sit under a ``[table]`` of their own."""
    text = path.read_text()
    if path.suffix == ".toml":
        raw: dict[str, Any] = tomllib.loads(text)
        return cast(dict[str, Any], raw.get(table, raw))
    loaded = json.loads(text)
    if not isinstance(loaded, dict):
        raise ValueError("expected a JSON object keyed by name")
    return cast(dict[str, Any], loaded)


class Settings(BaseSettings):
    """Every knob of the service. Each field reads ``ATP_<FIELD>`` from the environment."""

    model_config = SettingsConfigDict(
        env_prefix="ATP_", env_file=".env", extra="ignore", frozen=True
    )

    # -- where things are --------------------------------------------------------------
    redis_url: str = f"redis://127.0.0.1:{EMBEDDED_REDIS_PORT}/0"
    """Redis holding the folded positions, reservations and the outbox; with ``redis_cluster``
    one or more seed nodes of a Redis Cluster, comma-separated (``redis://h1:p1,redis://h2:p2``)."""
    redis_cluster: bool = False
    """``true``: ``redis_url`` names seed nodes of a Redis Cluster (contract section 7)."""
    kafka_brokers: Annotated[list[str], NoDecode] = [f"127.0.0.1:{EMBEDDED_KAFKA_PORT}"]
    """Bootstrap servers, comma-separated ``host:port``."""
    api_url: str = f"http://127.0.0.1:{EMBEDDED_API_PORT}"
    """Where `atp status` asks an API process whether it is ready (the API itself ignores it)."""

    # -- security ------------------------------------------------------------------------
    api_keys: list[ApiKeySpec] = []
    """JSON list of ``{"name", "key" | "key_sha256", "scopes"}``; `atp api` refuses none."""
    environment: Literal["development", "production"] = "development"
    """In production, dev keys printed by `atp up` are refused."""
    api_max_body_bytes: int = Field(default=1_048_576, ge=1)
    """Largest request body the API accepts (413 beyond); 1 MiB holds a 1000-item batch."""
    api_rate_limit_per_second: float = Field(default=0.0, ge=0)
    """Requests a second per API key (429 with ``Retry-After`` beyond); 0 turns it off.
    One limit for the whole service: counted in Redis, shared by every API process. While
    Redis cannot be asked, each process counts alone (docs/security.md)."""
    api_rate_limit_burst: int = Field(default=0, ge=0)
    """Requests a key may make at once before the rate applies; 0: the rate, rounded up."""

    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    """Level of the JSON log lines; INFO writes one line per HTTP request."""

    # -- the model -----------------------------------------------------------------------
    channels_file: Path | None = None
    """Initial channel policies (JSON or TOML); without it every channel sells everywhere."""
    sites_file: Path | None = None
    """Initial site attributes for the promise (JSON or TOML, keyed by site); seeds sites that
    have none in Redis yet. A site never described ships the day it is asked, everywhere."""
    authority: dict[Bucket, Source] = dict(DEFAULT_AUTHORITY)
    """Which source owns which bucket, as JSON ``{"on_hand": "wms", ...}``."""
    dedup_window_seconds: int = Field(default=86_400, ge=86_400)
    """How long an ``event_id`` is remembered; the contract asks for at least 24 h."""
    dedup_chunks: int = Field(default=1024, ge=1, le=1_048_576)
    """Folded event ids are remembered as 96-bit fingerprints in small hashes: this many per
    hash-tag group and window. Compact while each holds at most 128 (about 2 million
    events per window with the defaults); beyond, still exact, just more bytes per event.
    Fixed for the life of a dataset, like ``key_groups``: every worker must use the same."""
    key_groups: int = Field(default=16, ge=1, le=16_384)
    """Hash-tag groups: item-sites of one group share a Redis Cluster slot and an outbox.
    Fixed for the life of a Redis dataset."""

    # -- Redis client --------------------------------------------------------------------
    redis_timeout_seconds: float = Field(default=0.5, gt=0)
    """Socket connect/read timeout: an outage is an error within this, never a hang."""
    redis_max_connections: int = Field(default=64, ge=1)
    redis_retry_after_seconds: int = Field(default=1, ge=1)
    """``Retry-After`` sent with a 503 when Redis is unreachable."""
    redis_wait_replicas: int = Field(default=0, ge=0)
    """An HTTP write (reservation, transition, admin change) is answered only once this many
    replicas have it (Redis ``WAIT``); a timeout is a 503 and the write still counts."""
    redis_wait_timeout_ms: int = Field(default=200, ge=1, le=60_000)
    """How long an HTTP write waits for ``redis_wait_replicas`` replicas before its 503; less
    than ``redis_timeout_seconds`` (the reply of the ``WAIT`` must come within it)."""

    api_opentelemetry: bool = False
    """FastAPI's built-in OpenTelemetry spans, metrics and logs (providers and exporters from
    the ``OTEL_*`` variables). Off by default: ``/metrics`` is the service's own telemetry."""

    # -- API read path -------------------------------------------------------------------
    api_position_copy_entries: int = Field(default=1_000_000, ge=0)
    """Item-site positions each API process keeps in memory for reads, kept current by the
    changes Redis pushes (about 200 bytes each, as many as there are item-sites up to
    this); 0 reads every position from Redis. Reservations are decided on Redis itself."""
    api_position_copy_max_staleness_seconds: float = Field(default=1.0, gt=0)
    """When the change channel has been silent this long (it is pinged five times a second),
    reads bypass the in-process copy and go to Redis until it is heard from again."""

    # -- stream worker -------------------------------------------------------------------
    worker_app_id: str = "atp-worker"
    """Faust app id, also the Kafka consumer group."""
    worker_fetch_max_wait_ms: int = Field(default=50, ge=1, le=5_000)
    """How long the broker may hold a fetch when no data is ready (Faust's consumer held it
    1.5 s, which put up to that long between an event's produce and its fold)."""
    worker_fold_batch: int = Field(default=4000, ge=1)
    """Messages fetched, decoded and folded together (one Redis round trip) at most."""
    worker_session_timeout_ms: int = Field(default=10_000, ge=1_000, le=1_800_000)
    """How long the consumer group waits for a worker that stopped heartbeating (killed,
    frozen, cut off) before its partitions go to the others, and how long a rebalance waits
    for every member to rejoin. Kafka refuses values outside the broker's
    ``group.min.session.timeout.ms`` .. ``group.max.session.timeout.ms`` (6 s .. 30 min by
    default). docs/worker.md, "Rebalances", has the measured delays."""
    worker_group_instance_id: str | None = None
    """Static group membership (Kafka 2.3+, KIP-345): a worker restarted with the same id
    within the session timeout takes its partitions back with no rebalance. Each worker
    process needs an id of its own (e.g. its host or pod name); unset, membership is
    dynamic."""
    worker_advance_seconds: float = Field(default=1.0, gt=0, le=3600)
    """How often, at most, a worker records in every hash-tag group where its folded batches
    ended on each partition, and commits that to Kafka (stream_agents/_positions.py): after a
    restart or a rebalance, at most about this much is read again (and skipped)."""
    worker_metrics_port: int = Field(default=9102, ge=0, le=65535)
    """Port of the worker's /metrics (0 turns it off)."""
    worker_metrics_host: str = "127.0.0.1"
    """Address the worker's /metrics listens on."""
    worker_audit_interval_seconds: float = Field(default=60.0, ge=0)
    """How often one of the workers audits reserved units against the reservations (its
    result on every worker's /metrics and on /dashboard); 0 turns it off."""

    # -- outbox relay --------------------------------------------------------------------
    relay_batch: int = Field(default=100, ge=1)
    """Outbox entries read per relay round (an entry is one event, or the events of one fold
    call: up to 200)."""
    relay_claim_idle_ms: int = Field(default=10_000, ge=100)
    """How long a relay's lease on an outbox stream stands unrenewed (one relay at a time
    publishes a stream, so a key's events keep their order): a dead relay's streams, and the
    entries it read and never acknowledged, go to a live relay after this long."""
    relay_linger_ms: int = Field(default=20, ge=0, le=1_000)
    """After a round that found less than a full batch, wait this long before the next, so
    that a trickle goes out in fewer, larger rounds (Kafka's linger.ms; 0: no wait)."""

    events_coalesce_ms: int = Field(default=0, ge=0, le=60_000)
    """Successive ``availability.changed`` of one item-site-channel within this many ms may
    go out as one (the latest ``atp`` and ``version``, the earliest ``previous_atp``):
    every event then waits up to this long in the outbox. 0 (default): each goes out as is.
    Below half of ``relay_claim_idle_ms`` (a relay holding entries that long looks dead)."""

    # -- re-evaluation and reconciliation ------------------------------------------------
    reevaluation_rate: float = Field(default=20_000, gt=0)
    """Item-sites a second a re-evaluation (after a channel policy change, or when a day
    brings inbound inside a channel's horizon) visits at most, so that the fold and the
    reads keep Redis (docs/events.md has the measured cost)."""
    reconcile_every_seconds: float = Field(default=0, ge=0)
    """Every this many seconds one worker asks each source for snapshots
    (``inventory.snapshot_requested`` on atp.events.v1); 0 (default): never."""

    # -- reservations --------------------------------------------------------------------
    idempotency_ttl_seconds: int = Field(default=86_400, ge=86_400)
    expiry_sweep_interval_seconds: float = Field(default=0.2, gt=0)

    @field_validator("kafka_brokers", mode="before")
    @classmethod
    def _split_brokers(cls, value: Any) -> Any:
        if isinstance(value, str):
            return [part.strip() for part in value.split(",") if part.strip()]
        return value

    @field_validator("api_keys", mode="before")
    @classmethod
    def _parse_keys(cls, value: Any) -> Any:
        if isinstance(value, str):
            return json.loads(value) if value.strip() else []
        return value

    @model_validator(mode="after")
    def _coalescing_within_the_claim(self) -> Settings:
        if self.events_coalesce_ms * 2 > self.relay_claim_idle_ms:
            raise ValueError(
                f"ATP_EVENTS_COALESCE_MS ({self.events_coalesce_ms}) must be at most half of "
                f"ATP_RELAY_CLAIM_IDLE_MS ({self.relay_claim_idle_ms}): a relay holding "
                "entries longer looks dead to the others"
            )
        return self

    @model_validator(mode="after")
    def _wait_within_the_timeout(self) -> Settings:
        if (
            self.redis_wait_replicas
            and self.redis_wait_timeout_ms >= self.redis_timeout_seconds * 1000
        ):
            raise ValueError(
                f"ATP_REDIS_WAIT_TIMEOUT_MS ({self.redis_wait_timeout_ms}) must be less than "
                f"ATP_REDIS_TIMEOUT_SECONDS ({self.redis_timeout_seconds:g} s): the reply of the "
                "WAIT must come within the socket timeout"
            )
        return self

    @model_validator(mode="after")
    def _one_redis_unless_a_cluster(self) -> Settings:
        if not self.redis_cluster and "," in self.redis_url:
            raise ValueError(
                "ATP_REDIS_URL names several Redis nodes: set ATP_REDIS_CLUSTER=true for a "
                "Redis Cluster, or name one Redis"
            )
        return self

    @model_validator(mode="after")
    def _no_dev_keys_in_production(self) -> Settings:
        if self.environment == "production":
            for spec in self.api_keys:
                if spec.key is not None and spec.key.startswith("dev-"):
                    raise ValueError(f"API key {spec.name!r} is a dev key; refused in production")
        return self

    @property
    def bootstrap_servers(self) -> str:
        return ",".join(self.kafka_brokers)

    def load_channel_policies(self) -> dict[str, ChannelPolicy]:
        """The initial channel policies from ``channels_file`` (empty without one)."""
        if self.channels_file is None:
            return {}
        raw = read_config_file(self.channels_file, "channels")
        return {name: policy_from_mapping(body) for name, body in raw.items()}

    def load_sites(self) -> dict[str, SiteAttributes]:
        """The initial site attributes from ``sites_file`` (empty without one); a ValueError
        names the site and field that is not valid."""
        if self.sites_file is None:
            return {}
        return sites_from_mapping(read_config_file(self.sites_file, "sites"))


def policy_from_mapping(body: dict[str, Any]) -> ChannelPolicy:
    sites = body.get("sites")
    if sites is not None and not sites:
        raise ValueError(EMPTY_SITES)
    return ChannelPolicy(
        sites=tuple(sites) if sites is not None else None,
        safety_stock=int(body.get("safety_stock", 0)),
        share=int(body.get("share", 100)),
        include_in_transit=bool(body.get("include_in_transit", False)),
        in_transit_horizon_days=int(body.get("in_transit_horizon_days", 0)),
    )


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings()
