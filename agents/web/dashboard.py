"""The dashboard's reads (role `web`): live rows (SSE, WebSocket), the recent rows, the stored
history, and the console at `/` with its scripts and styles under `/static/`. Every API route
is team-scoped through `api.guarded`."""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import asyncpg
from aiohttp import web

from agents.web import api, history, push
from dashpipe import db, http
from dashpipe.errors import Unavailable
from dashpipe.runtime import Runtime
from schemas.pipeline import Pipeline

log = logging.getLogger(__name__)

STATIC = Path(__file__).parent / "static"
PAGE = STATIC / "index.html"
MAX_RECENT = push.RECENT_ROWS
# What `/static/` serves: a fixed list (never a path from the request onto the disk)
ASSETS = {"console.css": "text/css", "console.js": "text/javascript",
          "util.js": "text/javascript", "chart.js": "text/javascript",
          "panels.js": "text/javascript",
          "vendor/uPlot.min.css": "text/css", "vendor/uPlot.iife.min.js": "text/javascript"}
# Everything the page uses comes from this server: no inline script or style, no CDN, so an
# injected script has nowhere to run from and nowhere to send a token to.
PAGE_POLICY = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
               "connect-src 'self'; base-uri 'none'; form-action 'self'; "
               "frame-ancestors 'none'")


@dataclass
class Dashboard:
    rt: Runtime
    hub: push.Hub
    pool: asyncpg.Pool | None = None
    storage: db.Storage = field(default_factory=db.Storage)

    async def describe_storage(self) -> str:
        """What holds the rows, for `/readyz` (the web role needs no database to be ready)."""
        if self.pool is None:
            return "no database (DASHPIPE_DATABASE_URL unset or unreachable at start)"
        ds = self.rt.settings.database
        try:
            async with self.pool.acquire(timeout=ds.api_acquire_timeout_seconds) as conn:
                return await db.describe(conn, ds.schema_name)
        except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            return f"unavailable ({type(exc).__name__})"

    def routes(self) -> list[api.Route]:
        return [("GET", "/pipelines/{id}/events", self.events),
                ("GET", "/pipelines/{id}/ws", self.websocket),
                ("GET", "/pipelines/{id}/recent", self.recent),
                ("GET", "/pipelines/{id}/data", self.data)]

    def _pipeline(self, request: web.Request) -> Pipeline:
        return self.rt.service.get(request.match_info["id"], request[api.TEAM])

    async def events(self, request: web.Request) -> web.StreamResponse:
        return await push.events(request, self.hub, self._pipeline(request).id)

    async def websocket(self, request: web.Request) -> web.StreamResponse:
        return await push.websocket(request, self.hub, self._pipeline(request).id)

    async def recent(self, request: web.Request) -> web.Response:
        p = self._pipeline(request)
        text = request.query.get("limit", "50")
        if not text.isdigit() or not 1 <= int(text) <= MAX_RECENT:
            return http.error(400, f"limit: a whole number from 1 to {MAX_RECENT}")
        rows = b",".join(push.with_id(push.encode(after), row)
                         for _, _, after, row in self.hub.latest(p.id, int(text)))
        return web.Response(body=b'{"rows":[%s]}' % rows, content_type="application/json")

    async def data(self, request: web.Request) -> web.Response:
        p = self._pipeline(request)
        if self.pool is None:
            return http.error(503, "no database configured (DASHPIPE_DATABASE_URL)")
        if not p.persist_data:
            return http.error(400, f"pipeline {p.id!r} does not persist its rows "
                                  "(persist_data is false)")
        try:
            q = history.parse(request.query, p, datetime.now(UTC))
        except history.BadQuery as exc:
            return http.error(400, str(exc))
        ds = self.rt.settings.database
        try:
            points, source = await history.series(
                self.pool, self.storage, p.id, q, ds.api_acquire_timeout_seconds,
                ds.schema_name, statement_timeout=ds.api_statement_timeout_seconds)
        except asyncpg.UndefinedTableError:
            points, source = [], "rows"  # nothing persisted yet
        except Unavailable as exc:  # pool exhausted, or the query past its deadline
            self.rt.metrics.inc("dashpipe_failed_total", pipeline_id=p.id, stage="data",
                                code="503")
            return http.error(503, str(exc),
                              {"Retry-After": str(max(1, math.ceil(exc.retry_after)))})
        except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            log.warning("data query for %s failed: %s", p.id, type(exc).__name__)
            return http.error(503, "the database is unavailable, retry later",
                             {"Retry-After": "5"})
        return http.json_response({
            "pipeline_id": p.id, "from": q.start, "to": q.end,
            "bucket_seconds": q.bucket.total_seconds(), "agg": q.agg, "fields": q.fields,
            "source": source,
            "points": points})


async def page(request: web.Request) -> web.FileResponse:
    return web.FileResponse(PAGE, headers={"Cache-Control": "no-store",
                                           "X-Content-Type-Options": "nosniff",
                                           "Content-Security-Policy": PAGE_POLICY,
                                           "Referrer-Policy": "no-referrer"})


async def asset(request: web.Request) -> web.StreamResponse:
    """`GET /static/<name>`: one of `ASSETS` (revalidated with its Last-Modified: a new
    release's files are picked up at once), else a JSON 404."""
    name = request.match_info["name"]
    kind = ASSETS.get(name)
    if kind is None:
        return http.error(404, f"no such path: GET {request.path}")
    return web.FileResponse(STATIC / name, headers={
        "Content-Type": f"{kind}; charset=utf-8", "Cache-Control": "no-cache",
        "X-Content-Type-Options": "nosniff"})


async def open_database(rt: Runtime) -> tuple[asyncpg.Pool | None, db.Storage]:
    """The read pool of the data API, or None when no database is configured or reachable
    (the API then answers 503; the rest of the web role works). Its statements have the data
    API's deadline (`api_statement_timeout_seconds`), not the writers' longer one."""
    ds = rt.settings.database
    if ds.url is None:
        return None, db.Storage()
    try:
        pool = await db.create_pool(ds.model_copy(
            update={"statement_timeout_seconds": ds.api_statement_timeout_seconds}))
        async with pool.acquire(timeout=ds.acquire_timeout_seconds) as conn:
            found = await db.storage(conn, ds.schema_name)
        return pool, found
    except (OSError, TimeoutError, asyncpg.PostgresError) as exc:
        log.warning("web: database unavailable (%s); the data API answers 503",
                    type(exc).__name__)
        return None, db.Storage()
