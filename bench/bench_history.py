"""Data API: latency of `agents.web.history.series` (what `GET /api/pipelines/{id}/data` runs) over
30 days of 1-second rows of one pipeline, answered from the raw rows against the same answer
from the pipeline's continuous aggregate, on TimescaleDB.

The data: `--days` (30; `--quick`: 2) days of one row per second (2,592,000 rows) of one
pipeline, ending now: fields `temp` (a float, in quarters, null every 97th second) and `level`
(an integer, absent every 89th second), one row key. The values are multiples of 1/4, so every
sum is exact in float8 and the two paths' answers can be compared for equality, bit for bit.

Setup, untimed: a scratch schema `bench_history_<tag>` migrated by `db.migrate` (the hypertable
of 1-day chunks, its primary key, the `(pipeline_id, time)` index `pipeline_data_by_time`, the
compression policy), filled by `copy_records_to_table` in batches of 50,000 rows; then the
pipeline's continuous aggregate made by `rollups.ensure` (as the persist role makes it for a
pipeline with `persist_data` and numeric fields: per minute, with its refresh policy and
real-time aggregation) and materialised by `rollups.refresh` over the whole range; then the
compression policy's job run once (`run_job`), as the scheduler runs it: the chunks older than
7 days are compressed, the last 7 days are not (the `--quick` form's 2 days: none; the load
waits for the policy's own first run on the empty table, so none is compressed under it); then
`VACUUM ANALYZE`, as autovacuum would have done. Unless `--no-plain`, the same rows go into
a scratch schema of the plain PostgreSQL database (`<db>_plain`: native monthly partitions,
same table and index) as a cross-check of the raw path there.

Timed: the dashboard queries of `QUERIES` (last 30 days at 1 h, last 7 days at 5 min and 1 h,
last 24 h and last 1 h at 1 min; avg and max of both fields), each parsed by `history.parse`
with `now` = the end of the data, run through `history.series` on a pool made by
`db.create_pool` with `use_rollups=False` (`rows`) and `use_rollups=True` (`rollup`): one
warm-up call each, then `--reps` (5; quick 3) calls each, the two paths alternating which goes
first; the median is the figure. The script fails unless every answer equals the raw-row
answer (and the plain PostgreSQL one). Printed per query: both medians, the ratio raw/rollup,
and a summary of `EXPLAIN (ANALYZE, BUFFERS)` of the raw query: chunks (partitions) in the
plan against all of them, the scans and indexes it used, rows read. `record()` per query:
`history-<query>` in queries/s, ours = the rollup path, baseline = the raw rows (ratio =
raw latency / rollup latency). The scratch schemas are dropped afterwards.

Needs PostgreSQL with TimescaleDB (`dashpipe up`); without PostgreSQL it exits 2, without
TimescaleDB it says so in one line and measures nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import re
import statistics
import sys
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import orjson
from harness import (
    check_database,
    compression_policy_ran,
    database_url,
    drop_schema,
    record,
    setup_logging,
)
from pydantic import SecretStr

from agents.web import history
from dashpipe import db, rollups
from dashpipe.cli.stack.postgres import storages
from dashpipe.errors import DashpipeError
from dashpipe.settings import DatabaseSettings, load_settings
from schemas.pipeline import Pipeline

log = logging.getLogger("bench.history")

PIPELINE = Pipeline.model_validate({
    "id": "history-bench", "team_id": "team-bench", "name": "history bench",
    "type": "realtime", "source_type": "webhook", "source_config": {"webhook_secret": "bench"},
    "persist_data": True, "mapping_version": 1,
    "data_mapping": {"time": {"path": "t", "format": "epoch_s"},
                     "fields": {"temp": {"path": "temp", "type": "float"},
                                "level": {"path": "level", "type": "integer"}}}})
ROW_KEY = "meter-1"
LOAD_BATCH = 50_000
TIMEOUT = 120.0  # of a pool acquire and of a statement: a raw 30-day scan takes seconds


@dataclass(frozen=True)
class Query:
    name: str  # also the record() name's tail
    span: timedelta
    bucket: str
    agg: str


QUERIES = [Query(f"{span_name}-{bucket}-{agg}", span, bucket, agg)
           for span_name, span, buckets in (("30d", timedelta(days=30), ("1h",)),
                                            ("7d", timedelta(days=7), ("5m", "1h")),
                                            ("24h", timedelta(hours=24), ("1m",)),
                                            ("1h", timedelta(hours=1), ("1m",)))
           for bucket in buckets for agg in ("avg", "max")]


@dataclass(frozen=True)
class Side:
    """One storage's scratch schema, its pool and what holds the rows."""

    name: str
    url: str
    schema: str
    pool: asyncpg.Pool
    storage: db.Storage


