"""HTTP helpers every role shares: JSON answers of our servers, and what our clients send
and read (auth headers from a typed config, `Retry-After`)."""

from __future__ import annotations

import base64
import math
import time
from collections.abc import Awaitable, Callable
from datetime import UTC
from email.utils import parsedate_to_datetime
from typing import Any

import orjson
from aiohttp import web
from multidict import CIMultiDict

from dashpipe.metrics import CONTENT_TYPE, Metrics


def json_response(data: Any, status: int = 200, headers: dict[str, str] | None = None
                  ) -> web.Response:
    return web.Response(body=orjson.dumps(data), status=status, headers=headers,
                        content_type="application/json")


def error(status: int, message: str, headers: dict[str, str] | None = None,
          **extra: Any) -> web.Response:
    return json_response({"error": message, **extra}, status, headers)


def retry_after(value: str | None) -> float | None:
    """Seconds to wait from a `Retry-After` value: delta-seconds or an HTTP-date."""
    if not value:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
        if when.tzinfo is None:  # "-0000": UTC by RFC 5322
            when = when.replace(tzinfo=UTC)
        seconds = when.timestamp() - time.time()
    return max(0.0, seconds) if math.isfinite(seconds) else None


def request_headers(config: Any) -> CIMultiDict[str]:
    """Config headers, then the auth header (which wins over a config header of the same name);
    an API key sent in the query and an OAuth2 token are the poll source's to add.
    Basic credentials are encoded here as UTF-8 (RFC 7617), as `aiohttp.BasicAuth` would for
    ASCII; its `auth=` parameter is deprecated in aiohttp 3.14."""
    headers: CIMultiDict[str] = CIMultiDict(config.headers)
    if config.auth_type == "bearer":
        headers["Authorization"] = f"Bearer {config.token}"
    elif config.auth_type == "api_key" and getattr(config, "api_key_in", "header") == "header":
        headers[config.api_key_header] = str(config.api_key)
    elif config.auth_type == "basic":
        pair = f"{config.username}:{config.password}".encode()
        headers["Authorization"] = "Basic " + base64.b64encode(pair).decode("ascii")
    return headers


def metrics_handler(metrics: Metrics) -> Callable[[web.Request], Awaitable[web.Response]]:
    """`GET /metrics`: the Prometheus text exposition of the process's `metrics`."""

    async def handle(request: web.Request) -> web.Response:
        body = await metrics.exposition()
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE,
                                                "X-Content-Type-Options": "nosniff"})

    return handle
