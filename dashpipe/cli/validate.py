"""`dashpipe pipelines validate -f FILE`: every pipeline of a file checked with the models
`apply` uses, offline (no Kafka), each problem with its field path and, when the file is
YAML or JSON that PyYAML can compose, its line.

What only the registry can tell (a `***` secret, a source pipeline outside the file) is
printed as a note and does not fail the check.
"""

from __future__ import annotations

from typing import Any

import yaml

from dashpipe.cli import pipeline_files
from dashpipe.cli.pipeline_files import Problem

_NULL = "tag:yaml.org,2002:null"


def report(docs: list[Any], text: str | None) -> tuple[list[str], bool]:
    """The lines to print (`ok <id>`, problems, notes) and whether every pipeline is valid.
    `text` is the file's text (None: no line numbers)."""
    found = pipeline_files.problems(docs, {}, registry=False)
    nodes = pipeline_nodes(text, len(docs)) if text is not None else []
    lines: list[str] = []
    for i, doc in enumerate(docs):
        mine = [p for p in found if p.index == i]
        errors = [p for p in mine if not p.note]
        if not errors:
            lines.append(f"ok {pipeline_files.label(i, doc)}")
        lines += [_line(p, nodes[i] if nodes else None) for p in errors]
        lines += [f"  note: {_line(p, nodes[i] if nodes else None)}" for p in mine if p.note]
    return lines, not any(not p.note for p in found)


def _line(p: Problem, node: yaml.Node | None) -> str:
    where = line_of(node, p.loc) if node is not None else None
    return f"{p} (line {where})" if where is not None else str(p)


def pipeline_nodes(text: str, expected: int) -> list[yaml.Node]:
    """The YAML node of each pipeline, in the order `pipeline_files.read` gives them; empty
    when the text does not compose or the counts differ (then there are no line numbers)."""
    try:
        roots = list(yaml.compose_all(text, Loader=pipeline_files.loader()))
    except yaml.YAMLError:
        return []
    out: list[yaml.Node] = []
    for root in roots:
        if root is None or root.tag == _NULL:
            continue
        wrapped = _get(root, "pipelines") if isinstance(root, yaml.MappingNode) else None
        if isinstance(wrapped, yaml.SequenceNode):
            out += wrapped.value
        elif isinstance(root, yaml.SequenceNode):
            out += root.value
        else:
            out.append(root)
    return out if len(out) == expected else []


def line_of(node: yaml.Node, loc: str) -> int:
    """The line (1 = first) of the field at `loc` (`source_config.url`, `sinks.0.url`), or of
    the nearest enclosing object that exists (a missing field: the object that lacks it)."""
    for part in loc.split(".") if loc else []:
        child = _get(node, part)
        if child is None:
            break
        node = child
    return int(node.start_mark.line) + 1


def _get(node: yaml.Node, part: str) -> yaml.Node | None:
    if isinstance(node, yaml.MappingNode):
        for key, value in node.value:
            if isinstance(key, yaml.ScalarNode) and key.value == part:
                return value  # type: ignore[no-any-return]
    elif isinstance(node, yaml.SequenceNode) and part.isdigit() and int(part) < len(node.value):
        return node.value[int(part)]  # type: ignore[no-any-return]
    return None
