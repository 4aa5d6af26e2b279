"""Poll a GraphQL API: POST `{"query", "variables"}`; an `errors` answer is a failure."""

from __future__ import annotations

from typing import Any

import aiohttp

from agents.ingest.sources.base import FetchResult, PageRequest, SourceError, fetch_pages
from schemas.pipeline import GraphQLSource

MAX_MESSAGE = 300


class GraphQL:
    """`config.variables` plus the carried cursors as variables of every request."""

    async def fetch(self, config: GraphQLSource, cursor: Any,
                    session: aiohttp.ClientSession) -> FetchResult:
        def build(carried: dict[str, Any], following_link: bool) -> PageRequest:
            variables = config.variables | carried
            return PageRequest("POST", None, {"query": config.query, "variables": variables})

        return await fetch_pages(config, cursor, session, build, check_errors)


def check_errors(answer: Any) -> None:
    """Raise on a non-empty `errors` array, with the first error's message."""
    errors = answer.get("errors") if isinstance(answer, dict) else None
    if not errors:
        return
    first = errors[0] if isinstance(errors, list) else errors
    message = first.get("message") if isinstance(first, dict) else first
    text = message if isinstance(message, str) else "unknown error"
    if len(text) > MAX_MESSAGE:
        text = text[:MAX_MESSAGE] + "..."
    raise SourceError(f"GraphQL error: {text}")
