"""Dead letters listed, shown and redriven (`dashpipe dlq`).

Every dead letter of a pipeline is keyed by its id, so they all live in one partition of the
dead-letter topic; a `Ledger` reads that partition from its beginning to its end and folds the
dead letters and the resolution markers (`dashpipe.deadletters`) into the unresolved ones.

Redriving applies what the pipeline is *now* to each unresolved dead letter:

- `map`: the raw record of the dead letter's lineage is read back from Bronze and mapped with
  the pipeline's current mapping by `streams.mapper.Mapper`, exactly as the map role would; of
  what that gives, only the failing rows are written (the transformed rows, the new dead letters
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
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
from aiokafka import TopicPartition

from agents.deliver import Delivery, message_id
from dashpipe import kafka
from dashpipe.batcher import Record, partition_for
from dashpipe.deadletters import (
    REDRIVEN,
    Position,
    marker_headers,
    marker_value,
    parse_marker,
    stage_of,
)
from dashpipe.errors import DashpipeError, Unavailable
from dashpipe.pipelines import NotFound
from dashpipe.runtime import Runtime
from dashpipe.settings import ADMIN, KafkaSettings
from dashpipe.topics import TopicNames
from schemas.pipeline import Pipeline
from schemas.records import ResolvedLetter
from streams.mapper import Mapper, Out

STAGES = ("map", "persist", "deliver")
# How the map stage words a dead letter that stands for a whole payload (streams/mapper.py and
# streams/compiler.py; a unit test keeps these in step with them).
PAYLOAD_REASONS = ("payload is not valid JSON", "records: ")
STALL_SECONDS = 30.0  # reading a partition that makes no progress for this long fails


def parse_position(text: str) -> Position:
    """`P:O` (partition:offset of the dead-letter topic)."""
    partition, sep, offset = text.strip().partition(":")
    if not sep or not partition.isdigit() or not offset.isdigit():
        raise DashpipeError(f"expected PARTITION:OFFSET (e.g. 2:17), got {text!r}")
    return int(partition), int(offset)


def position_text(position: Position) -> str:
    return f"{position[0]}:{position[1]}"


def payload_level(reason: Any) -> bool:
    """A map dead letter for the whole payload rather than one of its rows."""
    return isinstance(reason, str) and reason.startswith(PAYLOAD_REASONS)


def _ms_text(ms: int) -> str:
    when = datetime(1970, 1, 1, tzinfo=UTC) + timedelta(milliseconds=ms)
    return when.isoformat(timespec="milliseconds").replace("+00:00", "Z")


@dataclass(frozen=True)
class Entry:
    """One dead letter: where it is in the dead-letter topic, and its value."""

    partition: int
    offset: int
    stage: str
    timestamp: int  # Kafka timestamp, ms
    headers: dict[str, str]
    letter: dict[str, Any]

    @property
    def position(self) -> Position:
        return self.partition, self.offset

    @property
    def lineage(self) -> dict[str, int] | None:
        lineage = self.letter.get("lineage")
        if isinstance(lineage, dict) and all(isinstance(lineage.get(k), int) for k in (
                "raw_partition", "raw_offset", "row_index")):
            return lineage
        return None

    def summary(self) -> dict[str, Any]:
        """What `dlq list --json` shows of it (`show` has everything)."""
        return {"position": position_text(self.position), "partition": self.partition,
                "offset": self.offset, "stage": self.stage,
                "failed_at": self.letter.get("failed_at"), "reason": self.letter.get("reason"),
                "lineage": self.letter.get("lineage"),
                "mapping_version": self.letter.get("mapping_version"),
                "sink_index": self.letter.get("sink_index")}


@dataclass
class Ledger:
    """The dead letters of one pipeline and the markers that resolved some of them."""

    pipeline_id: str
    entries: dict[Position, Entry] = field(default_factory=dict)
    # dead letter -> (the marker that resolved it, what the redrive did)
    resolved: dict[Position, tuple[Position, str | None]] = field(default_factory=dict)

    def add(self, partition: int, offset: int, key: bytes | None, headers: Any,
            value: bytes | None, timestamp: int) -> None:
        """Fold one record of the dead-letter topic (other pipelines' are ignored)."""
        if key != self.pipeline_id.encode():
            return
        stage = stage_of(headers)
        if stage == REDRIVEN:
            marker = parse_marker(value)
            for done in marker.resolved if marker is not None else []:
                self.resolved.setdefault((done.partition, done.offset),
                                         ((partition, offset), done.outcome))
            return
        try:
            letter = orjson.loads(value or b"")
        except orjson.JSONDecodeError:
            letter = None
        if not isinstance(letter, dict):
            letter = {"reason": "(the dead letter is not a JSON object)", "record": None}
        self.entries[(partition, offset)] = Entry(
            partition, offset, stage, timestamp,
            {k: v.decode(errors="replace") for k, v in headers}, letter)

    def unresolved(self, stage: str | None = None) -> list[Entry]:
        return [e for pos, e in sorted(self.entries.items())
                if pos not in self.resolved and (stage is None or e.stage == stage)]

    def detail(self, position: Position) -> dict[str, Any]:
        """One dead letter in full (`dlq show`), resolved or not."""
        entry = self.entries.get(position)
        if entry is None:
            raise NotFound(f"no dead letter of pipeline {self.pipeline_id!r} at "
                           f"{position_text(position)}")
        by = self.resolved.get(position)
        return {"position": position_text(position), "partition": entry.partition,
                "offset": entry.offset, "stage": entry.stage,
                "written_at": _ms_text(entry.timestamp), "headers": entry.headers,
                "resolved": None if by is None else {"by_marker": position_text(by[0]),
                                                     "outcome": by[1]},
                "dead_letter": entry.letter}


def table(entries: list[Entry], reason_width: int = 100) -> str:
    """`dlq list`: one line per dead letter."""
    rows = [("OFFSET", "STAGE", "FAILED AT", "LINEAGE", "REASON")]
    for e in entries:
        lineage = e.lineage
        stage = e.stage if e.letter.get("sink_index") is None else \
            f"{e.stage}#{e.letter['sink_index']}"
        reason = " ".join(str(e.letter.get("reason") or "-").split())
        if len(reason) > reason_width:
            reason = reason[:reason_width - 1] + "…"
        rows.append((position_text(e.position), stage, str(e.letter.get("failed_at") or "-"),
                     "-" if lineage is None else
                     f"{lineage['raw_partition']}:{lineage['raw_offset']}:"
                     f"{lineage['row_index']}", reason))
    widths = [max(len(row[c]) for row in rows) for c in range(4)]
    return "\n".join("  ".join([*(cell.ljust(w) for cell, w in zip(row, widths, strict=False)),
                                row[-1]]) for row in rows)


# --- reading the topics ---------------------------------------------------------------------

async def _read_partition(consumer: Any, tp: TopicPartition, end: int,
                          wanted: set[int] | None = None) -> list[Any]:
    """The records of `tp` from the consumer's position up to `end` (only `wanted` offsets
    when given, seeking over gaps), failing when the broker stops giving any."""
    got: list[Any] = []
    pending = sorted(o for o in wanted if o < end) if wanted is not None else None
    stalled = time.monotonic()
    while True:
        if pending is not None:
            if not pending:
                return got
            consumer.seek(tp, pending[0])
        elif await consumer.position(tp) >= end:
            return got
        batch = await consumer.getmany(tp, timeout_ms=1000, max_records=1000)
        records = batch.get(tp, [])
        if not records:
            if pending is not None and await consumer.position(tp) >= end:
                return got  # what is left was deleted, or never written
            if time.monotonic() - stalled > STALL_SECONDS:
                raise Unavailable(f"reading {tp.topic} partition {tp.partition}: no records "
                                  f"for {STALL_SECONDS:.0f}s")
            continue
        stalled = time.monotonic()
        if pending is None:
            got += [r for r in records if r.offset < end]
            if records[-1].offset >= end - 1:
                return got
        else:
            got += [r for r in records if r.offset in wanted]  # type: ignore[operator]
            pending = [o for o in pending if o > records[-1].offset]


async def read_ledger(bootstrap: str, ks: KafkaSettings, dlq: str, pipeline_id: str) -> Ledger:
    """The pipeline's dead letters and markers: its partition of the dead-letter topic, from
    the beginning up to the end it has now."""
    consumer = kafka.consumer(bootstrap, ks, group_id=None)
    async with kafka.started(consumer):
        parts = await kafka.partitions(consumer, dlq)
        tp = TopicPartition(dlq, partition_for(pipeline_id.encode(), len(parts)))
        consumer.assign([tp])
        await consumer.seek_to_beginning(tp)
        end = (await consumer.end_offsets([tp]))[tp]
        ledger = Ledger(pipeline_id)
        for r in await _read_partition(consumer, tp, end):
            ledger.add(r.partition, r.offset, r.key, r.headers, r.value, r.timestamp)
        return ledger


async def read_records(bootstrap: str, ks: KafkaSettings, topic: str,
                       positions: Iterable[Position]) -> dict[Position, Any]:
    """The records at `positions` of `topic` (missing ones are left out)."""
    by_partition: dict[int, set[int]] = defaultdict(set)
    for partition, offset in positions:
        by_partition[partition].add(offset)
    found: dict[Position, Any] = {}
    if not by_partition:
        return found
    consumer = kafka.consumer(bootstrap, ks, group_id=None)
    async with kafka.started(consumer):
        tps = [TopicPartition(topic, p) for p in sorted(by_partition)]
        consumer.assign(tps)
        ends = await consumer.end_offsets(tps)
        for tp in tps:
            for r in await _read_partition(consumer, tp, ends[tp], by_partition[tp.partition]):
                found[(tp.partition, r.offset)] = r
    return found


async def ledger_of(rt: Runtime, pipeline_id: str) -> Ledger:
    """The pipeline's ledger; an unknown pipeline with no dead letters is not found."""
    ledger = await read_ledger(rt.bootstrap, rt.settings.kafka, rt.names.dlq, pipeline_id)
    if not ledger.entries and pipeline_id not in rt.registry.pipelines:
        raise NotFound(f"pipeline {pipeline_id!r} not found")
    return ledger


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
        ingest = next((v.decode() for k, v in headers if k == "dashpipe-ingest-id"), "")
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
    headers = [("dashpipe-pipeline-id", p.id.encode()), ("dashpipe-team-id", p.team_id.encode())]
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
    limits = getattr(sink.config(), "batching", None)
    msg_id = message_id(p.id, rows[0]["lineage"], index)
    if limits is not None and limits.max_rows > 1:
        msg_id += f"-{len(rows)}"  # as the deliver role names a batch
    delivery = Delivery(p.id, index, rows, msg_id, due=now)
    key = f"{p.id}:{index}".encode()
    topic = names.retry
    return _Write(topic, partition_for(key, partitions[topic]),
                  (key, delivery.retry_record(), [("dashpipe-pipeline-id", p.id.encode())],
                   None))


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
    for tp in await kafka.partitions(rt.writer.producer, names.raw, names.transformed,
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
        owner = next((v.decode() for k, v in record.headers
                      if k == "dashpipe-pipeline-id"), "") if record is not None else ""
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
    producer = rt.writer.producer
    futures = [await producer.send(w.topic, w.record[1], key=w.record[0],
                                   partition=w.partition, timestamp_ms=w.record[3],
                                   headers=list(w.record[2])) for w in writes]
    metas = await asyncio.gather(*futures)
    return [(m.partition, m.offset) for m in metas]
