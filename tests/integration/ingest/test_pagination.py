"""Every pagination type against fakes shaped like real providers (`paged_apis`): the exact
requests each fake saw and the pages the poll returned."""

from __future__ import annotations

import base64
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import orjson
import pytest

from agents.ingest.sources import SOURCES, SourceError
from agents.ingest.sources.base import FetchResult
from schemas.pipeline import GraphQLSource, HttpApiSource
from tests.integration.ingest.paged_apis import PagedApis, Seen, get, post, serving

RELAY_QUERY = ("query($owner: String!, $name: String!, $first: Int, $after: String) { "
               "repository(owner: $owner, name: $name) { issues(first: $first, after: $after) "
               "{ totalCount pageInfo { hasNextPage endCursor } nodes { number title } } } }")
RELAY_PATH = "data.repository.issues"


@pytest.fixture
async def apis() -> AsyncIterator[PagedApis]:
    async with serving() as fake:
        yield fake


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as s:
        yield s


async def http(apis: PagedApis, session: aiohttp.ClientSession, path: str,
               stored: Any = None, **config: Any) -> FetchResult:
    """One poll of `path` with the stored incremental cursor `stored`."""
    source = HttpApiSource(url=f"{apis.base}{path}", **config)
    return await SOURCES["http_api"].fetch(source, stored, session)


async def relay(apis: PagedApis, session: aiohttp.ClientSession, **pagination: Any
                ) -> FetchResult:
    source = GraphQLSource(url=f"{apis.base}/graphql", query=RELAY_QUERY,
                           variables={"owner": "octo", "name": "hello", "first": 2},
                           pagination=pagination)
    return await SOURCES["graphql"].fetch(source, None, session)


def bodies(result: FetchResult) -> list[Any]:
    return [orjson.loads(page.body) for page in result.pages]


def picked(result: FetchResult, path: str, key: str) -> list[list[Any]]:
    """The `key` of each item at the top-level `path` of each page (`""`: the page is the
    list)."""
    return [[item[key] for item in (body[path] if path else body)] for body in bodies(result)]


def end_cursor(n: int) -> str:
    return base64.b64encode(f"cursor:{n}".encode()).decode()


def relay_request(after: str | None) -> Seen:
    variables: dict[str, Any] = {"owner": "octo", "name": "hello", "first": 2}
    if after is not None:
        variables["after"] = after
    return post("/graphql", {"query": RELAY_QUERY, "variables": variables})


ISSUES = "/repos/octo/hello/issues"
GITHUB = [get(ISSUES, per_page=2), get(ISSUES, per_page=2, page=2),
          get(ISSUES, per_page=2, page=3)]


async def test_github_link_header(apis: PagedApis, session: aiohttp.ClientSession) -> None:
    result = await http(apis, session, ISSUES, params={"per_page": 2},
                        pagination={"type": "header_link"})
    assert apis.seen == GITHUB
    assert picked(result, "", "number") == [[1, 2], [3, 4], [5]]
    assert [p.url for p in result.pages] == [
        f"{apis.base}{ISSUES}?per_page=2", f"{apis.base}{ISSUES}?per_page=2&page=2",
        f"{apis.base}{ISSUES}?per_page=2&page=3"]
    assert 'rel="last"' in result.pages[0].headers["Link"]


async def test_header_link_relative_several_fields_and_quoted_rels(
        apis: PagedApis, session: aiohttp.ClientSession) -> None:
    result = await http(apis, session, "/tricky/1", pagination={"type": "header_link"})
    assert apis.seen == [get("/tricky/1"), get("/tricky/2", x=1), get("/tricky/3")]
    assert [b["page"] for b in bodies(result)] == [1, 2, 3]
    assert len(result.pages[0].headers.getall("Link")) == 2


async def test_stripe_has_more_and_the_last_items_id(apis: PagedApis,
                                                    session: aiohttp.ClientSession) -> None:
    pagination = {"type": "cursor", "next_path": "data[-1].id", "param": "starting_after",
                  "has_more_path": "has_more", "limit": 2, "limit_param": "limit"}
    result = await http(apis, session, "/v1/customers", pagination=pagination)
    assert apis.seen == [get("/v1/customers", limit=2),
                         get("/v1/customers", limit=2, starting_after="cus_4"),
                         get("/v1/customers", limit=2, starting_after="cus_2")]
    assert picked(result, "data", "id") == [["cus_5", "cus_4"], ["cus_3", "cus_2"], ["cus_1"]]


