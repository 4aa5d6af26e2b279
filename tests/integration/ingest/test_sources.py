"""Poll sources against a real local aiohttp server (no Kafka, no database)."""

from __future__ import annotations

import asyncio
import base64
import socket
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from typing import Any

import aiohttp
import orjson
import pytest
from aiohttp import web

from agents.ingest.sources import SOURCES, SourceError
from agents.ingest.sources.base import FetchResult
from schemas.pipeline import GraphQLSource, HttpApiSource

TOKEN = "tok-S3CRET-value"
API_KEY = "key-S3CRET-value"
PASSWORD = "pw-S3CRET-value"
ITEMS = list(range(1, 8))  # the API's records, ids 1..7, 3 per page


@dataclass
class Api:
    """A small API that records what it was asked."""

    base: str = ""
    seen: list[web.Request] = field(default_factory=list)
    graphql_variables: list[dict[str, Any]] = field(default_factory=list)
    never: asyncio.Event = field(default_factory=asyncio.Event)

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/echo", self.echo)
        app.router.add_get("/items", self.items)
        app.router.add_get("/linked/{n}", self.linked)
        app.router.add_get("/status/{code}", self.status)
        app.router.add_get("/bad-json", self.bad_json)
        app.router.add_get("/hang", self.hang)
        app.router.add_post("/graphql", self.graphql)
        return app

    async def echo(self, request: web.Request) -> web.Response:
        self.seen.append(request)
        return web.json_response({"headers": dict(request.headers), "query": dict(request.query)})

    async def items(self, request: web.Request) -> web.Response:
        """Records with id > `since`, 3 per page, `page_token` = the offset of the next page."""
        self.seen.append(request)
        since = int(request.query.get("since", "0"))
        offset = int(request.query.get("page_token", "0"))
        newer = [i for i in ITEMS if i > since]
        page = newer[offset:offset + 3]
        more = offset + 3 < len(newer)
        body = {"items": [{"id": i} for i in page],
                "meta": {"next": str(offset + 3) if more else None,
                         "latest": page[-1] if page else None}}
        return web.Response(body=orjson.dumps(body, option=orjson.OPT_INDENT_2),
                            content_type="application/json")

    async def linked(self, request: web.Request) -> web.Response:
        """Page 1 links to page 2 relatively, page 2 to page 3 absolutely, 3 is the last."""
        self.seen.append(request)
        n = int(request.match_info["n"])
        nxt = {1: "2?x=1", 2: f"{self.base}/linked/3", 3: None}.get(n)
        return web.json_response({"page": n, "links": {"next": nxt}})

    async def status(self, request: web.Request) -> web.Response:
        self.seen.append(request)
        headers = {"Retry-After": request.query["retry"]} if "retry" in request.query else {}
        return web.json_response({"error": "no"}, status=int(request.match_info["code"]),
                                 headers=headers)

    async def bad_json(self, request: web.Request) -> web.Response:
        return web.Response(body=b'{"a": 1,\n "b": x}', content_type="application/json")

    async def hang(self, request: web.Request) -> web.Response:
        await self.never.wait()
        return web.json_response({})

    async def graphql(self, request: web.Request) -> web.Response:
        self.seen.append(request)
        payload = await request.json()
        variables = payload["variables"]
        self.graphql_variables.append(variables)
        if "broken" in payload["query"]:
            return web.json_response({"data": None, "errors": [
                {"message": f"Cannot query field 'broken' ({request.headers['Authorization']})"},
                {"message": "second"}]})
        after = int(variables.get("after") or 0)
        page = ITEMS[after:after + 3]
        end = after + 3 >= len(ITEMS)
        return web.json_response({"data": {"items": {
            "nodes": page, "pageInfo": {"endCursor": None if end else str(after + 3)}}}})


@pytest.fixture
async def api() -> AsyncIterator[Api]:
    state = Api()
    runner = web.AppRunner(state.app(), shutdown_timeout=0.1, handler_cancellation=True)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    state.base = f"http://127.0.0.1:{port}"
    yield state
    await runner.cleanup()


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as s:
        yield s


async def http(config: dict[str, Any], session: aiohttp.ClientSession,
               cursor: Any = None) -> FetchResult:
    return await SOURCES["http_api"].fetch(HttpApiSource(**config), cursor, session)


async def graphql(config: dict[str, Any], session: aiohttp.ClientSession,
                  cursor: Any = None) -> FetchResult:
    return await SOURCES["graphql"].fetch(GraphQLSource(**config), cursor, session)


