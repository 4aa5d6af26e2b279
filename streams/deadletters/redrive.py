"""Dead letters redriven (`dashpipe dlq redrive`); `streams.deadletters.ledger` lists them.

Redriving applies what the pipeline is *now* to each unresolved dead letter:

- `map`: the raw record of the dead letter's lineage is read back from Bronze and mapped with
  the pipeline's current mapping by `streams.mapping.mapper.Mapper`, exactly as the map role would;
  of what that gives, only the failing rows are written (the transformed rows, the new dead letters
  and the derived pipelines' raw records of the dead letters' `row_index`): rows of the same
  payload that were mapped the first time are not written again, so sinks and live views do not
  see them twice. A payload-level dead letter (not JSON, `records` path not found) stands for
  every row of its payload. A row that fails again is a new dead letter (new reason, new
  mapping version), reported; a row the filter now drops is nothing.
- `persist`: the transformed record the dead letter holds is written back to the transformed
  topic with the key and headers the mapper gives it; the persist role stores it, or writes a
  new dead letter if the database still refuses it.
- `deliver`: a retry record due now, with fresh attempts and the original message id, in the
  retry topic (key `<pipeline>:<sink>`); the deliver role sends it. A dead letter of a disabled
  or deleted sink is left as it is, and reported.

One marker then resolves every dead letter that was redriven (one that failed again too: its
new dead letter replaces it). The marker is written only after Kafka acknowledged everything
else, so a crash in between redrives the same dead letters again next time (at-least-once, like
every stage; the rows repeat with the same lineage).
"""

from __future__ import annotations

import asyncio
import time
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

import orjson

from dashpipe import kafka
from dashpipe.batcher import Record, partition_for
from dashpipe.pipelines import NotFound
from dashpipe.runtime import Runtime
from dashpipe.settings import ADMIN
from dashpipe.topics import TopicNames
from schemas.headers import Header, header
from schemas.pipeline import Pipeline
from schemas.records import ResolvedLetter, message_id, retry_record
from streams.deadletters.counts import (
    Position,
    marker_headers,
    marker_value,
)
from streams.deadletters.ledger import (
    Entry,
    Ledger,
    payload_level,
    position_text,
    read_ledger,
    read_records,
)
from streams.mapping.mapper import Mapper, Out

# --- redriving ------------------------------------------------------------------------------

@dataclass
class Outcome:
    entry: Entry
    resolved: bool  # redriven: the marker lists it
    text: str
    failed_again: list[tuple[Position, str]] = field(default_factory=list)  # new dead letters
    rows: int = 0  # map: transformed rows written

    @property
    def still_fails(self) -> bool:
        return not self.resolved or bool(self.failed_again)

    def description(self) -> str:
        if self.failed_again:
            return "; ".join(f"fails again: {reason} (new dead letter {position_text(pos)})"
                             for pos, reason in self.failed_again)
        return self.text

    def line(self) -> str:
        return f"{position_text(self.entry.position)} {self.entry.stage}: {self.description()}"


@dataclass
class Report:
    pipeline_id: str
    outcomes: list[Outcome] = field(default_factory=list)
    marker: Position | None = None

    @property
    def still_failing(self) -> list[Outcome]:
        return [o for o in self.outcomes if o.still_fails]

    def lines(self) -> list[str]:
        if not self.outcomes:
            return [f"no unresolved dead letters of pipeline {self.pipeline_id}"]
        done = sum(1 for o in self.outcomes if o.resolved)
        summary = (f"redriven {done} of {len(self.outcomes)} dead letter(s) of "
                   f"{self.pipeline_id}")
        if self.marker is not None:
            summary += f" (resolution marker at {position_text(self.marker)})"
        summary += f"; {len(self.still_failing)} still fail(s)"
        return [o.line() for o in self.outcomes] + [summary]


@dataclass
class _Write:
    topic: str
    partition: int
    record: Record
    owners: list[Outcome] = field(default_factory=list)  # a new dead letter: whose


def failing_rows(entries: list[Entry]) -> dict[Position, set[int] | None]:
    """Raw record position -> the row indices its map dead letters name (None: every row)."""
    out: dict[Position, set[int] | None] = {}
    for e in entries:
        lineage = e.lineage
        if lineage is None:
            continue
        raw = (lineage["raw_partition"], lineage["raw_offset"])
        if payload_level(e.letter.get("reason")):
            out[raw] = None
            continue
        rows = out.setdefault(raw, set())
        if rows is not None:
            rows.add(lineage["row_index"])
    return out


