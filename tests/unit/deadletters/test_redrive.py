"""The pure parts of dead-letter redrive (`streams.deadletters.redrive`) and of the resolution
markers and counts (`streams.deadletters.counts`): positions, folding dead letters and markers,
which rows of a re-mapped payload are written, and the records a persist or deliver redrive
writes."""

from __future__ import annotations

from collections import defaultdict
from datetime import UTC, datetime
from types import SimpleNamespace
from typing import Any

import orjson
import pytest

from agents.deliver.deliverer import Delivery
from dashpipe.batcher import partition_for
from dashpipe.errors import DashpipeError
from dashpipe.metrics import Metrics
from dashpipe.pipelines import NotFound
from dashpipe.topics import TopicNames
from schemas.mapping import Mapping
from schemas.pipeline import Pipeline
from schemas.records import ResolvedLetter, message_id
from streams.deadletters import ledger as ledgers
from streams.deadletters import redrive
from streams.deadletters.counts import Tally, marker_headers, marker_value, parse_marker
from streams.mapping.compiler import compile_mapping
from streams.mapping.mapper import Mapper, Out

NAMES = TopicNames.from_prefix("t")
PARTS = {NAMES.raw: 3, NAMES.transformed: 3, NAMES.dlq: 3, NAMES.retry: 3}
AT = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)


def pipeline(pid: str = "p", mapping: dict[str, Any] | None = None, **extra: Any) -> Pipeline:
    return Pipeline.model_validate({
        "id": pid, "team_id": "team-a", "name": pid, "type": "realtime",
        "source_type": "webhook", "source_config": {"webhook_secret": "s"},
        "data_mapping": mapping, "mapping_version": 1 if mapping else 0, **extra})


def letter(stage: str, reason: str = "boom", partition: int = 0, offset: int = 0,
           row: int = 0, **extra: Any) -> bytes:
    return orjson.dumps({"stage": stage, "reason": reason, "pipeline_id": "p",
                         "lineage": {"raw_partition": partition, "raw_offset": offset,
                                     "row_index": row},
                         "failed_at": "2026-01-02T03:04:05Z", **extra})


def headers(stage: str) -> list[tuple[str, bytes]]:
    return [("dashpipe-pipeline-id", b"p"), ("dashpipe-stage", stage.encode())]


def marker(*positions: tuple[int, int, str]) -> bytes:
    return marker_value("p", [ResolvedLetter(partition=p, offset=o, stage=s,
                                             outcome="done") for p, o, s in positions], AT)


def test_positions_parse_and_bad_ones_are_refused() -> None:
    assert ledgers.parse_position("2:17") == (2, 17)
    assert ledgers.position_text((2, 17)) == "2:17"
    for text in ("2", "a:1", "1:-1", "", "1:2:3"):
        with pytest.raises(DashpipeError):
            ledgers.parse_position(text)


def test_a_marker_round_trips_and_is_labelled_redriven() -> None:
    value = marker((1, 4, "map"), (1, 5, "deliver"))
    parsed = parse_marker(value)
    assert parsed is not None and parsed.pipeline_id == "p" and parsed.redriven_at == AT
    assert [(r.partition, r.offset, r.stage) for r in parsed.resolved] == [
        (1, 4, "map"), (1, 5, "deliver")]
    assert ("dashpipe-stage", b"redriven") in marker_headers("p", "team-a")
    assert parse_marker(b"not json") is None and parse_marker(b'{"resolved": 1}') is None


def test_the_tally_subtracts_resolved_dead_letters_once() -> None:
    tally = Tally()
    for _ in range(3):
        tally.add("p", "map", None)
    tally.add("p", "persist", None)
    tally.add("q", "map", None)
    assert tally.of("p") == {"map": 3, "persist": 1}
    assert tally.add("p", "redriven", marker((0, 0, "map"), (0, 1, "map"))) == ["map", "map"]
    assert tally.add("p", "redriven", marker((0, 1, "map"), (0, 3, "persist"))) == ["persist"]
    assert tally.of("p") == {"map": 1} and tally.of("q") == {"map": 1}
    assert tally.add("p", "redriven", b"garbage") == []  # a bad marker resolves nothing
    assert tally.of("nobody") == {}


