"""Role `persist`: rows/s stored into `pipeline_data`, against a bare asyncpg
`copy_records_to_table` loop into the same table shape, on both storages in one run: plain
PostgreSQL (native monthly partitions) and TimescaleDB (a hypertable with its compression
policy, as `db.migrate` makes it).

The storages: the stack's PostgreSQL server, found as the tests find them
(`dashpipe.cli.stack.postgres.storages`): its own database for the storage it has, the sibling
`<db>_plain` (without the extension) or `<db>_timescaledb` for the other, created when missing.
A server without TimescaleDB gets one line saying so and the plain side only.

The data: `--records` (200,000) transformed records exactly as `streams.mapping.mapper` writes them
(JSON: pipeline_id, team_id, time, key, fields, lineage, mapping_version, ingest_id,
schema_version; one row each), made by the README mapping (`bench_mapping.MAPPING`) from
one-feature USGS-style payloads, all distinct identities (pipeline, row key, time), times over
~18 days (two monthly partitions). `agents.persist.persister.to_row` turns each into a
`pipeline_data` row (time, team_id, pipeline_id, row_key, data as jsonb text, raw_partition,
raw_offset, row_index, mapping_version, ingest_id); the bare sides get those tuples, prepared in
memory.

Each side writes into its own scratch schema (`bench_persist_<tag>_<storage>_<side>`, migrated
with `dashpipe.db.migrate`: the same table, primary key and index; on plain PostgreSQL native
monthly partitions, created before the timed part for the two in-memory sides; on TimescaleDB
the hypertable of 1-day chunks with its compression policy (7 days), so the bare side copies
into a hypertable made exactly as the role's); so no side ever meets another's rows. Each
schema is checked (row count, and an md5 over every row's key, time and data: every side on
both storages must have stored identical rows; on TimescaleDB also its chunks, how many the
policy compressed meanwhile, and its continuous aggregates), then dropped. A TimescaleDB side
starts once the policy's first run is done (TimescaleDB's scheduler starts it a few seconds
after the policy is added, the next an hour or more later): on the empty table it compresses
nothing, while under a side it would compress the very chunks being written (the rows are
older than its 7 days), which live ingest into the newest chunk never meets. Printed with the
figures: chunks written per transaction (the role's batches mix raw partitions whose times
lie days apart).
A `CHECKPOINT` (when the database user may) precedes each side, so none inherits the previous
side's dirty pages.

- baseline: plain asyncpg, one connection, `copy_records_to_table("pipeline_data",
  records=..., columns=db.COLUMNS)` in batches of 5,000 rows (the role's
  `DASHPIPE_DATABASE_PERSIST_BATCH_ROWS`), one transaction per batch, one batch after another;
  timed from the first batch to the last commit.
- ours, in-process: `agents.persist.persister.Writer.write` (the role's database path: pool acquire,
  partition check, transaction, COPY fast path) on the same rows in the same batches, timed
  the same way. It isolates the database path from the consumer.
- ours, end to end: the records are written to the transformed topic of a fresh topic prefix
  (header `dashpipe-pipeline-id`, key the row key, as the mapper does), one pipeline with
  `persist_data: true` is registered through `rt.service.create(..., ADMIN)`, then
  `dashpipe run persist` runs in a subprocess on that prefix with
  `DASHPIPE_DATABASE_SCHEMA_NAME` set. The run is over when the role's consumer group has
  committed every offset (it commits only what is stored); the group's offsets are polled,
  not the table, so the measurement puts no load on the database the role is writing to.
  On TimescaleDB this includes what the role does there besides writing: the pipeline has
  numeric fields, so the role creates its continuous aggregate (`dashpipe.rollups`) and
  refreshes the minutes its rows touch while it writes.

The figure of every side is taken by the database's own clock: `stored_at` (the transaction
start, `DEFAULT now()`) of its rows gives (rows in all but the last transaction) / (last
transaction start - first transaction start). Process start-up, migration and the group join
of the role are outside it, and no poll interval blurs it (polling `count(*)` every 0.1 s used
to cost the role's database ~0.17 s of scans per run, and could only place the end within
0.1 s of a ~1.2 s window). The in-process sides' wall-clock rates are printed as a
cross-check.

`--rounds` (3; --quick 1): every side once per round on each storage, the order rotating so
each goes first once in three; the median per side is kept. Printed per storage: rows/s of
each side, the ratios ours end to end / baseline (goal >= 0.8) and ours in-process / baseline,
rows per transaction, the persist process's CPU microseconds per row (from its first stored
row to its last commit); one `record()` each for `persist` and `persist-writer` (plain
PostgreSQL) and `persist-timescaledb` and `persist-writer-timescaledb`.
`--profile FILE` runs `py-spy record -f raw` on the persist process over the measured window
of the first round.

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
    check_database,
    child,
    child_env,
    compression_policy_ran,
    cpu_seconds,
    dashpipe_command,
    database_url,
    drop_schema,
    profiler,
    record,
    scratch_prefix,
    setup_logging,
)
from pydantic import SecretStr

from agents.persist.persister import Row, Writer, to_row
from dashpipe import db, kafka
from dashpipe.batcher import Record, partition_for, send_records
from dashpipe.cli.stack.postgres import storages
from dashpipe.errors import DashpipeError
from dashpipe.runtime import open_runtime
from dashpipe.settings import ADMIN, DatabaseSettings, Settings, load_settings
from dashpipe.topics import TopicNames
from schemas.mapping import Mapping
from schemas.records import SCHEMA_VERSION
from streams.mapping.compiler import compile_mapping

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
             "count(DISTINCT stored_at), (SELECT avg(n) FROM (SELECT count(DISTINCT tableoid) "
             "AS n FROM pipeline_data GROUP BY stored_at) AS per) FROM pipeline_data")
# TimescaleDB: the hypertable's chunks (and how many the policy compressed), the schema's
# continuous aggregates (the role keeps one for a persisting pipeline's numeric fields)
CHUNKS = ("SELECT count(*), count(*) FILTER (WHERE is_compressed), "
          "(SELECT count(*) FROM timescaledb_information.continuous_aggregates "
          "WHERE view_schema = $1) FROM timescaledb_information.chunks "
          "WHERE hypertable_schema = $1 AND hypertable_name = 'pipeline_data'")


@dataclass(frozen=True)
class Side:
    digest: str
    rate: float  # rows/s by the stored_at clock (all transactions but the last)
    transactions: int  # distinct stored_at values: one per transaction
    wall_rate: float = 0.0  # rows/s by the bench's clock (the in-process sides only)
    cpu_us_per_row: float = 0.0  # the persist process (end to end only)
    chunks: tuple[int, int, int] | None = None  # TimescaleDB: chunks, compressed, rollups
    spread: float = 0.0  # chunks (partitions) a transaction wrote into, on average


# --- the data -------------------------------------------------------------------------------

def transformed_values(n: int) -> list[tuple[bytes, bytes, int]]:
    """`n` transformed records as `streams.mapping.mapper` writes them: (key, value,
    timestamp ms)."""
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
        found = await db.migrate(pool, ds)
        log.info("created schema %s (%s)", schema, found.describe())
        if found.hypertable:
            await compression_policy_ran(pool, schema)
    finally:
        await pool.close()
    try:
        yield found.hypertable
    finally:
        await drop_schema(url, schema)
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


async def digest(url: str, schema: str, expected: int, hyper: bool) -> Side:
    """The side's md5 over the stored rows, rows/s by the stored_at clock, transactions (and
    the hypertable's chunks); raises when rows are missing."""
    conn = await connect(url, schema)
    try:
        count, md5 = await conn.fetchrow(DIGEST)
        if count != expected:
            raise RuntimeError(f"schema {schema} holds {count} rows, expected {expected}")
        first, last, in_last, transactions, spread = await conn.fetchrow(STORED_AT)
        chunks = tuple(await conn.fetchrow(CHUNKS, schema)) if hyper else None
    finally:
        await conn.close()
    span = (last - first).total_seconds()
    return Side(digest=str(md5), rate=(expected - in_last) / span if span > 0 else float("nan"),
                transactions=int(transactions), chunks=chunks, spread=float(spread))


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
        side = await digest(url, schema, len(rows), hyper)
    return dataclasses.replace(side, wall_rate=len(rows) / elapsed)


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
        side = await digest(url, schema, len(rows), hyper)
    return dataclasses.replace(side, wall_rate=len(rows) / elapsed)


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


