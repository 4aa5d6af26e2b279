"""JSON Schemas of the public records, exported as files beside this module.

`dashpipe schemas export` writes them, and the HTTP API's OpenAPI document (`openapi.json`,
schemas/openapi.py); `dashpipe schemas check` (and a unit test) fails when a file no longer
matches its models.
"""

from __future__ import annotations

from pathlib import Path

import orjson
from pydantic import BaseModel

from schemas import openapi
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


def files() -> dict[str, bytes]:
    """Every exported file's name and content."""
    out = {f"{name}.schema.json": render(name, model) for name, model in MODELS.items()}
    out["openapi.json"] = openapi.render()
    return out


def export(folder: Path = FOLDER) -> list[Path]:
    written = []
    for name, content in files().items():
        path = folder / name
        path.write_bytes(content)
        written.append(path)
    return written


def stale(folder: Path = FOLDER) -> list[str]:
    """Names of the schema files that are missing or differ from their models."""
    out = []
    for name, content in files().items():
        path = folder / name
        if not path.exists() or path.read_bytes() != content:
            out.append(name)
    return out