def test_the_ledger_folds_one_pipelines_dead_letters_and_markers() -> None:
    ledger = ledgers.Ledger("p")
    ledger.add(0, 0, b"p", headers("map"), letter("map", row=1), 1)
    ledger.add(0, 1, b"q", headers("map"), letter("map"), 1)  # another pipeline's
    ledger.add(0, 2, b"p", headers("persist"), letter("persist"), 1)
    ledger.add(0, 3, b"p", headers("deliver"), letter("deliver", sink_index=0), 1)
    ledger.add(0, 4, b"p", headers("redriven"), marker((0, 0, "map")), 1)
    assert [e.position for e in ledger.unresolved()] == [(0, 2), (0, 3)]
    assert [e.position for e in ledger.unresolved("deliver")] == [(0, 3)]
    shown = ledger.detail((0, 0))
    assert shown["resolved"] == {"by_marker": "0:4", "outcome": "done"}
    assert shown["dead_letter"]["lineage"]["row_index"] == 1
    assert ledger.detail((0, 2))["resolved"] is None
    with pytest.raises(NotFound):
        ledger.detail((0, 1))
    assert [e.summary()["position"] for e in ledger.unresolved()] == ["0:2", "0:3"]
    lines = ledgers.table(ledger.unresolved()).splitlines()
    assert lines[0].split() == ["OFFSET", "STAGE", "FAILED", "AT", "LINEAGE", "REASON"]
    assert lines[2].split()[:2] == ["0:3", "deliver#0"]
    with pytest.raises(NotFound):  # only unresolved ones can be picked
        redrive.select(ledger, None, [(0, 0)])
    assert [e.position for e in redrive.select(ledger, None, [(0, 3)])] == [(0, 3)]


def test_payload_level_reasons_match_what_the_map_stage_writes() -> None:
    records = compile_mapping(Mapping.model_validate({"records": "items[*]", "fields": {
        "n": {"path": "n", "type": "integer", "required": True}}}))
    [missing] = records({"other": 1}, AT).errors
    [row] = records({"items": [{"m": 1}]}, AT).errors
    assert ledgers.payload_level(missing.reason) and not ledgers.payload_level(row.reason)
    out = _map(pipeline("p", {"fields": {"n": "n"}}), b"not json {")
    [(_, dead)] = [(k, v) for k, vs in out.items() for v in vs if k[0] == NAMES.dlq]
    assert ledgers.payload_level(orjson.loads(dead[1])["reason"])


def test_failing_rows_group_dead_letters_by_raw_record() -> None:
    ledger = ledgers.Ledger("p")
    for offset, (raw_offset, row, reason) in enumerate(
            [(5, 1, "field 'n'"), (5, 2, "field 'n'"), (6, 0, "records: 'x' not found"),
             (6, 3, "field 'n'"), (7, 0, "payload is not valid JSON: x")]):
        ledger.add(0, offset, b"p", headers("map"),
                   letter("map", reason, 1, raw_offset, row), 1)
    assert redrive.failing_rows(ledger.unresolved()) == {(1, 5): {1, 2}, (1, 6): None,
                                                         (1, 7): None}


def test_only_the_failing_rows_of_a_remapped_payload_are_kept() -> None:
    p = pipeline("p", {"records": "items[*]", "fields": {"n": {
        "first_of": ["n", "m"], "type": "integer", "required": True}}})
    out = _map(p, b'{"items": [{"n": 1}, {"m": 2}, {"x": 3}, {"m": 4}]}')
    kept = redrive.keep_rows(out, NAMES, {1, 2})
    rows = sorted((t, redrive.row_of(t, rec, NAMES)) for t, _, rec in kept)
    assert rows == [(NAMES.dlq, 2), (NAMES.transformed, 1)]
    assert len(redrive.keep_rows(out, NAMES, None)) == 4  # every row (and the dead letter)


