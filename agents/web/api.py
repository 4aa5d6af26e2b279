"""The management API (role `web`): `/api/pipelines` CRUD, pause and resume, team-scoped by
bearer token. Every error is JSON `{"error": ...}` with the right 4xx; secrets never leave.
While the process is stopping, every route answers 503 with `Retry-After`."""

from __future__ import annotations

import asyncio
import base64
import hmac
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
from aiohttp import web
from aiokafka.errors import KafkaError

from dashpipe import jsonio
from dashpipe.errors import Unavailable
from dashpipe.http import error, json_response
from dashpipe.pipelines import Conflict, Invalid, NotFound, PipelineService
from dashpipe.runtime import ProcessService
from dashpipe.settings import ADMIN, ApiSettings
from schemas import openapi

log = logging.getLogger(__name__)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
SERVICE = web.AppKey("service", PipelineService)
API_SETTINGS = web.AppKey("api_settings", ApiSettings)
STOPPING = web.AppKey("stopping", asyncio.Event)  # the process's `Runtime.stopping`
TEAM = web.RequestKey("team", str)
STOPPING_RETRY_SECONDS = 5  # a supervisor restarts a process in about that time


async def read_json(request: web.Request) -> Any:
    try:
        return jsonio.loads(await request.read())
    except jsonio.InvalidJson as exc:
        raise web.HTTPBadRequest(text=orjson.dumps({"error": str(exc)}).decode(),
                                 content_type="application/json") from None


SESSION_COOKIE = "dashpipe_session"
READ_METHODS = ("GET", "HEAD")


def session_value(settings: ApiSettings, team: str, now: float) -> str:
    """A signed, expiring browser session for `team`: `<team b64>.<expiry>.<hmac>`."""
    team_part = base64.urlsafe_b64encode(team.encode()).decode().rstrip("=")
    payload = f"{team_part}.{int(now) + settings.session_seconds}"
    return f"{payload}.{_mac(settings, payload)}"


def session_team(settings: ApiSettings, value: str, now: float) -> str | None:
    team_part, _, rest = value.partition(".")
    expiry, _, mac = rest.partition(".")
    if not expiry.isdigit() or int(expiry) < now or not hmac.compare_digest(
            mac, _mac(settings, f"{team_part}.{expiry}")):
        return None
    try:
        team = base64.urlsafe_b64decode(team_part + "=" * (-len(team_part) % 4)).decode()
    except (ValueError, UnicodeDecodeError):
        return None
    return None if team == ADMIN and settings.admin_token is None else team


def _mac(settings: ApiSettings, payload: str) -> str:
    return hmac.digest(settings.session_key(), payload.encode(), "sha256").hex()


def caller(request: web.Request) -> str | None:
    """The caller's team: from a bearer token, or (reads only) from a browser session, which
    keeps long-lived tokens out of URLs: EventSource cannot send headers."""
    settings = request.app[API_SETTINGS]
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    if scheme:
        return settings.team_for(token.strip()) if scheme.lower() == "bearer" else None
    cookie = request.cookies.get(SESSION_COOKIE)
    if cookie and request.method in READ_METHODS:
        return session_team(settings, cookie, time.time())
    return None


def guarded(handler: Handler) -> Handler:
    """An API handler behind the bearer-token check and the error mapping. A wrapper per
    route, not app middlewares: aiohttp runs an app's middlewares (and, for a parent app, a
    per-request wrapper) on every route of the server, the webhook hot path included."""

    async def guard(request: web.Request) -> web.StreamResponse:
        team = caller(request)
        if team is None:
            return error(401, "missing or unknown bearer token",
                         headers={"WWW-Authenticate": 'Bearer realm="dashpipe"'})
        stopping = request.app[STOPPING]
        if stopping.is_set():
            return stopping_response()
        request[TEAM] = team
        try:
            return await handler(request)
        except web.HTTPException as exc:
            if exc.content_type == "application/json":
                raise
            return error(exc.status, exc.reason)
        except Invalid as exc:
            return error(422, "invalid pipeline", errors=exc.errors)
        except NotFound as exc:
            return error(404, str(exc))
        except Conflict as exc:
            return error(409, str(exc))
        except Unavailable as exc:
            return error(503, str(exc),
                         headers={"Retry-After": str(int(exc.retry_after) or 1)})
        except Exception as exc:
            if stopping.is_set():  # the process began to stop under this request
                log.info("%s %s answered 503: stopping (%s)", request.method, request.path,
                         type(exc).__name__)
                return stopping_response()
            if isinstance(exc, KafkaError):  # a definition's write was not acknowledged
                log.warning("%s %s answered 503: %s", request.method, request.path,
                            type(exc).__name__)
                return error(503, "Kafka is unavailable, retry later", {"Retry-After": "5"})
            log.exception("unhandled error on %s %s", request.method, request.path)
            return error(500, "internal error")

    return guard