async def test_bearer_api_key_and_basic_headers(api: Api,
                                                session: aiohttp.ClientSession) -> None:
    url = f"{api.base}/echo"
    await http({"url": url, "auth_type": "bearer", "token": TOKEN,
                "headers": {"X-Team": "t1"}}, session)
    await http({"url": url, "auth_type": "api_key", "api_key": API_KEY,
                "api_key_header": "X-Api-Token"}, session)
    await http({"url": url, "auth_type": "basic", "username": "ann", "password": PASSWORD},
               session)
    bearer, key, basic = (r.headers for r in api.seen)
    assert bearer["Authorization"] == f"Bearer {TOKEN}"
    assert bearer["X-Team"] == "t1"
    assert key["X-Api-Token"] == API_KEY
    assert "Authorization" not in key
    assert basic["Authorization"] == "Basic " + base64.b64encode(
        f"ann:{PASSWORD}".encode()).decode()


async def test_one_page_is_kept_as_received(api: Api, session: aiohttp.ClientSession) -> None:
    result = await http({"url": f"{api.base}/items", "params": {"flag": True, "n": 2}}, session)
    assert len(result.pages) == 1
    page = result.pages[0]
    assert page.status == 200
    assert page.content_type.startswith("application/json")
    assert page.url == f"{api.base}/items?flag=true&n=2"
    assert b"\n  " in page.body  # the server's indentation is untouched
    assert orjson.loads(page.body)["meta"]["next"] == "3"
    assert result.cursor is None


async def test_cursor_pagination_follows_until_the_end(api: Api,
                                                       session: aiohttp.ClientSession) -> None:
    pagination = {"type": "cursor", "next_path": "$.meta.next", "param": "page_token"}
    result = await http({"url": f"{api.base}/items", "pagination": pagination}, session)
    ids = [[i["id"] for i in orjson.loads(p.body)["items"]] for p in result.pages]
    assert ids == [[1, 2, 3], [4, 5, 6], [7]]
    assert [r.query.get("page_token") for r in api.seen] == [None, "3", "6"]
    assert result.pages[1].url.endswith("/items?page_token=3")


async def test_cursor_pagination_stops_at_max_pages(api: Api,
                                                    session: aiohttp.ClientSession) -> None:
    pagination = {"next_path": "meta.next", "param": "page_token", "max_pages": 2}
    result = await http({"url": f"{api.base}/items", "pagination": pagination}, session)
    assert len(result.pages) == 2
    assert len(api.seen) == 2


async def test_link_pagination_relative_and_absolute(api: Api,
                                                     session: aiohttp.ClientSession) -> None:
    pagination = {"type": "link", "next_path": "links.next"}
    result = await http({"url": f"{api.base}/linked/1", "pagination": pagination}, session)
    assert [orjson.loads(p.body)["page"] for p in result.pages] == [1, 2, 3]
    assert [p.url for p in result.pages] == [
        f"{api.base}/linked/1", f"{api.base}/linked/2?x=1", f"{api.base}/linked/3"]

    api.seen.clear()
    capped = await http({"url": f"{api.base}/linked/1",
                         "pagination": {**pagination, "max_pages": 2}}, session)
    assert len(capped.pages) == 2
    assert len(api.seen) == 2


async def test_incremental_cursor_across_two_polls(api: Api,
                                                   session: aiohttp.ClientSession) -> None:
    config = {"url": f"{api.base}/items", "params": {"limit": 3},
              "pagination": {"next_path": "meta.next", "param": "page_token", "max_pages": 1},
              "cursor": {"path": "meta.latest", "param": "since", "initial": 0}}
    first = await http(config, session, cursor=None)
    assert first.cursor == 3
    second = await http(config, session, cursor=first.cursor)
    assert second.cursor == 6
    assert [dict(r.query) for r in api.seen] == [
        {"limit": "3", "since": "0"}, {"limit": "3", "since": "3"}]
    assert [i["id"] for i in orjson.loads(second.pages[0].body)["items"]] == [4, 5, 6]

    caught_up = await http(config, session, cursor=7)  # nothing newer: the cursor stays
    assert caught_up.cursor == 7


async def test_incremental_cursor_is_read_from_the_last_page(
        api: Api, session: aiohttp.ClientSession) -> None:
    config = {"url": f"{api.base}/items",
              "pagination": {"next_path": "meta.next", "param": "page_token"},
              "cursor": {"path": "meta.latest", "param": "since"}}
    result = await http(config, session, cursor=None)
    assert result.cursor == 7
    assert "since" not in api.seen[0].query  # no stored cursor, no initial: nothing sent
    assert [r.query.get("since") for r in api.seen] == [None, None, None]


async def test_without_a_cursor_config_the_cursor_is_unchanged(
        api: Api, session: aiohttp.ClientSession) -> None:
    result = await http({"url": f"{api.base}/echo"}, session, cursor={"kept": 1})
    assert result.cursor == {"kept": 1}
    assert dict(api.seen[0].query) == {}


