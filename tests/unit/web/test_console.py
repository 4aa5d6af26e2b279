"""Which partitions carry a pipeline, per topic, as the console's lag reads them."""

from __future__ import annotations

from agents.web.console import pipeline_partitions
from dashpipe.batcher import partition_for
from dashpipe.topics import TopicNames
from schemas.pipeline import Pipeline

NAMES = TopicNames.from_prefix("t")


def pipeline(**extra: object) -> Pipeline:
    return Pipeline.model_validate({
        "id": "orders", "team_id": "a", "name": "orders", "type": "realtime",
        "source_type": "webhook", "source_config": {"webhook_secret": "s"}, **extra})


def test_raw_and_transformed_by_pipeline_id() -> None:
    p = pipeline(data_mapping={"fields": {"n": {"path": "n", "type": "integer"}}})
    own = partition_for(b"orders", 12)
    assert pipeline_partitions(p, NAMES, NAMES.raw, 12) == [own]
    assert pipeline_partitions(p, NAMES, NAMES.transformed, 12) == [own]
    assert pipeline_partitions(p, NAMES, NAMES.dlq, 12) == []  # not a role's input
    assert pipeline_partitions(p, NAMES, "elsewhere", 12) == []


def test_rows_keyed_by_a_field_spread_over_every_partition() -> None:
    p = pipeline(data_mapping={"key": "n", "fields": {"n": {"path": "n", "type": "string"}}})
    assert pipeline_partitions(p, NAMES, NAMES.transformed, 4) == [0, 1, 2, 3]
    assert pipeline_partitions(p, NAMES, NAMES.raw, 4) == [partition_for(b"orders", 4)]


def test_retries_by_pipeline_and_sink() -> None:
    sink = {"sink_type": "webhook", "sink_config": {"url": "https://example.com/in",
                                                     "secret": "whsec"}}
    p = pipeline(sinks=[sink, sink, sink])
    assert pipeline_partitions(p, NAMES, NAMES.retry, 8) == sorted(
        {partition_for(f"orders:{i}".encode(), 8) for i in range(3)})
    assert pipeline_partitions(pipeline(), NAMES, NAMES.retry, 8) == []
