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
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

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
CHUNK = timedelta(days=1)  # a chunk per day: a dashboard's usual range spans few of them
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


@dataclass(frozen=True)
class Storage:
    """What holds `pipeline_data`: TimescaleDB (its version and the schema its functions live
    in, which is rarely the table's) or native monthly partitions."""

    timescaledb: str | None = None  # the extension's version
    extension_schema: str | None = None
    hypertable: bool = False

    def fn(self, name: str) -> str:
        """An extension function by its schema: the pool's `search_path` is only ours."""
        return f"{quote(self.extension_schema or 'public')}.{name}"

    def describe(self) -> str:
        if self.hypertable:
            return f"TimescaleDB {self.timescaledb} hypertable pipeline_data"
        return "PostgreSQL native monthly partitions of pipeline_data"


def quote(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


async def storage(conn: asyncpg.Connection, schema: str) -> Storage:
    """What the database has (the extension, and whether our table is a hypertable)."""
    ext = await conn.fetchrow("SELECT extversion, extnamespace::regnamespace::text AS schema "
                              "FROM pg_extension WHERE extname = 'timescaledb'")
    if ext is None:
        return Storage()
    hyper = await conn.fetchval(
        "SELECT count(*) FROM timescaledb_information.hypertables "
        "WHERE hypertable_schema = $1 AND hypertable_name = 'pipeline_data'", schema)
    return Storage(ext["extversion"], ext["schema"].strip('"'), bool(hyper))


async def describe(conn: asyncpg.Connection, schema: str) -> str:
    """One line for `dashpipe status` and `/readyz`: what stores the rows, and how much."""
    found = await storage(conn, schema)
    table = f"{schema}.pipeline_data"
    if found.hypertable:
        chunks, compressed = await conn.fetchrow(
            "SELECT count(*), count(*) FILTER (WHERE is_compressed) "
            "FROM timescaledb_information.chunks "
            "WHERE hypertable_schema = $1 AND hypertable_name = 'pipeline_data'", schema)
        aggregates = await conn.fetchval(
            "SELECT count(*) FROM timescaledb_information.continuous_aggregates "
            "WHERE view_schema = $1", schema)
        return (f"TimescaleDB {found.timescaledb}: hypertable {table}, {chunks} chunks "
                f"({compressed} compressed), {aggregates} rollups")
    if found.timescaledb:
        return (f"TimescaleDB {found.timescaledb}: {table} not created yet (the persist role "
                "makes it a hypertable)")
    if await conn.fetchval("SELECT to_regclass($1)", table) is None:
        return (f"PostgreSQL native monthly partitions: {table} not created yet "
                "(no TimescaleDB in this database)")
    parts = await conn.fetchval(
        "SELECT count(*) FROM pg_inherits WHERE inhparent = to_regclass($1)", table)
    return f"PostgreSQL native monthly partitions: {table}, {parts} partitions"


async def migrate(pool: asyncpg.Pool, ds: DatabaseSettings) -> Storage:
    """Create what is missing and bring the policies to the settings (safe to run from every
    process at every start: one at a time, by an advisory lock)."""
    async with pool.acquire(timeout=ds.acquire_timeout_seconds) as conn, conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock(hashtext('dashpipe-migrate'))")
        await conn.execute(f"CREATE SCHEMA IF NOT EXISTS {quote(ds.schema_name)}")
        found = await storage(conn, ds.schema_name)
        ts = found.timescaledb is not None
        await conn.execute(_TABLE.format(partitioning="" if ts else
                                         " PARTITION BY RANGE (time)"))
        await conn.execute(_INDEX)
        if not ts:
            return found
        table = f"{quote(ds.schema_name)}.pipeline_data"
        if not found.hypertable:
            await conn.execute(f"SELECT {found.fn('create_hypertable')}($1::regclass, 'time', "
                               "chunk_time_interval => $2::interval, "
                               "create_default_indexes => FALSE)", table, CHUNK)
            await conn.execute(f"ALTER TABLE {table} SET (timescaledb.compress, "
                               "timescaledb.compress_segmentby = 'pipeline_id', "
                               "timescaledb.compress_orderby = 'row_key, time DESC')")
        await _policy(conn, found, table, "policy_compression", "compress_after",
                      "add_compression_policy", "remove_compression_policy",
                      timedelta(days=ds.compress_after_days), ds.schema_name)
        await _policy(conn, found, table, "policy_retention", "drop_after",
                      "add_retention_policy", "remove_retention_policy",
                      None if ds.retention_days is None else timedelta(days=ds.retention_days),
                      ds.schema_name)
    return Storage(found.timescaledb, found.extension_schema, True)


async def _policy(conn: asyncpg.Connection, ts: Storage, table: str, proc: str, key: str,
                  add: str, remove: str, after: timedelta | None, schema: str) -> None:
    """Make the table's policy `proc` match `after` (None: no policy), replacing one whose
    interval changed since the last start."""
    current = await conn.fetchval(
        "SELECT (config->>$1)::interval FROM timescaledb_information.jobs "
        "WHERE proc_name = $2 AND hypertable_schema = $3 AND hypertable_name = 'pipeline_data'",
        key, proc, schema)
    if current == after:
        return
    if current is not None:
        await conn.execute(f"SELECT {ts.fn(remove)}($1::regclass)", table)
    if after is not None:
        await conn.execute(f"SELECT {ts.fn(add)}($1::regclass, $2::interval)", table, after)


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