async def test_odata_next_link(apis: PagedApis, session: aiohttp.ClientSession) -> None:
    result = await http(apis, session, "/odata/People", params={"$top": 2},
                        pagination={"type": "link", "next_path": '["@odata.nextLink"]'})
    assert apis.seen == [get("/odata/People", **{"$top": 2}),
                         get("/odata/People", **{"$top": 2, "$skiptoken": 2}),
                         get("/odata/People", **{"$top": 2, "$skiptoken": 4})]
    assert picked(result, "value", "UserName") == [["user1", "user2"], ["user3", "user4"],
                                                   ["user5"]]


async def test_jsonapi_links_next_string_then_link_object(
        apis: PagedApis, session: aiohttp.ClientSession) -> None:
    result = await http(apis, session, "/jsonapi/articles", params={"page[size]": 2},
                        pagination={"type": "link", "next_path": "links.next"})
    assert apis.seen == [get("/jsonapi/articles", **{"page[size]": 2}),
                         get("/jsonapi/articles", **{"page[size]": 2, "page[after]": 2}),
                         get("/jsonapi/articles", **{"page[size]": 2, "page[after]": 4})]
    assert picked(result, "data", "id") == [["1", "2"], ["3", "4"], ["5"]]


async def test_relay_connection_stops_when_has_next_page_is_false(
        apis: PagedApis, session: aiohttp.ClientSession) -> None:
    result = await relay(apis, session, type="cursor", param="after",
                         next_path=f"{RELAY_PATH}.pageInfo.endCursor",
                         has_more_path=f"{RELAY_PATH}.pageInfo.hasNextPage")
    assert apis.seen == [relay_request(None), relay_request(end_cursor(2)),
                         relay_request(end_cursor(4))]
    nodes = [b["data"]["repository"]["issues"]["nodes"] for b in bodies(result)]
    assert [[n["number"] for n in page] for page in nodes] == [[1, 2], [3, 4], [5]]
    assert bodies(result)[-1]["data"]["repository"]["issues"]["pageInfo"]["endCursor"]


async def test_offset_and_total(apis: PagedApis, session: aiohttp.ClientSession) -> None:
    pagination = {"type": "offset", "limit": 2, "limit_param": "limit",
                  "offset_param": "offset", "total_path": "total"}
    result = await http(apis, session, "/orders", params={"status": "paid"},
                        pagination=pagination)
    assert apis.seen == [get("/orders", status="paid", limit=2, offset=0),
                         get("/orders", status="paid", limit=2, offset=2),
                         get("/orders", status="paid", limit=2, offset=4)]
    assert picked(result, "orders", "id") == [[1, 2], [3, 4], [5]]


async def test_offset_from_a_base_offset(apis: PagedApis,
                                         session: aiohttp.ClientSession) -> None:
    pagination = {"type": "offset", "limit": 2, "offset_param": "offset", "base_offset": 1,
                  "total_path": "total"}
    result = await http(apis, session, "/orders", params={"first": 1, "limit": 2},
                        pagination=pagination)
    assert apis.seen == [get("/orders", first=1, limit=2, offset=n) for n in (1, 3, 5)]
    assert picked(result, "orders", "id") == [[1, 2], [3, 4], [5]]


async def test_page_number_with_a_short_last_page(apis: PagedApis,
                                                  session: aiohttp.ClientSession) -> None:
    pagination = {"type": "page", "page_param": "page", "limit": 2, "limit_param": "per_page",
                  "items_path": "products"}
    result = await http(apis, session, "/products", pagination=pagination)
    assert apis.seen == [get("/products", per_page=2, page=1), get("/products", per_page=2, page=2),
                         get("/products", per_page=2, page=3)]
    assert picked(result, "products", "id") == [[1, 2], [3, 4], [5]]


async def test_page_number_from_zero_with_total_pages(apis: PagedApis,
                                                      session: aiohttp.ClientSession) -> None:
    pagination = {"type": "page", "page_param": "page", "base_page": 0,
                  "total_path": "total_pages"}
    result = await http(apis, session, "/products", params={"zero": 1, "per_page": 2},
                        pagination=pagination)
    assert apis.seen == [get("/products", zero=1, per_page=2, page=n) for n in (0, 1, 2)]
    assert picked(result, "products", "id") == [[1, 2], [3, 4], [5]]


async def test_page_number_stops_at_an_empty_page(apis: PagedApis,
                                                  session: aiohttp.ClientSession) -> None:
    pagination = {"type": "page", "page_param": "page", "items_path": "products"}
    result = await http(apis, session, "/products", params={"per_page": 5},
                        pagination=pagination)
    assert apis.seen == [get("/products", per_page=5, page=1), get("/products", per_page=5, page=2)]
    assert picked(result, "products", "id") == [[1, 2, 3, 4, 5], []]