def row_of(topic: str, record: Record, names: TopicNames) -> int:
    """The row index an output record of the mapper belongs to."""
    _, value, headers, _ = record
    if topic == names.raw:  # a derived pipeline's raw record: ingest id `<p>:<P>:<O>:<row>`
        ingest = next((v.decode() for k, v in headers if k == Header.INGEST_ID), "")
        return int(ingest.rsplit(":", 1)[-1])
    return int(orjson.loads(value)["lineage"]["row_index"])


def keep_rows(out: Out, names: TopicNames, rows: set[int] | None) -> list[tuple[str, int,
                                                                                Record]]:
    """What the mapper wrote for one raw record, reduced to the rows being redriven."""
    return [(topic, partition, record) for (topic, partition), records in out.items()
            for record in records if rows is None or row_of(topic, record, names) in rows]


def persist_write(p: Pipeline, entry: Entry, names: TopicNames,
                  partitions: dict[str, int]) -> _Write | str:
    """The transformed record of a persist dead letter, as the mapper writes it (else why not)."""
    record = entry.letter.get("record")
    if not isinstance(record, dict) or not isinstance(record.get("lineage"), dict):
        return "not redriven: the dead letter holds no transformed record"
    key = str(record.get("key") or p.id).encode()
    headers = [(Header.PIPELINE_ID, p.id.encode()), (Header.TEAM_ID, p.team_id.encode())]
    topic = names.transformed
    return _Write(topic, partition_for(key, partitions[topic]),
                  (key, orjson.dumps(record), headers, None))


def deliver_write(p: Pipeline, entry: Entry, names: TopicNames, partitions: dict[str, int],
                  now: float) -> _Write | str:
    """A retry record due `now` for the sink of a deliver dead letter (else why not)."""
    index = entry.letter.get("sink_index")
    record = entry.letter.get("record")
    rows: list[dict[str, Any]] = [r for r in (record if isinstance(record, list) else [record])
                                  if isinstance(r, dict) and isinstance(r.get("lineage"), dict)]
    if not rows or len(rows) != (len(record) if isinstance(record, list) else 1):
        return "not redriven: the dead letter holds no rows"
    if not isinstance(index, int) or not 0 <= index < len(p.sinks):
        return f"not redriven: sink {index} no longer exists"
    sink = p.sinks[index]
    if not sink.enabled:
        return (f"not redriven: sink {index} is disabled ({sink.disabled_reason}); enable it "
                "first (PATCH the sink with enabled: true)")
    limits = getattr(sink.sink_config, "batching", None)
    msg_id = message_id(p.id, rows[0]["lineage"], index)
    if limits is not None and limits.max_rows > 1:
        msg_id += f"-{len(rows)}"  # as the deliver role names a batch
    key = f"{p.id}:{index}".encode()
    topic = names.retry
    return _Write(topic, partition_for(key, partitions[topic]),
                  (key, retry_record(p.id, index, msg_id, rows, [], now),
                   [(Header.PIPELINE_ID, p.id.encode())], None))


def select(ledger: Ledger, stage: str | None, only: list[Position] | None) -> list[Entry]:
    todo = ledger.unresolved(stage)
    if not only:
        return todo
    by_position = {e.position: e for e in todo}
    missing = [position_text(pos) for pos in only if pos not in by_position]
    if missing:
        raise NotFound(f"no unresolved dead letter of pipeline {ledger.pipeline_id!r}"
                       f"{f' (stage {stage})' if stage else ''} at {', '.join(missing)}")
    return [by_position[pos] for pos in sorted(set(only))]


