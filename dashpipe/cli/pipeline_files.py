"""Pipelines files for `dashpipe pipelines apply -f FILE`: reading, checking, and the table of
`dashpipe pipelines list`. Pure functions: the caller reads the registry and writes the log.

A file is YAML or JSON and holds one pipeline object, a list of them, or `{"pipelines": [...]}`
(what `dashpipe pipelines list --json` prints); YAML may hold several `---` documents.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import yaml

from dashpipe import jsonio
from dashpipe.errors import DashpipeError
from dashpipe.pipelines import Invalid, parse, without_view_fields
from schemas.pipeline import MASK, Pipeline, keep_masked

STDIN = "-"


class FileError(DashpipeError):
    """The file cannot be read or parsed; the message names the file and where it broke."""


def read(path: str, stdin_text: str | None = None) -> list[Any]:
    """The pipeline objects of `path` (`-`: `stdin_text`, as YAML, which also reads JSON)."""
    if path == STDIN:
        text, name, as_json = stdin_text or "", "<stdin>", False
    else:
        try:
            text = Path(path).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise FileError(f"cannot read {path}: {getattr(exc, 'strerror', None) or exc}") \
                from None
        name, as_json = path, path.lower().endswith(".json")
    docs = _parse_json(text, name) if as_json else _parse_yaml(text, name)
    pipelines: list[Any] = []
    for doc in docs:
        if doc is None:
            continue
        if isinstance(doc, dict) and isinstance(doc.get("pipelines"), list):
            pipelines += doc["pipelines"]
        elif isinstance(doc, list):
            pipelines += doc
        else:
            pipelines.append(doc)
    if not pipelines:
        raise FileError(f"{name} holds no pipeline")
    return pipelines


def _parse_json(text: str, name: str) -> list[Any]:
    try:
        return [jsonio.loads(text.encode())]
    except jsonio.InvalidJson as exc:
        raise FileError(f"{name}: {exc}") from None


def _parse_yaml(text: str, name: str) -> list[Any]:
    try:
        return list(yaml.load_all(text, Loader=loader()))
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f" at line {mark.line + 1} column {mark.column + 1}" if mark else ""
        raise FileError(f"{name}: invalid YAML{where}: {exc.problem or exc.context}") from None
    except yaml.YAMLError as exc:
        raise FileError(f"{name}: invalid YAML: {exc}") from None


# YAML 1.2's core schema, which JSON also follows: PyYAML reads YAML 1.1, where `NO`, `yes`,
# `on` and `off` are booleans, `012` is octal and `1e3` a string. Dates stay text too (a
# cursor's `initial: 2024-01-01` is a string, as it would be in JSON).
_CORE = {
    "tag:yaml.org,2002:bool": (r"^(?:true|True|TRUE|false|False|FALSE)$", list("tTfF")),
    "tag:yaml.org,2002:null": (r"^(?:~|null|Null|NULL|)$", ["~", "n", "N", ""]),
    "tag:yaml.org,2002:int": (r"^(?:[-+]?[0-9]+|0o[0-7]+|0x[0-9a-fA-F]+)$",
                              list("-+0123456789")),
    "tag:yaml.org,2002:float": (
        r"^(?:[-+]?(?:\.[0-9]+|[0-9]+(?:\.[0-9]*)?)(?:[eE][-+]?[0-9]+)?"
        r"|[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$", list("-+.0123456789")),
}


def _core_int(loader: yaml.SafeLoader, node: yaml.ScalarNode) -> int:
    text = str(loader.construct_scalar(node))
    if text.startswith(("0o", "0x")):
        return int(text[2:], 8 if text[1] == "o" else 16)
    return int(text)  # decimal, leading zeros included (`012` is 12, not octal)


def _core_float(loader: yaml.SafeLoader, node: yaml.ScalarNode) -> float:
    text = str(loader.construct_scalar(node)).lower()
    return float(text.replace(".inf", "inf").replace(".nan", "nan"))


@functools.cache
def loader() -> type[yaml.SafeLoader]:
    """A safe loader that resolves plain scalars by YAML 1.2's core schema (see `_CORE`)."""
    replaced = {*_CORE, "tag:yaml.org,2002:timestamp"}

    class Loader(yaml.SafeLoader):
        pass

    Loader.yaml_implicit_resolvers = {
        first: [(tag, rx) for tag, rx in resolvers if tag not in replaced]
        for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
    }
    for tag, (pattern, first) in _CORE.items():
        Loader.add_implicit_resolver(tag, re.compile(pattern), first)
    Loader.add_constructor("tag:yaml.org,2002:int", _core_int)
    Loader.add_constructor("tag:yaml.org,2002:float", _core_float)
    return Loader


def label(index: int, doc: Any) -> str:
    """How errors name a pipeline: its id, else `#n` (1 = the first in the file)."""
    pid = doc.get("id") if isinstance(doc, dict) else None
    return pid if isinstance(pid, str) and pid else f"#{index + 1}"


def prepare(doc: dict[str, Any], existing: Pipeline | None) -> dict[str, Any]:
    """The definition `PipelineService.apply` would store: server and runtime fields dropped
    (a `get`/`list --json` output applies as it is), masked secrets kept from `existing`."""
    data = without_view_fields(doc)
    data.setdefault("source_config", {})  # checked against its type's model even when absent
    if data.get("status") == "error":
        data["status"] = "active"
    if existing is not None:
        data = keep_masked(data, existing.model_dump(mode="json"))
    return data


