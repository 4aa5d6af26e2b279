"""The pipeline definition, as kept (key = id) in the compacted `<prefix>.pipelines` topic.

This is the skeleton every role shares; the ingest, transform and deliver issues give
`source_config`, `data_mapping` and `sinks` their typed shapes.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

PipelineType = Literal["polling", "realtime", "derived"]
SourceType = Literal["http_api", "graphql", "webhook", "pipeline"]
Status = Literal["active", "paused", "error"]

SOURCES_BY_TYPE: dict[str, set[str]] = {
    "polling": {"http_api", "graphql"},
    "realtime": {"webhook"},
    "derived": {"pipeline"},
}


class SinkSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")

    sink_type: str = Field(min_length=1)
    sink_config: dict[str, Any] = Field(default_factory=dict)


class Pipeline(BaseModel):
    model_config = ConfigDict(extra="forbid")

    id: str = Field(pattern=r"^[A-Za-z0-9_-]{1,64}$")
    team_id: str = Field(min_length=1, max_length=64)
    name: str = Field(min_length=1, max_length=200)
    type: PipelineType
    status: Status = "active"
    error_message: str | None = None
    interval_seconds: int | None = Field(default=None, ge=1, le=7 * 24 * 3600)
    source_type: SourceType
    source_config: dict[str, Any] = Field(default_factory=dict)
    data_mapping: dict[str, Any] | None = None
    persist_data: bool = False
    sinks: list[SinkSpec] = Field(default_factory=list)
    rate_limit_per_minute: int = Field(default=100, ge=1)
    created_at: datetime | None = None
    updated_at: datetime | None = None

    @model_validator(mode="after")
    def _source_fits_type(self) -> Pipeline:
        allowed = SOURCES_BY_TYPE[self.type]
        if self.source_type not in allowed:
            raise ValueError(f"source_type {self.source_type!r} does not fit type {self.type!r}; "
                             f"expected one of {sorted(allowed)}")
        if self.type == "polling" and self.interval_seconds is None:
            raise ValueError("interval_seconds is required for a polling pipeline")
        return self
