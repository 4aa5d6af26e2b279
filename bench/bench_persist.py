"""Role `persist`: rows/s stored into `pipeline_data`, against a bare asyncpg
`copy_records_to_table` loop into the same table shape.

The data: `--records` (200,000) transformed records exactly as `streams.mapper` writes them
(JSON: pipeline_id, team_id, time, key, fields, lineage, mapping_version, ingest_id,
schema_version; one row each), made by the README mapping (`bench_mapping.MAPPING`) from
one-feature USGS-style payloads, all distinct identities (pipeline, row key, time), times over
~18 days (two monthly partitions). `agents.persist.to_row` turns each into a `pipeline_data`
row (time, team_id, pipeline_id, row_key, data as jsonb text, raw_partition, raw_offset,
row_index, mapping_version, ingest_id); the bare sides get those tuples, prepared in memory.

Each side writes into its own scratch schema (`bench_persist_<tag>_<side>`, migrated with
`dashpipe.db.migrate`: the same table, primary key and index; PostgreSQL without TimescaleDB
gets native monthly partitions, created before the timed part for the two in-memory sides);
so no side ever meets another's rows. Each schema is checked (row count, and an md5 over every
row's key, time and data: all three sides must have stored identical rows), then dropped.
A `CHECKPOINT` (when the database user may) precedes each side, so none inherits the previous
side's dirty pages.

- baseline: plain asyncpg, one connection, `copy_records_to_table("pipeline_data",
  records=..., columns=db.COLUMNS)` in batches of 5,000 rows (the role's
  `DASHPIPE_DATABASE_PERSIST_BATCH_ROWS`), one transaction per batch, one batch after another;
  timed from the first batch to the last commit.
- ours, in-process: `agents.persist.Writer.write` (the role's database path: pool acquire,
  partition check, transaction, COPY fast path) on the same rows in the same batches, timed
  the same way. It isolates the database path from the consumer.
- ours, end to end: the records are written to the transformed topic of a fresh topic prefix
  (header `dashpipe-pipeline-id`, key the row key, as the mapper does), one pipeline with
  `persist_data: true` is registered through `rt.service.create(..., ADMIN)`, then
  `dashpipe run persist` runs in a subprocess on that prefix with
  `DASHPIPE_DATABASE_SCHEMA_NAME` set. `count(*)` of its table is polled every
  `--poll-interval` (0.1 s); the figure is the rows stored between the first poll that sees
  rows and the poll that sees all `--records`, over the time between those polls (process
  start-up, migration, group join and the first batch(es) are excluded). The time the polls
  themselves took is reported (they share the database with the role).

A cross-check free of polling: `stored_at` (the transaction start, `DEFAULT now()`) of every
side's rows gives (rows in all but the last transaction) / (last transaction start - first
transaction start), reported as `*_db_clock`.

`--rounds` (3; --quick 1): every side once per round, the order rotating so each goes first
once in three; the median per side is kept. Printed: rows/s of each side, the ratios ours end
to end / baseline (goal >= 0.8) and ours in-process / baseline, rows per transaction, the
persist process's CPU seconds per 1k rows; one `record()` each for `persist` (end to end) and
`persist-writer` (in-process). `--profile FILE` runs `py-spy record -f raw` on the persist
process over the measured window of the first round.

Needs the broker and PostgreSQL (`dashpipe up`); without them the script exits 2.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import logging
import random
import statistics
import sys
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import asyncpg
import orjson
from aiokafka.errors import KafkaError
from bench_mapping import MAPPING, payload
from harness import (
    Child,
    bootstrap_servers,
    child,
    child_env,
    cpu_seconds,
    dashpipe_command,
    profiler,
    record,
    scratch_prefix,
    setup_logging,
)
from pydantic import SecretStr

from agents.persist import Row, Writer, to_row
from dashpipe import db, kafka
from dashpipe.batcher import Record, partition_for, send_records
from dashpipe.errors import ConfigError, DashpipeError
from dashpipe.runtime import open_runtime
from dashpipe.settings import ADMIN, DatabaseSettings, Settings, load_settings
from dashpipe.stack import endpoints
from dashpipe.topics import TopicNames
from schemas.mapping import Mapping
from schemas.records import SCHEMA_VERSION
from streams.compiler import compile_mapping

log = logging.getLogger("bench.persist")

PIPELINE_ID, TEAM_ID, MAPPING_VERSION = "persisted", "team-bench", 1
BATCH_ROWS = 5000  # DatabaseSettings.persist_batch_rows' default: the role's batch
RAW_PARTITIONS = 6
IDLE_LIMIT_S = 60.0
# a row's content, for comparing the sides' tables
DIGEST = ("SELECT count(*), md5(string_agg(row_key || '|' || time::text || '|' || data::text, "
          "',' ORDER BY row_key, time)) FROM pipeline_data")
STORED_AT = ("SELECT min(stored_at), max(stored_at), "
             "count(*) FILTER (WHERE stored_at = (SELECT max(stored_at) FROM pipeline_data)), "
             "count(DISTINCT stored_at) FROM pipeline_data")


@dataclass(frozen=True)
class Side:
    rows: int  # rows inside the measured window
    seconds: float
    digest: str
    db_clock: float  # rows/s from stored_at (all transactions but the last)
    transactions: int  # distinct stored_at values: one per transaction
    cpu_s: float = 0.0  # the persist process over the window (end to end only)
    first_rows: int = 0  # already stored at the first poll that saw rows (end to end only)
    poll_s: float = 0.0  # time spent in the count(*) polls inside the window
    polls: int = 0

    @property
    def rate(self) -> float:
        return self.rows / self.seconds


# --- the data -------------------------------------------------------------------------------

def transformed_values(n: int) -> list[tuple[bytes, bytes, int]]:
    """`n` transformed records as `streams.mapper` writes them: (key, value, timestamp ms)."""
    run = compile_mapping(Mapping.model_validate(MAPPING))
    rng = random.Random(23)
    prefix = {"pipeline_id": PIPELINE_ID, "team_id": TEAM_ID}
    received = datetime.now(UTC)
    tag = uuid.uuid4().hex[:8]
    out: list[tuple[bytes, bytes, int]] = []
    for i in range(n):
        mapped = run(orjson.loads(payload(rng, i, 1, clean=True)), received)
        if len(mapped.rows) != 1:
            raise RuntimeError(f"payload {i} mapped to {len(mapped.rows)} rows, expected 1")
        row = mapped.rows[0]
        value = orjson.dumps({
            **prefix, "time": row.time, "key": row.key, "fields": row.fields,
            "lineage": {"raw_partition": i % RAW_PARTITIONS, "raw_offset": i // RAW_PARTITIONS,
                        "row_index": row.index},
            "mapping_version": MAPPING_VERSION, "ingest_id": f"{tag}-{i}",
            "schema_version": SCHEMA_VERSION}, option=orjson.OPT_UTC_Z)
        out.append(((row.key or PIPELINE_ID).encode(), value,
                    int(row.time.timestamp() * 1000)))
    return out


def batches(rows: list[Row]) -> list[list[Row]]:
    return [rows[i:i + BATCH_ROWS] for i in range(0, len(rows), BATCH_ROWS)]


def months(rows: list[Row]) -> set[tuple[int, int]]:
    return {db.month_of(r[0].astimezone(UTC)) for r in rows}


# --- the database ---------------------------------------------------------------------------

def database_url(settings: Settings) -> str:
    """DASHPIPE_DATABASE_URL, else the local stack's; exits 2 with a hint when neither."""
    try:
        return endpoints(settings).database_url.get_secret_value()
    except ConfigError as exc:
        print(f"bench: PostgreSQL is not configured: {exc}", file=sys.stderr)
        raise SystemExit(2) from None


