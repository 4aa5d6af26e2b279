"""Sinks by `sink_type`: each builds the request for a list of rows (see
`agents.deliver.sinks.base`)."""

from __future__ import annotations

from agents.deliver.sinks.base import Attempt, Build, SinkRequest, answered, not_answered, start
from agents.deliver.sinks.http_api import http_api_request
from agents.deliver.sinks.webhook import webhook_request

SINKS: dict[str, Build] = {"webhook": webhook_request, "http_api": http_api_request}

__all__ = ["SINKS", "Attempt", "Build", "SinkRequest", "answered", "not_answered", "start"]
