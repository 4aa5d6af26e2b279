"""How many unresolved dead letters each pipeline has, per stage: counted from the dead-letter
topic itself (from its beginning, then tailing it), so every web process shows the same figures
whichever process wrote them. Reads keys and headers (`dashpipe-stage`); the only values it
parses are those of resolution markers.

A resolution marker (`dashpipe dlq redrive` writes them, `streams/redrive.py`) is a record of
the same topic, key = pipeline id, header `dashpipe-stage: redriven`, whose value
(`DeadLetterResolution`) lists the positions (partition, offset, stage) of the dead letters it
resolved. The topic stays append-only: a resolved dead letter is never deleted, it stops
counting."""

from __future__ import annotations

import asyncio
import logging
from datetime import UTC, datetime

import orjson
from pydantic import ValidationError

from dashpipe import kafka
from dashpipe.metrics import Metrics
from dashpipe.settings import KafkaSettings
from schemas.headers import Header
from schemas.records import DeadLetterResolution, ResolvedLetter

log = logging.getLogger(__name__)
# gauges: every web process recounts the topic (after a restart too), so they never add up
METRIC = "dashpipe_dead_letters"
RESOLVED_METRIC = "dashpipe_dead_letters_resolved"
UNRESOLVED_METRIC = "dashpipe_dead_letters_unresolved"
REDRIVEN = "redriven"  # the stage header of a resolution marker

Position = tuple[int, int]  # (partition, offset) in the dead-letter topic


def stage_of(headers: list[tuple[str, bytes]] | tuple[tuple[str, bytes], ...]) -> str:
    return next((v.decode(errors="replace") for k, v in headers if k == Header.STAGE),
                "unknown")


def marker_value(pipeline_id: str, resolved: list[ResolvedLetter],
                 at: datetime | None = None) -> bytes:
    marker = DeadLetterResolution(pipeline_id=pipeline_id, resolved=resolved,
                                  redriven_at=at or datetime.now(UTC))
    return orjson.dumps(marker.model_dump(mode="json"))


def marker_headers(pipeline_id: str, team_id: str | None) -> list[tuple[str, bytes]]:
    headers = [(Header.PIPELINE_ID, pipeline_id.encode())]
    if team_id is not None:
        headers.append((Header.TEAM_ID, team_id.encode()))
    return [*headers, (Header.STAGE, REDRIVEN.encode())]


def parse_marker(value: bytes | None) -> DeadLetterResolution | None:
    """The marker in `value`, or None (logged) when it does not parse: a bad marker resolves
    nothing, and never stops the reader."""
    try:
        return DeadLetterResolution.model_validate_json(value or b"")
    except ValidationError as exc:
        log.warning("dead letters: unreadable resolution marker (%d errors); ignored",
                    exc.error_count())
        return None


class Tally:
    """Unresolved dead letters per pipeline and stage, folded from the topic's records in any
    order: a dead letter adds one, the first marker naming its position takes one away (a
    position named again by a later marker is not subtracted twice)."""

    def __init__(self) -> None:
        self.counts: dict[str, dict[str, int]] = {}
        self.written: dict[str, dict[str, int]] = {}  # dead letters, resolved or not
        self.resolved: set[Position] = set()

    def of(self, pipeline_id: str) -> dict[str, int]:
        return {stage: n for stage, n in self.counts.get(pipeline_id, {}).items() if n > 0}

    def add(self, pipeline_id: str, stage: str, value: bytes | None) -> list[str]:
        """Fold one record: a dead letter, or a resolution marker (`value` parsed); the
        stages it added or resolved, each once per dead letter."""
        per_stage = self.counts.setdefault(pipeline_id, {})
        if stage != REDRIVEN:
            per_stage[stage] = per_stage.get(stage, 0) + 1
            written = self.written.setdefault(pipeline_id, {})
            written[stage] = written.get(stage, 0) + 1
            return [stage]
        marker = parse_marker(value)
        done: list[str] = []
        for letter in marker.resolved if marker is not None else []:
            if (letter.partition, letter.offset) in self.resolved:
                continue
            self.resolved.add((letter.partition, letter.offset))
            per_stage[letter.stage] = per_stage.get(letter.stage, 0) - 1
            done.append(letter.stage)
        return done


class DeadLetterCounts:
    def __init__(self, bootstrap: str, ks: KafkaSettings, topic: str, metrics: Metrics) -> None:
        self.bootstrap, self.ks, self.topic, self.metrics = bootstrap, ks, topic, metrics
        self.tally = Tally()

    def of(self, pipeline_id: str) -> dict[str, int]:
        """Unresolved dead letters of the pipeline per stage (stages with none are left out)."""
        return self.tally.of(pipeline_id)

    async def run(self) -> None:
        """Count forever; after a Kafka error, start again from the beginning (the figures
        of the last count stay until the new one has caught up)."""
        while True:
            try:
                await self._read()
            except Exception as exc:  # a counter must never take the web role down
                log.warning("dead-letter counts: %s; reading again in 5s", type(exc).__name__)
                await asyncio.sleep(5)

    async def _read(self) -> None:
        consumer = kafka.consumer(self.bootstrap, self.ks, group_id=None)
        fresh = Tally()
        async with kafka.started(consumer):
            tps = await kafka.partitions(consumer, self.topic)
            consumer.assign(tps)
            await consumer.seek_to_beginning(*tps)
            ends = await consumer.end_offsets(tps)
            behind = {tp for tp in tps if ends[tp] > 0}
            if not behind:
                self._publish(fresh)
            while True:
                batch = await consumer.getmany(timeout_ms=1000, max_records=5000)
                for tp, records in batch.items():
                    for record in records:
                        self._count(fresh, record.key, record.headers, record.value)
                    if tp in behind and records[-1].offset + 1 >= ends[tp]:
                        behind.discard(tp)
                        if not behind:
                            self._publish(fresh)
                if batch and not behind:
                    self._publish(fresh)

    def _count(self, tally: Tally, key: bytes | None, headers: list[tuple[str, bytes]],
               value: bytes | None = None) -> None:
        stage = stage_of(headers)
        pid = key.decode(errors="replace") if key else "(none)"
        tally.add(pid, stage, value if stage == REDRIVEN else None)

    def _publish(self, tally: Tally) -> None:
        """Make `tally` the counts the API and the gauges show."""
        self.tally = tally
        for name in (METRIC, RESOLVED_METRIC, UNRESOLVED_METRIC):
            self.metrics.reset(name)
        for pid, written in tally.written.items():
            unresolved = tally.counts.get(pid, {})
            for stage, n in written.items():
                left = unresolved.get(stage, 0)
                self.metrics.set(METRIC, n, pipeline_id=pid, stage=stage)
                self.metrics.set(RESOLVED_METRIC, n - left, pipeline_id=pid, stage=stage)
                self.metrics.set(UNRESOLVED_METRIC, left, pipeline_id=pid, stage=stage)