# --- the data -------------------------------------------------------------------------------

def batches(end: datetime, seconds: int) -> Iterator[list[tuple[Any, ...]]]:
    """The rows (`db.COLUMNS` order) of the `seconds` seconds before `end`, in batches."""
    start = end - timedelta(seconds=seconds)
    pid, team, version = PIPELINE.id, PIPELINE.team_id, PIPELINE.mapping_version
    step = timedelta(seconds=1)
    out: list[tuple[Any, ...]] = []
    t = start
    for i in range(seconds):
        phase = i % 86_400  # a daily triangle, plus a deterministic ripple in quarters
        temp = 10 + min(phase, 86_400 - phase) // 2160 + (i * 7919 % 41) / 4
        if i % 89 == 0:
            data = f'{{"temp":{temp}}}'
        elif i % 97 == 0:
            data = f'{{"temp":null,"level":{i % 7}}}'
        else:
            data = f'{{"temp":{temp},"level":{i % 7}}}'
        out.append((t, team, pid, ROW_KEY, data, 0, i, 0, version, None))
        t += step
        if len(out) == LOAD_BATCH:
            yield out
            out = []
    if out:
        yield out


# --- the storages ---------------------------------------------------------------------------

@asynccontextmanager
async def scratch(name: str, url: str, schema: str) -> AsyncIterator[Side]:
    """A schema migrated by `db.migrate` and a pool on it, as the roles make them; dropped
    (with its chunks, continuous aggregate and jobs) afterwards."""
    ds = DatabaseSettings(url=SecretStr(url), schema_name=schema, pool_max_size=2,
                          acquire_timeout_seconds=TIMEOUT, statement_timeout_seconds=TIMEOUT)
    try:
        pool = await db.create_pool(ds)
        try:
            found = await db.migrate(pool, ds)
            log.info("created schema %s (%s)", schema, found.describe())
            if found.hypertable:  # before the rows: it is run once they are all in
                await compression_policy_ran(pool, schema)
            yield Side(name, url, schema, pool, found)
        finally:
            await pool.close()
    finally:
        await drop_schema(url, schema)
        log.info("dropped schema %s", schema)


async def load(sides: list[Side], end: datetime, seconds: int) -> float:
    """Every row into every side by COPY (the sides' batches concurrently); rows/s."""
    start = time.perf_counter()
    conns = [await side.pool.acquire() for side in sides]
    try:
        for side, conn in zip(sides, conns, strict=True):
            if not side.storage.hypertable:
                first = end - timedelta(seconds=seconds)
                await db.Partitions().ensure(conn, db.months([first, end]))
        for part in batches(end, seconds):
            await asyncio.gather(*(conn.copy_records_to_table(
                "pipeline_data", records=part, columns=db.COLUMNS) for conn in conns))
    finally:
        for side, conn in zip(sides, conns, strict=True):
            await side.pool.release(conn)
    return seconds / (time.perf_counter() - start)


