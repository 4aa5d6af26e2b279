from datetime import UTC, datetime

import pytest
from pydantic import ValidationError

from schemas import export
from schemas.headers import pipeline_id_header
from schemas.records import (
    DeadLetter,
    Lineage,
    RawMetadata,
    TransformedRecord,
)


def test_raw_metadata_round_trips_through_headers() -> None:
    meta = RawMetadata(pipeline_id="p1", team_id="t1", source="poll",
                       received_at=datetime(2026, 1, 2, 3, 4, 5, 678000, tzinfo=UTC),
                       ingest_id="i-1", url="https://api.example.com/x", http_status=200)
    headers = meta.to_headers()
    assert ("dashpipe-pipeline-id", b"p1") in headers
    assert ("dashpipe-received-at", b"2026-01-02T03:04:05.678Z") in headers
    assert RawMetadata.from_headers([*headers, ("unrelated", b"x")]) == meta


def test_absent_optional_metadata_is_not_a_header() -> None:
    meta = RawMetadata(pipeline_id="p", team_id="t", source="webhook",
                       received_at=datetime.now(UTC), ingest_id="i")
    assert "dashpipe-url" not in dict(meta.to_headers())
    assert "dashpipe-event" not in dict(meta.to_headers())


def test_a_webhooks_delivery_id_and_event_round_trip_through_headers() -> None:
    meta = RawMetadata(pipeline_id="p", team_id="t", source="webhook",
                       received_at=datetime(2026, 1, 2, tzinfo=UTC), ingest_id="evt_1",
                       dedup_id="evt_1", event="invoice.paid")
    headers = dict(meta.to_headers())
    assert (headers["dashpipe-dedup-id"], headers["dashpipe-event"]) == (b"evt_1",
                                                                         b"invoice.paid")
    assert RawMetadata.from_headers(meta.to_headers()) == meta


def test_transformed_record_requires_lineage() -> None:
    with pytest.raises(ValidationError) as err:
        TransformedRecord.model_validate({"pipeline_id": "p", "team_id": "t",
                                          "time": "2026-01-01T00:00:00Z", "fields": {},
                                          "mapping_version": 1, "ingest_id": "i"})
    assert ("lineage",) in [e["loc"] for e in err.value.errors()]


def test_lineage_rejects_negative_offsets() -> None:
    with pytest.raises(ValidationError):
        Lineage(raw_partition=0, raw_offset=-1, row_index=0)


def test_dead_letter_carries_stage_reason_and_lineage() -> None:
    dl = DeadLetter(stage="map", reason="fields.mag: expected float, got str", pipeline_id="p",
                    lineage=Lineage(raw_partition=1, raw_offset=2, row_index=3),
                    failed_at=datetime.now(UTC))
    assert DeadLetter.model_validate_json(dl.model_dump_json()) == dl




def test_exported_json_schemas_are_current() -> None:
    assert export.stale() == [], "run `dashpipe schemas export` and commit the files"


def test_stale_detects_a_changed_file(tmp_path) -> None:  # type: ignore[no-untyped-def]
    export.export(tmp_path)
    assert export.stale(tmp_path) == []
    path = tmp_path / "dead-letter.schema.json"
    path.write_text(path.read_text().replace("reason", "cause"))
    assert export.stale(tmp_path) == ["dead-letter.schema.json"]


def test_our_murmur2_is_kafkas() -> None:
    import random

    from aiokafka.partitioner import murmur2 as reference

    from dashpipe.batcher import murmur2, partition_for

    rng = random.Random(7)
    for _ in range(20_000):
        key = bytes(rng.randrange(256) for _ in range(rng.randrange(0, 40)))
        assert murmur2(key) == reference(key), key
    # the partitions Kafka's Java client gives these keys with 6 partitions
    assert partition_for(b"quakes", 6) == (reference(b"quakes") & 0x7FFFFFFF) % 6


def test_pipeline_id_header_is_found_first_or_later_and_none_without_it() -> None:
    assert pipeline_id_header([("dashpipe-pipeline-id", b"p1"), ("x", b"y")]) == b"p1"
    assert pipeline_id_header((("x", b"y"), ("dashpipe-pipeline-id", b"p2"))) == b"p2"
    assert pipeline_id_header([("x", b"y")]) is None
    assert pipeline_id_header(None) is None and pipeline_id_header(()) is None
