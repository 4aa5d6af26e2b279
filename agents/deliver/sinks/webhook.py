"""`webhook` sink: POST each row as JSON, signed per Standard Webhooks (`webhook-id` stable per
row and sink, `webhook-timestamp`, `webhook-signature: v1,<base64>`), or the original way
(`x-webhook-signature`: hex HMAC-SHA256 of the body)."""

from __future__ import annotations

from typing import Any

import orjson

from agents.deliver.sinks.base import SinkRequest
from dashpipe.signatures import ORIGINAL_HEADER, sign_original, sign_standard
from schemas.pipeline import WebhookSink

_FIXED: dict[int, tuple[WebhookSink, dict[str, str]]] = {}


def _fixed_headers(config: WebhookSink) -> dict[str, str]:
    """The headers every request of a sink shares, built once per sink config."""
    cached = _FIXED.get(id(config))
    if cached is None or cached[0] is not config:
        if len(_FIXED) > 1000:  # configs replaced over a long run: start over
            _FIXED.clear()
        cached = _FIXED[id(config)] = (config, {**config.headers,
                                                "Content-Type": "application/json",
                                                "User-Agent": "dashpipe"})
    return cached[1]


def webhook_request(config: WebhookSink, rows: list[dict[str, Any]], msg_id: str,
                    now: int, body: bytes | None = None) -> SinkRequest:
    """`body`: the row's JSON as read from the topic, when there is one row (saves a dump)."""
    if body is None or len(rows) != 1:
        body = orjson.dumps(rows[0] if len(rows) == 1 else rows)
    if config.signing == "standard":
        headers = {**_fixed_headers(config), "webhook-id": msg_id, "webhook-timestamp": str(now),
                   "webhook-signature": sign_standard(config.secret, msg_id, now, body)}
    else:
        headers = {**_fixed_headers(config), ORIGINAL_HEADER: sign_original(config.secret, body),
                   "x-webhook-id": msg_id}
    return SinkRequest("POST", config.url, headers, body)
