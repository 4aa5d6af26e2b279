"""The poll source contract, and the request/pagination loop the HTTP sources share.

A source turns a pipeline's typed source config and its stored incremental cursor into the
response pages of one poll. The session is always the caller's. Every failure the API or the
network causes is a `SourceError` (retriable; `retry_after` when the server said when); a
config the source cannot follow is a `ConfigError`. No error message ever holds a secret.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any, NamedTuple, Protocol

import aiohttp
import orjson
from multidict import CIMultiDict
from yarl import URL

from agents.ingest.sources.pages import NOTHING, Pager, PageShapeError, with_value
from dashpipe import egress, jsonio
from dashpipe.errors import ConfigError, DashpipeError
from dashpipe.http import request_headers, retry_after
from schemas.jsonpath import MISSING, JsonPath, compile_path
from schemas.pipeline import MASK, SECRET_HEADER_WORDS

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Page:
    body: bytes  # response body exactly as received
    status: int
    url: str  # the URL fetched (with its query string)
    content_type: str
    # the response headers (a copy): header_link and header_cursor pagination read them
    headers: CIMultiDict[str] = field(default_factory=CIMultiDict, hash=False)


@dataclass(frozen=True)
class FetchResult:
    pages: list[Page]
    cursor: Any  # incremental cursor to store for the next poll (the old one when nothing new)


class SourceError(DashpipeError):
    """The API could not be read this time; `retry_after` (seconds) when the server said so."""

    retriable = True

    def __init__(self, message: str, *, retry_after: float | None = None,
                 status: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.retry_after = retry_after
        self.status = status


class Source(Protocol):
    async def fetch(self, config: Any, cursor: Any,
                    session: aiohttp.ClientSession) -> FetchResult: ...


class PageRequest(NamedTuple):
    """What one page request sends, besides the URL, headers and auth."""

    method: str
    params: dict[str, str] | None
    json: Any  # NO_BODY for none


NO_BODY: Any = object()
Build = Callable[[dict[str, Any], bool], PageRequest]
"""`build(carried, following_link)`: the request for a page; `carried` maps the incremental
cursor and the page params (cursor, offset, page, limit) to their values, as query params
or variables; `following_link` is true once the URL is a link the server gave."""
Check = Callable[[Any], None]
"""Raises `SourceError` when a parsed answer reports a failure (GraphQL `errors`)."""


async def fetch_pages(config: Any, cursor: Any, session: aiohttp.ClientSession,
                      build: Build, check: Check | None = None) -> FetchResult:
    """One poll: the first request carries the incremental cursor, pages are followed as the
    pagination says (`pages.Pager`), and the new cursor is read from the last page that has
    one."""
    try:
        return await _fetch_pages(config, cursor, session, build, check)
    except SourceError as exc:
        clean = scrub(exc.message, secrets(config))
        if clean == exc.message:
            raise
        raise SourceError(clean, retry_after=exc.retry_after, status=exc.status) from None


async def _fetch_pages(config: Any, cursor: Any, session: aiohttp.ClientSession,
                       build: Build, check: Check | None) -> FetchResult:
    incremental = config.cursor
    cursor_path = _path(incremental.path, "cursor.path") if incremental else None
    carried: dict[str, Any] = {}
    start = cursor if cursor is not None or incremental is None else incremental.initial
    if incremental is not None and start is not None:
        carried[incremental.param] = start
    headers = request_headers(config)
    timeout = aiohttp.ClientTimeout(total=config.timeout_seconds)
    pager = Pager(config.pagination, URL(config.url))
    new_cursor = cursor
    pages: list[Page] = []
    while True:
        request = build(carried | pager.params, pager.following_link)
        if pager.body_keys is not None and pager.body_value is not NOTHING:
            request = request._replace(json=with_value(request.json, pager.body_keys,
                                                       pager.body_value))
        page = await fetch_page(session, request, pager.url, headers, timeout)
        doc = parse_json(page.body)
        if check is not None:
            check(doc)
        pages.append(page)
        if cursor_path is not None:
            value = cursor_path.get(doc)
            if value is not MISSING and value is not None:
                new_cursor = value
        try:
            if not pager.advance(doc, page.url, page.headers):
                break
        except PageShapeError as exc:
            raise SourceError(str(exc)) from None
    return FetchResult(pages=pages, cursor=new_cursor)


async def fetch_page(session: aiohttp.ClientSession, request: PageRequest, url: URL,
                     headers: CIMultiDict[str], timeout: aiohttp.ClientTimeout) -> Page:
    """One request; a 2xx answer becomes a `Page` with its body untouched."""
    options: dict[str, Any] = {"headers": headers, "timeout": timeout}
    if request.params:
        options["params"] = request.params
    if request.json is not NO_BODY:
        options["data"] = orjson.dumps(request.json)
        options["headers"] = with_json = CIMultiDict(headers)
        with_json.setdefault("Content-Type", "application/json")
    started = time.monotonic()
    try:
        async with session.request(request.method, url, **options) as resp:
            body = await resp.read()
            status = resp.status
            answered = str(resp.url)
            content_type = resp.headers.get("Content-Type", "application/octet-stream")
            answer_headers = CIMultiDict(resp.headers)
            after = resp.headers.get("Retry-After") if status in (429, 503) else None
    except TimeoutError:
        raise SourceError(f"timeout after {timeout.total:g}s") from None
    except aiohttp.ClientError as exc:
        raise SourceError(f"connection failed: {_reason(exc)}") from None
    log.debug("%s %s%s -> %d, %d bytes in %.3fs", request.method, url.origin(), url.path,
              status, len(body), time.monotonic() - started)
    if not 200 <= status < 300:
        raise SourceError(f"HTTP {status}", status=status, retry_after=retry_after(after))
    return Page(body=body, status=status, url=answered, content_type=content_type,
                headers=answer_headers)


def parse_json(body: bytes) -> Any:
    """The parsed body; else a `SourceError` naming where the JSON broke."""
    try:
        return jsonio.loads(body)
    except jsonio.InvalidJson as exc:
        raise SourceError(str(exc)) from None


def query_value(value: Any) -> str:
    """A param value as query text: booleans as `true`/`false`, structures as JSON."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str | int | float):
        return str(value)
    return orjson.dumps(value).decode()


def secrets(config: Any) -> list[str]:
    """Every secret the config holds: token, key, password, credential-like header values."""
    found = [getattr(config, name, None) for name in ("token", "api_key", "password")]
    found += [v for k, v in config.headers.items()
              if any(word in k.lower() for word in SECRET_HEADER_WORDS)]
    return [s for s in found if isinstance(s, str) and len(s) >= 3]


def scrub(message: str, values: list[str]) -> str:
    for value in sorted(values, key=len, reverse=True):
        message = message.replace(value, MASK)
    return message


@lru_cache(maxsize=512)
def _compiled(path: str) -> JsonPath:
    return compile_path(path)


def _path(path: str, field: str) -> JsonPath:
    try:
        return _compiled(path)
    except ValueError as exc:
        raise ConfigError(f"source_config.{field}: {exc}") from None


def _reason(exc: aiohttp.ClientError) -> str:
    """A short reason that never repeats the URL (its query may hold a key)."""
    refused = egress.explain(exc)
    if refused is not None:
        return refused
    if isinstance(exc, aiohttp.ClientConnectorError):
        os_error = exc.os_error
        why = os_error.strerror or type(os_error).__name__
        return f"{exc.host}:{exc.port}: {why}"
    if isinstance(exc, aiohttp.ServerDisconnectedError):
        return "server disconnected"
    return type(exc).__name__