async def watch(proc: Child, stored: Count, committed: Count, expected: int,
                profile: Path | None, profile_seconds: float) -> float:
    """Wait for the first stored row, then for the group to commit all `expected` offsets;
    the persist process's CPU microseconds per row in between."""
    deadline = time.monotonic() + IDLE_LIMIT_S
    while (first := await stored()) == 0:
        proc.check_alive()
        if time.monotonic() > deadline:
            raise RuntimeError(f"no stored row within {IDLE_LIMIT_S:.0f}s of the persist process "
                               f"starting:\n{proc.output()}")
        await asyncio.sleep(0.02)  # a count(*) of the first rows: a small table still
    cpu = cpu_seconds(proc.pid)
    with profiler(proc.pid, profile, profile_seconds, "persist process", idle=True):
        seen, last_change = 0, time.monotonic()
        while seen < expected:
            await asyncio.sleep(0.1)
            now_seen = await committed()
            if now_seen != seen:
                seen, last_change = now_seen, time.monotonic()
            elif time.monotonic() - last_change > IDLE_LIMIT_S:
                raise RuntimeError(f"the persist group committed {seen} of {expected} offsets "
                                   f"and none for {IDLE_LIMIT_S:.0f}s:\n{proc.output()}")
            proc.check_alive()
        cpu_end = cpu_seconds(proc.pid)
    if seen > expected:
        raise RuntimeError(f"the persist group committed {seen} offsets, more than the "
                           f"{expected} records sent")
    return (cpu_end - cpu) / (expected - first) * 1e6


