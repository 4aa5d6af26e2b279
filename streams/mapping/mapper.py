"""Role `map`: Bronze -> Silver. Consumer group `<prefix>-map` on the raw topic.

Per `getmany` batch: every raw record is parsed once and mapped by its pipeline's compiled
mapping (`streams.mapping.compiler`, rebuilt when `mapping_version` changes); each row becomes a
transformed record (key: the mapping's key, else the pipeline id) with its lineage; each failing
row, or a payload that is not JSON, a dead letter (stage `map`) with the reason; each row of a
pipeline that feeds derived pipelines also a raw record of every active derived pipeline. All of
it is written with the batch API, and the offsets are committed only once Kafka acknowledged
everything: at-least-once, and a replay or a crash repeats rows only with identical lineage.
Nothing stalls a partition: anything wrong with a record is data for the dead-letter topic.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Protocol

import orjson
from aiokafka import ConsumerRebalanceListener, TopicPartition

from dashpipe import kafka
from dashpipe.batcher import Record, partition_for, send_records
from dashpipe.metrics import Metrics
from schemas.headers import Header, header
from schemas.mapping import Mapping
from schemas.pipeline import Pipeline, PipelineSource
from schemas.records import SCHEMA_VERSION, dead_letter, raw_headers
from streams.mapping.compiler import Compiled, Mapped, RowError, compile_mapping, map_raw
from streams.mapping.dedup import Dedup

if TYPE_CHECKING:
    from dashpipe.runtime import Runtime
    from dashpipe.topics import TopicNames

log = logging.getLogger(__name__)

JSON_OPTIONS = orjson.OPT_UTC_Z
Out = dict[tuple[str, int], list[Record]]


@dataclass
class _Compiled:
    version: int
    run: Compiled
    headers: list[tuple[str, bytes]]  # of the transformed records
    prefix: dict[str, Any]  # the fields every transformed record of the pipeline shares
    stamped: bool  # rows take their time from the payload: the received time is never read


class Definitions(Protocol):
    """What a mapper reads of the registry."""

    @property
    def pipelines(self) -> dict[str, Pipeline]: ...

    def on_change(self, listener: Any) -> None: ...


class MapContext(Protocol):
    """What a mapper needs of a runtime (a `Runtime`, or a replay worker's smaller one)."""

    @property
    def registry(self) -> Definitions: ...

    @property
    def names(self) -> TopicNames: ...

    @property
    def metrics(self) -> Metrics: ...


@dataclass
class Mapper:
    rt: MapContext
    partitions: dict[str, int]  # topic -> partition count
    _compiled: dict[str, _Compiled] = field(default_factory=dict)
    _children: dict[str, list[Pipeline]] | None = None  # parent id -> active derived pipelines
    _skipped: set[str] = field(default_factory=set)  # unknown pipelines already logged
    feed_children: bool = True  # a replay does not: the children replay on their own
    pinned: dict[str, _Compiled] = field(default_factory=dict)  # a candidate mapping (replay)
    _mapped: dict[str, int] = field(default_factory=dict)  # rows per pipeline, this batch
    _filtered: dict[str, int] = field(default_factory=dict)
    _repeats: dict[str, int] = field(default_factory=dict)
    dedup: Dedup | None = None  # skips repeated dedup ids (None: maps every record)

    def __post_init__(self) -> None:
        self.rt.registry.on_change(self._changed)

    def _changed(self, pid: str, old: Pipeline | None, new: Pipeline | None) -> None:
        self._children = None  # recomputed on the next batch
        if new is None or (old is not None and old.mapping_version != new.mapping_version):
            self._compiled.pop(pid, None)

    def children(self) -> dict[str, list[Pipeline]]:
        if self._children is None:
            found: dict[str, list[Pipeline]] = defaultdict(list)
            for p in self.rt.registry.pipelines.values():
                if isinstance(p.source_config, PipelineSource) and p.status == "active":
                    found[p.source_config.pipeline_id].append(p)
            self._children = dict(found)
        return self._children

    def pin(self, p: Pipeline, spec: Mapping | None, version: int) -> None:
        """Map `p` with `spec` as mapping version `version`, whatever the registry says."""
        self.pinned[p.id] = _compile(p, spec, version)

    def compiled(self, p: Pipeline) -> _Compiled:
        if p.id in self.pinned:
            return self.pinned[p.id]
        c = self._compiled.get(p.id)
        if c is None or c.version != p.mapping_version:
            spec = p.data_mapping
            version = p.mapping_version if spec is not None else 0
            c = self._compiled[p.id] = _compile(p, spec, version)
        return c

    def map_batch(self, batch: dict[TopicPartition, list[Any]]) -> Out:
        """The records to write for one `getmany` batch, by (topic, partition)."""
        out: Out = defaultdict(list)
        for tp, records in batch.items():
            for record in records:
                self.map_record(tp.partition, record, out)
        self.flush_counts()
        return out

    def map_record(self, partition: int, record: Any, out: Out) -> None:
        headers = dict(record.headers)
        pid = headers.get(Header.PIPELINE_ID, b"").decode()
        if self.dedup is not None and self.dedup.repeat(partition, record):
            self._repeats[pid] = self._repeats.get(pid, 0) + 1
            return
        p = self.rt.registry.pipelines.get(pid)
        if p is None:
            self._skip(pid or "(no pipeline id header)")
            return
        c = self.compiled(p)
        ingest_id = headers.get(Header.INGEST_ID, b"").decode()
        received = _UNREAD if c.stamped else \
            datetime.fromtimestamp(record.timestamp / 1000, UTC)  # exact for ms
        mapped: Mapped = map_raw(c.run, record.value, received)
        names = self.rt.names
        transformed, parts = names.transformed, self.partitions[names.transformed]
        children = self.children().get(p.id) if self.feed_children else None
        for row in mapped.rows:
            value = orjson.dumps({
                **c.prefix, "time": row.time, "key": row.key, "fields": row.fields,
                "lineage": {"raw_partition": partition, "raw_offset": record.offset,
                            "row_index": row.index},
                "mapping_version": c.version, "ingest_id": ingest_id,
                "schema_version": SCHEMA_VERSION}, option=JSON_OPTIONS)
            key = (row.key or p.id).encode()
            out[(transformed, partition_for(key, parts))].append(
                (key, value, c.headers, record.timestamp))
            if children:
                self._feed(children, p.id, partition, record, row.index, value, out)
        for error in mapped.errors:
            self._dead(p, c, partition, record.offset, error, out)
        if mapped.rows:  # counted per batch: see flush_counts
            self._mapped[p.id] = self._mapped.get(p.id, 0) + len(mapped.rows)
        if mapped.filtered:
            self._filtered[p.id] = self._filtered.get(p.id, 0) + mapped.filtered

    def flush_counts(self) -> None:
        for name, counts in (("dashpipe_mapped_total", self._mapped),
                             ("dashpipe_filtered_total", self._filtered),
                             ("dashpipe_map_repeats_total", self._repeats)):
            for pid, n in counts.items():
                self.rt.metrics.inc(name, n, pipeline_id=pid)
            counts.clear()

    def _feed(self, children: list[Pipeline], parent: str, partition: int, record: Any,
              row_index: int, value: bytes, out: Out) -> None:
        """A parent's transformed row, as a raw record of each derived pipeline."""
        raw, parts = self.rt.names.raw, self.partitions[self.rt.names.raw]
        ingest_id = f"{parent}:{partition}:{record.offset}:{row_index}"
        for child in children:
            key = child.id.encode()
            out[(raw, partition_for(key, parts))].append(
                (key, value, raw_headers(child.id, child.team_id, "pipeline", record.timestamp,
                                         ingest_id, dedup_id=ingest_id), record.timestamp))

    def _dead(self, p: Pipeline, c: _Compiled, partition: int, offset: int, error: RowError,
              out: Out) -> None:
        key, value, headers = dead_letter(
            "map", error.reason, p.id, p.team_id,
            {"raw_partition": partition, "raw_offset": offset, "row_index": error.index},
            c.version, error.record)
        dlq = self.rt.names.dlq
        out[(dlq, partition_for(key, self.partitions[dlq]))].append((key, value, headers, None))
        self.rt.metrics.inc("dashpipe_map_dead_letters_total", pipeline_id=p.id)
        log.debug("dead letter of %s at raw %d@%d row %d: %s", p.id, partition, offset,
                  error.index, error.reason, extra={"pipeline_id": p.id})

    def _skip(self, pid: str) -> None:
        self.rt.metrics.inc("dashpipe_map_skipped_total", pipeline_id=pid)
        if pid not in self._skipped:
            self._skipped.add(pid)
            log.info("skipping raw records of pipeline %s: it does not exist (deleted)", pid,
                     extra={"pipeline_id": pid})


class _Owner(ConsumerRebalanceListener):  # type: ignore[misc]
    """Before partitions move, lets the batch in flight commit (so the next owner starts where
    this one stopped) and forgets every dedup window (the main loop warms them again)."""

    def __init__(self, dedup: Dedup, metrics: Metrics) -> None:
        self.dedup, self.metrics = dedup, metrics
        self.pending: asyncio.Task[None] | None = None  # the last batch's write and commit
        self.revocations = 0  # a batch read before one is read again, never committed

    async def on_partitions_revoked(self, revoked: list[TopicPartition]) -> None:
        if self.pending is not None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(self.pending), REVOKE_WAIT_SECONDS)
        # another process may own a partition before this one gets it back: its records
        # would be missing from a kept window, so every window is warmed again
        self.dedup.keep(set())
        self.revocations += 1

    async def on_partitions_assigned(self, assigned: list[TopicPartition]) -> None:
        self.dedup.keep({tp.partition for tp in assigned})
        self.metrics.inc("dashpipe_assignments_total", role="map")


