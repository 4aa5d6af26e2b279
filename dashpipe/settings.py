"""Settings: small frozen groups read from `DASHPIPE_*` environment variables.

Every group is its own pydantic-settings class so a role only sees what it needs.
Secrets are `SecretStr`; their repr never shows the value.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

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
    linger_ms: int = Field(default=5, ge=0)
    max_batch_size: int = Field(default=256 * 1024, gt=0)
    request_timeout_ms: int = Field(default=30_000, gt=0)


class DatabaseSettings(BaseSettings):
    """Where PostgreSQL is. The URL carries the password, so it is a secret."""

    model_config = _config("DASHPIPE_DATABASE_")

    url: SecretStr | None = None
    pool_min_size: int = Field(default=1, ge=0)
    pool_max_size: int = Field(default=10, gt=0)
    schema_name: str = Field(default="public", pattern=r"^[a-z_][a-z0-9_]*$")


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
    pg_bin_dir: Path | None = None
    kafka_heap: str = "512m"


class WebSettings(BaseSettings):
    """The `web` role's HTTP server."""

    model_config = _config("DASHPIPE_WEB_")

    host: str = "127.0.0.1"
    port: int = Field(default=8080, ge=0, lt=65536, description="0: any free port")


@dataclass(frozen=True)
class Settings:
    kafka: KafkaSettings
    database: DatabaseSettings
    topics: TopicSettings
    stack: StackSettings
    web: WebSettings


def load_settings() -> Settings:
    """Read every group from the environment (and nothing else)."""
    return Settings(
        kafka=KafkaSettings(),
        database=DatabaseSettings(),
        topics=TopicSettings(),
        stack=StackSettings(),
        web=WebSettings(),
    )
