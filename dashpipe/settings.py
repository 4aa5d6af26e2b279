"""Settings: small frozen groups read from `DASHPIPE_*` environment variables.

Every group is its own pydantic-settings class so a role only sees what it needs.
Secrets are `SecretStr`; their repr never shows the value.
"""

from __future__ import annotations

import hmac
from dataclasses import dataclass, field
from ipaddress import IPv4Network, IPv6Network
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict


def _config(prefix: str) -> SettingsConfigDict:
    return SettingsConfigDict(env_prefix=prefix, frozen=True, extra="ignore")


class KafkaSettings(BaseSettings):
    """Where the broker is. Empty bootstrap servers means: use the local stack."""

    model_config = _config("DASHPIPE_KAFKA_")

    bootstrap_servers: str = ""
    client_id: str = "dashpipe"
    group_prefix: str = Field(default="dashpipe", pattern=r"^[A-Za-z0-9._-]+$")
    linger_ms: int = Field(default=0, ge=0, description="0: batches form while a request "
                           "is in flight")
    max_batch_size: int = Field(default=256 * 1024, gt=0)
    request_timeout_ms: int = Field(default=30_000, gt=0)


class DatabaseSettings(BaseSettings):
    """Where PostgreSQL is. The URL carries the password, so it is a secret."""

    model_config = _config("DASHPIPE_DATABASE_")

    url: SecretStr | None = None
    pool_min_size: int = Field(default=1, ge=0)
    pool_max_size: int = Field(default=10, gt=0)
    schema_name: str = Field(default="public", pattern=r"^[a-z_][a-z0-9_]*$")
    acquire_timeout_seconds: float = Field(default=5.0, gt=0, description="deadline of every "
                                           "pool acquire and connect")
    statement_timeout_seconds: float = Field(default=30.0, gt=0)
    api_acquire_timeout_seconds: float = Field(
        default=1.0, gt=0, description="the data API: how long a read waits for a free "
        "connection of the web role's pool; past it 503 with Retry-After")
    api_statement_timeout_seconds: float = Field(
        default=10.0, gt=0, description="the data API: deadline of every statement of the web "
        "role's pool; past it 503 with Retry-After")
    compress_after_days: int = Field(default=7, ge=1, description="TimescaleDB only")
    retention_days: int | None = Field(default=None, ge=1, description="TimescaleDB only; "
                                       "unset: keep every row")
    persist_batch_rows: int = Field(default=5000, ge=1, description="rows per transaction")


class TopicSettings(BaseSettings):
    """The topic catalogue's knobs: names share a prefix, sizes are per deployment."""

    model_config = _config("DASHPIPE_TOPIC_")

    prefix: str = Field(default="dashpipe", pattern=r"^[A-Za-z0-9._-]+$")
    partitions: int = Field(default=6, gt=0)
    control_partitions: int = Field(default=3, gt=0)
    replication_factor: int = Field(default=1, gt=0)


class StackSettings(BaseSettings):
    """The local development stack (`dashpipe up`)."""

    model_config = _config("DASHPIPE_")

    state_dir: Path = Path(".dashpipe")
    cache_dir: Path = Path.home() / ".cache" / "dashpipe"
    kafka_version: str = "4.1.1"
    kafka_brokers: int = Field(default=1, ge=1, le=5, description="local KRaft nodes; 3 gives "
                               "replication factor 3 and min.insync.replicas 2")
    pg_bin_dir: Path | None = None
    kafka_heap: str = "512m"


class WebSettings(BaseSettings):
    """The `web` role's HTTP server."""

    model_config = _config("DASHPIPE_WEB_")

    host: str = "127.0.0.1"
    port: int = Field(default=8080, ge=0, lt=65536, description="0: any free port")
    metrics_port: int | None = Field(
        default=None, ge=0, lt=65536, description="a process without the web role serves "
        "/metrics and /healthz here (unset: it serves nothing); a web process that shares "
        "its port (reuse_port) serves them here too")
    reuse_port: bool = Field(
        default=False, description="listen with SO_REUSEPORT, sharing the port with other web "
        "processes (the kernel spreads connections over them); `--processes` sets it")
    webhooks_in_flight: int = Field(
        default=256, ge=1, description="webhook requests this process takes at once (read, "
        "checked, awaiting Kafka's ack); past it 503 with Retry-After, before the body is read")
    webhooks_retry_after_seconds: int = Field(default=1, ge=1, description="the Retry-After "
                                              "of a webhook refused at that limit")


