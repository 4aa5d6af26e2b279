"""The page logic without a server: Link headers, Relay detection, bodies, stop rules."""

from __future__ import annotations

from typing import Any

import pytest
from multidict import CIMultiDict
from yarl import URL

from agents.ingest.sources.pages import (
    NOTHING,
    Pager,
    PageShapeError,
    find_page_info,
    links,
    next_link,
    with_value,
)
from schemas.pagination import Pagination

URL_ = "https://api.example/items"


def pager(**pagination: Any) -> Pager:
    return Pager(Pagination.model_validate(pagination), URL(URL_))


def no_headers() -> CIMultiDict[str]:
    return CIMultiDict()


def test_links_of_one_header_value() -> None:
    value = ('<https://a.example/2>; rel="next"; title="a, <https://evil/>; rel=next", '
             '</x?page=9>;rel=last;REL=first, <3>; rel="Prefetch  NEXT"; type="a\\"b"')
    assert list(links(value)) == [
        ("https://a.example/2", {"rel": "next", "title": "a, <https://evil/>; rel=next"}),
        ("/x?page=9", {"rel": "last"}),
        ("3", {"rel": "Prefetch  NEXT", "type": 'a"b'})]


def test_malformed_links_are_skipped() -> None:
    assert list(links('garbage, <ok>; rel=next')) == [("ok", {"rel": "next"})]
    assert list(links("<unclosed; rel=next")) == []
    assert list(links("")) == []


def test_next_link_reads_every_link_header_field() -> None:
    headers = CIMultiDict([("Link", '<1>; rel="prev first"'), ("link", '<3>; rel="last next"')])
    assert next_link(headers) == "3"
    assert next_link(CIMultiDict([("Link", '<1>; rel="nextpage"')])) is None
    assert next_link(no_headers()) is None


def test_find_page_info_breadth_first() -> None:
    doc = {"data": {"viewer": {"login": "x"}, "repository": {"issues": {
        "nodes": [{"pageInfo": {"endCursor": "no", "hasNextPage": True}}],
        "pageInfo": {"endCursor": "Y3", "hasNextPage": True}}}}}
    assert find_page_info(doc) == ["data", "repository", "issues", "pageInfo"]
    assert find_page_info({"pageInfo": {"endCursor": "a"}}) is None
    assert find_page_info([{"pageInfo": {"endCursor": "a", "hasNextPage": True}}]) is None


def test_with_value_copies_along_the_path() -> None:
    body = {"query": {"q": 1}, "page": {"size": 5}}
    out = with_value(body, ["page", "after"], "c2")
    assert out == {"query": {"q": 1}, "page": {"size": 5, "after": "c2"}}
    assert body == {"query": {"q": 1}, "page": {"size": 5}}
    assert out["query"] is body["query"]
    assert with_value({}, ["a", "b", "c"], 0) == {"a": {"b": {"c": 0}}}


def test_offset_counts_and_stops_past_the_total() -> None:
    p = pager(type="offset", limit=10, offset_param="offset", limit_param="limit",
              total_path="meta.total")
    assert p.params == {"limit": 10, "offset": 0}
    assert p.advance({"meta": {"total": "25"}}, URL_, no_headers())  # a quoted count
    assert p.params == {"limit": 10, "offset": 10}
    assert p.advance({"meta": {"total": 25}}, URL_, no_headers())
    assert not p.advance({"meta": {"total": 25}}, URL_, no_headers())  # 30 is past 25
    assert not pager(type="offset", limit=10, offset_param="o", total_path="total").advance(
        {"total": None}, URL_, no_headers())  # no total: no more


def test_page_into_a_body_starts_at_the_base_page() -> None:
    p = pager(type="page", body_path="paging.page", base_page=0, has_more_path="more")
    assert (p.params, p.body_keys, p.body_value) == ({}, ["paging", "page"], 0)
    assert p.advance({"more": True}, URL_, no_headers())
    assert p.body_value == 1
    assert not p.advance({"more": "true"}, URL_, no_headers())  # only JSON true goes on


def test_cursor_stops_on_a_repeat_an_empty_or_a_short_page() -> None:
    p = pager(next_path="next", param="c", items_path="data", limit=2)
    assert p.body_value is NOTHING
    assert p.advance({"data": [1, 2], "next": "a"}, URL_, no_headers())
    assert not p.advance({"data": [3, 4], "next": "a"}, URL_, no_headers())  # repeats
    assert not pager(next_path="next", param="c", items_path="data").advance(
        {"data": [], "next": "b"}, URL_, no_headers())
    assert not pager(next_path="next", param="c", items_path="data", limit=2).advance(
        {"data": [1], "next": "b"}, URL_, no_headers())
    assert not pager(next_path="next", param="c", items_path="data").advance(
        {"next": "b"}, URL_, no_headers())  # no items at all: empty


def test_items_that_are_not_a_list_fail() -> None:
    with pytest.raises(PageShapeError, match="'data' is a string in page 1, not a list"):
        pager(type="header_link", items_path="data").advance({"data": "x"}, URL_, no_headers())


def test_link_resolution_and_repeats() -> None:
    p = pager(type="link", next_path="links.next")
    assert p.advance({"links": {"next": {"href": "?page=2"}}}, URL_, no_headers())
    assert (p.url, p.following_link) == (URL(f"{URL_}?page=2"), True)
    assert not p.advance({"links": {"next": f"{URL_}?page=2"}}, f"{URL_}?page=2", no_headers())


def test_auto_prefers_the_link_header_and_wants_a_link_like_value() -> None:
    both = CIMultiDict([("Link", "</h?page=2>; rel=next")])
    p = pager(type="auto")
    assert p.advance({"next": "/json?page=2"}, URL_, both)
    assert p.url == URL("https://api.example/h?page=2")
    assert not pager(type="auto").advance({"next": "opaque-token"}, URL_, no_headers())
    relay = pager(type="auto", param="cursor")
    doc = {"data": {"things": {"pageInfo": {"endCursor": "e1", "hasNextPage": True}}}}
    assert relay.advance(doc, URL_, no_headers())
    assert relay.params == {"cursor": "e1"}
    doc["data"]["things"]["pageInfo"] = {"endCursor": "e2", "hasNextPage": False}
    assert not relay.advance(doc, URL_, no_headers())


def test_max_pages_and_no_pagination() -> None:
    assert not Pager(None, URL(URL_)).advance({"next": "x"}, URL_, no_headers())
    p = pager(next_path="next", param="c", max_pages=2)
    assert p.advance({"next": "a"}, URL_, no_headers())
    assert not p.advance({"next": "b"}, URL_, no_headers())
