"""`source_config.pagination`: what each type needs and refuses, in words that name the field."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from schemas.jsonpath import MISSING, compile_path
from schemas.pagination import ACCEPTS, NEEDS, Pagination
from schemas.pipeline import GraphQLSource, HttpApiSource, Pipeline


def errors(data: dict[str, Any]) -> list[tuple[str, str]]:
    with pytest.raises(ValidationError) as info:
        Pagination.model_validate(data)
    return [(".".join(map(str, e["loc"])), e["msg"].removeprefix("Value error, "))
            for e in info.value.errors()]


VALID: list[dict[str, Any]] = [
    {"next_path": "meta.next", "param": "page_token"},  # the configs of before: type cursor
    {"type": "cursor", "next_path": "data.items.pageInfo.endCursor", "param": "after"},
    {"type": "link", "next_path": "links.next", "max_pages": 20},
    {"type": "cursor", "next_path": "data[-1].id", "param": "starting_after",
     "has_more_path": "has_more", "limit": 100, "limit_param": "limit"},
    {"type": "header_link"},
    {"type": "header_link", "items_path": "$", "limit": 100},
    {"type": "header_cursor", "header": "X-Next-Cursor", "param": "cursor"},
    {"type": "offset", "limit": 50, "offset_param": "offset", "total_path": "total",
     "base_offset": 1},
    {"type": "page", "page_param": "page", "items_path": "data", "limit": 25,
     "limit_param": "per_page", "base_page": 0},
    {"type": "page", "body_path": "paging.page", "has_more_path": "more"},
    {"type": "auto"},
    {"type": "auto", "param": "cursor", "items_path": "nodes"},
]


@pytest.mark.parametrize("data", VALID)
def test_valid_and_round_trips(data: dict[str, Any]) -> None:
    model = Pagination.model_validate(data)
    assert Pagination.model_validate(model.model_dump()) == model
    assert Pagination.model_validate(model.model_dump(mode="json")) == model


@pytest.mark.parametrize(("data", "expected"), [
    ({}, [("next_path", "next_path is required for cursor pagination: the JSON path of the "
                        "next cursor or link in each page"),
          ("", "param is required for cursor pagination: the query param (http_api) or "
               "variable (graphql) that carries the cursor; or body_path, to set the cursor "
               "in the JSON body")]),
    ({"type": "link"}, [("next_path", "next_path is required for link pagination: the JSON "
                                      "path of the next cursor or link in each page")]),
    ({"type": "header_cursor", "param": "c"},
     [("header", "header is required for header_cursor pagination: the response header "
                 "that carries the next cursor")]),
    ({"type": "offset", "offset_param": "offset", "total_path": "total"},
     [("limit", "limit is required for offset pagination: the page size")]),
    ({"type": "offset", "limit": 10, "total_path": "total"},
     [("", "offset_param is required for offset pagination: the query param (http_api) or "
           "variable (graphql) that carries the offset; or body_path, to set the offset in "
           "the JSON body")]),
    ({"type": "page", "items_path": "data"},
     [("", "page_param is required for page pagination: the query param (http_api) or "
           "variable (graphql) that carries the page number; or body_path, to set the page "
           "number in the JSON body")]),
    ({"type": "page", "page_param": "page"},
     [("", "page pagination needs a stop rule: items_path, total_path or has_more_path")]),
    ({"type": "offset", "limit": 10, "offset_param": "o"},
     [("", "offset pagination needs a stop rule: items_path, total_path or has_more_path")]),
])
def test_what_a_type_needs_is_named(data: dict[str, Any],
                                    expected: list[tuple[str, str]]) -> None:
    assert errors(data) == expected


@pytest.mark.parametrize(("data", "expected"), [
    ({"type": "link", "next_path": "next", "param": "p", "total_path": "total"},
     [("param", "param does not apply to link pagination"),
      ("total_path", "total_path does not apply to link pagination")]),
    ({"type": "header_link", "next_path": "next", "base_page": 2},
     [("base_page", "base_page does not apply to header_link pagination"),
      ("next_path", "next_path does not apply to header_link pagination")]),
    ({"type": "offset", "limit": 5, "offset_param": "o", "page_param": "p", "items_path": "d"},
     [("page_param", "page_param does not apply to offset pagination")]),
    ({"next_path": "n", "param": "after", "body_path": "page.after"},
     [("", "param and body_path both say where the cursor goes: give one")]),
    ({"next_path": "n", "param": "after", "limit_param": "size"},
     [("limit", "limit is required with limit_param: the page size it sends")]),
    ({"type": "page", "body_path": "page", "limit": 5, "limit_param": "size",
      "items_path": "d"},
     [("limit_param", "limit_param does not apply with body_path: put the page size in the "
                      "body")]),
    ({"type": "auto", "next_path": "next"},
     [("next_path", "next_path does not apply to auto pagination")]),
])
def test_what_a_type_refuses_is_named(data: dict[str, Any],
                                      expected: list[tuple[str, str]]) -> None:
    assert errors(data) == expected


def test_field_errors_come_with_the_type_errors() -> None:
    """An invalid field does not hide what the type lacks (the API lists both)."""
    assert [loc for loc, _ in errors({"max_pages": 0})] == ["max_pages", "next_path", ""]
    assert errors({"type": "sideways"})[0][0] == "type"
    assert errors({"next_path": "a[", "param": "p"})[0] == (
        "next_path", "invalid path 'a[': unclosed bracket at position 1")
    assert errors({"next_path": "n", "body_path": "a[0]"}) == [
        ("body_path", "body_path is a dotted path of names (`page.cursor`)")]
    assert errors({"type": "header_cursor", "header": "X Next", "param": "c"})[0][0] == "header"


def test_the_table_covers_every_field() -> None:
    named = {n for needs in NEEDS.values() for need in needs for n in need.split("|")}
    named |= {n for accepts in ACCEPTS.values() for n in accepts}
    assert named | {"type", "max_pages", "items_path", "has_more_path"} == set(
        Pagination.model_fields)


def test_body_path_needs_an_http_body_that_is_an_object() -> None:
    pagination = {"next_path": "next", "body_path": "page.after"}
    HttpApiSource(url="https://x", method="POST", body={"page": {"size": 5}},
                  pagination=pagination)
    HttpApiSource(url="https://x", method="POST", body={}, pagination=pagination)
    for body, message in ((None, "needs source_config.body to be a JSON object"),
                          ({"page": 3}, "source_config.body.page is not an object")):
        with pytest.raises(ValidationError, match=message):
            HttpApiSource(url="https://x", method="POST", body=body, pagination=pagination)
    with pytest.raises(ValidationError, match="does not apply to graphql: param names"):
        GraphQLSource(url="https://x", query="{ a }", pagination=pagination)


def test_pipeline_errors_locate_the_pagination_field() -> None:
    with pytest.raises(ValidationError) as info:
        Pipeline.model_validate({
            "id": "p", "team_id": "t", "name": "p", "type": "polling", "interval_seconds": 60,
            "source_type": "http_api", "source_config": {
                "url": "https://x", "pagination": {"type": "offset", "offset_param": "o",
                                                   "items_path": "data"}}})
    assert [(e["loc"], e["msg"]) for e in info.value.errors()] == [
        (("source_config", "pagination", "limit"),
         "Value error, limit is required for offset pagination: the page size")]


def test_the_json_schema_holds_the_table() -> None:
    schema = Pagination.model_json_schema()
    rules = {rule["if"]["properties"]["type"]["const"]: rule for rule in schema["allOf"]}
    assert set(rules) == set(NEEDS)
    assert "required" not in rules["cursor"]["if"]  # no type means cursor
    offset = rules["offset"]["then"]
    assert offset["allOf"][0]["required"] == ["limit"]
    assert offset["properties"]["page_param"] == {"const": None}
    assert offset["properties"]["base_page"] == {"const": 1}
    assert "description" in schema["properties"]["has_more_path"]


def test_a_last_item_path_reads_the_last_id_or_nothing() -> None:
    """Stripe's `starting_after` is the id of the last item: `data[-1].id`."""
    path = compile_path("data[-1].id")
    assert path.get({"data": [{"id": "cus_1"}, {"id": "cus_2"}]}) == "cus_2"
    assert path.get({"data": []}) is MISSING
    assert path.getter()({"data": [{"id": "cus_1"}]}) == "cus_1"
    assert path.getter()({"data": []}) is MISSING