async def redrive(rt: Runtime, pipeline_id: str, stage: str | None = None,
                  only: list[Position] | None = None) -> Report:
    """Redrive the pipeline's unresolved dead letters (of `stage`, or those at `only`) with
    what the pipeline is now; one marker resolves those that were redriven."""
    p = rt.service.get(pipeline_id, ADMIN)
    ledger = await read_ledger(rt.bootstrap, rt.settings.kafka, rt.names.dlq, pipeline_id)
    todo = select(ledger, stage, only)
    report = Report(pipeline_id)
    if not todo:
        return report
    names = rt.names
    partitions: dict[str, int] = {}
    for tp in await kafka.partitions(rt.producer, names.raw, names.transformed,
                                     names.dlq, names.retry):
        partitions[tp.topic] = partitions.get(tp.topic, 0) + 1
    writes: list[_Write] = []
    by_entry: dict[Position, Outcome] = {}
    now = time.time()
    maps = [e for e in todo if e.stage == "map"]
    for outcome in await _map_writes(rt, p, maps, partitions, writes):
        by_entry[outcome.entry.position] = outcome
    for e in todo:
        if e.stage in ("persist", "deliver"):
            planned = persist_write(p, e, names, partitions) if e.stage == "persist" else \
                deliver_write(p, e, names, partitions, now)
            if isinstance(planned, str):
                by_entry[e.position] = Outcome(e, False, planned)
            else:
                writes.append(planned)
                by_entry[e.position] = Outcome(e, True, (
                    f"re-sent to {names.transformed} (the persist role stores it, or writes "
                    "a new dead letter if the database still refuses it)"
                    if e.stage == "persist" else
                    f"retry due now for sink {e.letter['sink_index']} in {names.retry} "
                    "(the deliver role sends it)"))
        elif e.stage != "map":
            by_entry[e.position] = Outcome(e, False, f"not redriven: stage {e.stage!r} "
                                                     "cannot be redriven")
    report.outcomes = [by_entry[e.position] for e in todo]
    for w, position in zip(writes, await _send(rt, writes), strict=True):
        for owner in w.owners:
            owner.failed_again.append((position, str(orjson.loads(w.record[1]).get("reason"))))
    resolved = [ResolvedLetter(partition=o.entry.partition, offset=o.entry.offset,
                               stage=o.entry.stage, outcome=o.description())
                for o in report.outcomes if o.resolved]
    if resolved:
        key = pipeline_id.encode()
        [report.marker] = await _send(rt, [_Write(
            names.dlq, partition_for(key, partitions[names.dlq]),
            (key, marker_value(pipeline_id, resolved),
             marker_headers(pipeline_id, p.team_id), None))])
    return report


async def _map_writes(rt: Runtime, p: Pipeline, entries: list[Entry],
                      partitions: dict[str, int], writes: list[_Write]) -> list[Outcome]:
    """Map the raw records of `entries` again with the current mapping: their outcomes, and
    what to write added to `writes`."""
    outcomes: list[Outcome] = []
    groups: dict[Position, list[Entry]] = defaultdict(list)
    for e in entries:
        lineage = e.lineage
        if lineage is None:
            outcomes.append(Outcome(e, False, "not redriven: the dead letter has no lineage"))
        else:
            groups[(lineage["raw_partition"], lineage["raw_offset"])].append(e)
    if not groups:
        return outcomes
    names = rt.names
    raws = await read_records(rt.bootstrap, rt.settings.kafka, names.raw, groups)
    mapper = Mapper(rt, partitions)
    rows = failing_rows(entries)
    for raw, group in groups.items():
        record = raws.get(raw)
        owner = (header(record.headers, Header.PIPELINE_ID) or "") \
            if record is not None else ""
        if owner != p.id:
            why = (f"raw record {position_text(raw)} belongs to pipeline {owner!r}" if record
                   is not None else f"raw record {position_text(raw)} not found in {names.raw}")
            outcomes += [Outcome(e, False, f"not redriven: {why}") for e in group]
            continue
        out: Out = defaultdict(list)
        mapper.map_record(raw[0], record, out)
        mapper.flush_counts()
        kept = keep_rows(out, names, rows[raw])
        version = mapper.compiled(p).version
        mine = [Outcome(e, True, "") for e in group]
        outcomes += mine
        for t, part, rec in kept:
            row = row_of(t, rec, names)
            owners = [o for o in mine if payload_level(o.entry.letter.get("reason"))
                      or (o.entry.lineage or {}).get("row_index") == row]
            if t == names.transformed:
                for o in owners:
                    o.rows += 1
            # each record once, however many dead letters of the group it answers
            writes.append(_Write(t, part, rec, owners if t == names.dlq else []))
        for o in mine:
            o.text = (f"mapped: {o.rows} row(s) to {names.transformed} with mapping version "
                      f"{version}" if o.rows else
                      "nothing to write: the current mapping filters the row out")
    return outcomes


async def _send(rt: Runtime, writes: list[_Write]) -> list[Position]:
    """Write in order and wait for Kafka's acknowledgement of each: their positions."""
    producer = rt.producer
    futures = [await producer.send(w.topic, w.record[1], key=w.record[0],
                                   partition=w.partition, timestamp_ms=w.record[3],
                                   headers=list(w.record[2])) for w in writes]
    metas = await asyncio.gather(*futures)
    return [(m.partition, m.offset) for m in metas]
