"""Poll a JSON HTTP API: method, query params, optional JSON body, auth, pagination."""

from __future__ import annotations

from typing import Any

import aiohttp

from agents.ingest.sources.base import NO_BODY, FetchResult, PageRequest, fetch_pages, query_value
from schemas.pipeline import HttpApiSource


class HttpApi:
    """`config.params` plus the carried cursors as query params on every request (a
    `body_path` pagination sets its value in the body instead: `base.fetch_pages`); once a
    link pagination gives the URL (`link`, `header_link`, `auto`), the link is fetched as it
    is (its query is the server's)."""

    async def fetch(self, config: HttpApiSource, cursor: Any,
                    session: aiohttp.ClientSession) -> FetchResult:
        body = NO_BODY if config.body is None else config.body

        def build(carried: dict[str, Any], following_link: bool) -> PageRequest:
            if following_link:
                return PageRequest(config.method, None, body)
            params = {k: query_value(v) for k, v in (config.params | carried).items()}
            return PageRequest(config.method, params, body)

        return await fetch_pages(config, cursor, session, build)
