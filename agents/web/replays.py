"""Replays through the API (role `web`), for the team that owns the pipeline:
`POST /api/pipelines/{id}/replay` `{"from", "to"?, "dry_run"?, "mapping"?}` answers a dry run's
diff directly (200), or starts a written replay in this process and answers 202;
`GET /api/pipelines/{id}/replay` tells its progress. One replay per pipeline at a time."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from agents.web import api
from dashpipe import http
from dashpipe.runtime import Runtime
from schemas.mapping import Mapping
from streams.replay.replay import bounds, replay
from streams.replay.status import ReplayError, ReplayStatus

log = logging.getLogger(__name__)


def _bound(value: Any) -> bool:
    """A replay bound as JSON gives it: a time (text) or an offset (an integer, not a bool)."""
    return isinstance(value, str | int) and not isinstance(value, bool)


@dataclass
class Replays:
    rt: Runtime
    running: dict[str, asyncio.Task[dict[str, Any]]] = field(default_factory=dict)
    progress: dict[str, dict[str, Any]] = field(default_factory=dict)
    finished: dict[str, dict[str, Any]] = field(default_factory=dict)

    def routes(self) -> list[api.Route]:
        return [("POST", "/pipelines/{id}/replay", self.start),
                ("GET", "/pipelines/{id}/replay", self.status)]

    async def start(self, request: web.Request) -> web.Response:
        team = request[api.TEAM]
        p = self.rt.service.get(request.match_info["id"], team)
        body = await api.read_json(request)
        if not isinstance(body, dict) or not _bound(body.get("from")):
            return http.error(400, "from: an RFC 3339 time or a raw offset is required")
        if body.get("to") is not None and not _bound(body["to"]):
            return http.error(400, "to: an RFC 3339 time or a raw offset")
        start, end = str(body["from"]), body.get("to")
        end = None if end is None or end == "" else str(end)  # "": no end, as before
        dry_run = body.get("dry_run", False)
        if not isinstance(dry_run, bool):
            return http.error(400, "dry_run: true or false")
        workers = body.get("workers", 1)
        if isinstance(workers, float) and workers.is_integer():
            workers = int(workers)  # 4.0 is the integer 4 in JSON (and JSON Schema)
        if not isinstance(workers, int) or isinstance(workers, bool) or not 1 <= workers <= 8:
            return http.error(400, "workers: an integer from 1 to 8")
        spec = None
        if body.get("mapping") is not None and dry_run:
            try:
                spec = Mapping.model_validate(body["mapping"])
            except ValueError as exc:
                return http.error(422, f"mapping: {exc}")
        if p.id in self.running:
            return http.error(409, f"a replay of {p.id!r} is running")
        if dry_run:
            try:
                return http.json_response(await replay(self.rt, p, start, end,
                                                      spec, dry_run=True))
            except ReplayError as exc:
                return http.error(400, str(exc))
        try:
            await bounds(self.rt, p, start, end)  # refuse bad bounds now
        except ReplayError as exc:
            return http.error(400, str(exc))
        if body.get("mapping") is not None:  # a written replay with a new mapping saves it
            p = await self.rt.service.patch(p.id, {"data_mapping": body["mapping"]}, team)
        pid = p.id

        def report(status: ReplayStatus) -> None:
            self.progress[pid] = status.view()

        task = asyncio.create_task(replay(self.rt, p, start, end, progress=report,
                                          workers=workers))
        self.running[pid] = task
        task.add_done_callback(lambda t: self._done(pid, t))
        return http.json_response({"status": "started", "pipeline_id": p.id,
                                  "mapping_version": p.mapping_version}, 202,
                                 {"Location": f"/api/pipelines/{p.id}/replay"})

    def _done(self, pid: str, task: asyncio.Task[dict[str, Any]]) -> None:
        self.running.pop(pid, None)
        if task.cancelled():
            self.finished[pid] = {"done": False, "error": "cancelled"}
        elif task.exception() is not None:
            exc = task.exception()
            log.warning("replay of %s failed: %s", pid, exc)
            self.finished[pid] = {"done": False, "error": str(exc)}
        else:
            self.finished[pid] = task.result()

    async def status(self, request: web.Request) -> web.Response:
        p = self.rt.service.get(request.match_info["id"], request[api.TEAM])
        if p.id in self.running:
            return http.json_response({"running": True, **self.progress.get(p.id, {})})
        if p.id in self.finished:
            return http.json_response({"running": False, **self.finished[p.id]})
        return http.error(404, f"no replay of {p.id!r} in this web process")