REVOKE_WAIT_SECONDS = 10.0


async def run_mapper(rt: Runtime, max_records: int = 2000) -> None:
    names = rt.names
    consumer = kafka.consumer(rt.bootstrap, rt.settings.kafka, group_id=rt.group("map"))
    dedup = Dedup(rt.settings.webhook.dedup_seconds)
    owner = _Owner(dedup, rt.metrics)
    consumer.subscribe([names.raw], listener=owner)
    rt.metrics.track_lag("map", consumer)
    producer = rt.producer
    async with kafka.started(consumer):
        counts = await kafka.partition_counts(producer, names.raw, names.transformed,
                                              names.dlq)
        mapper = Mapper(rt, counts, dedup=dedup)
        rt.roles["map"] = mapper
        try:
            while True:
                batch = await consumer.getmany(timeout_ms=500, max_records=max_records)
                if not batch:
                    continue
                read_in = owner.revocations
                if any(_unknown(rt, r) for recs in batch.values() for r in recs):
                    await rt.registry.sync()  # a pipeline created a moment ago: read it first
                # taken over, or reset by a rebalance (checked again after each warm: the
                # rebalance listener runs meanwhile, and mapping follows with no await)
                while stale := [tp for tp, records in batch.items()
                                if not dedup.continues(tp.partition, records[0].offset)]:
                    for tp in stale:
                        await dedup.warm(rt.bootstrap, rt.settings.kafka, tp,
                                         batch[tp][0].offset)
                out = mapper.map_batch(batch)  # while the previous batch is being acknowledged
                if owner.pending is not None:
                    await owner.pending
                offsets = await kafka.consumed(consumer, batch)
                if owner.revocations != read_in:
                    # every partition is read again from its committed offset (here or by
                    # another process): committing this batch could move an offset back
                    # behind what another process wrote meanwhile; the windows it fed are
                    # warmed again from the log where the partitions are read again
                    dedup.keep(set())
                    continue
                owner.pending = asyncio.create_task(_write_and_commit(producer, consumer, out,
                                                                      offsets))
        finally:
            if owner.pending is not None:
                owner.pending.cancel()
                await asyncio.gather(owner.pending, return_exceptions=True)


async def _write_and_commit(producer: Any, consumer: Any, out: Out,
                            offsets: dict[TopicPartition, int]) -> None:
    await kafka.until_acknowledged(lambda: send_records(producer, out), "map")
    await kafka.commit_assigned(consumer, offsets, "map")


# what a stamped mapping is given as the received time: a datetime per record is work wasted
# when a mapping with a `time` reads every row's own (compile_mapping's `run`)
_UNREAD = datetime.fromtimestamp(0, UTC)


def _compile(p: Pipeline, spec: Mapping | None, version: int) -> _Compiled:
    return _Compiled(version, compile_mapping(spec),
                     [(Header.PIPELINE_ID, p.id.encode()), (Header.TEAM_ID, p.team_id.encode())],
                     {"pipeline_id": p.id, "team_id": p.team_id},
                     spec is not None and spec.time is not None)


def _unknown(rt: Runtime, record: Any) -> bool:
    pid = header(record.headers, Header.PIPELINE_ID)
    return pid is not None and pid not in rt.registry.pipelines