async def prepare(ts: Side, end: datetime, seconds: int) -> rollups.Rollup:
    """The rollup made and materialised, the compression policy run, statistics current."""
    async with ts.pool.acquire() as conn:
        started = time.perf_counter()
        rollup = await rollups.ensure(conn, ts.storage, ts.schema, PIPELINE)
        if rollup is None:
            raise RuntimeError("rollups.ensure made no rollup for a pipeline with numeric fields")
        await rollups.refresh(conn, ts.storage, ts.schema, rollup.view,
                              end - timedelta(seconds=seconds), end)
        refreshed = time.perf_counter() - started
        job = await conn.fetchval(
            "SELECT job_id FROM timescaledb_information.jobs WHERE proc_name = "
            "'policy_compression' AND hypertable_schema = $1", ts.schema)
        started = time.perf_counter()
        await conn.execute(f"CALL {ts.storage.fn('run_job')}($1)", job)
        compressed = time.perf_counter() - started
        await conn.execute("VACUUM ANALYZE pipeline_data")
        top = await conn.fetchval(
            "SELECT format('%I.%I', materialization_hypertable_schema, "
            "materialization_hypertable_name) FROM timescaledb_information.continuous_aggregates "
            "WHERE view_schema = $1 AND view_name = $2", ts.schema, rollup.view)
        watermark = await conn.fetchval(f"SELECT max(bucket) FROM {top}")
        total, packed = await conn.fetchrow(
            "SELECT count(*), count(*) FILTER (WHERE is_compressed) FROM "
            "timescaledb_information.chunks WHERE hypertable_schema = $1", ts.schema)
        size = await conn.fetchval(f"SELECT pg_size_pretty({ts.storage.fn('hypertable_size')}"
                                   "('pipeline_data'::regclass))")
    print(f"history: TimescaleDB {ts.storage.timescaledb}: {seconds:,} rows in {total} chunks, "
          f"{packed} compressed by the compression policy's job ({compressed:.1f} s), the last "
          f"{total - packed} not; {size}; rollup {rollup.view} materialised in {refreshed:.1f} s "
          f"up to {watermark + rollups.BUCKET:%Y-%m-%d %H:%M} (the data ends {end:%H:%M:%S}; "
          "later minutes come from rows, real-time aggregation)", flush=True)
    return rollup


# --- the plans ------------------------------------------------------------------------------

CHUNK = re.compile(r"^(_hyper_\d+_\d+_chunk|pipeline_data_\d{4}_\d{2})$")
CHUNK_PREFIX = re.compile(r"^(_hyper|compress_hyper)_\d+_\d+_chunk_")


def nodes(plan: dict[str, Any]) -> Iterator[dict[str, Any]]:
    yield plan
    for child in plan.get("Plans", []):
        yield from nodes(child)


@dataclass(frozen=True)
class Plan:
    """What `EXPLAIN (ANALYZE)` of a raw query shows about its chunks (or partitions)."""

    unit: str  # chunks or partitions
    total: int  # all of them
    overlap: int | None  # those whose range overlaps the query's (TimescaleDB)
    planned: int  # in the plan once the planner is done
    startup: int  # removed from it when the executor started
    scanned: int  # executed
    scans: Counter[str]  # how each scanned one was read
    indexed: int  # uncompressed ones read through the (pipeline_id, time) index
    uncompressed: int
    rows: int  # rows read from them (per-loop averages x loops: within a few rows)
    ms: float
    shape: str  # how it aggregates: strategy, sorts, parallel workers

    def line(self) -> str:
        fit = "" if self.overlap is None else f", the {self.overlap} overlapping the range"
        how = ", ".join(f"{kind} x{n}" for kind, n in sorted(self.scans.items()))
        return (f"{self.scanned} of {self.total} {self.unit} scanned{fit} (excluded: "
                f"{self.total - self.planned - self.startup} by the planner, {self.startup} at "
                f"start-up, {self.planned - self.scanned} at run time); {how}; {self.rows:,} "
                f"rows read; {self.shape}; execution {self.ms:,.0f} ms")


