"""A tiny JSON path for pipeline configs: compiled once, evaluated per record.

Syntax: an optional leading `$` or `$.`; dotted names `a.b.c`; indexes `a[0]`, `a[-1]`;
quoted names `a["x.y"]` or `a['x']` (backslash escapes the next character); a wildcard
`a[*]` or `a.*` over the items of a list or the values of an object. `$` alone is the document.
A dotted name is always an object key (`a.0` reads key "0"); an index only reads a list.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Callable
from typing import Any, Final, Literal

_KEY: Final = 0
_INDEX: Final = 1
_WILD: Final = 2
_INTEGER: Final = re.compile(r"-?[0-9]+")
_Step = tuple[int, Any]


class _Missing(enum.Enum):
    MISSING = "MISSING"

    def __repr__(self) -> str:
        return "MISSING"

    __str__ = __repr__

    def __bool__(self) -> Literal[False]:
        return False


MISSING: Final = _Missing.MISSING
"""What `JsonPath.get` answers when a step is absent or meets a value of the wrong kind."""


class JsonPath:
    """A compiled path; `get` answers one value (or `MISSING`), `select` every match."""

    __slots__ = ("_steps", "has_wildcard", "path")

    def __init__(self, path: str, steps: tuple[_Step, ...]) -> None:
        self.path = path
        self._steps = steps
        self.has_wildcard = any(kind == _WILD for kind, _ in steps)

    def __repr__(self) -> str:
        return f"JsonPath({self.path!r})"

    def get(self, doc: Any) -> Any:
        """The value at the path, or `MISSING`; with a wildcard, the first match."""
        if self.has_wildcard:
            found = self.select(doc)
            return found[0] if found else MISSING
        node = doc
        for kind, arg in self._steps:
            if kind == _KEY:
                if not isinstance(node, dict):
                    return MISSING
                node = node.get(arg, MISSING)
                if node is MISSING:
                    return MISSING
            else:
                if not isinstance(node, list) or not -len(node) <= arg < len(node):
                    return MISSING
                node = node[arg]
        return node

    def before_wildcard(self) -> tuple[JsonPath | None, bool]:
        """The path up to its first wildcard (None when it starts with one), and whether that
        wildcard is the last step."""
        for i, (kind, _) in enumerate(self._steps):
            if kind == _WILD:
                prefix = JsonPath(self.path, self._steps[:i]) if i else None
                return prefix, i == len(self._steps) - 1
        return self, False

    def keys(self) -> list[str] | None:
        """The names of a path made of names only (`a.b` -> ["a", "b"]), else None."""
        if not self._steps or any(kind != _KEY for kind, _ in self._steps):
            return None
        return [arg for _, arg in self._steps]

    def getter(self) -> Callable[[Any], Any]:
        """`get` as a plain function: for a path of one to three names, a lookup chain that
        treats any failed step as `MISSING`; with indexes, a loop that checks only them."""
        if self.has_wildcard:
            return self.get
        steps = self._steps
        keys = [arg for _, arg in steps]
        if not keys:
            return lambda doc: doc
        if any(kind != _KEY for kind, _ in steps) or len(keys) > 3:
            indexed = tuple((kind == _INDEX, arg) for kind, arg in steps)

            def get_n(doc: Any) -> Any:
                node = doc
                try:
                    for is_index, arg in indexed:
                        if is_index and type(node) is not list:
                            return MISSING  # a string would answer a character
                        node = node[arg]
                except (KeyError, TypeError, IndexError):
                    return MISSING
                return node
            return get_n
        if len(keys) == 1:
            (k1,) = keys

            def get1(doc: Any) -> Any:
                try:
                    return doc[k1]
                except (KeyError, TypeError):  # absent, or not an object (JSON has no others)
                    return MISSING
            return get1
        if len(keys) == 2:
            k1, k2 = keys

            def get2(doc: Any) -> Any:
                try:
                    return doc[k1][k2]
                except (KeyError, TypeError):
                    return MISSING
            return get2
        k1, k2, k3 = keys

        def get3(doc: Any) -> Any:
            try:
                return doc[k1][k2][k3]
            except (KeyError, TypeError):
                return MISSING
        return get3

    def select(self, doc: Any) -> list[Any]:
        """Every match, in document order (0 or 1 item when the path has no wildcard)."""
        if not self.has_wildcard:
            value = self.get(doc)
            return [] if value is MISSING else [value]
        nodes = [doc]
        for kind, arg in self._steps:
            out: list[Any] = []
            for node in nodes:
                if kind == _WILD:
                    if isinstance(node, list):
                        out.extend(node)
                    elif isinstance(node, dict):
                        out.extend(node.values())
                elif kind == _KEY:
                    if isinstance(node, dict) and arg in node:
                        out.append(node[arg])
                elif isinstance(node, list) and -len(node) <= arg < len(node):
                    out.append(node[arg])
            nodes = out
        return nodes


def compile_path(path: str) -> JsonPath:
    """Parse `path` once; a syntax error is a `ValueError` naming the position."""
    steps: list[_Step] = []
    n = len(path)
    if path == "$":
        return JsonPath(path, ())
    i = 2 if path.startswith("$.") else 1 if path.startswith("$[") else 0
    if path[i:i + 1] != "[":
        i = _name(path, i, steps)
    while i < n:
        if path[i] == "[":
            i = _bracket(path, i, steps)
        elif path[i] == ".":
            i = _name(path, i + 1, steps)
        else:
            raise _error(path, f"unexpected {path[i]!r}", i)
    return JsonPath(path, tuple(steps))


def valid_path(path: str) -> str:
    """`path` unchanged if it compiles (a pydantic field validator); else the `ValueError`
    naming the position."""
    compile_path(path)
    return path


def _error(path: str, reason: str, pos: int) -> ValueError:
    return ValueError(f"invalid path {path!r}: {reason} at position {pos}")


def _name(path: str, i: int, steps: list[_Step]) -> int:
    """Parse a dotted name (or `*`) starting at `i`; append its step; return where it ends."""
    start, n = i, len(path)
    while i < n and path[i] not in ".[]":
        i += 1
    if i == start:
        reason = "empty path" if not path else "expected a name"
        raise _error(path, reason, i)
    name = path[start:i]
    steps.append((_WILD, None) if name == "*" else (_KEY, name))
    return i


def _bracket(path: str, i: int, steps: list[_Step]) -> int:
    """Parse `[...]` starting at `path[i] == "["`; append its step; return the index after `]`."""
    open_at, n = i, len(path)
    i += 1
    if i < n and path[i] in "\"'":
        quote, chars = path[i], []
        i += 1
        while i < n and path[i] != quote:
            if path[i] == "\\" and i + 1 < n:
                i += 1
            chars.append(path[i])
            i += 1
        if i >= n:
            raise _error(path, "unclosed quote", open_at + 1)
        steps.append((_KEY, "".join(chars)))
        i += 1
    else:
        end = path.find("]", i)
        if end < 0:
            raise _error(path, "unclosed bracket", open_at)
        inner = path[i:end]
        if inner == "*":
            steps.append((_WILD, None))
        elif _INTEGER.fullmatch(inner):
            steps.append((_INDEX, int(inner)))
        else:
            raise _error(path, "expected an index, '*' or a quoted name", i)
        i = end
    if i >= n:
        raise _error(path, "unclosed bracket", open_at)
    if path[i] != "]":
        raise _error(path, "expected ']'", i)
    return i + 1
