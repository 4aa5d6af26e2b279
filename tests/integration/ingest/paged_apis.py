"""Fake APIs that page as real providers do, served on loopback, recording every request.

GitHub (a `Link` header), Stripe (`has_more`, `starting_after`), OData (`@odata.nextLink`),
JSON:API (`links.next`, a string or a link object), a GraphQL Relay connection (`pageInfo`),
offset + total, page numbers (a short last page, `total_pages`), a cursor in a response header,
a search API that takes its cursor or offset in the POST body, and `feed`: one growing list
of records served in every style, with the incremental filter `since`.
"""

from __future__ import annotations

import base64
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import orjson
from aiohttp import web

from tests import helpers

ISSUES = [1, 2, 3, 4, 5]  # every fake serves five records


@dataclass(frozen=True)
class Seen:
    """One request as the fake API saw it."""

    method: str
    path: str
    query: dict[str, str]
    body: Any = None  # the parsed JSON body


def get(path: str, **query: Any) -> Seen:
    return Seen("GET", path, {k: str(v) for k, v in query.items()})


def post(path: str, body: Any, **query: Any) -> Seen:
    return Seen("POST", path, {k: str(v) for k, v in query.items()}, body)


@dataclass
class PagedApis:
    base: str = ""
    seen: list[Seen] = field(default_factory=list)
    feed: list[int] = field(default_factory=lambda: list(ISSUES))

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/repos/octo/hello/issues", self.github)
        app.router.add_get("/tricky/{n}", self.tricky)
        app.router.add_get("/v1/customers", self.stripe)
        app.router.add_get("/odata/People", self.odata)
        app.router.add_get("/jsonapi/articles", self.jsonapi)
        app.router.add_post("/graphql", self.relay)
        app.router.add_get("/orders", self.offset)
        app.router.add_get("/products", self.page_number)
        app.router.add_get("/events", self.header_cursor)
        app.router.add_post("/search", self.search)
        app.router.add_get("/feed/{style}", self.feed_page)
        app.router.add_post("/feed/{style}", self.feed_page)
        return app

    async def _record(self, request: web.Request) -> Seen:
        body = await request.json() if request.can_read_body else None
        seen = Seen(request.method, request.path, dict(request.query), body)
        self.seen.append(seen)
        return seen

    async def github(self, request: web.Request) -> web.Response:
        """`per_page` and `page`; `Link: <...>; rel="prev", <...>; rel="next", ...`."""
        q = (await self._record(request)).query
        size, page = int(q.get("per_page", "30")), int(q.get("page", "1"))
        last = max(1, -(-len(ISSUES) // size))
        issues = [{"id": 1000 + n, "number": n, "title": f"Issue {n}", "state": "open"}
                  for n in ISSUES[(page - 1) * size:page * size]]
        url = f"{self.base}/repos/octo/hello/issues?per_page={size}&page="
        rels = [("prev", page - 1), ("next", page + 1), ("last", last), ("first", 1)]
        link = ", ".join(f'<{url}{n}>; rel="{rel}"' for rel, n in rels
                         if (rel in ("prev", "first") and page > 1)
                         or (rel in ("next", "last") and page < last))
        return web.json_response(issues, headers={"Link": link} if link else None)

    async def tricky(self, request: web.Request) -> web.Response:
        """Links as RFC 8288 allows them: relative, several fields, quoted rels with several
        types, params whose quoted values hold commas, semicolons and `rel=next`."""
        await self._record(request)
        n = int(request.match_info["n"])
        resp = web.json_response({"page": n})
        if n == 1:
            resp.headers.add("Link", '<https://docs.example/x>; title="a, <https://evil.example/>'
                                     '; rel=\\"next\\""; rel="help"')
            resp.headers.add("Link", '</tricky/2?x=1>; rel="prefetch NEXT"; type="a;b"')
        elif n == 2:
            resp.headers["Link"] = '<1>; rel=prev, <3>;rel="next last"'
        else:
            resp.headers["Link"] = '<1>; rel="first"'
        return resp

    async def stripe(self, request: web.Request) -> web.Response:
        """Newest first; `limit`, `starting_after`; `{"object": "list", "has_more", "data"}`."""
        q = (await self._record(request)).query
        ids = [f"cus_{n}" for n in reversed(ISSUES)]
        start = ids.index(q["starting_after"]) + 1 if "starting_after" in q else 0
        limit = int(q.get("limit", "10"))
        data = [{"id": i, "object": "customer", "created": 1_700_000_000 + int(i[4:])}
                for i in ids[start:start + limit]]
        return web.json_response({"object": "list", "url": "/v1/customers",
                                  "has_more": start + limit < len(ids), "data": data})

    async def odata(self, request: web.Request) -> web.Response:
        """`$top`, `$skiptoken`; the last page has no `@odata.nextLink`."""
        q = (await self._record(request)).query
        top, skip = int(q.get("$top", "10")), int(q.get("$skiptoken", "0"))
        body: dict[str, Any] = {
            "@odata.context": f"{self.base}/odata/$metadata#People",
            "value": [{"UserName": f"user{n}"} for n in ISSUES[skip:skip + top]]}
        if skip + top < len(ISSUES):
            body["@odata.nextLink"] = f"{self.base}/odata/People?$top={top}&$skiptoken=" \
                                      f"{skip + top}"
        return web.json_response(body)

    async def jsonapi(self, request: web.Request) -> web.Response:
        """`page[size]`, `page[after]`; `links.next` relative, then a link object, then null."""
        q = (await self._record(request)).query
        size, after = int(q.get("page[size]", "10")), int(q.get("page[after]", "0"))
        data = [{"type": "articles", "id": str(n), "attributes": {"title": f"A{n}"}}
                for n in ISSUES[after:after + size]]
        nxt: Any = None
        if after + size < len(ISSUES):
            nxt = f"/jsonapi/articles?page[size]={size}&page[after]={after + size}"
            if after:
                nxt = {"href": f"{self.base}{nxt}", "meta": {"page": "next"}}
        return web.json_response({"data": data, "links": {"self": str(request.url),
                                                          "next": nxt}})

    async def relay(self, request: web.Request) -> web.Response:
        """GitHub's GraphQL shape: `repository.issues(first, after)`; the last page keeps an
        `endCursor` while `hasNextPage` is false."""
        variables = (await self._record(request)).body["variables"]
        first = variables.get("first", 10)
        after = variables.get("after")
        start = int(base64.b64decode(after).decode().split(":")[1]) if after else 0
        nodes = [{"number": n, "title": f"Issue {n}"} for n in ISSUES[start:start + first]]
        end = base64.b64encode(f"cursor:{start + len(nodes)}".encode()).decode()
        return web.json_response({"data": {"repository": {"issues": {
            "totalCount": len(ISSUES), "nodes": nodes,
            "pageInfo": {"hasNextPage": start + first < len(ISSUES), "endCursor": end}}}}})

    async def offset(self, request: web.Request) -> web.Response:
        """`offset` (from 0, or from 1 with `first=1`), `limit`; `total`."""
        q = (await self._record(request)).query
        first = int(q.get("first", "0"))
        offset, limit = int(q.get("offset", str(first))), int(q.get("limit", "10"))
        orders = [{"id": n} for n in ISSUES[offset - first:offset - first + limit]]
        return web.json_response({"total": len(ISSUES), "offset": offset, "limit": limit,
                                  "orders": orders})

    async def page_number(self, request: web.Request) -> web.Response:
        """`page` (from 1, or from 0 with `zero=1`), `per_page`; `total_pages`."""
        q = (await self._record(request)).query
        base = 0 if q.get("zero") else 1
        page, size = int(q.get("page", str(base))), int(q.get("per_page", "10"))
        start = (page - base) * size
        return web.json_response({"page": page, "total_pages": -(-len(ISSUES) // size),
                                  "products": [{"id": n} for n in ISSUES[start:start + size]]})

    async def header_cursor(self, request: web.Request) -> web.Response:
        q = (await self._record(request)).query
        start = int(q.get("cursor", "0"))
        headers = {"X-Next-Cursor": str(start + 2)} if start + 2 < len(ISSUES) else {}
        return web.json_response({"events": ISSUES[start:start + 2]}, headers=headers)

    async def search(self, request: web.Request) -> web.Response:
        """`{"page": {"size", "after"}}` -> `{"hits", "next"}`, or `{"size", "from"}` ->
        `{"hits", "total"}`."""
        body = (await self._record(request)).body
        if "from" in body:
            start, size = body["from"], body["size"]
            return web.json_response({"hits": ISSUES[start:start + size],
                                      "total": len(ISSUES)})
        size, start = body["page"]["size"], int(body["page"].get("after") or 0)
        more = start + size < len(ISSUES)
        return web.json_response({"hits": ISSUES[start:start + size],
                                  "next": str(start + size) if more else None})

    async def feed_page(self, request: web.Request) -> web.Response:
        """The records of `feed` newer than `since`, 2 a page, paged in `style`."""
        seen = await self._record(request)
        q, style = seen.query, request.match_info["style"]
        since = int(q.get("since", "0"))
        newer = [n for n in self.feed if n > since]
        if style == "offset":
            start = int(q["offset"])
        elif style == "page":
            start = (int(q["page"]) - 1) * 2
        elif style == "body":
            start = int(seen.body["page"].get("cursor") or 0)
        else:
            start = int(q.get("cursor", "0"))
        items = [{"id": n} for n in newer[start:start + 2]]
        more = start + 2 < len(newer)
        nxt = f"/feed/{style}?since={since}&cursor={start + 2}" if more else None
        body: dict[str, Any] = {"items": items, "total": len(newer),
                                "next_cursor": str(start + 2) if more else None, "next": nxt}
        headers = {}
        if more and style == "header_link":
            headers["Link"] = f'<{self.base}{nxt}>; rel="next"'
        if more and style == "header_cursor":
            headers["X-Cursor"] = str(start + 2)
        return web.Response(body=orjson.dumps(body), headers=headers,
                            content_type="application/json")


@asynccontextmanager
async def serving() -> AsyncIterator[PagedApis]:
    apis = PagedApis()
    async with helpers.serving(apis.app()) as apis.base:
        yield apis
