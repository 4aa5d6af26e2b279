"""The Kafka headers dashpipe writes, one constant each, and the readers. Header values are
UTF-8 text. Bronze records carry the `RawMetadata` set; transformed records, dead letters and
retries carry at least the pipeline id (first, so readers find it at once)."""

from __future__ import annotations

from typing import Any


class Header:
    PIPELINE_ID = "dashpipe-pipeline-id"
    TEAM_ID = "dashpipe-team-id"
    SOURCE = "dashpipe-source"  # poll | webhook | pipeline
    RECEIVED_AT = "dashpipe-received-at"
    INGEST_ID = "dashpipe-ingest-id"
    # the sender's id of a payload (a webhook-id, a parent row's lineage): the map role skips a
    # repeat of it within the dedup window
    DEDUP_ID = "dashpipe-dedup-id"
    # the sender's name of the event a webhook reports (X-GitHub-Event, a Stripe event type, ...)
    EVENT = "dashpipe-event"
    CONTENT_TYPE = "content-type"
    URL = "dashpipe-url"
    HTTP_STATUS = "dashpipe-http-status"
    SCHEMA_VERSION = "dashpipe-schema-version"
    STAGE = "dashpipe-stage"  # dead letters: the stage that failed, or `redriven`


def pipeline_id_header(headers: Any) -> bytes | None:
    """The raw pipeline-id header of a Kafka record, or None. dashpipe writes it first, so
    the first header is checked before the others (this runs per record)."""
    if headers and headers[0][0] == Header.PIPELINE_ID:
        return headers[0][1]  # type: ignore[no-any-return]
    for key, value in headers or ():
        if key == Header.PIPELINE_ID:
            return value  # type: ignore[no-any-return]
    return None


def header(headers: Any, name: str) -> str | None:
    """The text of header `name` of a Kafka record, or None."""
    for key, value in headers or ():
        if key == name:
            text: str = value.decode("utf-8", "replace")
            return text
    return None
