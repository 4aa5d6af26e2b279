"""Per-minute rollups of a pipeline's numeric fields: TimescaleDB continuous aggregates the
data API answers coarse buckets from, instead of scanning every stored row.

Which fields: the `integer` and `float` fields of the pipeline's mapping, for every pipeline
with `persist_data`. The persist role creates one continuous aggregate per pipeline (named by
a digest of the pipeline id and its fields, so a mapping that changes its numeric fields gets
a new one and the old one is dropped) and records it in `pipeline_rollups`. Per field and
minute it keeps the count of non-null values, the count, sum, min and max of the numbers: what
`count`, `avg`, `min` and `max` over any whole number of minutes need.

Freshness: real-time aggregation (`materialized_only = false`) answers the minutes above the
materialised part from the rows themselves; a refresh policy moves that mark every minute,
and the persist role refreshes the minutes that late rows and replays change at once, so an
answer from a rollup always equals the answer from the rows.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import asyncpg

from dashpipe.db import Storage, quote
from schemas.pipeline import Pipeline

log = logging.getLogger(__name__)

BUCKET = timedelta(minutes=1)
LAG = timedelta(minutes=1)  # the policy materialises up to this far behind now
AGGREGATES = ("avg", "min", "max", "count")  # what a rollup answers; `last` reads rows

_TABLE = """
CREATE TABLE IF NOT EXISTS pipeline_rollups (
    pipeline_id text PRIMARY KEY,
    view_name   text   NOT NULL,
    fields      text[] NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now()
)"""


@dataclass(frozen=True)
class Rollup:
    pipeline_id: str
    view: str
    fields: tuple[str, ...]

    def columns(self, field: str) -> tuple[str, str, str, str, str]:
        """The (present, n, sum, min, max) columns of one field."""
        i = self.fields.index(field)
        return (f"f{i}_present", f"f{i}_n", f"f{i}_sum", f"f{i}_min", f"f{i}_max")


def numeric_fields(p: Pipeline) -> tuple[str, ...]:
    spec = p.data_mapping
    if spec is None or not p.persist_data:
        return ()
    return tuple(name for name, f in spec.fields.items() if f.type in ("integer", "float"))


def view_name(pipeline_id: str, fields: tuple[str, ...]) -> str:
    digest = hashlib.sha256("\0".join((pipeline_id, *fields)).encode()).hexdigest()
    return f"pipeline_rollup_{digest[:20]}"


def number(value: str) -> str:
    """The SQL of a JSON value (the SQL of a jsonb expression) as float8 when it is a number,
    else NULL."""
    return f"CASE WHEN jsonb_typeof({value}) = 'number' THEN ({value})::float8 END"


def _definition(ts: Storage, schema: str, r: Rollup) -> str:
    columns = []
    for field in r.fields:
        present, n, total, low, high = r.columns(field)
        value = number(f"data->'{field}'")  # a FIELD_NAME: letters, digits and _
        columns += [f"count(NULLIF(jsonb_typeof(data->'{field}'), 'null')) AS {present}",
                    f"count({value}) AS {n}", f"sum({value}) AS {total}",
                    f"min({value}) AS {low}", f"max({value}) AS {high}"]
    pid = "'" + r.pipeline_id.replace("'", "''") + "'"
    return (f"CREATE MATERIALIZED VIEW {quote(schema)}.{r.view} WITH (timescaledb.continuous, "
            "timescaledb.materialized_only = false) AS "
            f"SELECT {ts.fn('time_bucket')}(INTERVAL '1 minute', time) AS bucket, "
            f"{', '.join(columns)} FROM {quote(schema)}.pipeline_data "
            f"WHERE pipeline_id = {pid} GROUP BY 1 WITH NO DATA")


async def ensure(conn: asyncpg.Connection, ts: Storage, schema: str, p: Pipeline
                 ) -> Rollup | None:
    """The pipeline's rollup, created (or replaced, when its fields changed) if needed."""
    fields = numeric_fields(p)
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock(hashtext('dashpipe-rollup'), "
                           "hashtext($1))", p.id)
        await conn.execute(_TABLE)
        old = await conn.fetchrow("SELECT view_name, fields FROM pipeline_rollups "
                                  "WHERE pipeline_id = $1", p.id)
        want = Rollup(p.id, view_name(p.id, fields), fields) if fields else None
        if old is not None and want is not None and old["view_name"] == want.view:
            return want
        if old is not None:
            await conn.execute(f"DROP MATERIALIZED VIEW IF EXISTS {quote(schema)}."
                               f"{old['view_name']}")
            await conn.execute("DELETE FROM pipeline_rollups WHERE pipeline_id = $1", p.id)
        if want is None:
            return None
        await conn.execute(_definition(ts, schema, want))
        await conn.execute(f"SELECT {ts.fn('add_continuous_aggregate_policy')}($1::regclass, "
                           "start_offset => NULL, end_offset => $2::interval, "
                           "schedule_interval => $3::interval)",
                           f"{quote(schema)}.{want.view}", LAG, BUCKET)
        await conn.execute("INSERT INTO pipeline_rollups (pipeline_id, view_name, fields) "
                           "VALUES ($1, $2, $3)", p.id, want.view, list(fields))
        return want