async def test_header_cursor(apis: PagedApis, session: aiohttp.ClientSession) -> None:
    pagination = {"type": "header_cursor", "header": "x-next-cursor", "param": "cursor"}
    result = await http(apis, session, "/events", pagination=pagination)
    assert apis.seen == [get("/events"), get("/events", cursor=2), get("/events", cursor=4)]
    assert [b["events"] for b in bodies(result)] == [[1, 2], [3, 4], [5]]


async def test_cursor_and_offset_in_the_post_body(apis: PagedApis,
                                                  session: aiohttp.ClientSession) -> None:
    query = {"match": {"status": "open"}}
    result = await http(apis, session, "/search", method="POST",
                        body={"query": query, "page": {"size": 2}},
                        pagination={"next_path": "next", "body_path": "page.after"})
    assert apis.seen == [post("/search", {"query": query, "page": {"size": 2}}),
                         post("/search", {"query": query, "page": {"size": 2, "after": "2"}}),
                         post("/search", {"query": query, "page": {"size": 2, "after": "4"}})]
    assert [b["hits"] for b in bodies(result)] == [[1, 2], [3, 4], [5]]

    apis.seen.clear()
    result = await http(apis, session, "/search", method="POST", body={"size": 2},
                        pagination={"type": "offset", "limit": 2, "body_path": "from",
                                    "items_path": "hits"})
    assert apis.seen == [post("/search", {"size": 2, "from": n}) for n in (0, 2, 4)]
    assert [b["hits"] for b in bodies(result)] == [[1, 2], [3, 4], [5]]


async def test_auto_detects_a_link_header(apis: PagedApis,
                                          session: aiohttp.ClientSession) -> None:
    result = await http(apis, session, ISSUES, params={"per_page": 2},
                        pagination={"type": "auto"})
    assert apis.seen == GITHUB
    assert picked(result, "", "number") == [[1, 2], [3, 4], [5]]


async def test_auto_detects_json_next_links(apis: PagedApis,
                                            session: aiohttp.ClientSession) -> None:
    odata = await http(apis, session, "/odata/People", params={"$top": 2},
                       pagination={"type": "auto"})
    jsonapi = await http(apis, session, "/jsonapi/articles", params={"page[size]": 2},
                         pagination={"type": "auto"})
    assert apis.seen == [get("/odata/People", **{"$top": 2}),
                         get("/odata/People", **{"$top": 2, "$skiptoken": 2}),
                         get("/odata/People", **{"$top": 2, "$skiptoken": 4}),
                         get("/jsonapi/articles", **{"page[size]": 2}),
                         get("/jsonapi/articles", **{"page[size]": 2, "page[after]": 2}),
                         get("/jsonapi/articles", **{"page[size]": 2, "page[after]": 4})]
    assert picked(odata, "value", "UserName") == [["user1", "user2"], ["user3", "user4"],
                                                  ["user5"]]
    assert picked(jsonapi, "data", "id") == [["1", "2"], ["3", "4"], ["5"]]


async def test_auto_detects_a_relay_connection(apis: PagedApis,
                                               session: aiohttp.ClientSession) -> None:
    result = await relay(apis, session, type="auto")
    assert apis.seen == [relay_request(None), relay_request(end_cursor(2)),
                         relay_request(end_cursor(4))]
    assert len(result.pages) == 3


async def test_auto_without_a_known_shape_reads_one_page(
        apis: PagedApis, session: aiohttp.ClientSession) -> None:
    result = await http(apis, session, "/orders", params={"limit": 2},
                        pagination={"type": "auto"})
    assert apis.seen == [get("/orders", limit=2)]
    assert len(result.pages) == 1


MAX_PAGES: list[tuple[str, dict[str, Any], dict[str, Any], list[Seen]]] = [
    ("/v1/customers", {"limit": 2}, {"next_path": "data[-1].id", "param": "starting_after"},
     [get("/v1/customers", limit=2), get("/v1/customers", limit=2, starting_after="cus_4")]),
    ("/odata/People", {"$top": 2}, {"type": "link", "next_path": '["@odata.nextLink"]'},
     [get("/odata/People", **{"$top": 2}), get("/odata/People", **{"$top": 2, "$skiptoken": 2})]),
    (ISSUES, {"per_page": 2}, {"type": "header_link"}, GITHUB[:2]),
    ("/events", {}, {"type": "header_cursor", "header": "X-Next-Cursor", "param": "cursor"},
     [get("/events"), get("/events", cursor=2)]),
    ("/orders", {}, {"type": "offset", "limit": 2, "limit_param": "limit",
                     "offset_param": "offset", "total_path": "total"},
     [get("/orders", limit=2, offset=0), get("/orders", limit=2, offset=2)]),
    ("/products", {"per_page": 2}, {"type": "page", "page_param": "page",
                                    "total_path": "total_pages"},
     [get("/products", per_page=2, page=1), get("/products", per_page=2, page=2)]),
    (ISSUES, {"per_page": 2}, {"type": "auto"}, GITHUB[:2]),
]