async def explain(side: Side, q: history.Query, generic: bool = False) -> Plan:
    """`EXPLAIN (ANALYZE, BUFFERS)` of the raw query. `generic`: of the plan made without the
    parameters' values (as PostgreSQL may choose for a prepared statement after five runs;
    chunks are then excluded when the executor starts, not by the planner)."""
    sql = history.sql(q, side.storage)
    if generic:
        conn = await asyncpg.connect(side.url, server_settings={
            "search_path": side.schema, "plan_cache_mode": "force_generic_plan"})
        try:
            types = ", ".join(["text", "timestamptz", "timestamptz", "interval"] +
                              ["text"] * len(q.fields))
            await conn.execute(f"PREPARE generic ({types}) AS {sql}")
            values = [PIPELINE.id, q.start.isoformat(), q.end.isoformat(),
                      f"{q.bucket.total_seconds():.0f} seconds", *q.fields]
            text = await conn.fetchval("EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) EXECUTE generic "
                                       f"({', '.join(literal(v) for v in values)})")
        finally:
            await conn.close()
    else:
        text = await side.pool.fetchval(f"EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) {sql}",
                                        PIPELINE.id, q.start, q.end, q.bucket, *q.fields)
    top = orjson.loads(text)[0]
    planned: set[str] = set()
    scans: Counter[str] = Counter()
    rows = startup = scanned = indexed = uncompressed = workers = 0
    shape: list[str] = []
    for node in nodes(top["Plan"]):
        if node["Node Type"] == "Aggregate":
            shape.append(f"{node.get('Partial Mode', '')} {node.get('Strategy', '')} "
                         "aggregate".replace("Simple ", "").strip())
        elif node["Node Type"] == "Sort" and "Sort Method" in node:
            shape.append(f"sort ({node['Sort Method']}, {node.get('Sort Space Used', 0):,} kB "
                         f"{node.get('Sort Space Type', '').lower()})")
        workers += int(node.get("Workers Launched", 0))
        rel = node.get("Relation Name", "")
        provider = node.get("Custom Plan Provider")
        # removed from the plan when the executor starts (so absent from the nodes)
        startup += int(node.get("Chunks excluded during startup", 0))
        startup += int(node.get("Subplans Removed", 0))
        if not CHUNK.match(rel):
            continue
        planned.add(rel)
        if node.get("Actual Loops", 0) == 0:  # excluded at run time: never executed
            continue
        scanned += 1
        kind, inner = provider or node["Node Type"], node
        if provider:  # a compressed chunk: what reads its compressed rows
            inner = next(iter(node.get("Plans", [])), {})
            kind += f" over {inner.get('Node Type', '?')}"
        # a bitmap scan names its index in its child
        found = next((n["Index Name"] for n in nodes(inner) if "Index Name" in n), None)
        index = None if found is None else await index_name(side, found)
        if index:
            kind += f" using {index}"
        if not provider:
            uncompressed += 1
            indexed += index in ("pipeline_data_by_time", "pipeline_data_pkey")
        scans[kind] += 1
        rows += int(node.get("Actual Rows", 0)) * int(node.get("Actual Loops", 1))
    total, overlap = await chunks(side, q)
    return Plan("chunks" if side.storage.hypertable else "partitions", total, overlap,
                len(planned), startup, scanned, scans, indexed, uncompressed, rows,
                float(top["Execution Time"]),
                f"{', '.join(dict.fromkeys(shape))}, {workers} parallel workers")


async def chunks(side: Side, q: history.Query) -> tuple[int, int | None]:
    """All the chunks (partitions), and those overlapping the query's range (TimescaleDB)."""
    if not side.storage.hypertable:
        return int(await side.pool.fetchval(
            "SELECT count(*) FROM pg_inherits WHERE inhparent = 'pipeline_data'::regclass")), None
    total, overlap = await side.pool.fetchrow(
        "SELECT count(*), count(*) FILTER (WHERE range_end > $2 AND range_start < $3) "
        "FROM timescaledb_information.chunks WHERE hypertable_schema = $1",
        side.schema, q.start, q.end)
    return int(total), int(overlap)


