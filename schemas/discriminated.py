"""JSON Schema for configs typed by a sibling field (`source_config` by `source_type`,
`sink_config` by `sink_type`).

The models validate such a config by hand (so that errors name full paths and a source type
that does not fit its pipeline gets one clear error); the JSON Schema says the same thing to
editors, code generators and fuzzers: one `if`/`then` per type, under `allOf`, so that an
editor reports the config's own errors rather than "matches none of oneOf".
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pydantic import BaseModel


def type_config(schema: dict[str, Any], kind_field: str, config_field: str,
                models: Mapping[str, type[BaseModel]], union: tuple[Any, ...]) -> None:
    """Add to the object `schema` one rule per type: when `kind_field` is that type,
    `config_field` is required and holds that type's model. The field's own schema is the
    `union` of the models (so that they are in `$defs`), its `anyOf` in the union's order:
    the rules take their `$ref`s from it (pydantic names them only after this runs)."""
    refs = _refs(schema["properties"][config_field])
    assert len(refs) == len(union), (refs, union)
    rules = [_when(kind_field, kind, {"required": [config_field], "properties": {
        config_field: {"$ref": refs[union.index(model)]}}}) for kind, model in models.items()]
    schema.setdefault("allOf", []).extend(rules)


def fit_kinds(schema: dict[str, Any], field: str, kind_field: str,
              allowed: Mapping[str, set[str]], then: Mapping[str, dict[str, Any]] = {}
              ) -> None:
    """Add a rule per value of `field`: `kind_field` is one of `allowed[value]`, and what
    `then[value]` adds (more required fields, say)."""
    rules = []
    for value, kinds in allowed.items():
        more = then.get(value, {})
        rule = {**more, "properties": {kind_field: {"enum": sorted(kinds)},
                                       **more.get("properties", {})}}
        rules.append(_when(field, value, rule))
    schema.setdefault("allOf", []).extend(rules)


def _when(field: str, value: str, then: dict[str, Any]) -> dict[str, Any]:
    return {"if": {"properties": {field: {"const": value}}, "required": [field]},
            "then": then}


def _refs(node: Any) -> list[str]:
    if isinstance(node, dict):
        found = [node["$ref"]] if isinstance(node.get("$ref"), str) else []
        return found + [r for v in node.values() for r in _refs(v)]
    if isinstance(node, list):
        return [r for v in node for r in _refs(v)]
    return []