async def end_to_end(args: argparse.Namespace, settings: Settings, servers: str, url: str,
                     schema: str, values: list[tuple[bytes, bytes, int]],
                     profile: Path | None) -> tuple[Side, float]:
    async with scratch_prefix(servers, settings, "persist") as prefix, \
            scratch_schema(url, schema) as hyper, \
            kafka.started(kafka.admin(servers, settings.kafka)) as admin:
        names = TopicNames.from_prefix(prefix)
        await register(settings, servers, prefix)
        filled = await fill(servers, settings, names.transformed, values)
        log.info("filled %s with %d transformed records at %.0f records/s", names.transformed,
                 len(values), filled)
        await checkpoint(url)
        conn = await connect(url, schema)
        try:
            async def stored() -> int:
                return int(await conn.fetchval("SELECT count(*) FROM pipeline_data"))

            async def committed() -> int:
                offsets = await admin.list_consumer_group_offsets(f"{prefix}-persist")
                return sum(max(meta.offset, 0) for tp, meta in offsets.items()
                           if tp.topic == names.transformed)

            env = child_env(servers, prefix, DASHPIPE_DATABASE_URL=url,
                            DASHPIPE_DATABASE_SCHEMA_NAME=schema)
            with child("persist", dashpipe_command("run", "persist", "--log-level",
                                                   args.log_level), env) as persist:
                cpu_us = await watch(persist, stored, committed, len(values), profile,
                                     args.profile_seconds)
        finally:
            await conn.close()
        side = await digest(url, schema, len(values), hyper)
    return dataclasses.replace(side, cpu_us_per_row=cpu_us), filled


# --- main -----------------------------------------------------------------------------------

def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--records", type=int, default=200_000)
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


SUFFIX = {"postgres": "", "timescaledb": "-timescaledb"}  # of the record() names
LABEL = {"postgres": "plain PostgreSQL", "timescaledb": "TimescaleDB"}


async def rounds(args: argparse.Namespace, settings: Settings, servers: str, url: str,
                 schema: str, values: list[tuple[bytes, bytes, int]], rows: list[Row]
                 ) -> tuple[dict[str, list[Side]], list[float]]:
    """Every side `args.rounds` times on one storage, the order rotating."""
    done: dict[str, list[Side]] = {"base": [], "writer": [], "role": []}
    fills: list[float] = []
    for round_ in range(args.rounds):
        order = list(done)
        order = order[round_ % 3:] + order[:round_ % 3]  # each side goes first once in 3
        for name in order:
            scratch = f"{schema}_{name}{round_}"
            if name == "base":
                side = await baseline(url, scratch, rows)
            elif name == "writer":
                side = await in_process(url, scratch, rows)
            else:
                first = not done["role"]  # --profile: the first round only
                side, filled = await end_to_end(args, settings, servers, url, scratch, values,
                                                args.profile if first else None)
                fills.append(filled)
            log.info("round %d, %s: %.0f rows/s (%d transactions%s)", round_ + 1, name,
                     side.rate, side.transactions, "" if side.chunks is None else
                     f"; {side.chunks[1]} of {side.chunks[0]} chunks compressed")
            done[name].append(side)
    return done, fills