def literal(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


async def index_name(side: Side, index: str) -> str:
    """The table's index a chunk's or partition's index was made from (TimescaleDB names a
    chunk's copy `<chunk>_<index>`; PostgreSQL attaches a partition's copy to the parent)."""
    if side.storage.hypertable:
        return CHUNK_PREFIX.sub("", index)
    parent = await side.pool.fetchval(
        "SELECT p.relname FROM pg_class c JOIN pg_inherits i ON i.inhrelid = c.oid "
        "JOIN pg_class p ON p.oid = i.inhparent WHERE c.relname = $1 "
        "AND c.relnamespace = $2::regnamespace", index, side.schema)
    return str(parent or index)


# --- the timing -----------------------------------------------------------------------------

async def timed(side: Side, q: history.Query, use_rollups: bool
                ) -> tuple[float, list[dict[str, Any]], str]:
    start = time.perf_counter()
    points, source = await history.series(side.pool, side.storage, PIPELINE.id, q, TIMEOUT,
                                          side.schema, use_rollups=use_rollups)
    return (time.perf_counter() - start) * 1000, points, source


async def measure(query: Query, ts: Side, plain: Side | None, end: datetime, reps: int,
                  args: argparse.Namespace, rows: int, compressed: int) -> tuple[Plan, Plan]:
    params = {"from": (end - query.span).isoformat(), "to": end.isoformat(),
              "bucket": query.bucket, "agg": query.agg}
    q = history.parse(params, PIPELINE, end)
    times: dict[str, list[float]] = {"rows": [], "rollup": [], "plain": []}
    answers: dict[str, list[dict[str, Any]]] = {}
    runs = [("rows", ts, False), ("rollup", ts, True)]
    if plain is not None:
        runs.append(("plain", plain, False))
    for rep in range(reps + 1):  # the first: a warm-up
        for name, side, use in runs[rep % 2:] + runs[:rep % 2]:
            ms, points, source = await timed(side, q, use)
            want = "rollup" if name == "rollup" else "rows"
            if source != want:
                raise RuntimeError(f"{query.name} on {side.name}: answered from {source}, "
                                   f"expected {want}")
            if not points:
                raise RuntimeError(f"{query.name} on {side.name}: no points")
            if answers.setdefault(name, points) != points:
                raise RuntimeError(f"{query.name} on {side.name}: answers differ between calls")
            if rep:
                times[name].append(ms)
    for name in ("rollup", "plain"):
        if name in answers and answers[name] != answers["rows"]:
            diff = next(i for i, (a, b) in enumerate(zip(answers[name], answers["rows"],
                                                         strict=False)) if a != b)
            raise RuntimeError(f"{query.name}: the {name} answer differs from the raw rows' "
                               f"({len(answers[name])} vs {len(answers['rows'])} points; first "
                               f"difference at {diff}: {answers[name][diff]} vs "
                               f"{answers['rows'][diff]})")
    raw, rolled = statistics.median(times["rows"]), statistics.median(times["rollup"])
    plain_ms = statistics.median(times["plain"]) if times["plain"] else None
    also = "" if plain_ms is None else f", plain PostgreSQL rows {plain_ms:,.1f} ms"
    print(f"history {query.name} ({len(answers['rows'])} points, {len(q.fields)} fields): "
          f"rows {raw:,.1f} ms, rollup {rolled:,.1f} ms, ratio raw/rollup {raw / rolled:,.1f}"
          f"{also}; answers equal", flush=True)
    plans = (await explain(ts, q), await explain(ts, q, generic=True))
    print(f"  plan of the raw query, TimescaleDB: {plans[0].line()}", flush=True)
    print(f"  the same as a generic plan: {plans[1].line()}", flush=True)
    if plain is not None:
        print(f"  plan of the raw query, plain PostgreSQL: {(await explain(plain, q)).line()}",
              flush=True)
    record(f"history-{query.name}", unit="queries/s", ours=round(1000 / rolled, 3),
           baseline=round(1000 / raw, 3), rows_ms=round(raw, 2), rollup_ms=round(rolled, 2),
           plain_ms=None if plain_ms is None else round(plain_ms, 2),
           points=len(answers["rows"]), table_rows=rows, compressed_chunks=compressed,
           reps=reps, quick=args.quick)
    return plans


# --- main -----------------------------------------------------------------------------------

def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--days", type=int, default=30, help="of 1-second rows")
    parser.add_argument("--reps", type=int, default=5, help="timed calls per query and path")
    parser.add_argument("--no-plain", action="store_true",
                        help="skip the plain PostgreSQL cross-check")
    parser.add_argument("--quick", action="store_true", help="smoke run (2 days, 3 reps)")
    args = parser.parse_args(argv)
    if args.quick:
        args.days, args.reps = min(args.days, 2), min(args.reps, 3)
    if not 1 <= args.days <= 60 or args.reps < 1:
        parser.error("--days: 1 to 60; --reps: at least 1")
    return args


async def run(args: argparse.Namespace) -> None:
    url = database_url(load_settings())
    await check_database(url)
    urls = await storages(url)
    if "timescaledb" not in urls:
        print("history: this PostgreSQL server has no TimescaleDB extension: no continuous "
              "aggregate to compare the raw rows with; nothing measured", flush=True)
        return
    begun = time.perf_counter()
    seconds = args.days * 86_400
    end = datetime.now(UTC).replace(microsecond=0)
    tag = uuid.uuid4().hex[:8]
    async with scratch("timescaledb", urls["timescaledb"], f"bench_history_{tag}") as ts:
        if args.no_plain:
            await body(args, ts, None, end, seconds, begun)
        else:
            async with scratch("postgres", urls["postgres"], f"bench_history_{tag}") as plain:
                await body(args, ts, plain, end, seconds, begun)


async def body(args: argparse.Namespace, ts: Side, plain: Side | None, end: datetime,
               seconds: int, begun: float) -> None:
    sides = [ts] if plain is None else [ts, plain]
    rate = await load(sides, end, seconds)
    print(f"history: {seconds:,} rows of 1 s ({args.days} days) loaded by COPY into "
          f"{' and '.join(s.storage.describe() for s in sides)} at {rate:,.0f} rows/s "
          "(each side)", flush=True)
    if plain is not None:
        await plain.pool.execute("VACUUM ANALYZE pipeline_data")
    await prepare(ts, end, seconds)
    compressed = int(await ts.pool.fetchval(
        "SELECT count(*) FROM timescaledb_information.chunks WHERE hypertable_schema = $1 "
        "AND is_compressed", ts.schema))
    plans = {query.name: await measure(query, ts, plain, end, args.reps, args, seconds,
                                       compressed) for query in QUERIES}
    outside = [name for name, pair in plans.items() for p in pair
               if p.overlap is None or p.scanned > p.overlap]
    if outside:
        raise RuntimeError(f"chunks outside the range were scanned by the raw query of "
                           f"{', '.join(sorted(set(outside)))}")
    every = [p for pair in plans.values() for p in pair]
    print(f"history: plans of the raw queries on TimescaleDB ({seconds:,} rows, "
          f"{every[0].total} chunks, {compressed} compressed): every one scanned only the chunks "
          f"overlapping its range ({', '.join(f'{n} {p[0].scanned}' for n, p in plans.items())}"
          f" of {every[0].total}), excluded by the planner and, as a generic plan, at executor "
          f"start-up; uncompressed chunks read through the (pipeline_id, time) index in "
          f"{sum(p.indexed for p in every)} of {sum(p.uncompressed for p in every)} chunk "
          "scans", flush=True)
    print(f"history: done in {time.perf_counter() - begun:.0f} s", flush=True)


def main(argv: list[str] | None = None) -> None:
    setup_logging()
    args = parse_args(argv)
    try:
        asyncio.run(run(args))
    except (RuntimeError, DashpipeError, asyncpg.PostgresError, OSError) as exc:
        print(f"bench_history: error: {type(exc).__name__}: {exc}", file=sys.stderr)
        raise SystemExit(1) from None


if __name__ == "__main__":
    main()