async def test_non_2xx_is_an_http_error(api: Api, session: aiohttp.ClientSession) -> None:
    with pytest.raises(SourceError) as info:
        await http({"url": f"{api.base}/status/500"}, session)
    assert str(info.value) == "HTTP 500"
    assert info.value.status == 500
    assert info.value.retry_after is None
    assert info.value.retriable


async def test_429_carries_retry_after_seconds(api: Api,
                                               session: aiohttp.ClientSession) -> None:
    with pytest.raises(SourceError) as info:
        await http({"url": f"{api.base}/status/429", "params": {"retry": "7"}}, session)
    assert str(info.value) == "HTTP 429"
    assert info.value.retry_after == 7


async def test_503_carries_retry_after_http_date(api: Api,
                                                 session: aiohttp.ClientSession) -> None:
    when = format_datetime(datetime.now(UTC) + timedelta(seconds=30), usegmt=True)
    with pytest.raises(SourceError) as info:
        await http({"url": f"{api.base}/status/503", "params": {"retry": when}}, session)
    assert info.value.status == 503
    assert info.value.retry_after is not None
    assert 25 <= info.value.retry_after <= 31


async def test_invalid_json_names_the_position(api: Api,
                                               session: aiohttp.ClientSession) -> None:
    with pytest.raises(SourceError, match=r"^invalid JSON at line 2 column 7 \(char 15\)$"):
        await http({"url": f"{api.base}/bad-json"}, session)


async def test_timeout(api: Api, session: aiohttp.ClientSession) -> None:
    with pytest.raises(SourceError, match=r"^timeout after 0.2s$"):
        await http({"url": f"{api.base}/hang", "timeout_seconds": 0.2}, session)


async def test_connection_failure(session: aiohttp.ClientSession) -> None:
    with socket.socket() as s:  # a port that was free a moment ago: nothing listens there
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(SourceError, match=r"^connection failed: ") as info:
        await http({"url": f"http://127.0.0.1:{port}/x", "auth_type": "bearer",
                    "token": TOKEN, "params": {"k": TOKEN}}, session)
    assert TOKEN not in str(info.value)


async def test_graphql_posts_query_and_follows_cursor(api: Api,
                                                      session: aiohttp.ClientSession) -> None:
    config = {"url": f"{api.base}/graphql", "query": "query($after: String) { items }",
              "variables": {"first": 3}, "auth_type": "bearer", "token": TOKEN,
              "pagination": {"next_path": "data.items.pageInfo.endCursor", "param": "after"},
              "cursor": {"path": "data.items.nodes[-1]", "param": "since", "initial": "0"}}
    result = await graphql(config, session)
    nodes = [orjson.loads(p.body)["data"]["items"]["nodes"] for p in result.pages]
    assert nodes == [[1, 2, 3], [4, 5, 6], [7]]
    assert api.graphql_variables == [{"first": 3, "since": "0"},
                                     {"first": 3, "since": "0", "after": "3"},
                                     {"first": 3, "since": "0", "after": "6"}]
    assert result.cursor == 7
    assert all(r.method == "POST" for r in api.seen)
    assert api.seen[0].headers["Authorization"] == f"Bearer {TOKEN}"


async def test_graphql_errors_array_is_an_error_without_the_secret(
        api: Api, session: aiohttp.ClientSession) -> None:
    config = {"url": f"{api.base}/graphql", "query": "{ broken }",
              "auth_type": "bearer", "token": TOKEN}
    with pytest.raises(SourceError) as info:
        await graphql(config, session)
    message = str(info.value)
    assert message.startswith("GraphQL error: Cannot query field 'broken' (Bearer ***)")
    assert TOKEN not in message
    assert all(TOKEN not in repr(arg) for arg in info.value.args)
    assert info.value.__cause__ is None


async def test_secrets_never_in_error_text(api: Api, session: aiohttp.ClientSession) -> None:
    auths: list[dict[str, Any]] = [
        {"auth_type": "bearer", "token": TOKEN},
        {"auth_type": "api_key", "api_key": API_KEY},
        {"auth_type": "basic", "username": "ann", "password": PASSWORD},
        {"headers": {"Authorization": f"Token {TOKEN}"}},
    ]
    for auth in auths:
        for path, extra in (("/status/401", {}), ("/bad-json", {}),
                            ("/hang", {"timeout_seconds": 0.1})):
            with pytest.raises(SourceError) as info:
                await http({"url": f"{api.base}{path}", **auth, **extra}, session)
            text = f"{info.value} {info.value!r}"
            for secret in (TOKEN, API_KEY, PASSWORD):
                assert secret not in text
