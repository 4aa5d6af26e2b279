"""`GET /api/pipelines/{id}/data`: stored rows as a time-bucketed series.

`from` / `to` (RFC 3339; default the last hour), `fields` (comma-separated; default the
mapping's integer and float fields), `bucket` (`10s`, `1m`, `5m`, `1h`, `1d`, ...; default
`1m`), `agg` (`avg`, `min`, `max`, `count`, `last`; default `avg`). `time_bucket` on
TimescaleDB, `date_bin` otherwise: the same buckets (aligned to 2000-01-03 UTC, a Monday, as
`time_bucket` aligns them). avg/min/max read numbers only; count counts non-null values; last
is the value of the latest row that has the field. Limits: a range of at most
`MAX_RANGE`, at most `MAX_POINTS` buckets, at most `MAX_FIELDS` fields; anything else is a 400
naming the parameter.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import orjson

from dashpipe import db, rollups
from dashpipe.errors import Unavailable
from schemas.mapping import FIELD_NAME
from schemas.pipeline import Pipeline

AGGREGATES = ("avg", "min", "max", "count", "last")
UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
MAX_RANGE = timedelta(days=366)
MAX_POINTS = 10_000
MAX_FIELDS = 20
ORIGIN = "2000-01-03T00:00:00Z"  # time_bucket's default origin, a Monday

log = logging.getLogger(__name__)


class BadQuery(ValueError):
    """A parameter the API answers 400 to; the message names it."""


@dataclass(frozen=True)
class Query:
    start: datetime
    end: datetime
    fields: list[str]
    bucket: timedelta
    agg: str


def parse(params: Any, pipeline: Pipeline, now: datetime) -> Query:
    end = _time(params.get("to"), "to") or now
    start = _time(params.get("from"), "from") or end - timedelta(hours=1)
    if start >= end:
        raise BadQuery("from: must be before to")
    if end - start > MAX_RANGE:
        raise BadQuery(f"from/to: at most {MAX_RANGE.days} days")
    text = params.get("bucket", "1m")
    m = re.fullmatch(r"([1-9][0-9]{0,6})([smhd])", text)
    if m is None:
        raise BadQuery(f"bucket: {text[:20]!r} is not a duration such as 10s, 1m, 1h, 1d")
    bucket = timedelta(seconds=int(m.group(1)) * UNITS[m.group(2)])
    if (end - start) / bucket > MAX_POINTS:
        raise BadQuery(f"bucket: {text} over this range gives more than {MAX_POINTS} points; "
                       "use a wider bucket or a shorter range")
    agg = params.get("agg", "avg")
    if agg not in AGGREGATES:
        raise BadQuery(f"agg: {agg[:20]!r} is not one of {', '.join(AGGREGATES)}")
    fields = [f for f in params.get("fields", "").split(",") if f] or \
        list(rollups.numeric_fields(pipeline))
    if not fields:
        raise BadQuery("fields: name the fields (the pipeline's mapping has no numeric field)")
    if len(fields) > MAX_FIELDS:
        raise BadQuery(f"fields: at most {MAX_FIELDS}")
    bad = [f for f in fields if not re.fullmatch(FIELD_NAME, f)]
    if bad:
        raise BadQuery(f"fields: {bad[0][:40]!r} is not a field name")
    return Query(start, end, fields, bucket, agg)


def _time(text: str | None, name: str) -> datetime | None:
    if not text:
        return None
    try:
        t = datetime.fromisoformat(text)
    except ValueError:
        raise BadQuery(f"{name}: {text[:40]!r} is not an RFC 3339 time") from None
    return t.replace(tzinfo=UTC) if t.tzinfo is None else t


def _column(agg: str, n: int) -> str:
    """The SQL of one aggregate over the field given as parameter `$n`."""
    value = f"data->${n}"
    number = rollups.number(value)
    if agg == "count":
        return f"count(*) FILTER (WHERE jsonb_typeof({value}) <> 'null')"
    if agg == "last":
        return (f"(array_agg({value} ORDER BY time DESC) "
                f"FILTER (WHERE jsonb_typeof({value}) <> 'null'))[1]")
    return f"{agg}({number})"


def sql(q: Query, storage: db.Storage) -> str:
    bucket = (f"{storage.fn('time_bucket')}($4::interval, time)" if storage.timescaledb else
              f"date_bin($4::interval, time, TIMESTAMPTZ '{ORIGIN}')")
    columns = ", ".join(_column(q.agg, 5 + i) for i in range(len(q.fields)))
    return (f"SELECT {bucket} AS bucket, {columns} FROM pipeline_data "
            "WHERE pipeline_id = $1 AND time >= $2 AND time < $3 GROUP BY 1 ORDER BY 1")


def rollup_sql(q: Query, storage: db.Storage, r: rollups.Rollup, schema: str) -> str:
    """The series from a rollup's whole minutes inside the range (`$5` to `$6`) and from the
    rows at its ragged ends, combined per bucket: the same answer as `sql`."""
    parts, raw, out = [], [], []
    for i, name in enumerate(q.fields):
        present, n, total, low, high = r.columns(name)
        parts.append(f"{present} AS p{i}, {n} AS n{i}, {total} AS s{i}, {low} AS lo{i}, "
                     f"{high} AS hi{i}")
        value = f"data->${7 + i}"
        number = rollups.number(value)
        raw.append(f"CASE WHEN jsonb_typeof({value}) <> 'null' THEN 1 ELSE 0 END, "
                   f"({number} IS NOT NULL)::int, "
                   f"{number}, {number}, {number}")
        out.append({"avg": f"sum(s{i}) / nullif(sum(n{i}), 0)::float8", "min": f"min(lo{i})",
                    "max": f"max(hi{i})", "count": f"sum(p{i})::bigint"}[q.agg])
    return (f"SELECT {storage.fn('time_bucket')}($4::interval, t) AS bucket, {', '.join(out)} "
            f"FROM (SELECT bucket AS t, {', '.join(parts)} FROM {db.quote(schema)}.{r.view} "
            "WHERE bucket >= $5 AND bucket < $6 "
            f"UNION ALL SELECT time, {', '.join(raw)} FROM pipeline_data "
            "WHERE pipeline_id = $1 AND time >= $2 AND time < $3 AND (time < $5 OR time >= $6)"
            ") AS parts GROUP BY 1 ORDER BY 1")


BUSY_RETRY_SECONDS = 1.0  # a free connection is usually a query's time away
SLOW_RETRY_SECONDS = 5.0  # the same query is likely as slow again: no quick retry


async def series(pool: asyncpg.Pool, storage: db.Storage, pipeline_id: str, q: Query,
                 acquire_timeout: float, schema: str = "public", use_rollups: bool = True,
                 statement_timeout: float | None = None) -> tuple[list[dict[str, Any]], str]:
    """The points, and where they came from: `rollup` or `rows`.

    Raises `Unavailable` (with the seconds to wait before a retry) when no connection of the
    pool is free within `acquire_timeout`, or when a statement runs past
    `statement_timeout` (None: the pool's `command_timeout`; asyncpg then cancels it on the
    server), so a reader past either deadline is answered, never left waiting."""
    try:
        conn = await pool.acquire(timeout=acquire_timeout)
    except TimeoutError:
        raise Unavailable(f"the database is busy: no connection free within "
                          f"{acquire_timeout:g} s; retry later", BUSY_RETRY_SECONDS) from None
    try:
        rollup = await rollups.find(conn, pipeline_id) if use_rollups and storage.timescaledb \
            and q.agg in rollups.AGGREGATES and q.bucket % rollups.BUCKET == timedelta(0) \
            else None
        if rollup is not None and set(q.fields) <= set(rollup.fields):
            records = await conn.fetch(rollup_sql(q, storage, rollup, schema), pipeline_id,
                                       q.start, q.end, q.bucket, rollups.ceil(q.start),
                                       rollups.floor(q.end), *q.fields,
                                       timeout=statement_timeout)
            source = "rollup"
        else:
            records = await conn.fetch(sql(q, storage), pipeline_id, q.start, q.end, q.bucket,
                                       *q.fields, timeout=statement_timeout)
            source = "rows"
    except TimeoutError:
        conn.terminate()  # rather than wait for the server to confirm the cancel
        limit = f" of {statement_timeout:g} s" if statement_timeout else ""
        raise Unavailable(f"the query ran past its deadline{limit}; a shorter range or a wider "
                          "bucket reads less", SLOW_RETRY_SECONDS) from None
    finally:
        await _give_back(pool, conn, statement_timeout or acquire_timeout)
    points = []
    for r in records:
        point: dict[str, Any] = {"time": r[0]}
        for i, name in enumerate(q.fields, start=1):
            value = r[i]
            point[name] = _json(value) if q.agg == "last" else value
        points.append(point)
    return points, source


async def _give_back(pool: asyncpg.Pool, conn: Any, timeout: float) -> None:
    """Return a connection to the pool. One whose reset fails or times out is closed by asyncpg
    instead (the next acquire opens a new one): the reader has its answer already and need
    neither wait for that nor hear of it."""
    try:
        await pool.release(conn, timeout=timeout)
    except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
        log.info("a data API connection was closed, not reused (%s)", type(exc).__name__)


def _json(value: Any) -> Any:
    return orjson.loads(value) if isinstance(value, str) else value