async def drop(conn: asyncpg.Connection, schema: str, pipeline_id: str) -> None:
    """Forget a deleted pipeline's rollup (its rows stay in `pipeline_data`)."""
    async with conn.transaction():
        view = await conn.fetchval("DELETE FROM pipeline_rollups WHERE pipeline_id = $1 "
                                   "RETURNING view_name", pipeline_id)
        if view is not None:
            await conn.execute(f"DROP MATERIALIZED VIEW IF EXISTS {quote(schema)}.{view}")


async def find(conn: asyncpg.Connection, pipeline_id: str) -> Rollup | None:
    try:
        row = await conn.fetchrow("SELECT view_name, fields FROM pipeline_rollups "
                                  "WHERE pipeline_id = $1", pipeline_id)
    except asyncpg.UndefinedTableError:
        return None
    return None if row is None else Rollup(pipeline_id, row[0], tuple(row[1]))


async def refresh(conn: asyncpg.Connection, ts: Storage, schema: str, view: str,
                  start: datetime, end: datetime) -> bool:
    """Re-materialise the minutes from `start` to `end` (rows written there late or again);
    minutes newer than the policy's lag are left to real-time aggregation. Returns whether a
    refresh ran."""
    start = floor(start)
    end = min(floor(end) + BUCKET, floor(datetime.now(start.tzinfo) - LAG))
    if end <= start:
        return False
    # its own transaction by rule of TimescaleDB: never inside a transaction block
    await conn.execute(f"CALL {ts.fn('refresh_continuous_aggregate')}($1::regclass, "
                       "$2::timestamptz, $3::timestamptz)",
                       f"{quote(schema)}.{view}", start, end)
    return True


def floor(t: datetime) -> datetime:
    return t.replace(second=0, microsecond=0)


def ceil(t: datetime) -> datetime:
    down = floor(t)
    return down if down == t else down + BUCKET


class Keeper:
    """The persist role's side: keeps one rollup per persisting pipeline with numeric fields
    (created, replaced, dropped as definitions change) and refreshes the minutes that rows
    written late or again have changed. Failures are logged and retried; they never stop
    the rows from being stored."""

    def __init__(self, pool: asyncpg.Pool, ts: Storage, schema: str,
                 pipelines: Callable[[], Mapping[str, Pipeline]], acquire_timeout: float
                 ) -> None:
        self.pool, self.ts, self.schema = pool, ts, schema
        self.pipelines, self.acquire_timeout = pipelines, acquire_timeout
        self.views: dict[str, Rollup] = {}  # pipeline id -> its rollup
        self.touched: dict[str, tuple[datetime, datetime]] = {}  # id -> (first, last) time
        self.changed = asyncio.Event()
        self.changed.set()

    def wrote(self, rows: Iterable[Sequence[Any]]) -> None:
        """Note the times of stored rows (`db.COLUMNS` order) of pipelines with a rollup."""
        if not self.views:
            return
        views, touched = self.views, self.touched
        for row in rows:
            pid, when = row[2], row[0]
            if pid in views:
                span = touched.get(pid)
                touched[pid] = (when, when) if span is None else \
                    (min(span[0], when), max(span[1], when))

    async def run(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.changed.wait(), 1.0)
            try:
                async with self.pool.acquire(timeout=self.acquire_timeout) as conn:
                    if self.changed.is_set():
                        self.changed.clear()
                        await self._sync(conn)
                    await self._refresh(conn)
            except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
                self.changed.set()  # try again
                log.warning("rollups: %s: %s; retrying", type(exc).__name__,
                            str(exc).splitlines()[0][:200] if str(exc) else "")
                await asyncio.sleep(5)

    async def _sync(self, conn: asyncpg.Connection) -> None:
        wanted = {pid: p for pid, p in self.pipelines().items() if numeric_fields(p)}
        for pid in set(self.views) - set(wanted):
            await drop(conn, self.schema, pid)
            self.views.pop(pid, None)
        for pid, p in wanted.items():
            rollup = await ensure(conn, self.ts, self.schema, p)
            if rollup is not None:
                self.views[pid] = rollup

    async def _refresh(self, conn: asyncpg.Connection) -> None:
        touched, self.touched = self.touched, {}
        for pid, (first, last) in touched.items():
            rollup = self.views.get(pid)
            if rollup is not None:
                try:
                    await refresh(conn, self.ts, self.schema, rollup.view, first, last)
                except BaseException:
                    self.touched.setdefault(pid, (first, last))  # again next time
                    raise
