"""`dashpipe pipelines apply --dry-run`: what applying a file would do to each pipeline, against
what runs, without writing anything.

Each pipeline is `created`, `unchanged` or `changed`, decided the way `PipelineService.apply`
decides it: the file's definition with its `***` values replaced by the running secrets (a file
made from `list -o json` is unchanged), compared with the stored definition. The diff is of the
masked YAML views, so it never shows a secret; a secret that changes shows as a note instead.
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import yaml

from dashpipe.cli.pipeline_files import in_order, masked_paths, prepare
from dashpipe.pipelines import SERVER_FIELDS, parse
from schemas.pipeline import Pipeline


@dataclass(frozen=True)
class Change:
    id: str
    outcome: str  # created | unchanged | changed
    diff: list[str] = field(default_factory=list)  # unified diff of the masked YAML views
    notes: list[str] = field(default_factory=list)

    def lines(self) -> list[str]:
        return [f"{self.id} {self.outcome}", *self.diff, *(f"  note: {n}" for n in self.notes)]


def plan(docs: list[dict[str, Any]], existing: Mapping[str, Pipeline], source: str
         ) -> list[Change]:
    """The change to every pipeline of `docs` (already `check`ed), in the order apply takes
    them; `source` names the file in the diff headers."""
    return [_change(doc, existing.get(str(doc["id"])), source) for doc in in_order(docs)]


def _change(doc: dict[str, Any], old: Pipeline | None, source: str) -> Change:
    pid = str(doc["id"])
    data = prepare(doc, old)
    if old is None:
        new = parse(data)
        return Change(pid, "created", _diff([], _view(new), f"{pid} (not running)",
                                            f"{pid} ({source})"))
    data.setdefault("team_id", old.team_id)  # as apply keeps the running team
    new = parse({**data, "created_at": old.created_at, "updated_at": old.updated_at,
                 "mapping_version": old.mapping_version})
    before, after = old.model_dump(), new.model_dump()
    if before == after:
        return Change(pid, "unchanged")
    outcome = "changed"
    if before["data_mapping"] != after["data_mapping"]:
        outcome += f" (mapping version {old.mapping_version} -> {old.mapping_version + 1})"
    return Change(pid, outcome,
                  _diff(_view(old), _view(new), f"{pid} (running)", f"{pid} ({source})"),
                  _secret_notes(old, new))


def _view(p: Pipeline) -> list[str]:
    shown = {k: v for k, v in p.public().items() if k not in SERVER_FIELDS}
    text: str = yaml.safe_dump(shown, sort_keys=False, allow_unicode=True)
    return text.splitlines()


def _diff(old: list[str], new: list[str], before: str, after: str) -> list[str]:
    return list(difflib.unified_diff(old, new, before, after, lineterm=""))


def _secret_notes(old: Pipeline, new: Pipeline) -> list[str]:
    """The secrets that differ although both masked views show `***` there."""
    raw_old, raw_new = old.model_dump(mode="json"), new.model_dump(mode="json")
    shown_old = set(masked_paths(old.public()))
    return [f"{path}: the secret changes (value not shown)"
            for path in masked_paths(new.public())
            if path in shown_old and _at(raw_old, path) != _at(raw_new, path)]


def _at(value: Any, path: str) -> Any:
    for part in path.split("."):
        if isinstance(value, dict):
            value = value.get(part)
        elif isinstance(value, list) and part.isdigit() and int(part) < len(value):
            value = value[int(part)]
        else:
            return None
    return value