def report(args: argparse.Namespace, storage: str, done: dict[str, list[Side]],
           fills: list[float]) -> None:
    base, inproc, ours = median(done["base"]), median(done["writer"]), median(done["role"])
    ratio, in_ratio = ours.rate / base.rate, inproc.rate / base.rate

    def rates(name: str) -> list[int]:
        return [round(side.rate) for side in done[name]]

    chunks = ""
    if ours.chunks is not None:
        compressed = max(side.chunks[1] for sides in done.values() for side in sides
                         if side.chunks is not None)
        chunks = (f"; hypertable of {ours.chunks[0]} chunks, compression policy on "
                  f"(compressed during a side: at most {compressed}), continuous aggregates "
                  f"kept by the role end to end: {ours.chunks[2]}")
    print(f"persist on {LABEL[storage]} ({args.records:,} rows, median of {args.rounds} "
          f"round(s), by the stored_at clock): ours end to end {ours.rate:,.0f} rows/s "
          f"({args.records / ours.transactions:,.0f} rows per transaction), ours in-process "
          f"Writer.write {inproc.rate:,.0f} rows/s, bare copy_records_to_table "
          f"{base.rate:,.0f} rows/s; ratio end to end {ratio:.3f} (goal >= 0.8), in-process "
          f"{in_ratio:.3f}; persist process {ours.cpu_us_per_row:.1f} CPU us per row; by the "
          f"bench's clock: Writer {inproc.wall_rate:,.0f}, bare {base.wall_rate:,.0f} rows/s; "
          f"per round: role {rates('role')}, Writer {rates('writer')}, bare {rates('base')}; "
          f"{'chunks' if ours.chunks else 'partitions'} written per transaction: role "
          f"{ours.spread:.1f}, Writer {inproc.spread:.1f}, bare {base.spread:.1f}{chunks}",
          flush=True)
    common = {"storage": storage, "records": args.records, "batch_rows": BATCH_ROWS,
              "rounds": args.rounds, "baseline_rounds": rates("base"), "clock": "stored_at",
              "quick": args.quick}
    record(f"persist{SUFFIX[storage]}", unit="rows/s", ours=round(ours.rate),
           baseline=round(base.rate), ours_rounds=rates("role"), transactions=ours.transactions,
           ours_cpu_us_per_row=round(ours.cpu_us_per_row, 2), in_process=round(inproc.rate),
           fill_rate=round(statistics.median(fills)), **common)
    record(f"persist-writer{SUFFIX[storage]}", unit="rows/s", ours=round(inproc.rate),
           baseline=round(base.rate), ours_rounds=rates("writer"),
           transactions=inproc.transactions, ours_wall=round(inproc.wall_rate),
           baseline_wall=round(base.wall_rate), **common)


async def run(args: argparse.Namespace) -> None:
    settings = load_settings()
    servers = await bootstrap_servers(settings)
    url = database_url(settings)
    await check_database(url)
    urls = await storages(url)
    if "timescaledb" not in urls:
        print("persist: this PostgreSQL server has no TimescaleDB extension: plain PostgreSQL "
              "only", flush=True)
    log.info("making %d transformed records", args.records)
    values = transformed_values(args.records)
    rows = [to_row(value) for _, value, _ in values]
    tag = uuid.uuid4().hex[:8]
    digests: dict[str, set[str]] = {}
    for storage, storage_url in urls.items():
        log.info("storage %s: %s", storage, LABEL[storage])
        done, fills = await rounds(args, settings, servers, storage_url,
                                   f"bench_persist_{tag}_{storage[:2]}", values, rows)
        digests[storage] = {side.digest for sides in done.values() for side in sides}
        if len(digests[storage]) != 1:
            raise RuntimeError(f"the sides stored different rows on {storage}: md5s "
                               f"{sorted(digests[storage])}")
        report(args, storage, done, fills)
    every = set().union(*digests.values())
    if len(every) != 1:
        raise RuntimeError(f"the storages hold different rows: md5s {digests}")
    print(f"persist: every side on {' and '.join(LABEL[s] for s in urls)} stored identical rows "
          f"(md5 {every.pop()})", flush=True)


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
