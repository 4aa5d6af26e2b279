"""What the HTTP API (role `web`) answers, as models: the source of the OpenAPI document's
schemas (schemas/openapi.py). The handlers build these answers as dicts; the schemathesis
test checks every answer against the document."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from schemas.pipeline import Pipeline, SinkSpec
from schemas.records import Lineage


class Error(BaseModel):
    """Every error: a message that says what is wrong (never a secret or a stack trace)."""

    error: str


class FieldError(BaseModel):
    loc: str = Field(description="the dotted path of the field (`source_config.url`); empty "
                     "for the whole body")
    msg: str


class InvalidPipeline(Error):
    """422: every problem of a definition, each at its field's path."""

    errors: list[FieldError]


class SinkDelivery(BaseModel):
    """A sink's delivery counts, summed over the deliver processes, and its latest error."""

    delivered: int = Field(ge=0)
    retrying: int = Field(ge=0)
    dead: int = Field(ge=0)
    last_error: str | None
    last_error_at: datetime | None
    last_attempt_at: datetime | None = Field(default=None, description="the latest report "
                                             "of a deliver process")


class SinkView(SinkSpec):
    status: SinkDelivery = Field(description="read-only; ignored when sent back")


class PipelineView(Pipeline):
    """A definition as the API answers it: secrets masked (`***`; sent back, a masked value
    keeps the stored secret), plus the runtime status (read-only, ignored when sent back)."""

    status: Literal["active", "paused", "error"] = Field(  # type: ignore[assignment]
        default="active", description="what the owner asked for, or `error` when the "
        "poller reports one")
    sinks: list[SinkView] = Field(default_factory=list)  # type: ignore[assignment]
    error_message: str | None = None
    last_run_at: datetime | None = None
    next_due_at: datetime | None = None
    cursor: Any = Field(default=None, description="the poll cursor (incremental polls)")
    dead_letters: dict[str, int] = Field(default_factory=dict, description="unresolved dead "
                                         "letters per stage (stages with none left out)")


class PipelineList(BaseModel):
    pipelines: list[PipelineView]


class Row(BaseModel):
    """A transformed row (schemas/transformed-record.schema.json) with its stream position
    as `id`, which resumes `/events` (`Last-Event-ID`) and `/ws` (`?resume=`) right after it."""

    model_config = ConfigDict(extra="allow")

    id: str
    pipeline_id: str
    time: datetime
    fields: dict[str, Any]
    lineage: Lineage


class RecentRows(BaseModel):
    rows: list[Row]


class History(BaseModel):
    """Stored rows bucketed in time: one point per bucket with a value per field."""

    pipeline_id: str
    from_: datetime = Field(alias="from")
    to: datetime
    bucket_seconds: float
    agg: Literal["avg", "min", "max", "count", "last"]
    fields: list[str]
    source: Literal["rollup", "rows"] = Field(description="per-minute rollups or the rows")
    points: list[dict[str, Any]] = Field(description='`{"time": ..., "<field>": ...}`')


class ReplayRequest(BaseModel):
    from_: str | int = Field(alias="from", description="an RFC 3339 time or a raw offset")
    to: str | int | None = None
    dry_run: bool = Field(default=False, description="answer the diff, write nothing")
    mapping: dict[str, Any] | None = Field(default=None, description="a candidate mapping "
                                           "(schemas/mapping.schema.json); saved by a "
                                           "written replay")
    workers: int = Field(default=1, ge=1, le=8)


class ReplayStarted(BaseModel):
    status: Literal["started"]
    pipeline_id: str
    mapping_version: int


class ReplayProgress(BaseModel):
    """A replay's progress (`running`), or its result once done."""

    model_config = ConfigDict(extra="allow")

    running: bool


class WebhookAccepted(BaseModel):
    status: Literal["received", "duplicate"] = Field(description="duplicate: a delivery id "
                                                     "this process accepted already")
    pipeline_id: str
    ingest_id: str | None = Field(default=None, description="the delivery id, else one made "
                                  "here (received only)")


class SlackChallenge(BaseModel):
    challenge: str


class Health(BaseModel):
    status: Literal["ok"]


class Ready(BaseModel):
    status: Literal["ready"]
    pipelines: int = Field(ge=0)
    storage: str


class DeadLetterList(BaseModel):
    """A pipeline's unresolved dead letters, oldest first (as `dashpipe dlq list --json`)."""

    pipeline_id: str
    total: int = Field(ge=0)
    by_stage: dict[str, int]
    dead_letters: list[dict[str, Any]]


class RedriveRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    stage: Literal["map", "persist", "deliver"] | None = None
    positions: list[Annotated[str, Field(pattern=r"^\d{1,9}:\d{1,19}$")]] | None = Field(
        default=None, min_length=1, max_length=1000, description="dead-letter positions "
        "`PARTITION:OFFSET`; absent: all (of `stage`)")


class RedriveReport(BaseModel):
    pipeline_id: str
    total: int = Field(ge=0)
    redriven: int = Field(ge=0)
    still_failing: int = Field(ge=0)
    marker: str | None
    outcomes: list[dict[str, Any]]


class Lag(BaseModel):
    """Per consumer group of this deployment: how far it is behind on the pipeline's
    partitions."""

    pipeline_id: str
    groups: list[dict[str, Any]]


class Version(BaseModel):
    version: str
    python: str
    kafka_client: str
