"""The dead letters of one pipeline (`dashpipe dlq list|show`, and what `redrive` works on).

Every dead letter of a pipeline is keyed by its id, so they all live in one partition of the
dead-letter topic; a `Ledger` reads that partition from its beginning to its end and folds the
dead letters and the resolution markers (`streams.deadletters.counts`) into the unresolved ones.
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
from aiokafka import TopicPartition

from dashpipe import kafka
from dashpipe.batcher import partition_for
from dashpipe.errors import DashpipeError, Unavailable
from dashpipe.pipelines import NotFound
from dashpipe.runtime import Runtime
from dashpipe.settings import KafkaSettings
from streams.deadletters.counts import REDRIVEN, Position, parse_marker, stage_of

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
