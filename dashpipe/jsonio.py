"""Parsing JSON from the outside world with errors that say where it broke."""

from __future__ import annotations

from typing import Any

import orjson

from dashpipe.errors import DashpipeError


class InvalidJson(DashpipeError):
    """`invalid JSON at line L column C (char P)`."""


def loads(body: bytes) -> Any:
    """The parsed body, else `InvalidJson` naming the line, column and character offset
    (orjson's offset counts characters; invalid UTF-8 is located at its first bad byte)."""
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        pos = exc.pos
        try:
            text = body.decode()
        except UnicodeDecodeError as bad:
            text = body[:bad.start].decode()
            pos = len(text)
        pos = min(pos, len(text))
        line = text.count("\n", 0, pos) + 1
        column = pos - (text.rfind("\n", 0, pos) + 1) + 1
        raise InvalidJson(f"invalid JSON at line {line} column {column} (char {pos})") from None