async def check_database(url: str) -> None:
    try:
        conn = await asyncpg.connect(url, timeout=5)
    except (OSError, TimeoutError, asyncpg.PostgresError) as exc:
        print(f"bench: PostgreSQL is not reachable ({type(exc).__name__}: {exc}); run "
              "`dashpipe up` first", file=sys.stderr)
        raise SystemExit(2) from None
    await conn.close()


def schema_settings(schema: str) -> DatabaseSettings:
    return DatabaseSettings(schema_name=schema)


async def connect(url: str, schema: str) -> asyncpg.Connection:
    conn: asyncpg.Connection = await asyncpg.connect(url, server_settings={"search_path": schema})
    return conn


@asynccontextmanager
async def scratch_schema(url: str, schema: str) -> AsyncIterator[bool]:
    """A schema with `pipeline_data` migrated as the role does; yields whether it is a
    hypertable; dropped (with everything in it) afterwards."""
    ds = schema_settings(schema)
    pool = await db.create_pool(ds.model_copy(update={"url": SecretStr(url)}))
    try:
        hyper = await db.migrate(pool, ds)
    finally:
        await pool.close()
    log.info("created schema %s (%s)", schema,
             "TimescaleDB hypertable" if hyper else "native monthly partitions")
    try:
        yield hyper
    finally:
        conn = await asyncpg.connect(url)
        try:
            await conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
        finally:
            await conn.close()
        log.info("dropped schema %s", schema)


