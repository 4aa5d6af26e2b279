"""What the roles of one process share: the registry, one idempotent producer, one HTTP
client session and the metrics; started once, stopped once."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

import aiohttp

from dashpipe import egress, kafka
from dashpipe.metrics import Metrics
from dashpipe.pipelines import PipelineService
from dashpipe.registry import Registry, RegistryWriter
from dashpipe.settings import Settings
from dashpipe.topics import TopicNames

log = logging.getLogger(__name__)


@dataclass
class Runtime:
    settings: Settings
    bootstrap: str
    names: TopicNames
    registry: Registry
    writer: RegistryWriter
    service: PipelineService
    http: aiohttp.ClientSession
    metrics: Metrics = field(default_factory=Metrics)
    web_url: str | None = None
    web_ready: asyncio.Event = field(default_factory=asyncio.Event)
    roles: dict[str, object] = field(default_factory=dict)  # role -> its running object

    def group(self, role: str) -> str:
        return f"{self.settings.kafka.group_prefix}-{role}"


@asynccontextmanager
async def open_runtime(settings: Settings, bootstrap: str) -> AsyncIterator[Runtime]:
    names = TopicNames.from_prefix(settings.topics.prefix)
    registry = Registry(bootstrap, settings.kafka, names)
    producer = kafka.producer(bootstrap, settings.kafka)
    await producer.start()
    try:
        await registry.start()
        try:
            await asyncio.wait_for(registry.ready.wait(), 60)
            writer = RegistryWriter(producer, registry)
            async with aiohttp.ClientSession(  # every outgoing request passes the egress policy
                    connector=egress.connector(settings.egress.allow)) as http:
                yield Runtime(settings, bootstrap, names, registry, writer,
                              PipelineService(registry, writer), http)
        finally:
            await _bounded(registry.stop(), "registry consumer")
    finally:
        # with Kafka gone, stop() would wait forever for records nobody was told were written
        await _bounded(producer.stop(), "producer")


async def _bounded(stopping: Awaitable[None], what: str, seconds: float = 10.0) -> None:
    try:
        await asyncio.wait_for(stopping, seconds)
    except asyncio.CancelledError:
        task = asyncio.current_task()
        if task is not None and task.cancelling():
            raise  # we are being cancelled, not just the client's inner tasks
        log.warning("%s did not stop cleanly (Kafka unreachable?); closed anyway", what)
    except Exception as exc:  # shutting down: report, never mask the real outcome
        log.warning("%s did not stop cleanly (%s: Kafka unreachable?); closed anyway",
                    what, type(exc).__name__)


RoleMain = Callable[[Runtime], Awaitable[None]]


def role_mains() -> dict[str, RoleMain]:
    """Role name -> its main coroutine (imported here, so a process loads only what it runs)."""
    from agents.deliver import run_deliverer
    from agents.persist import run_persist
    from agents.poller import run_poller
    from agents.web import run_web
    from streams.mapper import run_mapper

    return {"web": run_web, "poll": run_poller, "map": run_mapper, "persist": run_persist,
            "deliver": run_deliverer}


async def run_roles(rt: Runtime, roles: list[str]) -> None:
    mains = role_mains()

    async def one(role: str) -> None:
        log.info("role %s ready (group %s)", role, rt.group(role))
        await mains[role](rt)

    jobs = [one(role) for role in roles]
    if "web" not in roles and rt.settings.web.metrics_port is not None:
        jobs.append(serve_metrics(rt, rt.settings.web.metrics_port))
    await asyncio.gather(*jobs)


async def serve_metrics(rt: Runtime, port: int) -> None:
    """`/metrics` and `/healthz` of a process that runs no web role (Prometheus scrapes each
    process: a role's counters live in its own process)."""
    from aiohttp import web

    async def metrics(request: web.Request) -> web.Response:
        return web.Response(text=rt.metrics.render(), content_type="text/plain")

    async def healthz(request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    app = web.Application()
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/healthz", healthz)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, rt.settings.web.host, port).start()
    log.info("metrics on http://%s:%d/metrics", rt.settings.web.host, port)
    try:
        await asyncio.Event().wait()
    finally:
        await runner.cleanup()