def stopping_response() -> web.Response:
    return error(503, "dashpipe is stopping; retry (another process answers, or this one "
                      "once restarted)", {"Retry-After": str(STOPPING_RETRY_SECONDS)})


def _service(request: web.Request) -> PipelineService:
    return request.app[SERVICE]


async def list_pipelines(request: web.Request) -> web.Response:
    svc = _service(request)
    return json_response({"pipelines": [svc.view(p) for p in svc.list(request[TEAM])]})


async def create_pipeline(request: web.Request) -> web.Response:
    svc = _service(request)
    p = await svc.create(await read_json(request), request[TEAM])
    return json_response(svc.view(p), 201, {"Location": f"/api/pipelines/{p.id}"})


async def get_pipeline(request: web.Request) -> web.Response:
    svc = _service(request)
    return json_response(svc.view(svc.get(request.match_info["id"], request[TEAM])))


async def put_pipeline(request: web.Request) -> web.Response:
    svc = _service(request)
    p = await svc.replace(request.match_info["id"], await read_json(request), request[TEAM])
    return json_response(svc.view(p))


async def patch_pipeline(request: web.Request) -> web.Response:
    svc = _service(request)
    p = await svc.patch(request.match_info["id"], await read_json(request), request[TEAM])
    return json_response(svc.view(p))


async def delete_pipeline(request: web.Request) -> web.Response:
    await _service(request).delete(request.match_info["id"], request[TEAM])
    return web.Response(status=204)


async def pause_pipeline(request: web.Request) -> web.Response:
    svc = _service(request)
    p = await svc.set_status(request.match_info["id"], request[TEAM], "paused")
    return json_response(svc.view(p))


async def resume_pipeline(request: web.Request) -> web.Response:
    svc = _service(request)
    p = await svc.set_status(request.match_info["id"], request[TEAM], "active")
    return json_response(svc.view(p))


async def open_session(request: web.Request) -> web.Response:
    """`POST /api/session` with a bearer token: a browser session cookie (HttpOnly,
    SameSite=Strict), good for reads only."""
    response = web.Response(status=204)
    response.set_cookie(SESSION_COOKIE, session_value(request.app[API_SETTINGS], request[TEAM],
                                                      time.time()),
                        max_age=request.app[API_SETTINGS].session_seconds, httponly=True,
                        samesite="Strict", path="/api/")
    return response


async def close_session(request: web.Request) -> web.Response:
    response = web.Response(status=204)
    response.del_cookie(SESSION_COOKIE, path="/api/")
    return response


async def openapi_document(request: web.Request) -> web.Response:
    """`GET /api/openapi.json`: the OpenAPI 3.1 document of this API (schemas/openapi.py)."""
    return web.Response(body=openapi.render(), content_type="application/json")


Route = tuple[str, str, Handler]


def make_api(service: ProcessService, settings: ApiSettings, max_body: int,
             routes: list[Route] = []) -> web.Application:  # noqa: B006 (read only)
    """The `/api/` sub-application; every route is `guarded`, `routes` too."""
    app = web.Application(client_max_size=max_body)
    app[SERVICE] = service
    app[API_SETTINGS] = settings
    app[STOPPING] = service.stopping
    app.router.add_get("/pipelines", guarded(list_pipelines))
    app.router.add_post("/pipelines", guarded(create_pipeline))
    app.router.add_get("/pipelines/{id}", guarded(get_pipeline))
    app.router.add_put("/pipelines/{id}", guarded(put_pipeline))
    app.router.add_patch("/pipelines/{id}", guarded(patch_pipeline))
    app.router.add_delete("/pipelines/{id}", guarded(delete_pipeline))
    app.router.add_post("/pipelines/{id}/pause", guarded(pause_pipeline))
    app.router.add_post("/pipelines/{id}/resume", guarded(resume_pipeline))
    app.router.add_post("/session", guarded(open_session))
    app.router.add_delete("/session", close_session)
    app.router.add_get("/openapi.json", openapi_document)  # public: the contract is no secret
    for method, path, handler in routes:
        app.router.add_route(method, path, guarded(handler))
    app.router.add_route("*", "/{tail:.*}", not_found)  # JSON 404/405, as outside /api/
    return app


async def not_found(request: web.Request) -> web.Response:
    """The catch-all route's answer: 405 with `Allow` when other routes serve the path with
    other methods (`TRACE /healthz`), else 404; JSON either way."""
    allowed: set[str] = set()
    for resource in request.app.router.resources():
        if resource is not request.match_info.route.resource:
            match, methods = await resource.resolve(request)
            if match is None:
                allowed |= methods
    if allowed:
        return error(405, f"{request.method} is not allowed on {request.path}",
                     {"Allow": ", ".join(sorted(allowed))})
    return error(404, f"no such path: {request.method} {request.path}")