async def checkpoint(url: str) -> None:
    """Flush dirty pages before a side, so no side pays for the previous one's writes (a no-op
    when the user may not: it needs superuser or pg_checkpoint)."""
    conn = await asyncpg.connect(url)
    try:
        await conn.execute("CHECKPOINT")
    except asyncpg.InsufficientPrivilegeError:
        log.info("CHECKPOINT not allowed for this user; sides may share dirty pages")
    finally:
        await conn.close()


async def digest(url: str, schema: str, expected: int) -> tuple[str, float, int]:
    """(md5 over the stored rows, rows/s by the stored_at clock, transactions); raises when
    rows are missing."""
    conn = await connect(url, schema)
    try:
        count, md5 = await conn.fetchrow(DIGEST)
        if count != expected:
            raise RuntimeError(f"schema {schema} holds {count} rows, expected {expected}")
        first, last, in_last, transactions = await conn.fetchrow(STORED_AT)
    finally:
        await conn.close()
    span = (last - first).total_seconds()
    return (str(md5), (expected - in_last) / span if span > 0 else float("nan"),
            int(transactions))


# --- the sides ------------------------------------------------------------------------------

async def baseline(url: str, schema: str, rows: list[Row]) -> Side:
    async with scratch_schema(url, schema) as hyper:
        conn = await connect(url, schema)
        try:
            if not hyper:
                await db.Partitions().ensure(conn, months(rows))
            await checkpoint(url)
            parts = batches(rows)
            start = time.perf_counter()
            for part in parts:
                async with conn.transaction():
                    await conn.copy_records_to_table("pipeline_data", records=part,
                                                     columns=db.COLUMNS)
            elapsed = time.perf_counter() - start
        finally:
            await conn.close()
        md5, clock, txns = await digest(url, schema, len(rows))
    return Side(rows=len(rows), seconds=elapsed, digest=md5, db_clock=clock, transactions=txns)


async def in_process(url: str, schema: str, rows: list[Row]) -> Side:
    async with scratch_schema(url, schema) as hyper:
        ds = schema_settings(schema).model_copy(update={"url": SecretStr(url)})
        pool = await db.create_pool(ds)
        try:
            writer = Writer(pool, ds.acquire_timeout_seconds, hyper)
            if not hyper:
                async with pool.acquire() as conn:
                    await writer.partitions.ensure(conn, months(rows))
            await checkpoint(url)
            parts = batches(rows)
            start = time.perf_counter()
            for part in parts:
                refused = await writer.write(part)
                if refused:
                    raise RuntimeError(f"Writer refused {len(refused)} rows: {refused[0][1:]}")
            elapsed = time.perf_counter() - start
        finally:
            await pool.close()
        md5, clock, txns = await digest(url, schema, len(rows))
    return Side(rows=len(rows), seconds=elapsed, digest=md5, db_clock=clock, transactions=txns)


async def register(settings: Settings, servers: str, prefix: str) -> None:
    """The pipeline, created as the API does (`rt.service.create` as admin)."""
    scoped = dataclasses.replace(
        settings, topics=settings.topics.model_copy(update={"prefix": prefix}),
        kafka=settings.kafka.model_copy(update={"group_prefix": prefix}))
    async with open_runtime(scoped, servers) as rt:
        await rt.service.create({
            "id": PIPELINE_ID, "team_id": TEAM_ID, "name": "persist bench",
            "type": "realtime", "source_type": "webhook",
            "source_config": {"webhook_secret": "bench"}, "data_mapping": MAPPING,
            "persist_data": True, "rate_limit_per_minute": 1_000_000}, ADMIN)
    log.info("registered pipeline %s (persist_data: true) on prefix %s", PIPELINE_ID, prefix)


async def fill(servers: str, settings: Settings, topic: str,
               values: list[tuple[bytes, bytes, int]]) -> float:
    """The transformed records onto `topic`, partitioned by key as the mapper does; records/s."""
    headers = [("dashpipe-pipeline-id", PIPELINE_ID.encode()),
               ("dashpipe-team-id", TEAM_ID.encode())]
    async with kafka.started(kafka.producer(servers, settings.kafka)) as producer:
        parts = len(await kafka.partitions(producer, topic))
        start = time.perf_counter()
        for i in range(0, len(values), 20_000):
            out: dict[tuple[str, int], list[Record]] = {}
            for key, value, ts in values[i:i + 20_000]:
                out.setdefault((topic, partition_for(key, parts)), []).append(
                    (key, value, headers, ts))
            await send_records(producer, out)
        return len(values) / (time.perf_counter() - start)


