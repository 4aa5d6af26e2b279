"""`http_api` sink: the row (or `body_template` filled from it) to an HTTP API, with the same
auth options as poll sources; batched sinks send a JSON array. `Idempotency-Key` carries the
stable message id."""

from __future__ import annotations

from typing import Any

import orjson

from agents.deliver.sinks.base import SinkRequest
from dashpipe.http import request_headers
from schemas.jsonpath import MISSING, compile_path
from schemas.pipeline import HttpApiSink


def fill(template: Any, row: dict[str, Any]) -> Any:
    """The template with every string `{{path}}` replaced by the row's value there (null when
    absent); other values as they are."""
    if isinstance(template, str) and template.startswith("{{") and template.endswith("}}"):
        value = compile_path(template[2:-2].strip()).get(row)
        return None if value is MISSING else value
    if isinstance(template, dict):
        return {k: fill(v, row) for k, v in template.items()}
    if isinstance(template, list):
        return [fill(v, row) for v in template]
    return template


def http_api_request(config: HttpApiSink, rows: list[dict[str, Any]], msg_id: str,
                     now: int, body: bytes | None = None) -> SinkRequest:
    items = [row if config.body_template is None else fill(config.body_template, row)
             for row in rows]
    if body is None or config.body_template is not None or config.batching.max_rows > 1:
        body = orjson.dumps(items if config.batching.max_rows > 1 else items[0])
    headers = dict(request_headers(config))
    headers.update({"Content-Type": "application/json", "User-Agent": "dashpipe",
                    "Idempotency-Key": msg_id})
    return SinkRequest(config.method, config.url, headers, body)
