"""One settings object for every process, read from ``DISPATCHER_*`` environment variables.

These are the service's own settings. Each channel adapter declares its own model, read from
``DISPATCHER_<NAME>_*`` (:mod:`channels.settings`): this module knows no channel's variables.
Values for those given in code (``Settings(telegram_token=...)``) are kept here as extra keys,
for the adapter's model to read.

A secrets directory (``DISPATCHER_SECRETS_DIR``)
(one file per setting, named like its variable, e.g. ``DISPATCHER_SMTP_PASSWORD``) is read
too, so that passwords and tokens never need to sit in the environment or a file
that is committed.
"""

from __future__ import annotations

import hashlib
import os
import re
from enum import StrEnum
from functools import lru_cache
from typing import Any

from pydantic import Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

ENV_PREFIX = "DISPATCHER_"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        env_file=None,
        # A channel's settings given in code are kept (its adapter's model reads them); the
        # environment only ever fills the fields below.
        extra="allow",
        validate_default=True,
    )

    database_url: str = Field(
        default="sqlite:///dispatcher.db",
        description="SQLAlchemy URL. Default: a SQLite file in the working directory.",
    )
    redis_url: str = Field(
        default="redis://127.0.0.1:6379/0", description="Redis for the broker and rate limits."
    )
    redis_namespace: str = Field(
        default="",
        max_length=64,
        description="Prefix of every key this service keeps in Redis (its queues, batch "
        "markers, rate limits, scheduler lock), so that services sharing a Redis database "
        "never see each other's work. Default: 'dispatcher-' and a hash of the database, so "
        "every process of one service agrees and another service differs.",
    )
    public_url: str = Field(
        default="http://127.0.0.1:8000",
        description="Base URL citizens reach (unsubscribe links).",
    )
    secret_key: SecretStr | None = Field(
        default=None,
        description="Signs unsubscribe links and dashboard sessions; encrypts TOTP secrets "
        "(which need it set). Default: a random key kept in the database.",
    )

    json_max_depth: int = Field(
        default=32,
        ge=2,
        le=200,
        description="How deeply a JSON request body or JSON Lines import row may nest arrays "
        "and objects; deeper input is refused with a 422 (or that row is rejected).",
    )
    unsubscribe_link_days: int = Field(
        default=400,
        ge=1,
        le=3650,
        description="How long an unsubscribe link stays valid after the message was sent.",
    )

    rate_limits: dict[str, float] = Field(
        default_factory=dict,
        description='Messages per second per channel account, e.g. {"telegram": 25}.',
    )

    rate_wait_seconds: float = Field(
        default=30.0, ge=0, description="Longest a send waits for its channel before deferring."
    )
    auth_pause_seconds: float = Field(
        default=300.0, gt=0, description="How long a refused credential pauses its channel."
    )

    schedule_grace_seconds: float = Field(
        default=6 * 3600,
        ge=0,
        description="A firing missed by less than this runs late; older ones are skipped.",
    )
    send_windows: dict[str, str] = Field(
        default_factory=lambda: {"greeting": "07:00-21:00", "policy_news": "07:00-21:00"},
        description='Vietnam-time windows by kind or "kind:channel"; other kinds ignore them.',
    )

    messages_per_second_per_key: float = Field(
        default=50.0, gt=0, description="Transactional messages a sender key may send per second."
    )
    messages_burst_per_key: int = Field(
        default=100, ge=1, description="How many messages a sender key may send at once."
    )
    idempotency_key_hours: float = Field(
        default=24.0,
        gt=0,
        le=24 * 365,
        description="How long a sender's Idempotency-Key is remembered after its first use; "
        "after that the same key sends a new message.",
    )
    approval_ttl_seconds: float = Field(
        default=7 * 86400,
        gt=0,
        description="An approval not sent within this long expires and needs approving again.",
    )

    audit_seal_interval_seconds: float = Field(
        default=300.0, gt=0, description="How often the scheduler seals the audit log."
    )
    audit_witness: str | None = Field(
        default=None,
        description="A file outside the database (another volume or host, append-only) that "
        "every audit seal is appended to; `dispatcher audit verify` checks the database "
        "against it.",
    )

    batch_size: int = Field(default=1000, ge=1, le=10_000, description="Deliveries per job.")
    plan_ahead_batches: int = Field(
        default=1000,
        ge=1,
        le=1_000_000,
        description="Batches a run's planner keeps queued ahead of its sends; beyond that it "
        "waits for the workers to take them, so the broker holds at most this many jobs of a "
        "run however large its campaign.",
    )
    queue_urgent: str = "urgent"
    queue_bulk: str = "bulk"
    send_concurrency: int = Field(default=64, ge=1, le=10_000, description="Sends in flight.")
    lease_seconds: float = Field(
        default=300.0,
        gt=0,
        description="How long a claimed batch's lease may go unrenewed, as the sweeper watches "
        "it, before its rows are taken from a worker presumed dead and sent again.",
    )
    lease_heartbeat_seconds: float = Field(
        default=10.0,
        gt=0,
        description="How often a worker renews the leases of the batches it holds (at most a "
        "quarter of the lease is used).",
    )
    max_attempts: int = Field(
        default=8, ge=1, le=50, description="Failed attempts before a delivery fails."
    )
    quick_retries: int = Field(default=2, ge=0, le=10, description="In-call retries of blips.")
    quick_retry_seconds: float = Field(default=0.2, ge=0)
    retry_base_seconds: float = Field(default=30.0, ge=0, description="First broker backoff.")
    retry_max_seconds: float = Field(default=3600.0, ge=0)
    sweep_interval_seconds: float = Field(default=15.0, gt=0)
    sweep_grace_seconds: float = Field(
        default=10.0, ge=0, description="A pending row younger than this is never swept."
    )
    batch_marker_ttl_seconds: int = Field(default=6 * 3600, ge=60)
    sqlite_cache_mib: int | None = Field(
        default=None,
        ge=1,
        le=4096,
        description="SQLite's page cache per connection, in MiB (unset: SQLite's own, about "
        "2 MiB). `dispatcher worker` sets 32 unless this is set: its claims, records and "
        "planner pages walk the deliveries table's indexes.",
    )
    worker_threads: int | None = Field(
        default=None,
        ge=1,
        le=64,
        description="Threads per worker process (unset: one for each queue it serves, so a "
        "process serving both runs an urgent batch beside a bulk one). A process sends one "
        "batch of a queue at a time, so a second thread on one queue only claims and renders "
        "the next batch meanwhile; it cost more CPU than it saved (docs/performance.md).",
    )
    template_max_output_chars: int = Field(
        default=1_000_000,
        ge=1000,
        description="Longest text a template part renders to, and largest value it may build "
        "(a render builds at most ten times this in all).",
    )
    template_max_steps: int = Field(
        default=100_000,
        ge=100,
        description="Loop iterations and calls (macros, methods) one render may make.",
    )
    template_render_seconds: float = Field(
        default=5.0,
        gt=0,
        le=300,
        description="Longest one render may take; saving or previewing a template through "
        "the API is stopped after this long too.",
    )
    template_memory_mib: int = Field(
        default=256,
        ge=32,
        description="Memory the process that checks a template saved or previewed through "
        "the API may use beyond its own code.",
    )
    metrics_dir: str = Field(
        default="dispatcher-metrics",
        min_length=1,
        description="Where every process (API, workers, scheduler) keeps its Prometheus "
        "counters for the API's /metrics; all processes of a deployment must share it.",
    )

    archive_dir: str = Field(
        default="dispatcher-archive",
        min_length=1,
        description="Where `dispatcher archive` writes each archived month's deliveries and "
        "attempts (YYYY-MM/deliveries.parquet, attempts.parquet, manifest.json, SHA256SUMS), "
        "and where `dispatcher search --archives` and the delivery search's "
        "include_archived=true read them. Keep it on storage that is backed up.",
    )
    partition_months_ahead: int = Field(
        default=2,
        ge=0,
        le=24,
        description="PostgreSQL: the months after the current one whose delivery and attempt "
        "partitions the scheduler makes ahead of need.",
    )

    @field_validator("database_url")
    @classmethod
    def _database_url(cls, value: str) -> str:
        try:
            url = make_url(value)
        except ArgumentError as exc:
            raise ValueError(f"not a database URL: {exc}") from None
        if url.get_backend_name() not in {"sqlite", "postgresql"}:
            raise ValueError("only sqlite:// and postgresql:// databases are supported")
        return value

    @field_validator("redis_namespace")
    @classmethod
    def _namespace(cls, value: str) -> str:
        if value and not _NAMESPACE.fullmatch(value):
            raise ValueError(
                "a namespace starts with a letter and holds only letters, digits, '.', '-' and '_'"
            )
        return value

    @model_validator(mode="after")
    def _default_namespace(self) -> Settings:
        if not self.redis_namespace:
            self.redis_namespace = derived_namespace(self.database_url)
        return self

    @field_validator("redis_url")
    @classmethod
    def _redis_url(cls, value: str) -> str:
        if not value.startswith(("redis://", "rediss://", "unix://")):
            raise ValueError("must start with redis://, rediss:// or unix://")
        return value

    @field_validator("rate_limits")
    @classmethod
    def _rates(cls, value: dict[str, float]) -> dict[str, float]:
        for channel, rate in value.items():
            if rate <= 0:
                raise ValueError(f"{channel}: a rate must be above zero")
        return value

    @field_validator("send_windows")
    @classmethod
    def _windows(cls, value: dict[str, str]) -> dict[str, str]:
        from dispatcher.scheduling.windows import parse_window

        for key, window in value.items():
            try:
                parse_window(window)
            except ValueError as exc:
                raise ValueError(f"{key}: {exc}") from None
        return value

    @field_validator("public_url")
    @classmethod
    def _public_url(cls, value: str) -> str:
        if not value.startswith(("http://", "https://")):
            raise ValueError("must start with http:// or https://")
        return value.rstrip("/")

    @field_validator("queue_urgent", "queue_bulk")
    @classmethod
    def _queue_name(cls, value: str) -> str:
        if not value or not (value[0].isalpha() or value[0] == "_"):
            raise ValueError("a queue name starts with a letter or an underscore")
        if not all(c.isalnum() or c in "_-" for c in value):
            raise ValueError("a queue name holds only letters, digits, '-' and '_'")
        return value

    def threads_for(self, queues: int) -> int:
        """Threads of a worker process serving ``queues`` queues: DISPATCHER_WORKER_THREADS,
        or one for each queue."""
        return self.worker_threads or default_worker_threads(queues)

    def masked(self) -> dict[str, Any]:
        """The effective settings with every secret hidden, for display (a channel's values
        given as extra keys too)."""
        shown: dict[str, Any] = {}
        names = [*type(self).model_fields, *(self.model_extra or {})]
        for name in names:
            value = getattr(self, name)
            if isinstance(value, SecretStr):
                value = "********"
            elif name in {"database_url", "redis_url"}:
                value = _hide_url_password(value)
            elif isinstance(value, StrEnum):
                value = value.value
            shown[name] = value
        return shown


