"""The exported pipeline.schema.json types `source_config` by `source_type` and `sink_config`
by `sink_type`, so that an editor checking a pipeline file rejects what the API rejects."""

from pathlib import Path
from typing import Any

import orjson
import pytest
from jsonschema import Draft202012Validator
from pydantic import ValidationError

from dashpipe.cli import pipeline_files
from schemas.pipeline import Pipeline

ROOT = Path(__file__).parents[3]
SCHEMA = orjson.loads((ROOT / "schemas" / "pipeline.schema.json").read_bytes())
VALIDATOR = Draft202012Validator(SCHEMA)


def webhook(**extra: Any) -> dict[str, Any]:
    return {"id": "w", "team_id": "t", "name": "n", "type": "realtime", "source_type": "webhook",
            "source_config": {"webhook_secret": "s3cret"}, **extra}


def polling(**source: Any) -> dict[str, Any]:
    return {"id": "p", "team_id": "t", "name": "n", "type": "polling", "interval_seconds": 60,
            "source_type": "http_api",
            "source_config": {"url": "https://api.example.com/x", **source}}


def test_the_schema_is_valid_draft_2020_12() -> None:
    Draft202012Validator.check_schema(SCHEMA)


def test_every_example_pipeline_passes_the_schema_and_the_model() -> None:
    docs = pipeline_files.read(str(ROOT / "examples" / "pipelines.yaml"))
    assert len(docs) >= 3
    for doc in docs:
        assert list(VALIDATOR.iter_errors(doc)) == [], doc["id"]
        Pipeline.model_validate(doc)


GOOD = [
    webhook(),
    polling(pagination={"type": "cursor", "next_path": "meta.next", "param": "cursor"}),
    webhook(sinks=[{"sink_type": "webhook", "sink_config": {
        "url": "https://hooks.example.com/in", "secret": "whsec_c2VjcmV0"}}]),
    webhook(sinks=[{"sink_type": "http_api", "sink_config": {
        "url": "https://api.example.com/in", "method": "put"}}]),
    {"id": "d", "team_id": "t", "name": "n", "type": "derived", "source_type": "pipeline",
     "source_config": {"pipeline_id": "w"}},
]

# each: a definition, and the path the schema's error points at
BAD = [
    # a webhook's config under an http_api source
    (polling() | {"source_config": {"webhook_secret": "s3cret"}}, "source_config"),
    (webhook(source_config={"url": "https://api.example.com/x"}), "source_config"),
    (polling(pagination={"type": "cursor", "next_path": "n", "max_pages": 0}),
     "source_config.pagination.max_pages"),
    (polling(method="DELETE"), "source_config.method"),
    (webhook(source_config={}), "source_config"),
    (webhook() | {"source_config": None}, "source_config"),
    # a sink's config of the other type (`method` is http_api's, `secret` webhook's)
    (webhook(sinks=[{"sink_type": "webhook", "sink_config": {
        "url": "https://hooks.example.com/in", "method": "PUT"}}]), "sinks.0.sink_config"),
    (webhook(sinks=[{"sink_type": "http_api", "sink_config": {
        "url": "https://api.example.com/in", "secret": "x"}}]), "sinks.0.sink_config"),
    # a source type that does not fit the pipeline's type
    (webhook(type="polling", interval_seconds=60), "source_type"),
    (polling() | {"interval_seconds": None}, "interval_seconds"),
]


@pytest.mark.parametrize("doc", GOOD)
def test_what_the_model_takes_the_schema_takes(doc: dict[str, Any]) -> None:
    Pipeline.model_validate(doc)
    assert list(VALIDATOR.iter_errors(doc)) == []


@pytest.mark.parametrize(("doc", "where"), BAD)
def test_what_the_model_refuses_the_schema_refuses_at_that_path(doc: dict[str, Any],
                                                                 where: str) -> None:
    with pytest.raises(ValidationError):
        Pipeline.model_validate(doc)
    errors = list(VALIDATOR.iter_errors(doc))
    assert errors, "the schema took a definition the model refuses"
    paths = {".".join(map(str, e.absolute_path)) for err in errors
             for e in [err, *_leaves(err)]}
    assert where in paths, paths


def _leaves(error: Any) -> list[Any]:
    return [leaf for sub in error.context or [] for leaf in [sub, *_leaves(sub)]]