Count = Callable[[], Awaitable[int]]


async def watch(proc: Child, count: Count, expected: int, interval: float,
                profile: Path | None, profile_seconds: float) -> Side:
    """From the first poll that sees stored rows to the one that sees `expected`."""
    deadline = time.monotonic() + IDLE_LIMIT_S
    while (first := await count()) == 0:
        proc.check_alive()
        if time.monotonic() > deadline:
            raise RuntimeError(f"no stored row within {IDLE_LIMIT_S:.0f}s of the persist process "
                               f"starting:\n{proc.output()}")
        await asyncio.sleep(interval)
    start, cpu = time.perf_counter(), cpu_seconds(proc.pid)
    poll_s, polls = 0.0, 0
    with profiler(proc.pid, profile, profile_seconds, "persist process",
                  idle=True):
        seen, last_change = first, time.monotonic()
        while seen < expected:
            await asyncio.sleep(interval)
            t = time.perf_counter()
            now_count = await count()
            poll_s, polls = poll_s + time.perf_counter() - t, polls + 1
            if now_count != seen:
                seen, last_change = now_count, time.monotonic()
            elif time.monotonic() - last_change > IDLE_LIMIT_S:
                raise RuntimeError(f"pipeline_data holds {seen} of {expected} rows and gained "
                                   f"none for {IDLE_LIMIT_S:.0f}s:\n{proc.output()}")
            proc.check_alive()
        elapsed, cpu_end = time.perf_counter() - start, cpu_seconds(proc.pid)
    if seen > expected:
        raise RuntimeError(f"pipeline_data holds {seen} rows, more than the {expected} sent")
    return Side(rows=seen - first, seconds=elapsed, digest="", db_clock=0.0, transactions=0,
                cpu_s=cpu_end - cpu, first_rows=first, poll_s=poll_s, polls=polls)


async def end_to_end(args: argparse.Namespace, settings: Settings, servers: str, url: str,
                     schema: str, values: list[tuple[bytes, bytes, int]],
                     profile: Path | None) -> tuple[Side, float]:
    async with scratch_prefix(servers, settings, "persist") as prefix, \
            scratch_schema(url, schema):
        names = TopicNames.from_prefix(prefix)
        await register(settings, servers, prefix)
        filled = await fill(servers, settings, names.transformed, values)
        log.info("filled %s with %d transformed records at %.0f records/s", names.transformed,
                 len(values), filled)
        await checkpoint(url)
        conn = await connect(url, schema)
        try:
            async def count() -> int:
                return int(await conn.fetchval("SELECT count(*) FROM pipeline_data"))

            env = child_env(servers, prefix, DASHPIPE_DATABASE_URL=url,
                            DASHPIPE_DATABASE_SCHEMA_NAME=schema)
            with child("persist", dashpipe_command("run", "persist", "--log-level",
                                                   args.log_level), env) as persist:
                side = await watch(persist, count, len(values), args.poll_interval, profile,
                                   args.profile_seconds)
        finally:
            await conn.close()
        md5, clock, txns = await digest(url, schema, len(values))
    return dataclasses.replace(side, digest=md5, db_clock=clock, transactions=txns), filled


# --- main -----------------------------------------------------------------------------------

def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--records", type=int, default=200_000)
    parser.add_argument("--poll-interval", type=float, default=0.1,
                        help="seconds between count(*) polls of the role's table")
    parser.add_argument("--log-level", default="info", choices=["debug", "info", "warn", "error"],
                        help="of the measured role (info: as the Procfile runs it)")
    parser.add_argument("--profile", type=Path, default=None,
                        help="py-spy raw output of the persist process over the measured window "
                        "(first round)")
    parser.add_argument("--profile-seconds", type=float, default=3.0,
                        help="keep it within the measured window (~3 s for 200k rows)")
    parser.add_argument("--rounds", type=int, default=3,
                        help="every side this many times (the order rotates); medians kept")
    parser.add_argument("--quick", action="store_true", help="smoke run (20k records, 1 round)")
    args = parser.parse_args(argv)
    if args.quick:
        args.records, args.rounds = min(args.records, 20_000), 1
    if args.rounds < 1:
        parser.error("--rounds must be at least 1")
    if args.records < 4 * BATCH_ROWS:
        parser.error(f"--records must be at least {4 * BATCH_ROWS:,} (the first batches of the "
                     "role are not measured)")
    return args