@pytest.mark.parametrize(("path", "params", "pagination", "expected"), MAX_PAGES,
                         ids=[str(p[2].get("type", "cursor")) for p in MAX_PAGES])
async def test_max_pages_bounds_every_type(apis: PagedApis, session: aiohttp.ClientSession,
                                           path: str, params: dict[str, Any],
                                           pagination: dict[str, Any],
                                           expected: list[Seen]) -> None:
    result = await http(apis, session, path, params=params,
                        pagination={**pagination, "max_pages": 2})
    assert apis.seen == expected
    assert len(result.pages) == 2


async def test_max_pages_bounds_relay_and_post_bodies(apis: PagedApis,
                                                      session: aiohttp.ClientSession) -> None:
    await relay(apis, session, type="auto", max_pages=2)
    await http(apis, session, "/search", method="POST", body={"page": {"size": 2}},
               pagination={"next_path": "next", "body_path": "page.after", "max_pages": 2})
    assert apis.seen == [relay_request(None), relay_request(end_cursor(2)),
                         post("/search", {"page": {"size": 2}}),
                         post("/search", {"page": {"size": 2, "after": "2"}})]


async def test_items_path_that_is_not_a_list_fails_the_poll(
        apis: PagedApis, session: aiohttp.ClientSession) -> None:
    with pytest.raises(SourceError, match=r"^pagination.items_path 'links' is an object in "
                                          r"page 1, not a list$"):
        await http(apis, session, "/jsonapi/articles",
                   pagination={"type": "link", "next_path": "links.next", "items_path": "links"})


FEED: dict[str, dict[str, Any]] = {  # style -> pagination, over `PagedApis.feed`
    "cursor": {"next_path": "next_cursor", "param": "cursor"},
    "link": {"type": "link", "next_path": "next"},
    "header_link": {"type": "header_link"},
    "header_cursor": {"type": "header_cursor", "header": "X-Cursor", "param": "cursor"},
    "offset": {"type": "offset", "limit": 2, "limit_param": "limit", "offset_param": "offset",
               "total_path": "total"},
    "page": {"type": "page", "page_param": "page", "limit": 2, "items_path": "items"},
    "body": {"next_path": "next_cursor", "body_path": "page.cursor"},
    "auto": {"type": "auto"},
}


def feed_requests(style: str, since: int, n: int) -> list[Seen]:
    """The `n` requests of a poll of /feed/<style> from `since`, 2 records a page."""
    out = []
    for k in range(n):
        if style == "body":
            out.append(post("/feed/body", {"page": {"cursor": str(2 * k)} if k else {}},
                            since=since))
        elif style == "offset":
            out.append(get("/feed/offset", since=since, limit=2, offset=2 * k))
        elif style == "page":
            out.append(get("/feed/page", since=since, page=k + 1))
        else:  # a cursor param, or a link that keeps `since`
            path = "/feed/link" if style == "auto" else f"/feed/{style}"
            out.append(get(path, since=since, **({"cursor": 2 * k} if k else {})))
    return out


@pytest.mark.parametrize("style", list(FEED))
async def test_every_type_keeps_the_incremental_cursor_across_polls(
        apis: PagedApis, session: aiohttp.ClientSession, style: str) -> None:
    config: dict[str, Any] = {
        "pagination": FEED[style],
        "cursor": {"path": "items[-1].id", "param": "since", "initial": 0}}
    if style == "body":
        config |= {"method": "POST", "body": {"page": {}}}
    path = "/feed/link" if style == "auto" else f"/feed/{style}"

    first = await http(apis, session, path, **config)
    assert picked(first, "items", "id") == [[1, 2], [3, 4], [5]]
    assert first.cursor == 5
    assert apis.seen == feed_requests(style, 0, 3)

    apis.seen.clear()
    apis.feed += [6, 7]
    second = await http(apis, session, path, first.cursor, **config)
    full_last_page = style == "page"  # 2 items: not short, so one more (empty) page
    assert picked(second, "items", "id") == ([[6, 7], []] if full_last_page else [[6, 7]])
    assert second.cursor == 7
    assert apis.seen == feed_requests(style, 5, 2 if full_last_page else 1)

    apis.seen.clear()
    caught_up = await http(apis, session, path, second.cursor, **config)
    assert picked(caught_up, "items", "id") == [[]]
    assert caught_up.cursor == 7
    assert apis.seen == feed_requests(style, 7, 1)