class ApiSettings(BaseSettings):
    """Who may use the management API: bearer tokens mapped to teams, and one admin token."""

    model_config = _config("DASHPIPE_")

    api_tokens: dict[SecretStr, str] = Field(
        default_factory=dict, description="JSON object: token -> team id")
    admin_token: SecretStr | None = None
    session_secret: SecretStr | None = Field(
        default=None, description="signs browser sessions (default: a key derived from the "
        "tokens, the same on every web process that has the same tokens)")
    session_seconds: int = Field(default=12 * 3600, ge=60)

    def session_key(self) -> bytes:
        """The key of browser sessions. Derived, it needs every token to compute: a holder of
        one team's token cannot forge another team's session (and `session_team` refuses
        admin sessions unless an admin token is set)."""
        if self.session_secret is not None:
            return self.session_secret.get_secret_value().encode()
        tokens = sorted(t.get_secret_value() for t in self.api_tokens)
        if self.admin_token is not None:
            tokens.append("admin:" + self.admin_token.get_secret_value())
        return hmac.digest(b"dashpipe browser session v1", "\0".join(tokens).encode(),
                           "sha256")

    def team_for(self, token: str) -> str | None:
        """The team of a token; `ADMIN` for the admin token; None when unknown."""
        if self.admin_token is not None and hmac.compare_digest(
                token.encode(), self.admin_token.get_secret_value().encode()):
            return ADMIN
        return self.api_tokens.get(SecretStr(token))


ADMIN = "*admin*"


class EgressSettings(BaseSettings):
    """Where outgoing requests (polls, sinks) may go: public addresses, plus these ranges."""

    model_config = _config("DASHPIPE_EGRESS_")

    allow: list[IPv4Network | IPv6Network] = Field(
        default_factory=list, description='JSON list of CIDR ranges, e.g. ["10.1.0.0/16"]')


class DeliverySettings(BaseSettings):
    """The `deliver` role: when failed deliveries are tried again, and how much it holds."""

    model_config = _config("DASHPIPE_DELIVERY_")

    retry_schedule: list[float] = Field(
        default_factory=lambda: [5.0, 300.0, 1800.0, 7200.0, 18000.0, 36000.0, 36000.0],
        description="seconds before each retry after the first attempt (JSON list); its "
                    "length is the number of retries")
    jitter: float = Field(default=0.1, ge=0, le=0.5, description="+- this share of a delay")
    queue_rows: int = Field(default=1000, ge=1, description="deliveries waiting per sink "
                            "before more go to the retry topic")
    status_seconds: float = Field(default=2.0, gt=0, description="how often per-sink status "
                                  "is published")


class WebhookSettings(BaseSettings):
    model_config = _config("DASHPIPE_WEBHOOK_")

    max_body_bytes: int = Field(default=1024 * 1024, gt=0)
    tolerance_seconds: float = Field(default=300.0, gt=0)
    dedup_seconds: float = Field(default=600.0, gt=0)
    ack_timeout_seconds: float = Field(default=5.0, gt=0,
                                       description="answer 503 when Kafka has not acked by then")


class LogSettings(BaseSettings):
    """What every process writes to stderr (`dashpipe.logs`)."""

    model_config = _config("DASHPIPE_LOG_")

    format: Literal["text", "json"] = Field(default="text", description="json: one JSON "
                                            "object per line, for a log pipeline")


class PollSettings(BaseSettings):
    model_config = _config("DASHPIPE_POLL_")

    retry_base_seconds: float = Field(default=60.0, gt=0)
    retry_cap_seconds: float = Field(default=3600.0, gt=0)
    attempts_per_run: int = Field(default=3, ge=1)
    tick_seconds: float = Field(default=0.25, gt=0)
    concurrency: int = Field(default=64, gt=0)


@dataclass(frozen=True)
class Settings:
    kafka: KafkaSettings
    database: DatabaseSettings
    topics: TopicSettings
    stack: StackSettings
    web: WebSettings
    api: ApiSettings = field(default_factory=ApiSettings)
    webhook: WebhookSettings = field(default_factory=WebhookSettings)
    poll: PollSettings = field(default_factory=PollSettings)
    egress: EgressSettings = field(default_factory=EgressSettings)
    delivery: DeliverySettings = field(default_factory=DeliverySettings)
    log: LogSettings = field(default_factory=LogSettings)


def load_settings() -> Settings:
    """Read every group from the environment (and nothing else)."""
    return Settings(
        kafka=KafkaSettings(),
        database=DatabaseSettings(),
        topics=TopicSettings(),
        stack=StackSettings(),
        web=WebSettings(),
    )
