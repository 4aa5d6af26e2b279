"""Where the next page of a poll is, and when the poll has read enough.

`Pager` holds the position of one poll in a pagination (`schemas.pagination.Pagination`):
what the next request carries (`url`, `params`, `body_value`) and, from each parsed page
and its response headers, whether there is a next one (`advance`). No I/O here: the loop
that sends the requests is `agents.ingest.sources.base.fetch_pages`.
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Iterator
from typing import Any

from multidict import CIMultiDict
from yarl import URL

from dashpipe.errors import ConfigError
from schemas.jsonpath import MISSING, JsonPath, compile_path
from schemas.pagination import Pagination

log = logging.getLogger(__name__)

NOTHING: Any = object()
"""`Pager.body_value` when the body is sent as configured."""

# JSON next links that `auto` recognises, in this order (DRF, Laravel, JSON:API, HAL, OData,
# Azure, the Facebook Graph API, ...): a string that looks like a URL, or an object with href
LINK_PATHS = ("next", "next_url", "next_page_url", "nextLink", "links.next", "_links.next",
              '["@odata.nextLink"]', '["odata.nextLink"]', "paging.next", "pagination.next",
              "pagination.next_url", "meta.next")
RELAY_CURSOR_PARAM = "after"  # the Relay connection spec's argument for the next page
_RELAY_DEPTH = 8
_LINK_VALUE = re.compile(
    r'\s*<([^>]*)>((?:\s*;\s*[^\s;,=]+(?:\s*=\s*(?:"(?:[^"\\]|\\.)*"|[^\s;,]*))?)*)\s*(?:,|$)')
_LINK_PARAM = re.compile(r';\s*([^\s;,=]+)(?:\s*=\s*("(?:[^"\\]|\\.)*"|[^\s;,]*))?')
_ESCAPED = re.compile(r"\\(.)")


class PageShapeError(ValueError):
    """A page that lacks the shape its pagination names (`items_path` not a list)."""


class Pager:
    """The position of one poll in its pagination; without one, a single page."""

    def __init__(self, pagination: Pagination | None, url: URL) -> None:
        self.url = url  # what the next request fetches
        self.following_link = False  # true once `url` is a link the server gave
        self.params: dict[str, Any] = {}  # page params (or variables) of the next request
        self.body_value: Any = NOTHING  # set at `body_keys` of the JSON body, if anything
        self.body_keys: list[str] | None = None
        self.pages = 0
        self._p = pagination
        if pagination is None:
            return
        p = pagination
        self.kind: str | None = p.type  # `auto` until the first page shows its shape
        self.body_keys = p.body_keys()
        self._next = _compiled(p.next_path)
        self._items = _compiled(p.items_path)
        self._has_more = _compiled(p.has_more_path)
        self._total = _compiled(p.total_path)
        self._sent: Any = None  # the cursor, offset or page the next request carries
        self._param = p.param or p.offset_param or p.page_param
        if self.body_keys is None and self._param is None and p.type in (
                "cursor", "header_cursor", "offset", "page"):
            raise ConfigError(f"source_config.pagination: {p.type} pagination needs a param "
                              "or a body_path")
        if p.limit_param is not None and p.limit is not None:
            self.params[p.limit_param] = p.limit
        if p.type == "offset":
            self._carry(p.base_offset)
        elif p.type == "page":
            self._carry(p.base_page)

    def advance(self, doc: Any, url: str, headers: CIMultiDict[str]) -> bool:
        """Take in the page just read (parsed `doc`, the URL it came from, its response
        headers); true when there is a next page, which `url`, `params` and `body_value`
        then describe."""
        self.pages += 1
        p = self._p
        if p is None or self.pages >= p.max_pages:
            return False
        items = self._items_of(doc)
        if items is not None and not items:
            return self._stop("an empty page")
        if self.kind == "auto":
            self.kind = self._detect(doc, headers)
            if self.kind is None:
                return self._stop("auto found no next page")
        if self._has_more is not None and self._has_more.get(doc) is not True:
            return self._stop("%s is not true", self._has_more.path)
        if items is not None and p.limit is not None and len(items) < p.limit:
            return self._stop("a short page (%d < %d items)", len(items), p.limit)
        if self.kind in ("cursor", "header_cursor"):
            nxt = self._next.get(doc) if self._next is not None else headers.get(p.header or "")
            return self._cursor(nxt)
        if self.kind == "link":
            return self._follow(_link(self._next.get(doc) if self._next else None), url)
        if self.kind == "header_link":
            return self._follow(next_link(headers), url)
        step, base = (p.limit or 0, p.base_offset) if self.kind == "offset" else (1, p.base_page)
        nxt = self._sent + step
        if self._total is not None:
            total = _number(self._total.get(doc))
            if total is None:
                return self._stop("%s is not a number", self._total.path)
            if nxt - base >= total:
                return self._stop("%s %d is past the total %g", self.kind, nxt, total)
        self._carry(nxt)
        return True

    def _carry(self, value: Any) -> None:
        self._sent = value
        if self.body_keys is not None:
            self.body_value = value
        else:
            assert self._param is not None
            self.params[self._param] = value

    def _cursor(self, nxt: Any) -> bool:
        if not _usable(nxt):
            return self._stop("no next cursor")
        if nxt == self._sent:
            log.warning("next cursor repeats the current one; stopping at page %d", self.pages)
            return False
        self._carry(nxt)
        return True

    def _follow(self, link: str | None, current: str) -> bool:
        if link is None:
            return self._stop("no next link")
        nxt = URL(current).join(URL(link))
        if nxt == URL(current):
            log.warning("next link repeats the current URL; stopping at page %d", self.pages)
            return False
        self.url, self.following_link = nxt, True
        return True

    def _items_of(self, doc: Any) -> list[Any] | None:
        if self._items is None:
            return None
        items = self._items.get(doc)
        if items is MISSING or items is None:
            return []
        if not isinstance(items, list):
            raise PageShapeError(f"pagination.items_path {self._items.path!r} is "
                                 f"{_kind_of(items)} in page {self.pages}, not a list")
        return items

    def _detect(self, doc: Any, headers: CIMultiDict[str]) -> str | None:
        """`auto`: the shape of the first page, in this order: a Link header with rel=next,
        a JSON next link at one of `LINK_PATHS`, a Relay `pageInfo` (cursor `endCursor`,
        go on while `hasNextPage`, sent as `param` or `after`)."""
        if next_link(headers) is not None:
            log.debug("auto pagination: a Link header")
            return "header_link"
        for path in LINK_PATHS:
            compiled = _compiled(path)
            assert compiled is not None
            link = _link(compiled.get(doc))
            if link is not None and link.startswith(("http://", "https://", "/", "?")):
                log.debug("auto pagination: a next link at %s", path)
                self._next = compiled
                return "link"
        keys = find_page_info(doc)
        if keys is not None:
            info = "".join(f"[{_quoted(k)}]" for k in keys)
            log.debug("auto pagination: a Relay connection at %s", info)
            self._next = compile_path(f"{info}.endCursor")
            self._has_more = compile_path(f"{info}.hasNextPage")
            self._param = self._param or RELAY_CURSOR_PARAM
            return "cursor"
        return None

    def _stop(self, why: str, *args: Any) -> bool:
        """False, with the reason in the debug log (`why` %-formatted with `args`)."""
        if log.isEnabledFor(logging.DEBUG):
            log.debug("last page %d: %s", self.pages, why % args)
        return False


def next_link(headers: CIMultiDict[str]) -> str | None:
    """The target of the first `rel="next"` link of the `Link` headers (RFC 8288), as
    written (relative or not)."""
    for value in headers.getall("Link", []):
        for target, params in links(value):
            if "next" in params.get("rel", "").lower().split():
                return target
    return None


def links(value: str) -> Iterator[tuple[str, dict[str, str]]]:
    """Each link of a `Link` header value: its target and its params (names in lower case,
    quoted values unquoted; a param given twice keeps its first value, as RFC 8288 says of
    rel). A malformed link is skipped up to the next comma."""
    pos = 0
    while pos < len(value):
        match = _LINK_VALUE.match(value, pos)
        if match is None:
            comma = value.find(",", pos)
            if comma < 0:
                return
            pos = comma + 1
            continue
        params: dict[str, str] = {}
        for param in _LINK_PARAM.finditer(match.group(2)):
            raw = param.group(2) or ""
            text = _ESCAPED.sub(r"\1", raw[1:-1]) if raw.startswith('"') else raw
            params.setdefault(param.group(1).lower(), text)
        yield match.group(1).strip(), params
        pos = match.end()


def find_page_info(doc: Any) -> list[str] | None:
    """The keys down to the first Relay `pageInfo` object (one with `endCursor` and
    `hasNextPage`), breadth first through objects (not lists), or None."""
    level: list[tuple[list[str], Any]] = [([], doc)]
    for _ in range(_RELAY_DEPTH):
        below: list[tuple[list[str], Any]] = []
        for keys, node in level:
            if not isinstance(node, dict):
                continue
            for key, value in node.items():
                if key == "pageInfo" and isinstance(value, dict) \
                        and "endCursor" in value and "hasNextPage" in value:
                    return [*keys, key]
                below.append(([*keys, key], value))
        level = below
    return None


def with_value(body: Any, keys: list[str], value: Any) -> Any:
    """A copy of the JSON object `body` with `value` at `keys` (objects made on the way); the
    objects along the path are copied, the rest is shared."""
    if not isinstance(body, dict):
        raise ConfigError("source_config.pagination.body_path needs source_config.body to "
                          "be a JSON object")
    out = dict(body)
    node = out
    for key in keys[:-1]:
        inner = node.get(key)
        if inner is not None and not isinstance(inner, dict):
            raise ConfigError(f"source_config.pagination.body_path: {key!r} is not an object")
        inner = dict(inner or {})
        node[key] = inner
        node = inner
    node[keys[-1]] = value
    return out


def _compiled(path: str | None) -> JsonPath | None:
    return None if path is None else compile_path(path)


def _quoted(key: str) -> str:
    return '"' + key.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _link(value: Any) -> str | None:
    """A next link: a non-empty string (a number, as text), or an object's `href`."""
    if isinstance(value, dict):
        value = value.get("href")
    if not _usable(value):
        return None
    return str(value)


def _usable(value: Any) -> bool:
    """A next cursor or link worth following: a non-empty string or a number."""
    return isinstance(value, str | int | float) and not isinstance(value, bool) and value != ""


def _number(value: Any) -> float | None:
    """A total: a number, or a string holding one (some APIs quote their counts)."""
    if isinstance(value, bool):
        return None
    if isinstance(value, str):
        try:
            value = float(value)
        except ValueError:
            return None
    if isinstance(value, int | float) and math.isfinite(value):
        return float(value)
    return None


def _kind_of(value: Any) -> str:
    names = {dict: "an object", str: "a string", bool: "a boolean", int: "a number",
             float: "a number"}
    return names.get(type(value), type(value).__name__)