_NAMESPACE = re.compile(r"[A-Za-z][A-Za-z0-9._-]*")


def default_worker_threads(queues: int) -> int:
    """Threads of a worker process serving ``queues`` queues when DISPATCHER_WORKER_THREADS is
    unset: one for each."""
    return max(1, queues)


def derived_namespace(database_url: str) -> str:
    """``dispatcher-`` and a hash of which database this is: its server and name, or the
    SQLite file's real path (so ``sqlite:///dispatcher.db`` names the same file from any
    process started in that directory). Neither the password nor the user take part."""
    url = make_url(database_url)
    if url.get_backend_name() == "sqlite":
        path = url.database or ""
        identity = f"sqlite:{os.path.realpath(path) if path and path != ':memory:' else path}"
    else:
        query = "&".join(f"{k}={v}" for k, v in sorted(url.query.items()))
        identity = f"postgresql://{url.host or ''}:{url.port or 5432}/{url.database or ''}?{query}"
    return "dispatcher-" + hashlib.sha256(identity.encode()).hexdigest()[:12]


def _hide_url_password(url: str) -> str:
    if url.startswith(("redis://", "rediss://")) and "@" in url:
        scheme, rest = url.split("://", 1)
        creds, host = rest.rsplit("@", 1)
        user = creds.split(":", 1)[0] if ":" in creds else ""
        return f"{scheme}://{user}:********@{host}"
    try:
        return make_url(url).render_as_string(hide_password=True).replace("***", "********")
    except ArgumentError:
        return url


class ConfigError(Exception):
    """A setting has a value the service cannot start with; the message names the variable."""


def load_settings(**overrides: Any) -> Settings:
    """Read the settings, turning a validation error into one naming each bad variable."""
    secrets_dir = os.environ.get(f"{ENV_PREFIX}SECRETS_DIR")
    try:
        if secrets_dir:
            return Settings(_secrets_dir=secrets_dir, **overrides)
        return Settings(**overrides)
    except ValidationError as exc:
        problems = []
        for error in exc.errors():
            field = str(error["loc"][0]) if error["loc"] else "?"
            problems.append(f"{ENV_PREFIX}{field.upper()}: {error['msg']}")
        raise ConfigError("invalid configuration:\n  " + "\n  ".join(problems)) from None


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return load_settings()
