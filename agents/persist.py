"""Role `persist`: transformed rows of pipelines with `persist_data` into `pipeline_data`.
Consumer group `<prefix>-persist` on the transformed topic.

Per `getmany` batch, one transaction: a plain COPY into the table (the fast path, for rows
never stored before); if any row exists already (a replay, an overlapping poll, a repeat after
a crash) the transaction rolls back and the batch goes through a staging table and
`INSERT ... ON CONFLICT (pipeline_id, row_key, time) DO UPDATE` instead, so a row is stored once
and a later version replaces it. Offsets are committed only after the transaction commits.

Database unavailable (down, refusing connections, timing out): the partitions are paused (the
consumer keeps polling, so it stays in its group), the write retries with backoff, nothing is
committed, and the backlog drains after recovery. A row the database refuses (a data or
integrity error) is found by bisecting the batch and becomes a dead letter (stage `persist`)
with its SQLSTATE and class, while the rest of the batch lands.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import asyncpg
import orjson
from aiokafka import ConsumerRebalanceListener
from aiokafka.errors import CommitFailedError

from dashpipe import db, kafka
from dashpipe.batcher import partition_for, send_records
from dashpipe.runtime import Runtime
from schemas.records import dead_letter, header

log = logging.getLogger(__name__)

Row = tuple[Any, ...]  # in db.COLUMNS order
COMMIT_SECONDS = 1.0  # offsets are committed at most this often while rows keep coming
YIELD_EVERY = 250  # records converted between two turns of the event loop (~2 ms)
# SQLSTATE classes of a refusal that is about the row itself (retrying cannot help)
ROW_CLASSES = {"22": "data exception", "23": "integrity constraint violation",
               "54": "program limit exceeded"}
_UPSERT = (
    "INSERT INTO pipeline_data ({cols}) SELECT {cols} FROM pg_temp.dashpipe_staging "
    "ON CONFLICT (pipeline_id, row_key, time) DO UPDATE SET team_id = EXCLUDED.team_id, "
    "data = EXCLUDED.data, raw_partition = EXCLUDED.raw_partition, "
    "raw_offset = EXCLUDED.raw_offset, row_index = EXCLUDED.row_index, "
    "mapping_version = EXCLUDED.mapping_version, ingest_id = EXCLUDED.ingest_id, "
    "stored_at = now() WHERE (pipeline_data.data, pipeline_data.mapping_version, "
    "pipeline_data.raw_partition, pipeline_data.raw_offset, pipeline_data.row_index) IS DISTINCT "
    "FROM (EXCLUDED.data, EXCLUDED.mapping_version, EXCLUDED.raw_partition, "
    "EXCLUDED.raw_offset, EXCLUDED.row_index)").format(cols=", ".join(db.COLUMNS))
_STAGING = ("CREATE TEMP TABLE IF NOT EXISTS dashpipe_staging "
            "(LIKE pipeline_data INCLUDING DEFAULTS) ON COMMIT DELETE ROWS")


class Unavailable(Exception):
    """The database could not take the batch now; retry later."""


def identity(row: Row) -> tuple[str, str, datetime]:
    return row[2], row[3], row[0]


def to_row(value: bytes) -> Row:
    """A transformed record (JSON) as a `pipeline_data` row."""
    r = orjson.loads(value)
    lineage = r["lineage"]
    key = r.get("key")
    row_key = key if key is not None else \
        f"~{lineage['raw_partition']}:{lineage['raw_offset']}:{lineage['row_index']}"
    when = datetime.fromisoformat(r["time"])
    return (when, r["team_id"], r["pipeline_id"], row_key,
            orjson.dumps(r["fields"]).decode(), lineage["raw_partition"],
            lineage["raw_offset"], lineage["row_index"], r["mapping_version"],
            r.get("ingest_id"))


@dataclass
class Writer:
    """Writes batches of rows; `write` answers the rows the database refused."""

    pool: asyncpg.Pool
    acquire_timeout: float
    hypertable: bool
    partitions: db.Partitions = field(default_factory=db.Partitions)
    unavailable: bool = False  # the last attempt found the database away

    async def write(self, rows: list[Row]) -> list[tuple[Row, str, str]]:
        if not rows:
            return []
        try:
            await self._transaction(rows)
            return []
        except asyncpg.PostgresError as exc:
            code = exc.sqlstate or ""
            if code[:2] not in ROW_CLASSES or code == "23505":
                raise
            if len(rows) == 1:
                return [(rows[0], code, str(exc).splitlines()[0][:300])]
        half = len(rows) // 2  # one row or more is refused: find them, store the others
        return await self.write(rows[:half]) + await self.write(rows[half:])

    async def _transaction(self, rows: list[Row]) -> None:
        try:
            async with self.pool.acquire(timeout=self.acquire_timeout) as conn:
                if not self.hypertable:
                    await self.partitions.ensure(conn, db.months(r[0] for r in rows))
                try:
                    async with conn.transaction():
                        await conn.copy_records_to_table("pipeline_data", records=rows,
                                                         columns=db.COLUMNS)
                except asyncpg.UniqueViolationError:  # some rows exist: upsert the batch
                    async with conn.transaction():
                        await conn.execute(_STAGING)
                        await conn.copy_records_to_table("dashpipe_staging", records=rows,
                                                         columns=db.COLUMNS)
                        await conn.execute(_UPSERT)
        except asyncpg.PostgresError as exc:
            if (exc.sqlstate or "")[:2] in ROW_CLASSES:
                raise
            raise Unavailable(f"{type(exc).__name__} (SQLSTATE {exc.sqlstate})") from exc
        except (OSError, TimeoutError, asyncpg.InterfaceError) as exc:
            raise Unavailable(type(exc).__name__) from exc


@dataclass
class Persister:
    rt: Runtime
    writer: Writer
    dlq_partitions: int
    stored: dict[Any, int] = field(default_factory=dict)  # offsets whose rows are committed
    committed_at: float = 0.0

    async def commit(self, consumer: Any) -> None:
        """Commit the offsets of the rows stored so far (at most every `COMMIT_SECONDS`
        while busy: a Kafka round trip per transaction cost ~15 % of the throughput). A crash
        or a rebalance repeats at most that much, as updates of the same rows."""
        self.committed_at = time.monotonic()
        if not self.stored:
            return
        assigned = consumer.assignment()
        offsets = {tp: o for tp, o in self.stored.items() if tp in assigned}
        self.stored = {}
        if not offsets:
            return
        try:
            await consumer.commit(offsets)
        except CommitFailedError as exc:  # rebalanced: the new owner repeats it
            log.warning("persist: offsets not committed (%s); rows repeat as updates", exc)

    async def rows(self, batch: dict[Any, list[Any]]
                   ) -> tuple[list[Row], dict[tuple[str, str, datetime], Any]]:
        """The rows to store (pipelines with `persist_data`), the last per identity; and each
        row's Kafka record, for dead letters.

        Converted in slices, giving the event loop a turn after each: the previous batch's
        write runs meanwhile (its COPY and COMMIT each wait for an answer, acted on only when
        the loop gets a turn). Converted in one go, ~20 ms of Python per 5,000 rows held each
        step of that write back (bench/bench_persist.py: 0.41 of the bare loop then, ~0.6
        with the slices and the commits below)."""
        pipelines = self.rt.registry.pipelines
        out: dict[tuple[str, str, datetime], Row] = {}
        source: dict[tuple[str, str, datetime], Any] = {}
        done = 0
        for records in batch.values():
            for record in records:
                done += 1
                if done % YIELD_EVERY == 0:
                    await asyncio.sleep(0)
                pid = header(record.headers, "dashpipe-pipeline-id")
                p = pipelines.get(pid) if pid is not None else None
                if p is None or not p.persist_data:
                    continue
                try:
                    row = to_row(record.value)
                except (orjson.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
                    log.warning("persist: unreadable transformed record at %s@%s: %s",
                                record.partition, record.offset, type(exc).__name__)
                    self.rt.metrics.inc("dashpipe_persist_unreadable_total")
                    continue
                ident = row[2], row[3], row[0]  # identity(row), inlined: runs per row
                out[ident] = row  # a later row of the same identity replaces an earlier one
                source[ident] = record
        return list(out.values()), source

    async def dead_letters(self, refused: list[tuple[Row, str, str]],
                           source: dict[tuple[str, str, datetime], Any]) -> None:
        dlq = self.rt.names.dlq
        out: dict[tuple[str, int], list[Any]] = {}
        for row, code, message in refused:
            record = source[identity(row)]
            transformed = orjson.loads(record.value)
            key, value, headers = dead_letter(
                "persist", f"database refused the row: SQLSTATE {code} "
                           f"({ROW_CLASSES[code[:2]]}): {message}",
                row[2], row[1], transformed["lineage"], row[8], transformed)
            out.setdefault((dlq, partition_for(key, self.dlq_partitions)), []).append(
                (key, value, headers, None))
            self.rt.metrics.inc("dashpipe_persist_dead_letters_total", pipeline_id=row[2])
        await send_records(self.rt.writer.producer, out)


class _Assignments(ConsumerRebalanceListener):  # type: ignore[misc]
    """Commits what is stored before partitions go, and counts assignments, so a rebalance
    storm shows (`dashpipe_persist_assignments_total`)."""

    def __init__(self, rt: Runtime, persister: Persister, consumer: Any) -> None:
        self.rt, self.persister, self.consumer = rt, persister, consumer

    async def on_partitions_revoked(self, revoked: Any) -> None:
        await self.persister.commit(self.consumer)

    async def on_partitions_assigned(self, assigned: Any) -> None:
        self.rt.metrics.inc("dashpipe_persist_assignments_total")


async def run_persist(rt: Runtime) -> None:
    ds = rt.settings.database
    pool = await db.create_pool(ds)
    try:
        hyper = await db.migrate(pool, ds)
        log.info("persist: pipeline_data ready (%s)",
                 "TimescaleDB hypertable" if hyper else "native monthly partitions")
        consumer = kafka.consumer(rt.bootstrap, rt.settings.kafka, group_id=rt.group("persist"))
        dlq_parts = len(await kafka.partitions(rt.writer.producer, rt.names.dlq))
        persister = Persister(rt, Writer(pool, ds.acquire_timeout_seconds, hyper), dlq_parts)
        consumer.subscribe([rt.names.transformed],
                           listener=_Assignments(rt, persister, consumer))
        rt.roles["persist"] = persister
        async with kafka.started(consumer):
            await _consume(rt, consumer, persister, ds.persist_batch_rows)
    finally:
        await asyncio.wait_for(pool.close(), 10)


Batch = dict[Any, list[Any]]


async def _consume(rt: Runtime, consumer: Any, persister: Persister, max_rows: int) -> None:
    """Fetch and convert the next batch while the previous one is being stored: one batch in
    flight; offsets of stored batches committed in order (`Persister.commit`)."""
    pending: asyncio.Task[None] | None = None
    carry: Batch = {}  # fetched while waiting for a write (after the partitions resumed)
    try:
        while True:
            batch = _merge(carry, await _fetch(consumer, max_rows))
            carry = {}
            if not batch:
                if pending is not None and pending.done():
                    pending.result()  # surface a failure
                    await persister.commit(consumer)  # idle: what is stored, committed now
                continue
            rows, source = await persister.rows(batch)
            if pending is not None:
                carry = await _wait_polling(consumer, pending, persister.writer)
            offsets = {tp: recs[-1].offset + 1 for tp, recs in batch.items()}
            pending = asyncio.create_task(_store(rt, consumer, persister, rows, source,
                                                 offsets))
            await asyncio.sleep(0)  # the write starts now, not after the next conversion
    finally:
        if pending is not None:
            pending.cancel()
            await asyncio.gather(pending, return_exceptions=True)


async def _fetch(consumer: Any, max_rows: int) -> Batch:
    """Up to `max_rows` records, taken from the consumer in slices with a turn of the event
    loop between them (decoding is Python too: see `Persister.rows`)."""
    batch: Batch = await consumer.getmany(timeout_ms=500, max_records=min(YIELD_EVERY, max_rows))
    got = sum(len(recs) for recs in batch.values())
    while got < max_rows:
        await asyncio.sleep(0)
        more = await consumer.getmany(timeout_ms=0, max_records=min(YIELD_EVERY, max_rows - got))
        if not more:
            break
        for tp, recs in more.items():
            batch.setdefault(tp, []).extend(recs)
            got += len(recs)
    return batch


def _merge(first: Batch, then: Batch) -> Batch:
    if not first:
        return then
    out = {tp: list(recs) for tp, recs in first.items()}
    for tp, recs in then.items():
        out.setdefault(tp, []).extend(recs)
    return out


async def _store(rt: Runtime, consumer: Any, persister: Persister, rows: list[Row],
                 source: dict[tuple[str, str, datetime], Any], offsets: dict[Any, int]) -> None:
    refused = await _write_until_stored(persister.writer, rows, rt)
    if refused:
        await persister.dead_letters(refused, source)
    persister.stored.update(offsets)
    if time.monotonic() - persister.committed_at >= COMMIT_SECONDS:
        await persister.commit(consumer)
    if rows:
        rt.metrics.inc("dashpipe_persisted_total", len(rows) - len(refused))


async def _wait_polling(consumer: Any, pending: asyncio.Task[None], writer: Writer) -> Batch:
    """Wait for the write in flight. While the database is away the partitions are paused and
    the consumer keeps polling (it stays in its group); what a poll returns after they resume
    is handed back, never dropped."""
    paused = False
    carry: Batch = {}
    while not pending.done():
        if writer.unavailable and not paused:
            log.warning("persist: database unavailable; pausing %d partitions while the write "
                        "retries", len(consumer.assignment()))
            consumer.pause(*consumer.assignment())
            paused = True
        if paused:
            carry = _merge(carry, await consumer.getmany(timeout_ms=500))
        else:
            await asyncio.wait({pending}, timeout=1.0)
    if paused:
        consumer.resume(*consumer.assignment())
        log.info("persist: database back; partitions resumed")
    pending.result()
    return carry


async def _write_until_stored(writer: Writer, rows: list[Row],
                              rt: Runtime) -> list[tuple[Row, str, str]]:
    """Write the rows, however long the database needs (backoff 0.5 s doubling to 15 s)."""
    delay = 0.5
    while True:
        try:
            refused = await writer.write(rows)
            writer.unavailable = False
            return refused
        except Unavailable:
            writer.unavailable = True
            rt.metrics.inc("dashpipe_persist_retries_total")
            await asyncio.sleep(delay * (0.5 + random.random()))
            delay = min(delay * 2, 15.0)
