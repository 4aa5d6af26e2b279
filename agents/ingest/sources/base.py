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

from agents.ingest.sources.hosts import HostBusy, Hosts
from agents.ingest.sources.oauth2 import TokenError, Tokens
from agents.ingest.sources.pages import NOTHING, Pager, PageShapeError, with_value
from dashpipe import egress, jsonio
from dashpipe.errors import ConfigError, DashpipeError
from dashpipe.http import request_headers, retry_after
from schemas.jsonpath import MISSING, JsonPath, compile_path
from schemas.pipeline import MASK, SECRET_HEADER_WORDS

log = logging.getLogger(__name__)

# what a poll process shares between its pipelines: OAuth2 tokens by client, request budgets
# by host (see their modules for why per process is correct)
TOKENS = Tokens()
HOSTS = Hosts()
OAUTH2 = "oauth2_client_credentials"


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
        token = TOKENS.current(config) if config.auth_type == OAUTH2 else None
        clean = scrub(exc.message, secrets(config) + ([token] if token else []))
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
    if config.auth_type == OAUTH2:
        headers["Authorization"] = f"Bearer {await _token(config, session)}"
    key_param = config.api_key_param if config.auth_type == "api_key" and \
        config.api_key_in == "query" else None
    refreshed = False
    timeout = aiohttp.ClientTimeout(total=config.timeout_seconds)
    pager = Pager(config.pagination, URL(config.url))
    new_cursor = cursor
    pages: list[Page] = []
    while True:
        request = build(carried | pager.params, pager.following_link)
        if pager.body_keys is not None and pager.body_value is not NOTHING:
            request = request._replace(json=with_value(request.json, pager.body_keys,
                                                       pager.body_value))
        url = pager.url
        if key_param is not None:  # on every request, links the server gives included
            if request.params is not None or not pager.following_link:
                request = request._replace(params={**(request.params or {}),
                                                   key_param: str(config.api_key)})
            else:
                url = url.update_query({key_param: str(config.api_key)})
        try:
            page = await fetch_page(session, request, url, headers, timeout)
        except SourceError as exc:
            if exc.status != 401 or config.auth_type != OAUTH2 or refreshed:
                raise
            refreshed = True  # once per poll: a token the API refuses twice is not the cause
            used = headers["Authorization"].removeprefix("Bearer ")
            headers["Authorization"] = f"Bearer {await _token(config, session, used)}"
            page = await fetch_page(session, request, url, headers, timeout)
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


async def _token(config: Any, session: aiohttp.ClientSession, refused: str | None = None
                 ) -> str:
    try:
        return await TOKENS.token(config, session, refresh=refused)
    except TokenError as exc:
        raise SourceError(str(exc)) from None


async def fetch_page(session: aiohttp.ClientSession, request: PageRequest, url: URL,
                     headers: CIMultiDict[str], timeout: aiohttp.ClientTimeout,
                     hosts: Hosts | None = None) -> Page:
    """One request; a 2xx answer becomes a `Page` with its body untouched. The host's budget
    (`hosts`, else the process's) is waited for first, up to the request's timeout; its
    answer updates it."""
    options: dict[str, Any] = {"headers": headers, "timeout": timeout}
    if request.params:
        options["params"] = request.params
    if request.json is not NO_BODY:
        options["data"] = orjson.dumps(request.json)
        options["headers"] = with_json = CIMultiDict(headers)
        with_json.setdefault("Content-Type", "application/json")
    hosts = HOSTS if hosts is None else hosts
    host = str(url.origin())
    try:
        await hosts.acquire(host, timeout.total or 0)
    except HostBusy as exc:
        raise SourceError(f"{url.host} rate limit: {exc}", retry_after=exc.wait) from None
    started = time.monotonic()
    try:
        async with session.request(request.method, url, **options) as resp:
            body = await resp.read()
            status = resp.status
            answered = str(resp.url)
            content_type = resp.headers.get("Content-Type", "application/octet-stream")
            answer_headers = CIMultiDict(resp.headers)
    except TimeoutError:
        hosts.forget(host)
        raise SourceError(f"timeout after {timeout.total:g}s") from None
    except aiohttp.ClientError as exc:
        hosts.forget(host)
        raise SourceError(f"connection failed: {_reason(exc)}") from None
    except BaseException:  # cancelled (the partition moved): no answer to count
        hosts.forget(host)
        raise
    delay = retry_after(answer_headers.get("Retry-After")) if status in (429, 503) else None
    hosts.release(host, status, answer_headers, delay)
    log.debug("%s %s%s -> %d, %d bytes in %.3fs", request.method, url.origin(), url.path,
              status, len(body), time.monotonic() - started)
    if not 200 <= status < 300:
        raise SourceError(f"HTTP {status}", status=status, retry_after=delay)
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
    found = [getattr(config, name, None)
             for name in ("token", "api_key", "password", "client_secret")]
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
