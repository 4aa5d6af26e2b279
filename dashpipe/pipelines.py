"""Managing pipelines: the operations behind the HTTP API and the CLI, team-scoped.

`team` is the caller's team id, or `ADMIN` for the admin token (sees every team). Another
team's pipeline is reported as not found, never as forbidden.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, Literal

from dashpipe.errors import DashpipeError
from dashpipe.registry import Registry, RegistryWriter
from dashpipe.settings import ADMIN
from schemas.pipeline import Pipeline, PipelineSource, keep_masked

SERVER_FIELDS = ("created_at", "updated_at", "mapping_version")
VIEW_FIELDS = ("error_message", "last_run_at", "next_due_at", "cursor",
               "dead_letters")  # runtime, read-only


class NotFound(DashpipeError):
    pass


class Conflict(DashpipeError):
    pass


class Invalid(DashpipeError):
    """Input that is not a valid definition; `errors` are `{"loc": "a.b", "msg": ...}`."""

    def __init__(self, errors: list[dict[str, str]]) -> None:
        super().__init__("; ".join(f"{e['loc']}: {e['msg']}" for e in errors))
        self.errors = errors


def without_view_fields(data: dict[str, Any]) -> dict[str, Any]:
    """A definition without what the server adds to a view (so a view can be sent back)."""
    out = {k: v for k, v in data.items() if k not in SERVER_FIELDS + VIEW_FIELDS}
    if isinstance(out.get("sinks"), list):
        out["sinks"] = [{k: v for k, v in sink.items() if k != "status"}
                        if isinstance(sink, dict) else sink for sink in out["sinks"]]
    return out


def parse(data: Any) -> Pipeline:
    from pydantic import ValidationError

    if not isinstance(data, dict):
        raise Invalid([{"loc": "", "msg": "expected a JSON object"}])
    try:
        return Pipeline.model_validate(data)
    except ValidationError as exc:
        raise Invalid([{"loc": ".".join(map(str, e["loc"])),
                        "msg": e["msg"].removeprefix("Value error, ")}
                       for e in exc.errors()]) from None


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386 JSON merge patch: objects merge, null deletes, anything else replaces."""
    if not isinstance(patch, dict):
        return patch
    out = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            out.pop(key, None)
        else:
            out[key] = merge_patch(out.get(key), value)
    return out


def _now() -> datetime:
    return datetime.now(UTC)