def median(sides: list[Side]) -> Side:
    """The side of the median rate (the lower middle one for an even count)."""
    return sorted(sides, key=lambda side: side.rate)[(len(sides) - 1) // 2]


async def run(args: argparse.Namespace) -> None:
    settings = load_settings()
    servers = await bootstrap_servers(settings)
    url = database_url(settings)
    await check_database(url)
    log.info("making %d transformed records", args.records)
    values = transformed_values(args.records)
    rows = [to_row(value) for _, value, _ in values]
    tag = uuid.uuid4().hex[:8]
    done: dict[str, list[Side]] = {"base": [], "writer": [], "role": []}
    fills: list[float] = []
    for round_ in range(args.rounds):
        order = list(done)
        order = order[round_ % 3:] + order[:round_ % 3]  # each side goes first once in 3
        for name in order:
            schema = f"bench_persist_{tag}_{name}{round_}"
            if name == "base":
                side = await baseline(url, schema, rows)
            elif name == "writer":
                side = await in_process(url, schema, rows)
            else:
                first = not done["role"]  # --profile: the first round only
                side, filled = await end_to_end(args, settings, servers, url, schema, values,
                                                args.profile if first else None)
                fills.append(filled)
            log.info("round %d, %s: %.0f rows/s (%d transactions)",
                     round_ + 1, name, side.rate, side.transactions)
            done[name].append(side)
    digests = {side.digest for sides in done.values() for side in sides}
    if len(digests) != 1:
        raise RuntimeError(f"the sides stored different rows: md5s {sorted(digests)}")
    base, inproc, ours = median(done["base"]), median(done["writer"]), median(done["role"])
    ratio, in_ratio = ours.rate / base.rate, inproc.rate / base.rate
    cpu_per_1k = ours.cpu_s / max(ours.rows, 1) * 1000

    def rates(name: str) -> list[int]:
        return [round(side.rate) for side in done[name]]

    print(f"persist ({args.records:,} rows, median of {args.rounds} round(s)): ours end to end "
          f"{ours.rate:,.0f} rows/s ({ours.rows:,} rows in {ours.seconds:.2f}s, first "
          f"{ours.first_rows:,} excluded; {ours.polls} count(*) polls took {ours.poll_s:.2f}s; "
          f"{args.records / ours.transactions:,.0f} rows per transaction), ours in-process "
          f"Writer.write {inproc.rate:,.0f} rows/s, bare copy_records_to_table "
          f"{base.rate:,.0f} rows/s; ratio end to end {ratio:.3f} (goal >= 0.8), in-process "
          f"{in_ratio:.3f}; persist process {cpu_per_1k:.3f} CPU s per 1k rows "
          f"({ours.cpu_s / ours.seconds:.0%} of a core); by the stored_at clock: role "
          f"{ours.db_clock:,.0f}, Writer {inproc.db_clock:,.0f}, bare {base.db_clock:,.0f} "
          f"rows/s; every side stored identical rows (md5 {base.digest}); per round: role "
          f"{rates('role')}, Writer {rates('writer')}, bare {rates('base')}", flush=True)
    common = {"records": args.records, "batch_rows": BATCH_ROWS, "rounds": args.rounds,
              "baseline_rounds": rates("base"), "quick": args.quick}
    record("persist", unit="rows/s", ours=round(ours.rate), baseline=round(base.rate),
           ours_rounds=rates("role"), measured_rows=ours.rows, seconds=round(ours.seconds, 3),
           first_rows_excluded=ours.first_rows, polls=ours.polls,
           poll_seconds=round(ours.poll_s, 3), transactions=ours.transactions,
           ours_cpu_s_per_1k=round(cpu_per_1k, 4),
           ours_cpu_share=round(ours.cpu_s / ours.seconds, 2),
           ours_db_clock=round(ours.db_clock), baseline_db_clock=round(base.db_clock),
           in_process=round(inproc.rate), fill_rate=round(statistics.median(fills)), **common)
    record("persist-writer", unit="rows/s", ours=round(inproc.rate), baseline=round(base.rate),
           ours_rounds=rates("writer"), seconds=round(inproc.seconds, 3),
           baseline_seconds=round(base.seconds, 3), transactions=inproc.transactions,
           ours_db_clock=round(inproc.db_clock), baseline_db_clock=round(base.db_clock),
           **common)


def main(argv: list[str] | None = None) -> None:
    setup_logging()
    args = parse_args(argv)
    try:
        asyncio.run(run(args))
    except (RuntimeError, DashpipeError, KafkaError, asyncpg.PostgresError, OSError) as exc:
        print(f"bench_persist: error: {type(exc).__name__}: {exc}", file=sys.stderr)
        raise SystemExit(1) from None


if __name__ == "__main__":
    main()
