"""`-o table|json|yaml` for every command that lists or shows something.

`table` is the human view (aligned columns); `json` and `yaml` carry the same document, the
YAML made from the JSON, so both mask the same secrets and hold the same values. `--json` stays
as the older spelling of `-o json`.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import orjson

FORMATS = ("table", "json", "yaml")


@contextlib.contextmanager
def answer_only() -> Iterator[None]:
    """stdout is the answer; keep stderr quiet (warnings still show). aiokafka's own ERROR
    lines about a broker it cannot reach are left out too: the command ends with one line
    saying so, and exit code 4."""
    root, client = logging.getLogger(), logging.getLogger("aiokafka")
    levels = root.level, client.level
    root.setLevel(logging.WARNING)
    client.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        root.setLevel(levels[0])
        client.setLevel(levels[1])


def add_output(parser: argparse.ArgumentParser, default: str = "table",
               choices: Sequence[str] = FORMATS, json_alias: bool = True) -> None:
    parser.add_argument("-o", "--output", choices=list(choices), default=default,
                        help=f"output format (default {default})")
    if json_alias:  # the spelling scripts and docs used before -o existed
        parser.add_argument("--json", dest="output", action="store_const", const="json",
                            default=argparse.SUPPRESS, help="same as -o json")


def render(data: Any, output: str, table: Callable[[], str] | None = None) -> str:
    """`data` as `output` asks; `table` makes the human view (None: a field/value listing)."""
    if output == "json":
        return orjson.dumps(data, option=orjson.OPT_INDENT_2).decode()
    if output == "yaml":
        import yaml

        plain = orjson.loads(orjson.dumps(data))  # exactly the JSON's values (times as text)
        text: str = yaml.safe_dump(plain, sort_keys=False, allow_unicode=True)
        return text.rstrip("\n")
    return table() if table is not None else fields(data)


def columns(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """Aligned columns, the last one unpadded."""
    cells = [list(header), *[list(r) for r in rows]]
    widths = [max(len(row[c]) for row in cells) for c in range(len(header))]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True))
                     .rstrip() for row in cells)


def fields(data: Any) -> str:
    """One object as `FIELD VALUE` lines; nested values as compact JSON."""
    if not isinstance(data, dict):
        return orjson.dumps(data).decode()
    return columns(("FIELD", "VALUE"), [
        (str(k), v if isinstance(v, str) else "-" if v is None else orjson.dumps(v).decode())
        for k, v in data.items()])
