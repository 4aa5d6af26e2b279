"""Role `persist`: transformed rows of pipelines with `persist_data` into `pipeline_data`.
Consumer group `<prefix>-persist` on the transformed topic.

Per batch, one transaction: a plain COPY into the table (the fast path, for rows never stored
before; one statement, so its own transaction); if any row exists already (a replay, an
overlapping poll, a repeat after a crash) the COPY fails as a whole and the batch goes through
a staging table and `INSERT ... ON CONFLICT (pipeline_id, row_key, time) DO UPDATE` instead, so
a row is stored once and a later version replaces it. Offsets are committed only after the
transaction commits. A batch is what arrived while the previous one was being written (up to
`persist_batch_rows`), converted as it arrives (`_Handover`).

Database unavailable (down, refusing connections, timing out): the partitions are paused (the
consumer keeps polling, so it stays in its group), the write retries with backoff, nothing is
committed, and the backlog drains after recovery. A row the database refuses (a data or
integrity error) is found by bisecting the batch and becomes a dead letter (stage `persist`)
with its SQLSTATE and class, while the rest of the batch lands.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import asyncpg
import orjson
from aiokafka import ConsumerRebalanceListener

from dashpipe import db, kafka, rollups
from dashpipe.batcher import partition_for, send_records
from dashpipe.errors import Unavailable
from dashpipe.metrics import labels_key
from dashpipe.runtime import Runtime
from schemas.headers import pipeline_id_header
from schemas.records import dead_letter

log = logging.getLogger(__name__)

Row = tuple[Any, ...]  # in db.COLUMNS order
Batch = dict[Any, list[Any]]  # records per partition, as getmany answers
COMMIT_SECONDS = 1.0  # offsets are committed at most this often while rows keep coming
YIELD_EVERY = 250  # records converted between two turns of the event loop (~1 ms)
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

    async def write(self, rows: list[Row], months: set[tuple[int, int]] | None = None
                    ) -> list[tuple[Row, str, str]]:
        """`months`: those of the rows' times, when the caller knows them already."""
        if not rows:
            return []
        try:
            await self._transaction(rows, db.months(r[0] for r in rows) if months is None
                                    else months)
            return []
        except asyncpg.PostgresError as exc:
            code = exc.sqlstate or ""
            if code[:2] not in ROW_CLASSES or code == "23505":
                raise
            if len(rows) == 1:
                return [(rows[0], code, str(exc).splitlines()[0][:300])]
        half = len(rows) // 2  # one row or more is refused: find them, store the others
        return await self.write(rows[:half]) + await self.write(rows[half:])

    async def _transaction(self, rows: list[Row], months: set[tuple[int, int]]) -> None:
        try:
            async with self.pool.acquire(timeout=self.acquire_timeout) as conn:
                if not self.hypertable:
                    await self.partitions.ensure(conn, months)
                try:  # one statement, so its own transaction: no BEGIN and COMMIT round trips
                    await conn.copy_records_to_table("pipeline_data", records=rows,
                                                     columns=db.COLUMNS)
                except asyncpg.UniqueViolationError:  # some rows exist: upsert the batch
                    latest = {identity(row): row for row in rows}  # the last of each identity
                    async with conn.transaction():
                        await conn.execute(_STAGING)
                        await conn.copy_records_to_table("dashpipe_staging",
                                                         records=latest.values(),
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
    # a batch read before a revocation must not commit its offsets after it (the partition
    # may have come back after another member moved it on: see _Assignments)
    revocations: int = 0
    rollups: rollups.Keeper | None = None  # TimescaleDB only
    _persisting: dict[bytes | None, bool] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.rt.registry.on_change(lambda *_: self._persisting.clear())

    async def commit(self, consumer: Any) -> None:
        """Commit the offsets of the rows stored so far (at most every `COMMIT_SECONDS`
        while busy: a Kafka round trip per transaction would cost a share of the throughput).
        A crash or a rebalance repeats at most that much, as updates of the same rows."""
        self.committed_at = time.monotonic()
        stored, self.stored = self.stored, {}
        await kafka.commit_assigned(consumer, stored, "persist")

    def persisting(self, pipeline_id: bytes | None) -> bool:
        """Whether the pipeline of this header value has `persist_data` (cached per value,
        cleared on every registry change: this runs per record)."""
        known = self._persisting.get(pipeline_id)
        if known is None:
            p = self.rt.registry.pipelines.get(pipeline_id.decode("utf-8", "replace")) \
                if pipeline_id is not None else None
            known = self._persisting[pipeline_id] = p is not None and p.persist_data
        return known

    def convert(self, records: list[Any], out: list[Row],
                stamps: dict[bytes | None, list[int]] | None = None) -> None:
        """Append the rows of these records (pipelines with `persist_data`) to `out`, and
        their records' timestamps (the raw record's receipt) to `stamps` by pipeline."""
        persisting, cached = self.persisting, self._persisting
        stamps = {} if stamps is None else stamps
        for record in records:
            pid = pipeline_id_header(record.headers)
            keep = cached.get(pid)
            if not (persisting(pid) if keep is None else keep):
                continue
            try:
                row = to_row(record.value)
            except (orjson.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
                log.warning("persist: unreadable transformed record at %s@%s: %s",
                            record.partition, record.offset, type(exc).__name__)
                self.rt.metrics.inc("dashpipe_persist_unreadable_total")
                continue
            out.append(row)
            known = stamps.get(pid)
            if known is None:
                stamps[pid] = [record.timestamp]
            else:
                known.append(record.timestamp)

    def count_stored(self, stamps: dict[bytes | None, list[int]], refused: list[Any]) -> None:
        """Count a written batch's rows per pipeline, and how long each took from Bronze."""
        now = time.time() * 1000
        not_stored: dict[str, int] = {}
        for row, _, _ in refused:
            not_stored[row[2]] = not_stored.get(row[2], 0) + 1
        metrics = self.rt.metrics
        for raw, times in stamps.items():
            pid = raw.decode("utf-8", "replace") if raw is not None else ""
            key = labels_key(pipeline_id=pid)
            if n := len(times) - not_stored.get(pid, 0):
                metrics.add("dashpipe_persisted_total", key, n)
            metrics.observe_many("dashpipe_raw_to_stored_seconds", key,
                                 [(now - t) / 1000 for t in times])

    async def dead_letters(self, refused: list[tuple[Row, str, str]], batch: Batch) -> None:
        wanted = {identity(row) for row, _, _ in refused}
        source: dict[tuple[str, str, datetime], Any] = {}  # each refused row's record
        for records in batch.values():
            for record in records:
                if not self.persisting(pipeline_id_header(record.headers)):
                    continue
                with contextlib.suppress(orjson.JSONDecodeError, KeyError, TypeError,
                                         ValueError):
                    ident = identity(to_row(record.value))
                    if ident in wanted:
                        source[ident] = record
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
        await send_records(self.rt.producer, out)


class _Assignments(ConsumerRebalanceListener):  # type: ignore[misc]
    """Commits what is stored before partitions go, and counts assignments, so a rebalance
    storm shows (`dashpipe_assignments_total{role="persist"}`).

    What was read before a revocation commits nothing after it: the batch still being
    collected is dropped (every partition is read again from its committed offset once
    assigned, to this process or another), and the batch being written stores its rows but not
    its offsets. Otherwise a partition that comes back to this process after another member
    moved it on would have its committed offset moved back, and stay behind while no new
    record arrives (the chaos test saw a lag of 28 that never went away)."""

    def __init__(self, rt: Runtime, persister: Persister, consumer: Any,
                 handover: _Handover) -> None:
        self.rt, self.persister, self.consumer = rt, persister, consumer
        self.handover = handover

    async def on_partitions_revoked(self, revoked: Any) -> None:
        await self.persister.commit(self.consumer)
        self.persister.revocations += 1
        self.handover.batch = _Collected()

    async def on_partitions_assigned(self, assigned: Any) -> None:
        self.rt.metrics.inc("dashpipe_assignments_total", role="persist")


async def run_persist(rt: Runtime) -> None:
    ds = rt.settings.database
    pool = await db.create_pool(ds)
    try:
        found = await db.migrate(pool, ds)
        log.info("persist: storage is %s", found.describe())
        consumer = kafka.consumer(rt.bootstrap, rt.settings.kafka, group_id=rt.group("persist"))
        dlq_parts = len(await kafka.partitions(rt.producer, rt.names.dlq))
        writer = Writer(pool, ds.acquire_timeout_seconds, found.hypertable)
        persister = Persister(rt, writer, dlq_parts)
        if found.hypertable:
            keeper = persister.rollups = rollups.Keeper(
                pool, found, ds.schema_name, lambda: rt.registry.pipelines,
                ds.acquire_timeout_seconds)
            rt.registry.on_change(lambda *_: keeper.changed.set())
        handover = _Handover(ds.persist_batch_rows)
        consumer.subscribe([rt.names.transformed],
                           listener=_Assignments(rt, persister, consumer, handover))
        rt.metrics.track_lag("persist", consumer)
        rt.roles["persist"] = persister
        keeping = asyncio.create_task(persister.rollups.run()) if persister.rollups else None
        try:
            async with kafka.started(consumer):
                await _consume(rt, consumer, persister, handover)
        finally:
            if keeping is not None:
                keeping.cancel()
                await asyncio.gather(keeping, return_exceptions=True)
    finally:
        await asyncio.wait_for(pool.close(), 10)


@dataclass(slots=True)
class _Collected:
    records: Batch = field(default_factory=dict)  # every record, for offsets and dead letters
    rows: list[Row] = field(default_factory=list)
    stamps: dict[bytes | None, list[int]] = field(default_factory=dict)  # by pipeline id
    months: set[tuple[int, int]] = field(default_factory=set)
    size: int = 0  # records


class _Handover:
    """The batch being collected, taken by the writer the moment it is free: a batch is what
    arrived during the previous write (small when rows trickle in, `max_rows` under load),
    converted as it arrived, so the next COPY starts as soon as the last one ends."""

    def __init__(self, max_rows: int) -> None:
        self.max_rows = max_rows
        self.batch = _Collected()
        self.writing = False
        self._filled = asyncio.Event()  # the batch holds records
        self._taken = asyncio.Event()  # the writer took the batch

    @property
    def room(self) -> int:
        return self.max_rows - self.batch.size

    def add(self, persister: Persister, more: Batch) -> None:
        batch = self.batch
        added = len(batch.rows)
        for tp, recs in more.items():
            batch.records.setdefault(tp, []).extend(recs)
            persister.convert(recs, batch.rows, batch.stamps)
            batch.size += len(recs)
        batch.months |= db.months(row[0] for row in batch.rows[added:])
        self._filled.set()

    async def take(self) -> _Collected:
        self.writing = False
        while not self.batch.size:
            self._filled.clear()
            await self._filled.wait()
        batch, self.batch = self.batch, _Collected()
        self.writing = True
        self._taken.set()
        return batch

    async def wait_taken(self, timeout: float) -> None:
        self._taken.clear()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._taken.wait(), timeout)


async def _consume(rt: Runtime, consumer: Any, persister: Persister, handover: _Handover
                   ) -> None:
    """Collect and convert records while the writer task stores the previous batch (one in
    flight; offsets of stored batches committed in order, `Persister.commit`). Converted in
    slices of `YIELD_EVERY` with a turn of the event loop after each, so the write in flight
    moves on (its COPY needs the loop).

    While the database is away the partitions are paused and the consumer keeps polling (it
    stays in its group); the batch waits for the writer, nothing is dropped."""
    writer = asyncio.create_task(_write_loop(rt, consumer, persister, handover))
    paused = False
    try:
        while True:
            if writer.done():
                writer.result()  # surface a failure
            away = persister.writer.unavailable
            if away != paused:
                parts = consumer.assignment()
                if away:
                    log.warning("persist: database unavailable; pausing %d partitions while "
                                "the write retries", len(parts))
                    consumer.pause(*parts)
                else:
                    consumer.resume(*parts)
                    log.info("persist: database back; partitions resumed")
                paused = away
            if paused:
                more = await consumer.getmany(timeout_ms=500)  # nothing: only stays in the group
            elif handover.room <= 0:
                await handover.wait_taken(1.0)
                continue
            else:
                more = await consumer.getmany(timeout_ms=500,
                                              max_records=min(YIELD_EVERY, handover.room))
            if more:
                handover.add(persister, more)
                await asyncio.sleep(0)
            elif not handover.writing and not handover.batch.size:
                await persister.commit(consumer)  # idle: what is stored, committed now
    finally:
        writer.cancel()
        await asyncio.gather(writer, return_exceptions=True)


async def _write_loop(rt: Runtime, consumer: Any, persister: Persister,
                      handover: _Handover) -> None:
    while True:
        batch = await handover.take()
        read_in = persister.revocations
        refused = await _write_until_stored(persister.writer, batch.rows, batch.months, rt)
        if refused:
            await persister.dead_letters(refused, batch.records)
        if persister.rollups is not None:
            persister.rollups.wrote(batch.rows)
        if read_in == persister.revocations:  # else read again from the committed offsets
            persister.stored.update({tp: recs[-1].offset + 1
                                     for tp, recs in batch.records.items()})
        if time.monotonic() - persister.committed_at >= COMMIT_SECONDS:
            await persister.commit(consumer)
        if batch.rows:
            persister.count_stored(batch.stamps, refused)


async def _write_until_stored(writer: Writer, rows: list[Row], months: set[tuple[int, int]],
                              rt: Runtime) -> list[tuple[Row, str, str]]:
    """Write the rows, however long the database needs (backoff 0.5 s doubling to 15 s)."""
    delay = 0.5
    while True:
        try:
            refused = await writer.write(rows, months)
            writer.unavailable = False
            return refused
        except Unavailable:
            writer.unavailable = True
            rt.metrics.inc("dashpipe_persist_retries_total")
            await asyncio.sleep(delay * (0.5 + random.random()))
            delay = min(delay * 2, 15.0)
