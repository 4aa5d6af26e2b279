"""PostgreSQL for the roles that store rows: one pool per process, idempotent migrations, and
the monthly partitions of `pipeline_data` when TimescaleDB is absent.

`pipeline_data` holds every persisted row: `time`, `team_id`, `pipeline_id`, `row_key` (the
mapping's key, else the lineage as `~partition:offset:row`), `data` (the fields, jsonb), the
lineage columns and the mapping version. Its primary key `(pipeline_id, row_key, time)` is the
row's identity: overlapping polls and replays update a row, never duplicate it. With
TimescaleDB it is a hypertable (1-day chunks, compression after `compress_after_days`,
retention after `retention_days` when set); otherwise a table partitioned by month, the
partitions created as rows arrive. The queries are the same.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable
from datetime import UTC, datetime

import asyncpg

from dashpipe.errors import ConfigError
from dashpipe.settings import DatabaseSettings

log = logging.getLogger(__name__)

COLUMNS = ("time", "team_id", "pipeline_id", "row_key", "data", "raw_partition", "raw_offset",
           "row_index", "mapping_version", "ingest_id")

_TABLE = """
CREATE TABLE IF NOT EXISTS pipeline_data (
    time            timestamptz NOT NULL,
    team_id         text        NOT NULL,
    pipeline_id     text        NOT NULL,
    row_key         text        NOT NULL,
    data            jsonb       NOT NULL,
    raw_partition   integer     NOT NULL,
    raw_offset      bigint      NOT NULL,
    row_index       integer     NOT NULL,
    mapping_version integer     NOT NULL,
    ingest_id       text,
    stored_at       timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (pipeline_id, row_key, time)
){partitioning}
"""
_INDEX = ("CREATE INDEX IF NOT EXISTS pipeline_data_by_time "
          "ON pipeline_data (pipeline_id, time DESC)")


async def create_pool(ds: DatabaseSettings) -> asyncpg.Pool:
    if ds.url is None:
        raise ConfigError("DASHPIPE_DATABASE_URL is not set (run `dashpipe up`, or point it at "
                          "your PostgreSQL)")
    pool: asyncpg.Pool = await asyncpg.create_pool(
        ds.url.get_secret_value(), min_size=ds.pool_min_size, max_size=ds.pool_max_size,
        timeout=ds.acquire_timeout_seconds, command_timeout=ds.statement_timeout_seconds,
        server_settings={"search_path": ds.schema_name, "application_name": "dashpipe"})
    return pool


async def timescaledb(conn: asyncpg.Connection) -> bool:
    return bool(await conn.fetchval(
        "SELECT count(*) FROM pg_extension WHERE extname = 'timescaledb'"))


async def migrate(pool: asyncpg.Pool, ds: DatabaseSettings) -> bool:
    """Create what is missing (safe to run from every process at every start); returns whether
    the table is a TimescaleDB hypertable."""
    async with pool.acquire(timeout=ds.acquire_timeout_seconds) as conn, conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock(hashtext('dashpipe-migrate'))")
        await conn.execute(f'CREATE SCHEMA IF NOT EXISTS "{ds.schema_name}"')
        hyper = await timescaledb(conn)
        await conn.execute(_TABLE.format(partitioning="" if hyper else
                                         " PARTITION BY RANGE (time)"))
        await conn.execute(_INDEX)
        if hyper:
            await conn.execute("SELECT create_hypertable('pipeline_data', 'time', "
                               "chunk_time_interval => INTERVAL '1 day', if_not_exists => TRUE)")
            await conn.execute("ALTER TABLE pipeline_data SET (timescaledb.compress, "
                               "timescaledb.compress_segmentby = 'pipeline_id')")
            await conn.execute("SELECT add_compression_policy('pipeline_data', $1::interval, "
                               "if_not_exists => TRUE)", f"{ds.compress_after_days} days")
            if ds.retention_days is not None:
                await conn.execute("SELECT add_retention_policy('pipeline_data', $1::interval, "
                                   "if_not_exists => TRUE)", f"{ds.retention_days} days")
    return hyper


def month_of(t: datetime) -> tuple[int, int]:
    return t.year, t.month


def months(times: Iterable[datetime]) -> set[tuple[int, int]]:
    """The UTC (year, month) of every time (aware datetimes; UTC ones, the usual, as they are)."""
    return {(t.year, t.month) if t.tzinfo is UTC else month_of(t.astimezone(UTC))
            for t in times}


class Partitions:
    """Creates the monthly partitions rows need (native partitioning only), once each."""

    def __init__(self) -> None:
        self.known: set[tuple[int, int]] = set()

    async def ensure(self, conn: asyncpg.Connection, months: set[tuple[int, int]]) -> None:
        for year, month in sorted(months - self.known):
            start = datetime(year, month, 1, tzinfo=UTC)
            end = datetime(year + month // 12, month % 12 + 1, 1, tzinfo=UTC)
            name = f"pipeline_data_{year:04d}_{month:02d}"
            for attempt in range(3):  # another process may be creating it at the same time
                try:
                    await conn.execute(
                        f"CREATE TABLE IF NOT EXISTS {name} PARTITION OF pipeline_data "
                        f"FOR VALUES FROM ('{start.isoformat()}') TO ('{end.isoformat()}')")
                    break
                except (asyncpg.DuplicateTableError, asyncpg.UniqueViolationError):
                    if attempt == 2:
                        raise
                    await asyncio.sleep(0.05)
            self.known.add((year, month))
