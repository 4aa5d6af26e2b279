"""The records on dashpipe's topics. Other services read these; change them only additively.

Bronze (`<prefix>.raw`): the value is the payload exactly as received; `RawMetadata` travels
in Kafka headers (see `RawMetadata.to_headers`). Silver (`<prefix>.transformed`): the value is a
`TransformedRecord` as JSON. Dead letters (`<prefix>.dlq`): the value is a `DeadLetter` as JSON,
or a `DeadLetterResolution` (header `dashpipe-stage: redriven`) marking dead letters resolved.
"""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime
from functools import lru_cache
from typing import Any, Literal

import orjson
from pydantic import BaseModel, ConfigDict, Field, field_validator

from schemas.headers import Header

SCHEMA_VERSION = 1

# field name -> Kafka header name; header values are UTF-8 text.
RAW_HEADERS: dict[str, str] = {
    "pipeline_id": Header.PIPELINE_ID,
    "team_id": Header.TEAM_ID,
    "source": Header.SOURCE,
    "received_at": Header.RECEIVED_AT,
    "ingest_id": Header.INGEST_ID,
    "content_type": "content-type",
    "url": Header.URL,
    "http_status": Header.HTTP_STATUS,
    "schema_version": Header.SCHEMA_VERSION,
    "dedup_id": Header.DEDUP_ID,
    "event": Header.EVENT,
}


