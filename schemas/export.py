"""JSON Schemas of the public records, exported as files beside this module.

`dashpipe schemas export` writes them; `dashpipe schemas check` (and a unit test) fails when
a file no longer matches its model.
"""

from __future__ import annotations

from pathlib import Path

import orjson
from pydantic import BaseModel

from schemas.mapping import Mapping
from schemas.pagination import Pagination
from schemas.pipeline import Pipeline, PipelineStatus
from schemas.records import DeadLetter, DeadLetterResolution, RawMetadata, TransformedRecord

FOLDER = Path(__file__).parent

MODELS: dict[str, type[BaseModel]] = {
    "raw-metadata": RawMetadata,
    "transformed-record": TransformedRecord,
    "dead-letter": DeadLetter,
    "dead-letter-resolution": DeadLetterResolution,
    "pipeline": Pipeline,
    "pipeline-status": PipelineStatus,
    "mapping": Mapping,
    "pagination": Pagination,  # source_config.pagination of http_api and graphql sources
}


def render(name: str, model: type[BaseModel]) -> bytes:
    schema = model.model_json_schema()
    schema = {"$schema": "https://json-schema.org/draft/2020-12/schema",
              "$id": f"dashpipe/{name}.schema.json", **schema}
    return orjson.dumps(schema, option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS) + b"\n"


def export(folder: Path = FOLDER) -> list[Path]:
    written = []
    for name, model in MODELS.items():
        path = folder / f"{name}.schema.json"
        path.write_bytes(render(name, model))
        written.append(path)
    return written


def stale(folder: Path = FOLDER) -> list[str]:
    """Names of the schema files that are missing or differ from their models."""
    out = []
    for name, model in MODELS.items():
        path = folder / f"{name}.schema.json"
        if not path.exists() or path.read_bytes() != render(name, model):
            out.append(path.name)
    return out
