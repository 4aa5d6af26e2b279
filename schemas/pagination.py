"""How one poll follows pages: `source_config.pagination` of the `http_api` and `graphql` sources.

One model for every `type`. Which fields a type needs and which it accepts is the table
below (`NEEDS`, `ACCEPTS`); the validation, its messages and the exported JSON Schema
(`schemas/pagination.schema.json`) are all read from it, so they cannot disagree. A field
counts as given when its value differs from its default (a definition read back from the
log lists every field, defaults included).
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ModelWrapValidatorHandler,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_core import InitErrorDetails, PydanticUndefined

from schemas.jsonpath import compile_path, valid_path

PaginationType = Literal["cursor", "link", "header_link", "header_cursor", "offset", "page",
                         "auto"]

# what each type needs; `a|b`: one of the two, not both
NEEDS: dict[str, tuple[str, ...]] = {
    "cursor": ("next_path", "param|body_path"),
    "link": ("next_path",),
    "header_link": (),
    "header_cursor": ("header", "param|body_path"),
    "offset": ("limit", "offset_param|body_path"),
    "page": ("page_param|body_path",),
    "auto": (),
}
# what each type accepts besides what it needs and the stop rules every type has
COMMON = ("type", "max_pages", "items_path", "has_more_path")
ACCEPTS: dict[str, tuple[str, ...]] = {
    "cursor": ("limit", "limit_param"),
    "link": ("limit",),
    "header_link": ("limit",),
    "header_cursor": ("limit", "limit_param"),
    "offset": ("limit_param", "base_offset", "total_path"),
    "page": ("limit", "limit_param", "base_page", "total_path"),
    "auto": ("param",),
}
# types that page until a stop rule says so: they need one
COUNTING = ("offset", "page")
_CARRIES = {"param": "the cursor", "offset_param": "the offset", "page_param": "the page number"}
_WHAT = {
    "next_path": "the JSON path of the next cursor or link in each page",
    "header": "the response header that carries the next cursor",
    "limit": "the page size",
    "param": "the query param (http_api) or variable (graphql) that carries the cursor",
    "offset_param": "the query param (http_api) or variable (graphql) that carries the offset",
    "page_param": "the query param (http_api) or variable (graphql) that carries the page "
                  "number",
}


class Pagination(BaseModel):
    """Follow pages inside one poll: by a next cursor or link in the page (`cursor`, `link`),
    in a response header (`header_cursor`, `header_link`), by counting (`offset`, `page`), or
    by what the first page shows (`auto`); up to `max_pages`, or until a stop rule ends it."""

    model_config = ConfigDict(extra="forbid", json_schema_extra=lambda s: _rules(s))

    type: PaginationType = Field(default="cursor", description=(
        "cursor: the value at next_path, sent as param; link: the URL at next_path; "
        "header_link: the rel=next link of the Link header (RFC 8288); header_cursor: the "
        "value of the response header `header`, sent as param; offset: offset_param counts "
        "from base_offset by limit; page: page_param counts from base_page by 1; auto: a Link "
        "header, a JSON next link or a GraphQL Relay pageInfo, as the first page shows"))
    next_path: str | None = Field(default=None, min_length=1, description=(
        "cursor, link: JSON path of the next cursor (`meta.next`, `data[-1].id`) or link (a "
        "URL, relative to the page's, or an object with `href`)"))
    param: str | None = Field(default=None, min_length=1, description=(
        "cursor, header_cursor: the query param (http_api) or variable (graphql) that "
        "carries the cursor; auto: the variable of a Relay cursor (default `after`)"))
    header: str | None = Field(default=None, min_length=1, pattern=r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$",
                               description="header_cursor: the response header that carries "
                                           "the next cursor")
    body_path: str | None = Field(default=None, min_length=1, description=(
        "http_api with a JSON object `body`: the dotted path in the body where the cursor, "
        "offset or page is set, instead of a query param"))
    limit: int | None = Field(default=None, ge=1, le=1_000_000, description=(
        "the page size; offset: the step (required); every type: a page with fewer items "
        "(items_path) is the last"))
    limit_param: str | None = Field(default=None, min_length=1, description=(
        "the query param or variable that sends `limit` on every request; without it, put "
        "the page size in params yourself"))
    offset_param: str | None = Field(default=None, min_length=1, description=(
        "offset: the query param or variable that carries the offset"))
    base_offset: int = Field(default=0, ge=0, description="offset: the first offset")
    page_param: str | None = Field(default=None, min_length=1, description=(
        "page: the query param or variable that carries the page number"))
    base_page: int = Field(default=1, ge=0, description="page: the number of the first page")
    items_path: str | None = Field(default=None, min_length=1, description=(
        "JSON path of the list of items in each page (`data`); an empty list, absent or "
        "null ends the poll, and so does a list shorter than `limit`"))
    has_more_path: str | None = Field(default=None, min_length=1, description=(
        "JSON path of a flag (`has_more`, `...pageInfo.hasNextPage`): the poll goes on only "
        "while it is `true`; false, null, absent or any other value ends it"))
    total_path: str | None = Field(default=None, min_length=1, description=(
        "offset: JSON path of the total number of items; page: of the number of pages; the "
        "poll ends when the next offset or page is past it, or when it is not a number"))
    max_pages: int = Field(default=10, ge=1, le=1000, description="pages per poll at most")

    _paths = field_validator("next_path", "items_path", "has_more_path", "total_path")(
        lambda cls, v: v if v is None else valid_path(v))

    @field_validator("body_path")
    @classmethod
    def _dotted(cls, value: str | None) -> str | None:
        if value is not None and compile_path(value).keys() is None:
            raise ValueError("body_path is a dotted path of names (`page.cursor`)")
        return value

    @model_validator(mode="wrap")
    @classmethod
    def _fits_type(cls, data: Any,
                   handler: ModelWrapValidatorHandler[Pagination]) -> Pagination:
        """The fields' own errors, then what the type needs and refuses (`problems`)."""
        errors: list[InitErrorDetails] = []
        model: Pagination | None = None
        try:
            model = handler(data)
        except ValidationError as exc:
            errors += [InitErrorDetails(type=e["type"], loc=e["loc"], input=e["input"],
                                        ctx=e.get("ctx") or {}) for e in exc.errors()]
        if isinstance(data, dict):
            errors += [InitErrorDetails(type="value_error", loc=loc,
                                        input=data.get(loc[0]) if loc else data,
                                        ctx={"error": message})
                       for loc, message in problems(data)]
        if errors:
            raise ValidationError.from_exception_data(cls.__name__, errors)
        assert model is not None
        return model

    def body_keys(self) -> list[str] | None:
        """The names of `body_path`, or None without one."""
        return None if self.body_path is None else compile_path(self.body_path).keys()