class _Record(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class RawMetadata(_Record):
    """Metadata of one Bronze record, carried in Kafka headers beside the untouched payload."""

    model_config = ConfigDict(
        frozen=True, extra="forbid",
        json_schema_extra={"x-kafka-headers": {k: v for k, v in RAW_HEADERS.items()}},
    )

    pipeline_id: str
    team_id: str
    source: Literal["poll", "webhook", "pipeline"]
    received_at: datetime
    ingest_id: str = Field(description="unique per received payload; stable across retries")
    content_type: str = "application/json"
    url: str | None = Field(default=None, description="the polled URL, without credentials")
    http_status: int | None = None
    schema_version: int = SCHEMA_VERSION
    dedup_id: str | None = Field(
        default=None, description="the sender's id of this payload (a Standard Webhooks "
        "webhook-id, a parent row's lineage): a repeat of it for the same pipeline within the "
        "dedup window is kept in Bronze but not mapped again")
    event: str | None = Field(
        default=None, description="the webhook sender's event name: X-GitHub-Event, "
        "X-Shopify-Topic, a Stripe or Slack event type, a Meta object")

    @field_validator("received_at")
    @classmethod
    def _millis(cls, value: datetime) -> datetime:
        """Headers carry milliseconds; keep the model at the same precision."""
        return value.replace(microsecond=value.microsecond // 1000 * 1000)

    def to_headers(self) -> list[tuple[str, bytes]]:
        return raw_headers(self.pipeline_id, self.team_id, self.source,
                           int(self.received_at.timestamp() * 1000), self.ingest_id,
                           self.content_type, self.url, self.http_status, self.dedup_id,
                           self.event)

    @classmethod
    def from_headers(cls, headers: Any) -> RawMetadata:
        by_header = {h: n for n, h in RAW_HEADERS.items()}
        values = {by_header[k]: v.decode() for k, v in headers if k in by_header}
        return cls.model_validate(values)


class Lineage(_Record):
    """Where a row came from: the exact Bronze record and its position inside that payload."""

    raw_partition: int = Field(ge=0)
    raw_offset: int = Field(ge=0)
    row_index: int = Field(ge=0)


class TransformedRecord(_Record):
    """One mapped row on the Silver topic. Key: the mapping's key field, else the pipeline id."""

    pipeline_id: str
    team_id: str
    time: datetime
    key: str | None = None
    fields: dict[str, Any]
    lineage: Lineage
    mapping_version: int = Field(ge=0, description="0 when the pipeline has no mapping")
    ingest_id: str
    schema_version: int = SCHEMA_VERSION


class DeadLetter(_Record):
    """A record a stage could not process, with why, so it can be fixed and redriven."""

    stage: Literal["ingest", "map", "persist", "deliver"]
    reason: str
    pipeline_id: str
    team_id: str | None = None
    lineage: Lineage | None = None
    mapping_version: int | None = None
    sink_index: int | None = Field(default=None, description="deliver: which sink of the pipeline")
    attempts: list[dict[str, Any]] = Field(default_factory=list)
    failed_at: datetime
    record: Any = Field(default=None, description="the failing row or payload, as JSON")
    schema_version: int = SCHEMA_VERSION


class ResolvedLetter(_Record):
    """One dead letter a redrive resolved: its position in the dead-letter topic."""

    partition: int = Field(ge=0)
    offset: int = Field(ge=0)
    stage: Literal["ingest", "map", "persist", "deliver"]
    outcome: str | None = Field(default=None, description="what the redrive did with it")


class DeadLetterResolution(_Record):
    """A marker in the dead-letter topic (key = pipeline id, header `dashpipe-stage: redriven`):
    the dead letters it lists were redriven and no longer count. The topic stays append-only."""

    pipeline_id: str
    resolved: list[ResolvedLetter]
    redriven_at: datetime
    schema_version: int = SCHEMA_VERSION


def dead_letter(stage: str, reason: str, pipeline_id: str, team_id: str, lineage: Any,
                mapping_version: int | None, record: Any, *, sink_index: int | None = None,
                attempts: list[dict[str, Any]] | None = None
                ) -> tuple[bytes, bytes, list[tuple[str, bytes]]]:
    """Key, value and headers of a `DeadLetter` record (every stage writes them this way)."""
    value = orjson.dumps({
        "stage": stage, "reason": reason, "pipeline_id": pipeline_id, "team_id": team_id,
        "lineage": lineage, "mapping_version": mapping_version, "sink_index": sink_index,
        "attempts": attempts or [], "failed_at": now(), "record": record,
        "schema_version": SCHEMA_VERSION}, option=orjson.OPT_UTC_Z, default=str)
    key = pipeline_id.encode()
    return key, value, [(Header.PIPELINE_ID, key), (Header.TEAM_ID, team_id.encode()),
                        (Header.STAGE, stage.encode())]


def raw_headers(pipeline_id: str, team_id: str, source: str, received_ms: int, ingest_id: str,
                content_type: str = "application/json", url: str | None = None,
                http_status: int | None = None, dedup_id: str | None = None,
                event: str | None = None) -> list[tuple[str, bytes]]:
    """The Kafka headers of a Bronze record (what `RawMetadata.to_headers` gives), built
    without a model: this runs once per received payload."""
    seconds, millis = divmod(received_ms, 1000)
    out = [
        (Header.PIPELINE_ID, pipeline_id.encode()),
        (Header.TEAM_ID, team_id.encode()),
        (Header.SOURCE, source.encode()),
        (Header.RECEIVED_AT, b"%s.%03dZ" % (_iso_second(seconds), millis)),
        (Header.INGEST_ID, ingest_id.encode()),
        (Header.CONTENT_TYPE, content_type.encode()),
    ]
    if url is not None:
        out.append((Header.URL, url.encode()))
    if http_status is not None:
        out.append((Header.HTTP_STATUS, str(http_status).encode()))
    if dedup_id is not None:
        out.append((Header.DEDUP_ID, dedup_id.encode()))
    if event is not None:
        out.append((Header.EVENT, event.encode()))
    out.append(_SCHEMA_VERSION_HEADER)
    return out


_SCHEMA_VERSION_HEADER = (Header.SCHEMA_VERSION, str(SCHEMA_VERSION).encode())


@lru_cache(maxsize=4)
def _iso_second(seconds: int) -> bytes:
    """`2026-11-29T04:08:16` for unix `seconds`, cached: consecutive records share it."""
    return datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%dT%H:%M:%S").encode()


def message_id(pipeline_id: str, lineage: Any, sink_index: int) -> str:
    """The Standard Webhooks `webhook-id` of a row's delivery to one sink: the same on every
    attempt, restart and replay, so receivers can deduplicate."""
    text = (f"{pipeline_id}:{lineage['raw_partition']}:{lineage['raw_offset']}:"
            f"{lineage['row_index']}:{sink_index}")
    return "msg_" + hashlib.sha256(text.encode()).digest()[:16].hex()


def retry_record(pipeline_id: str, sink_index: int, msg_id: str, rows: list[Any],
                 attempts: list[Any], due_at: float) -> bytes:
    """The value of a record in the delivery retry topic (key = pipeline id): a delivery
    that failed, its attempts so far, and when it is due again (unix seconds)."""
    return orjson.dumps({"pipeline_id": pipeline_id, "sink_index": sink_index,
                         "msg_id": msg_id, "rows": rows, "attempts": attempts,
                         "due_at": due_at, "schema_version": SCHEMA_VERSION})


def now() -> datetime:
    return datetime.now(UTC)
