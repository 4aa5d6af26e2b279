"""Replay: a pipeline's Bronze records re-mapped into the transformed topic, or previewed.

A pipeline's raw records all sit in one partition of the raw topic (the key is the pipeline id),
so a replay reads only that partition, from an offset or the first record at or after a time
(`offsets_for_times`) up to another (default: the end at the start of the replay). Written rows
carry their original lineage, so the persist role updates stored rows in place; derived
pipelines are not fed again (replay them on their own). A dry run writes nothing and compares
the would-be rows with the current transformed output of the same raw records, by lineage:
rows added, removed and changed, per field, with samples. A written replay keeps a checkpoint
(`<state dir>/replay/`) after every acknowledged batch; the same command resumes from it.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections import Counter, defaultdict
from datetime import datetime
from pathlib import Path
from typing import Any

import orjson
from aiokafka import TopicPartition

from dashpipe import kafka
from dashpipe.batcher import partition_for, send_records
from dashpipe.runtime import Runtime
from schemas.headers import Header, header
from schemas.mapping import Mapping
from schemas.pipeline import Pipeline
from streams.mapping.dedup import Dedup
from streams.mapping.mapper import Mapper, Out
from streams.replay.status import Progress, ReplayError, ReplayStatus
from streams.replay.workers import CHUNK, Workers

SAMPLES = 3
Lineage = tuple[int, int, int]
async def bounds(rt: Runtime, p: Pipeline, start: str, end: str | None
                 ) -> tuple[TopicPartition, int, int]:
    """The raw partition of `p` and the offsets to replay, from `start`/`end` given as an
    offset or an RFC 3339 time."""
    producer = rt.producer
    partitions = len(await kafka.partitions(producer, rt.names.raw))
    tp = TopicPartition(rt.names.raw, partition_for(p.id.encode(), partitions))
    consumer = kafka.consumer(rt.bootstrap, rt.settings.kafka, group_id=None)
    async with kafka.started(consumer):
        first = int((await consumer.beginning_offsets([tp]))[tp])
        last = int((await consumer.end_offsets([tp]))[tp])

        async def offset(text: str, what: str) -> int:
            if text.isdigit():
                return min(max(int(text), first), last)
            try:
                when = datetime.fromisoformat(text)
            except ValueError:
                raise ReplayError(f"{what}: {text!r} is neither an offset nor an RFC 3339 "
                                  "time") from None
            found = await consumer.offsets_for_times({tp: int(when.timestamp() * 1000)})
            return int(found[tp].offset) if found.get(tp) else last

        lo = await offset(start, "--from")
        hi = await offset(end, "--to") if end else last
    if lo > hi:
        raise ReplayError(f"--from (offset {lo}) is after --to (offset {hi})")
    return tp, lo, hi


def _checkpoint(rt: Runtime, p: Pipeline, key: str) -> Path:
    folder = rt.settings.stack.state_dir / "replay"
    return folder / f"{rt.settings.topics.prefix}-{p.id}-{key}.json"


async def replay(rt: Runtime, p: Pipeline, start: str, end: str | None,
                 candidate: Mapping | None = None, dry_run: bool = False,
                 progress: Progress | None = None, workers: int = 1, chunk: int = CHUNK
                 ) -> dict[str, Any]:
    """Run a replay; returns its summary (and, for a dry run, the diff). A written replay
    of more than one `chunk` of records with `workers` > 1 maps on that many processes
    (`streams.replay.workers`)."""
    if workers < 1:
        raise ReplayError(f"--workers must be at least 1, not {workers}")
    pool = Workers()
    try:
        if workers > 1 and not dry_run:
            await pool.spawn(workers)
        return await _replay(rt, p, start, end, candidate, dry_run, progress, pool, chunk)
    finally:
        await pool.close()


async def _replay(rt: Runtime, p: Pipeline, start: str, end: str | None,
                  candidate: Mapping | None, dry_run: bool, progress: Progress | None,
                  pool: Workers, chunk: int) -> dict[str, Any]:
    tp, lo, hi = await bounds(rt, p, start, end)
    if candidate is not None and not dry_run:
        raise ReplayError("a candidate mapping is promoted before a written replay: save it "
                          "on the pipeline, or preview it with a dry run")
    status = ReplayStatus(p.id, tp.partition, lo, hi, position=lo)
    partitions = await kafka.partition_counts(rt.producer, rt.names.transformed,
                                              rt.names.dlq, rt.names.raw)
    mapper = Mapper(rt, partitions, feed_children=False)
    if candidate is not None:
        mapper.pin(p, candidate, p.mapping_version + 1)
    key = hashlib.sha256(f"{lo}:{hi}:{p.mapping_version}".encode()).hexdigest()[:12]
    point = _checkpoint(rt, p, key)
    if not dry_run and point.exists():
        status.position = status.resumed_from = int(orjson.loads(point.read_bytes())["next"])
    if pool.pool and hi - status.position > chunk:
        await pool.run(rt, p, tp, status, hi, partitions, chunk,
                       lambda position: _save(point, position), progress)
        return _finish(status, point, progress)
    # the live mapper skipped a sender's repeats: so does the replay, from the same window
    mapper.dedup = Dedup(rt.settings.webhook.dedup_seconds)
    await mapper.dedup.warm(rt.bootstrap, rt.settings.kafka, tp, status.position)
    new_rows: dict[Lineage, dict[str, Any]] = {}
    new_dead: set[Lineage] = set()
    consumer = kafka.consumer(rt.bootstrap, rt.settings.kafka, group_id=None)
    pending: asyncio.Task[None] | None = None  # the previous batch's write and checkpoint
    try:
        async with kafka.started(consumer):
            consumer.assign([tp])
            consumer.seek(tp, status.position)
            last_report = 0.0
            while status.position < hi:
                batch = await consumer.getmany(tp, timeout_ms=1000, max_records=2000)
                out: Out = defaultdict(list)
                for record in batch.get(tp, []):
                    if record.offset >= hi:
                        break
                    status.position = record.offset + 1
                    if record.key != p.id.encode():
                        continue
                    status.records += 1
                    mapper.map_record(tp.partition, record, out)
                # past transaction markers too (a poll's), which no record shows
                status.position = max(status.position, min(hi, await consumer.position(tp)))
                mapper.flush_counts()
                rows, dead = _count(rt, out)
                status.rows += rows
                status.dead += dead
                if dry_run:
                    parsed_rows, parsed_dead = _split(rt, out)
                    for row in parsed_rows:
                        new_rows[_lineage(row)] = row
                    new_dead.update(_lineage(d) for d in parsed_dead)
                else:  # written while the next batch is mapped; checkpoints stay in order
                    if pending is not None:
                        await pending
                    pending = asyncio.create_task(_write(rt, out, point, status.position))
                if progress is not None and time.monotonic() - last_report > 0.5:
                    last_report = time.monotonic()
                    progress(status)
            if pending is not None:
                await pending
    finally:
        if pending is not None and not pending.done():
            pending.cancel()
    summary = _finish(status, point, progress)
    if dry_run:
        current = await current_rows(rt, p, tp.partition, lo, hi)
        summary["diff"] = diff(current, new_rows, new_dead)
    return summary


def _finish(status: ReplayStatus, point: Path, progress: Progress | None) -> dict[str, Any]:
    status.done = True
    if progress is not None:
        progress(status)
    point.unlink(missing_ok=True)
    return status.view()


async def _write(rt: Runtime, out: Out, point: Path, position: int) -> None:
    if out:
        await send_records(rt.producer, out)
    _save(point, position)  # a few bytes, after Kafka acknowledged the batch


def _save(point: Path, position: int) -> None:
    point.parent.mkdir(parents=True, exist_ok=True)
    point.write_bytes(orjson.dumps({"next": position}))


def _count(rt: Runtime, out: Out) -> tuple[int, int]:
    rows = dead = 0
    for (topic, _), records in out.items():
        if topic == rt.names.transformed:
            rows += len(records)
        elif topic == rt.names.dlq:
            dead += len(records)
    return rows, dead


def _split(rt: Runtime, out: Out) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    rows: list[dict[str, Any]] = []
    dead: list[dict[str, Any]] = []
    for (topic, _), records in out.items():
        target = rows if topic == rt.names.transformed else dead if topic == rt.names.dlq \
            else None
        if target is not None:
            target.extend(orjson.loads(value) for _, value, _, _ in records)
    return rows, dead


def _lineage(row: dict[str, Any]) -> Lineage:
    lin = row["lineage"]
    return lin["raw_partition"], lin["raw_offset"], lin["row_index"]


async def current_rows(rt: Runtime, p: Pipeline, raw_partition: int, lo: int, hi: int
                       ) -> dict[Lineage, dict[str, Any]]:
    """The latest transformed row of each lineage of `p` with raw offsets in [lo, hi)."""
    consumer = kafka.consumer(rt.bootstrap, rt.settings.kafka, group_id=None)
    found: dict[Lineage, dict[str, Any]] = {}
    async with kafka.started(consumer):
        raw = TopicPartition(rt.names.raw, raw_partition)
        consumer.assign([raw])
        since = None
        if lo < hi:  # the first raw record's time bounds where its rows can be
            consumer.seek(raw, lo)
            first = await consumer.getmany(raw, timeout_ms=5000, max_records=1)
            since = first[raw][0].timestamp if first.get(raw) else None
        tps = await kafka.partitions(consumer, rt.names.transformed)
        consumer.assign(tps)
        ends = await consumer.end_offsets(tps)
        starts = await consumer.offsets_for_times({tp: since or 0 for tp in tps}) \
            if since is not None else {}
        for tp in tps:
            at = starts.get(tp)
            consumer.seek(tp, at.offset if at else ends[tp])
        todo = {tp for tp in tps if (starts.get(tp) and starts[tp].offset < ends[tp])}
        while todo:
            batch = await consumer.getmany(*todo, timeout_ms=1000, max_records=5000)
            for tp, records in batch.items():
                for record in records:
                    if record.offset >= ends[tp]:
                        break
                    if header(record.headers, Header.PIPELINE_ID) == p.id:
                        row = orjson.loads(record.value)
                        lin = _lineage(row)
                        if lin[0] == raw_partition and lo <= lin[1] < hi:
                            found[lin] = row  # a later one (an earlier replay) wins
                if records and records[-1].offset + 1 >= ends[tp]:
                    todo.discard(tp)
            for tp in list(todo):
                if await consumer.position(tp) >= ends[tp]:
                    todo.discard(tp)
    return found


def diff(current: dict[Lineage, dict[str, Any]], new: dict[Lineage, dict[str, Any]],
         new_dead: set[Lineage]) -> dict[str, Any]:
    """What the replay would change: rows added, removed, changed (per field), samples."""
    added = sorted(set(new) - set(current))
    removed = sorted(set(current) - set(new))
    changed_fields: Counter[str] = Counter()
    samples: dict[str, list[dict[str, Any]]] = defaultdict(list)
    changed_rows = 0
    for lin in sorted(set(new) & set(current)):
        old, now = current[lin]["fields"], new[lin]["fields"]
        fields = sorted(name for name in set(old) | set(now) if old.get(name, _GONE) !=
                        now.get(name, _GONE))
        if current[lin]["time"] != new[lin]["time"]:
            fields.append("(time)")
        if fields:
            changed_rows += 1
        for name in fields:
            changed_fields[name] += 1
            if len(samples[name]) < SAMPLES:
                samples[name].append({"lineage": list(lin), "old": old.get(name),
                                      "new": now.get(name)})
    return {"rows_before": len(current), "rows_after": len(new), "added": len(added),
            "removed": len(removed), "changed": changed_rows,
            "unchanged": len(set(new) & set(current)) - changed_rows,
            "dead_letters": len(new_dead), "changed_fields": dict(changed_fields),
            "samples": dict(samples),
            "added_samples": [{"lineage": list(lin), "fields": new[lin]["fields"]}
                              for lin in added[:SAMPLES]],
            "removed_samples": [{"lineage": list(lin), "fields": current[lin]["fields"]}
                                for lin in removed[:SAMPLES]]}


_GONE = object()