def test_a_persist_dead_letter_goes_back_with_the_mappers_key_and_headers() -> None:
    p = pipeline()
    record = {"pipeline_id": "p", "team_id": "team-a", "key": "k1", "fields": {"s": "a"},
              "lineage": {"raw_partition": 0, "raw_offset": 3, "row_index": 0}}
    entry = _entry("persist", record=record)
    w = redrive.persist_write(p, entry, NAMES, PARTS)
    assert not isinstance(w, str)
    assert (w.topic, w.partition) == (NAMES.transformed, partition_for(b"k1", 3))
    key, value, hdrs, ts = w.record
    assert key == b"k1" and orjson.loads(value) == record and ts is None
    assert list(hdrs) == [("dashpipe-pipeline-id", b"p"), ("dashpipe-team-id", b"team-a")]
    no_key = redrive.persist_write(p, _entry("persist", record={**record, "key": None}),
                                   NAMES, PARTS)
    assert not isinstance(no_key, str) and no_key.record[0] == b"p"  # else the pipeline id
    assert isinstance(redrive.persist_write(p, _entry("persist", record="text"), NAMES,
                                            PARTS), str)


def test_a_deliver_dead_letter_becomes_a_retry_due_now_with_its_message_id() -> None:
    hook = {"sink_type": "webhook", "sink_config": {
        "url": "https://example.com/h", "secret": "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"}}
    row = {"pipeline_id": "p", "fields": {"n": 1},
           "lineage": {"raw_partition": 1, "raw_offset": 2, "row_index": 0}}
    p = pipeline(sinks=[hook])
    w = redrive.deliver_write(p, _entry("deliver", record=row, sink_index=0), NAMES, PARTS,
                              now=1000.0)
    assert not isinstance(w, str)
    assert (w.topic, w.partition) == (NAMES.retry, partition_for(b"p:0", 3))
    assert w.record[0] == b"p:0"
    retry = Delivery.from_retry(w.record[1])
    assert (retry.rows, retry.due, retry.attempts) == ([row], 1000.0, [])
    assert retry.msg_id == message_id("p", row["lineage"], 0)
    disabled = pipeline(sinks=[{**hook, "enabled": False, "disabled_reason": "410"}])
    why = redrive.deliver_write(disabled, _entry("deliver", record=row, sink_index=0), NAMES,
                                PARTS, 1000.0)
    assert isinstance(why, str) and "sink 0 is disabled (410)" in why
    gone = redrive.deliver_write(p, _entry("deliver", record=row, sink_index=3), NAMES,
                                 PARTS, 1000.0)
    assert gone == "not redriven: sink 3 no longer exists"
    batched = pipeline(sinks=[{"sink_type": "http_api", "sink_config": {
        "url": "https://example.com/api", "batching": {"max_rows": 10}}}])
    w = redrive.deliver_write(batched, _entry("deliver", record=[row, row], sink_index=0),
                              NAMES, PARTS, 1000.0)
    assert not isinstance(w, str)
    assert Delivery.from_retry(w.record[1]).msg_id.endswith("-2")  # as the batch was named


def _entry(stage: str, **letter_fields: Any) -> ledgers.Entry:
    return ledgers.Entry(0, 9, stage, 0, {}, {"stage": stage, "reason": "r", **letter_fields})


def _map(p: Pipeline, value: bytes) -> Out:
    """What the map stage writes for one raw record at raw offset 5 of partition 1."""
    registry = SimpleNamespace(pipelines={p.id: p}, on_change=lambda callback: None)
    rt: Any = SimpleNamespace(registry=registry, names=NAMES, metrics=Metrics())
    record = SimpleNamespace(headers=[("dashpipe-pipeline-id", p.id.encode()),
                                      ("dashpipe-ingest-id", b"i-1")],
                             value=value, offset=5, timestamp=1764300000000)
    out: Out = defaultdict(list)
    Mapper(rt, PARTS).map_record(1, record, out)
    return out
