"""Poll sources by `source_type`: each turns a typed source config and a stored cursor into
the response pages of one poll (see `agents.ingest.sources.base` for the contract)."""

from __future__ import annotations

from agents.ingest.sources.base import FetchResult, Page, Source, SourceError
from agents.ingest.sources.graphql import GraphQL
from agents.ingest.sources.http_api import HttpApi

SOURCES: dict[str, Source] = {"http_api": HttpApi(), "graphql": GraphQL()}

__all__ = ["SOURCES", "FetchResult", "Page", "Source", "SourceError"]