def _default(name: str) -> Any:
    default = Pagination.model_fields[name].default
    return None if default is PydanticUndefined else default


def _allowed(kind: str) -> set[str]:
    """Every field a type may be given: what it needs, accepts, and the common stop rules."""
    return set(COMMON) | set(ACCEPTS[kind]) | {n for need in NEEDS[kind] for n in need.split("|")}


def problems(data: dict[str, Any]) -> list[tuple[tuple[str, ...], str]]:
    """(location, message) of each way `data` does not fit its type: a field the type needs
    and lacks, a field it refuses, a choice made twice, a counting type without a stop rule."""
    kind = data.get("type", "cursor")
    if kind not in NEEDS:
        return []  # the field's own error says so
    given = {k for k, v in data.items() if k in Pagination.model_fields and v is not None
             and v != _default(k)}
    out: list[tuple[tuple[str, ...], str]] = []
    for need in NEEDS[kind]:
        first, _, other = need.partition("|")
        if not other and first not in given:
            out.append(((first,), f"{first} is required for {kind} pagination: {_WHAT[first]}"))
        elif other and not {first, other} & given:
            out.append(((), f"{first} is required for {kind} pagination: {_WHAT[first]}; or "
                            f"{other}, to set {_CARRIES[first]} in the JSON body"))
        elif other and {first, other} <= given:
            out.append(((), f"{first} and {other} both say where {_CARRIES[first]} goes: "
                            "give one"))
    allowed = _allowed(kind)
    for name in sorted(given - allowed):
        out.append(((name,), f"{name} does not apply to {kind} pagination"))
    if "limit_param" in given & allowed and "limit" not in given:
        out.append((("limit",), "limit is required with limit_param: the page size it sends"))
    if {"limit_param", "body_path"} <= given:
        out.append((("limit_param",), "limit_param does not apply with body_path: put the "
                                      "page size in the body"))
    if kind in COUNTING and not {"items_path", "total_path", "has_more_path"} & given:
        out.append(((), f"{kind} pagination needs a stop rule: items_path, total_path or "
                        "has_more_path"))
    return out


def _rules(schema: dict[str, Any]) -> None:
    """The table as JSON Schema: per type, what it requires (not null) and which fields may
    only hold their default (a stored definition lists every field)."""
    def given(name: str) -> dict[str, Any]:
        return {"required": [name], "properties": {name: {"not": {"type": "null"}}}}

    rules = []
    for kind, needs in NEEDS.items():
        allowed = _allowed(kind)
        then: dict[str, Any] = {"allOf": [given(n) for n in needs if "|" not in n]}
        then["allOf"] += [{"oneOf": [given(a) for a in n.split("|")]} for n in needs if "|" in n]
        if kind in COUNTING:
            then["allOf"].append({"anyOf": [given(n) for n in
                                            ("items_path", "total_path", "has_more_path")]})
        then["properties"] = {n: {"const": _default(n)} for n in sorted(Pagination.model_fields)
                              if n not in allowed}
        if not then["allOf"]:
            del then["allOf"]
        when: dict[str, Any] = {"properties": {"type": {"const": kind}}}
        if kind != "cursor":  # absent type means cursor
            when["required"] = ["type"]
        rules.append({"if": when, "then": then})
    schema["allOf"] = rules


def body_path_problem(pagination: Pagination | None, body: Any, *, graphql: bool) -> str | None:
    """Why `pagination.body_path` cannot be set in this source's body, or None when it can:
    an `http_api` body that is a JSON object, with objects (or nothing) along the path."""
    keys = pagination.body_keys() if pagination is not None else None
    if keys is None:
        return None
    if graphql:
        return ("pagination.body_path does not apply to graphql: param names the variable "
                "that carries the cursor")
    if not isinstance(body, dict):
        return "pagination.body_path needs source_config.body to be a JSON object"
    node: Any = body
    for i, key in enumerate(keys[:-1]):
        node = node.get(key)
        if node is None:
            return None
        if not isinstance(node, dict):
            return (f"pagination.body_path: source_config.body.{'.'.join(keys[:i + 1])} is "
                    "not an object")
    return None