@dataclass(frozen=True)
class Problem:
    """One problem of one pipeline of a file: `index` its position, `name` its `label`, `loc`
    the field path (`source_config.url`; empty: the whole pipeline). A `note` is a check that
    needs the registry, made without one (`validate`): said, but not an error."""

    index: int
    name: str
    loc: str
    message: str
    note: bool = False

    def __str__(self) -> str:
        return f"{self.name}: {self.loc}: {self.message}" if self.loc else \
            f"{self.name}: {self.message}"


def check(docs: list[Any], existing: Mapping[str, Pipeline]) -> list[str]:
    """Every problem of every pipeline, one line each: `<id or #n>: <field path>: <message>`.
    An empty list means the whole file can be applied."""
    return [str(p) for p in problems(docs, existing)]


def problems(docs: list[Any], existing: Mapping[str, Pipeline], registry: bool = True
             ) -> list[Problem]:
    """The problems of `check`; without the `registry` (offline) what only the registry can
    tell (a masked secret, a source pipeline outside the file) comes back as notes."""
    out: list[Problem] = []
    first_at: dict[str, int] = {}
    for i, doc in enumerate(docs):
        name = label(i, doc)
        if not isinstance(doc, dict):
            out.append(Problem(i, name, "", f"expected a pipeline object, got {_kind(doc)}"))
            continue
        pid = doc.get("id")
        if isinstance(pid, str) and pid:
            if pid in first_at:
                out.append(Problem(i, name, "id", "appears more than once in the file "
                                                  f"(#{first_at[pid] + 1} and #{i + 1})"))
                continue
            first_at[pid] = i
        old = existing.get(pid) if isinstance(pid, str) else None
        data = prepare(doc, old)
        if old is None:
            out += [Problem(i, name, path, f"a masked value ({MASK}) only keeps the secret of "
                            "an existing pipeline; give the real value", note=not registry)
                    for path in masked_paths(data)]
        parent = _source_pipeline(data)
        if parent is not None and parent not in existing and \
                not any(isinstance(d, dict) and d.get("id") == parent for d in docs):
            out.append(Problem(i, name, "source_config.pipeline_id",
                               f"pipeline {parent!r} not found (neither in the file nor in "
                               "the registry)" if registry else
                               f"pipeline {parent!r} is not in the file (checked on apply)",
                               note=not registry))
        try:
            parse(data)
        except Invalid as exc:
            out += [Problem(i, name, e["loc"], e["msg"].removeprefix("Value error, "))
                    for e in exc.errors]  # pydantic's wording
    return out


def _source_pipeline(doc: dict[str, Any]) -> str | None:
    config = doc.get("source_config")
    if doc.get("source_type") == "pipeline" and isinstance(config, dict):
        parent = config.get("pipeline_id")
        return parent if isinstance(parent, str) else None
    return None


def in_order(docs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The documents with every pipeline after the pipeline it reads from (when both are in
    the file), otherwise in file order."""
    by_id = {d.get("id"): d for d in docs}
    done: list[dict[str, Any]] = []
    seen: set[int] = set()

    def visit(doc: dict[str, Any], depth: int = 0) -> None:
        if id(doc) in seen:
            return
        parent = by_id.get(_source_pipeline(doc))
        if parent is not None and depth < len(docs):  # a cycle is the service's to report
            visit(parent, depth + 1)
        if id(doc) not in seen:
            seen.add(id(doc))
            done.append(doc)

    for doc in docs:
        visit(doc)
    return done


def masked_paths(value: Any, path: str = "") -> list[str]:
    """Where `***` stands in `value`, as dotted paths (`source_config.token`)."""
    if value == MASK:
        return [path]
    if isinstance(value, dict):
        return [p for k, v in value.items() for p in masked_paths(v, f"{path}.{k}" if path
                                                                   else str(k))]
    if isinstance(value, list):
        return [p for i, v in enumerate(value) for p in masked_paths(v, f"{path}.{i}")]
    return []


def _kind(value: Any) -> str:
    return {str: "a string", int: "a number", float: "a number", bool: "a boolean",
            list: "a list"}.get(type(value), type(value).__name__)


COLUMNS = ("ID", "TEAM", "TYPE", "STATUS", "INTERVAL", "LAST RUN", "ERROR")


def table(views: list[dict[str, Any]], now: datetime, error_width: int = 60) -> str:
    """`dashpipe pipelines list`: one row per pipeline view (`PipelineService.view`)."""
    rows = [COLUMNS] + [(
        v["id"], v["team_id"], v["type"], v["status"],
        f"{v['interval_seconds']}s" if v.get("interval_seconds") else "-",
        _ago(v.get("last_run_at"), now),
        _short(v.get("error_message") or "-", error_width),
    ) for v in views]
    widths = [max(len(row[c]) for row in rows) for c in range(len(COLUMNS) - 1)]
    return "\n".join("  ".join([*(cell.ljust(w) for cell, w in zip(row, widths, strict=False)),
                                row[-1]]) for row in rows)


def _ago(iso: str | None, now: datetime) -> str:
    if not iso:
        return "-"
    seconds = max(0, int((now - datetime.fromisoformat(iso)).total_seconds()))
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds // size}{unit} ago"
    return f"{seconds}s ago"


def _short(text: str, width: int) -> str:
    text = " ".join(text.split())
    return text if len(text) <= width else text[:width - 1] + "…"
