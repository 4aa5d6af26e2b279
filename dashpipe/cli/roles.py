"""The role table: every role a process can run, its main coroutine, its input topics and
whether its consumer group commits offsets; and how the roles of one process run together
(the first that fails stops the others, then the process). The only module that names every
role: the CLI, the Faust app and `dashpipe offsets` read this table.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
from collections.abc import Callable, Coroutine, Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote, urlsplit

from pydantic import SecretStr

from agents.deliver.deliverer import run_deliverer
from agents.ingest.poller import run_poller
from agents.persist.persister import run_persist
from agents.web.server import run_web
from dashpipe import __version__, logs
from dashpipe.errors import DashpipeError
from dashpipe.runtime import Runtime
from dashpipe.settings import Settings
from streams.mapping.mapper import run_mapper

log = logging.getLogger(__name__)

RoleMain = Callable[[Runtime], Coroutine[Any, Any, None]]


@dataclass(frozen=True)
class Role:
    main: RoleMain
    inputs: tuple[str, ...]  # `TopicNames` fields it consumes
    committed: bool  # its group commits offsets on its inputs (`dashpipe offsets` moves them)
    grouped: bool = True  # consumes in group `<group prefix>-<role>` (web reads without one)


ROLES: dict[str, Role] = {
    "web": Role(run_web, ("pipelines", "status", "transformed"), committed=False, grouped=False),
    "poll": Role(run_poller, ("pipelines", "status"), committed=False),
    "map": Role(run_mapper, ("raw",), committed=True),
    "persist": Role(run_persist, ("transformed",), committed=True),
    "deliver": Role(run_deliverer, ("transformed", "retry"), committed=True),
}

STOP_SECONDS = 30.0  # how long the other roles get to stop once one has failed


class RoleFailed(DashpipeError):
    """A role of this process failed (at start or later) and the process stops. The message
    is the one line an operator reads: `role persist failed: DataError: invalid input ...`."""

    def __init__(self, role: str, cause: str) -> None:
        super().__init__(f"role {role} failed: {cause}")
        self.role = role
        self.cause = cause


async def run_roles(rt: Runtime, roles: list[str]) -> None:
    """Run the roles until one of them ends, which only a failure does: then the others are
    stopped and `RoleFailed` names the first role and its cause. Cancelled (the process is
    told to stop), it stops every role before it returns. Either way `rt.stopping` is set
    first, so the API answers 503 while the roles stop."""
    tasks: dict[asyncio.Task[None], str] = {}
    rt.metrics.set("dashpipe_info", 1, version=__version__, roles=",".join(roles))
    for role in roles:
        log.info("role %s ready (group %s)", role, rt.group(role))
        main = logs.in_role(role, ROLES[role].main(rt))  # its records (json) name the role
        tasks[asyncio.create_task(main, name=f"role {role}")] = role
    # a process without the web role still serves /metrics; so does a web process that
    # shares its port with others (`--processes`), whose port answers for any one of them
    shared = "web" in roles and rt.settings.web.reuse_port
    if ("web" not in roles or shared) and rt.settings.web.metrics_port is not None:
        task = asyncio.create_task(serve_metrics(rt, rt.settings.web.metrics_port,
                                                   web_role=shared))
        tasks[task] = "metrics"
    try:
        done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        rt.stopping.set()
        await _stop_all(rt, tasks)
    first = next(t for t in tasks if t in done)  # in the order the roles were named
    raise _failure(rt, tasks[first], first)


def _failure(rt: Runtime, role: str, task: asyncio.Task[None]) -> RoleFailed:
    cause = None if task.cancelled() else task.exception()
    if cause is None:  # a role runs until it is stopped: ending on its own is a bug
        return RoleFailed(role, "ended without being stopped")
    log.debug("role %s failed", role, exc_info=cause)  # the traceback, for --log-level debug
    return RoleFailed(role, describe(cause, rt.settings))


async def _stop_all(rt: Runtime, tasks: dict[asyncio.Task[None], str]) -> None:
    """Cancel the roles still running and wait (bounded) until each has cleaned up; a role
    that fails while stopping is reported, not raised (the first failure is the story)."""
    running = [t for t in tasks if not t.done()]
    for task in running:
        task.cancel()
    if running:
        _, late = await asyncio.wait(running, timeout=STOP_SECONDS)
        for task in late:
            log.warning("role %s did not stop within %.0f s", tasks[task], STOP_SECONDS)
        for task in running:
            if task.done() and not task.cancelled() and (error := task.exception()):
                log.warning("role %s did not stop cleanly: %s", tasks[task],
                            describe(error, rt.settings))


def describe(exc: BaseException, settings: Settings) -> str:
    """`Type: message` of an error on one line, with the error it was raised from or while
    handling (a failed cleanup hides the real cause: `InterfaceError: ... connection is
    closed (while handling AdminShutdownError: terminating connection ...)`). Any secret of
    `settings` is masked: a driver's message may quote what it was given."""
    text = _one(exc, settings)
    if exc.__cause__ is not None:
        text += f" (caused by {_one(exc.__cause__, settings)})"
    elif exc.__context__ is not None and not exc.__suppress_context__:
        text += f" (while handling {_one(exc.__context__, settings)})"
    return text


def _one(exc: BaseException, settings: Settings) -> str:
    text = " ".join(str(exc).split())
    for secret in sorted(set(secret_values(settings)), key=len, reverse=True):
        text = text.replace(secret, "***")
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def secret_values(settings: Settings) -> Iterator[str]:
    """Every `SecretStr` value in the settings (and the password inside a URL-valued one)."""
    for group in dataclasses.fields(settings):
        yield from _secrets_in(getattr(settings, group.name).model_dump())


def _secrets_in(value: Any) -> Iterator[str]:
    if isinstance(value, SecretStr):
        secret = value.get_secret_value()
        if secret:
            yield secret
            with contextlib.suppress(ValueError):  # not a URL after all
                password = urlsplit(secret).password if "://" in secret else None
                if password:
                    yield password
                    yield unquote(password)
    elif isinstance(value, dict):
        for key, item in value.items():
            yield from _secrets_in(key)
            yield from _secrets_in(item)
    elif isinstance(value, list | tuple | set | frozenset):
        for item in value:
            yield from _secrets_in(item)


async def serve_metrics(rt: Runtime, port: int, web_role: bool = False) -> None:
    """`/metrics`, `/healthz` and `/readyz` of a process that runs no web role (Prometheus
    scrapes each process: a role's counters live in its own process; an orchestrator asks
    each whether it is ready), or of a web process that shares its port with others
    (`web_role`: ready once the web role listens)."""
    from aiohttp import web

    from dashpipe import http

    async def healthz(request: web.Request) -> web.Response:
        return http.json_response({"status": "ok"})

    async def readyz(request: web.Request) -> web.Response:
        reason = ("web is not listening yet" if web_role and not rt.web_ready.is_set()
                  else await rt.not_ready())
        if reason is not None:
            return http.error(503, reason, {"Retry-After": "5"})
        return http.json_response({"status": "ready", "roles": sorted(rt.roles)})

    app = web.Application()
    app.router.add_get("/metrics", http.metrics_handler(rt.metrics))
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, rt.settings.web.host, port).start()
    log.info("metrics on http://%s:%d/metrics", rt.settings.web.host, port)
    try:
        await asyncio.Event().wait()
    finally:
        await runner.cleanup()