class PipelineService:
    def __init__(self, registry: Registry, writer: RegistryWriter) -> None:
        self.registry = registry
        self.writer = writer
        # pipeline id -> dead letters per stage; set by the web role, which counts them
        self.dead_letters: Callable[[str], dict[str, int]] | None = None

    def view(self, p: Pipeline) -> dict[str, Any]:
        """What the API shows: the definition with secrets masked, plus runtime status."""
        out = p.public()
        st = self.registry.status.get(p.id)
        if p.status == "active" and st is not None and st.state == "error":
            out["status"] = "error"
        out["error_message"] = st.error_message if st else None
        out["last_run_at"] = st.last_run_at.isoformat() if st and st.last_run_at else None
        out["next_due_at"] = st.next_due_at.isoformat() if st and st.next_due_at else None
        out["cursor"] = st.cursor if st else None
        if self.dead_letters is not None:
            out["dead_letters"] = self.dead_letters(p.id)
        for i, sink in enumerate(out.get("sinks", [])):
            sink["status"] = self.sink_status(p.id, i)
        return out

    def sink_status(self, pipeline_id: str, index: int) -> dict[str, Any]:
        """Delivered / retrying / dead counts of one sink, summed over the deliver processes,
        the latest error, and the latest report of a process (sent after its attempts, every
        `DASHPIPE_DELIVERY_STATUS_SECONDS` at most)."""
        found = [s for s in self.registry.sink_status.values()
                 if s.pipeline_id == pipeline_id and s.sink_index == index]
        latest = max((s for s in found if s.last_error_at), key=lambda s: s.last_error_at
                     or _now(), default=None)
        attempted = max((s.updated_at for s in found if s.updated_at), default=None)
        return {"delivered": sum(s.delivered for s in found),
                "retrying": sum(s.retrying for s in found),
                "dead": sum(s.dead for s in found),
                "last_error": latest.last_error if latest else None,
                "last_error_at": latest.last_error_at.isoformat()
                if latest and latest.last_error_at else None,
                "last_attempt_at": attempted.isoformat() if attempted else None}

    def list(self, team: str) -> list[Pipeline]:
        return sorted((p for p in self.registry.pipelines.values()
                       if team == ADMIN or p.team_id == team), key=lambda p: p.id)

    def get(self, pipeline_id: str, team: str) -> Pipeline:
        p = self.registry.pipelines.get(pipeline_id)
        if p is None or (team != ADMIN and p.team_id != team):
            raise NotFound(f"pipeline {pipeline_id!r} not found")
        return p

    def _owned(self, data: dict[str, Any], team: str) -> dict[str, Any]:
        data = without_view_fields(data)
        if data.get("status") == "error":  # a view sent back: error is runtime, not asked for
            data["status"] = "active"
        if team != ADMIN:
            if data.get("team_id", team) != team:
                raise Invalid([{"loc": "team_id", "msg": "must be your own team"}])
            data["team_id"] = team
        return data

    async def create(self, data: Any, team: str) -> Pipeline:
        if not isinstance(data, dict):
            raise Invalid([{"loc": "", "msg": "expected a JSON object"}])
        data = self._owned(data, team)
        data.setdefault("id", "p_" + secrets.token_hex(6))
        # an id that is no string is no key (and no id: parse says so)
        if isinstance(data["id"], str) and data["id"] in self.registry.pipelines:
            raise Conflict(f"pipeline {data['id']!r} already exists")
        now = _now()
        pipeline = parse({**data, "created_at": now, "updated_at": now,
                          "mapping_version": 1 if data.get("data_mapping") else 0})
        self._check_source(pipeline)
        await self.writer.put(pipeline)
        return pipeline

    async def replace(self, pipeline_id: str, data: Any, team: str) -> Pipeline:
        old = self.get(pipeline_id, team)
        if not isinstance(data, dict):
            raise Invalid([{"loc": "", "msg": "expected a JSON object"}])
        data = self._owned({**data, "id": pipeline_id}, team)
        if team == ADMIN:
            data.setdefault("team_id", old.team_id)
        return await self._save(old, data)

    async def patch(self, pipeline_id: str, patch: Any, team: str) -> Pipeline:
        old = self.get(pipeline_id, team)
        if not isinstance(patch, dict):
            raise Invalid([{"loc": "", "msg": "expected a JSON object"}])
        # a null for a field that is no field would remove nothing and pass unnoticed
        unknown = [k for k in patch if k not in Pipeline.model_fields and k not in VIEW_FIELDS]
        if unknown:
            raise Invalid([{"loc": k, "msg": "Extra inputs are not permitted"} for k in unknown])
        data = merge_patch(old.model_dump(mode="json", exclude=set(SERVER_FIELDS)), patch)
        return await self._save(old, self._owned({**data, "id": pipeline_id}, team))

    async def _save(self, old: Pipeline, data: dict[str, Any]) -> Pipeline:
        data = keep_masked(data, old.model_dump(mode="json"))
        new = parse({**data, "created_at": old.created_at, "updated_at": old.updated_at,
                     "mapping_version": old.mapping_version})
        # the dumps, as the record keeps them: == would miss a mapping that now spells out
        # one of its defaults
        before, after = old.model_dump(), new.model_dump()
        if after == before:
            return old
        self._check_source(new)
        version = old.mapping_version + (after["data_mapping"] != before["data_mapping"])
        new = new.model_copy(update={"updated_at": _now(), "mapping_version": version})
        await self.writer.put(new)
        return new

    def _check_source(self, p: Pipeline) -> None:
        """A derived pipeline reads an existing pipeline of its own team, and no chain of
        sources leads back to it."""
        if not isinstance(p.source_config, PipelineSource):
            return
        chain = [p.id]
        current: Pipeline | None = p
        while current is not None and isinstance(current.source_config, PipelineSource):
            parent_id = current.source_config.pipeline_id
            if parent_id in chain:
                cycle = " -> ".join([*chain, parent_id])
                raise Invalid([{"loc": "source_config.pipeline_id",
                                "msg": f"pipelines may not feed themselves: {cycle}"}])
            chain.append(parent_id)
            current = self.registry.pipelines.get(parent_id)
            if current is None or current.team_id != p.team_id:
                if len(chain) == 2:  # another team's pipeline is as good as unknown
                    raise Invalid([{"loc": "source_config.pipeline_id",
                                    "msg": f"pipeline {parent_id!r} not found"}])
                return

    async def set_status(self, pipeline_id: str, team: str,
                         status: Literal["active", "paused"]) -> Pipeline:
        old = self.get(pipeline_id, team)
        return await self._save(old, {**old.model_dump(mode="json"), "status": status})

    async def delete(self, pipeline_id: str, team: str) -> None:
        self.get(pipeline_id, team)
        await self.writer.delete(pipeline_id)

    async def apply(self, data: Any) -> tuple[Pipeline, str]:
        """Create or update by id (admin): `created`, `updated` or `unchanged`."""
        if not isinstance(data, dict) or "id" not in data:
            raise Invalid([{"loc": "id", "msg": "apply needs an id in every pipeline"}])
        old = self.registry.pipelines.get(str(data["id"]))
        if old is None:
            return await self.create(data, ADMIN), "created"
        new = await self.replace(old.id, data, ADMIN)
        return new, "unchanged" if new is old else "updated"
