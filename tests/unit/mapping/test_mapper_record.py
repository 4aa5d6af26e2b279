"""One raw record through `Mapper.map_record` (no Kafka): the transformed records it writes,
their time, key and lineage."""

from __future__ import annotations

from collections import defaultdict
from types import SimpleNamespace
from typing import Any

import orjson

from dashpipe.metrics import Metrics
from dashpipe.topics import TopicNames
from schemas.pipeline import Pipeline
from streams.mapping.mapper import Mapper, Out

NAMES = TopicNames.from_prefix("t")
PARTS = {NAMES.raw: 3, NAMES.transformed: 3, NAMES.dlq: 3}
RECEIVED_MS = 1764300000123  # the raw record's timestamp: when dashpipe received it


def rows(mapping: dict[str, Any] | None, payload: Any) -> list[dict[str, Any]]:
    p = Pipeline.model_validate({
        "id": "p", "team_id": "team-a", "name": "p", "type": "realtime",
        "source_type": "webhook", "source_config": {"webhook_secret": "s"},
        "data_mapping": mapping, "mapping_version": 1 if mapping else 0})
    registry = SimpleNamespace(pipelines={p.id: p}, on_change=lambda callback: None)
    rt: Any = SimpleNamespace(registry=registry, names=NAMES, metrics=Metrics())
    record = SimpleNamespace(headers=[("dashpipe-pipeline-id", b"p"),
                                      ("dashpipe-ingest-id", b"i-1")],
                             value=orjson.dumps(payload), offset=7, timestamp=RECEIVED_MS)
    out: Out = defaultdict(list)
    Mapper(rt, PARTS).map_record(2, record, out)
    return [orjson.loads(value) for (topic, _), items in out.items() if topic == NAMES.transformed
            for _, value, _, _ in items]


def test_rows_without_a_time_mapping_take_the_received_time() -> None:
    assert [r["time"] for r in rows(None, {"a": 1})] == ["2025-11-28T03:20:00.123000Z"]
    mapped = rows({"records": "items[*]", "fields": {"a": {"path": "a"}}},
                  {"items": [{"a": 1}, {"a": 2}]})
    assert [r["time"] for r in mapped] == ["2025-11-28T03:20:00.123000Z"] * 2


def test_rows_with_a_time_mapping_take_their_own_and_never_the_received_time() -> None:
    mapped = rows({"records": "items[*]", "time": {"path": "t", "format": "epoch_ms"},
                   "key": "id", "fields": {"id": {"path": "id"}}},
                  {"items": [{"id": "x", "t": 1700000000000}, {"id": "y", "t": 1700000001500}]})
    assert [(r["key"], r["time"]) for r in mapped] == [
        ("x", "2023-11-14T22:13:20Z"), ("y", "2023-11-14T22:13:21.500000Z")]
    assert [r["lineage"] for r in mapped] == [
        {"raw_partition": 2, "raw_offset": 7, "row_index": 0},
        {"raw_partition": 2, "raw_offset": 7, "row_index": 1}]
