"""Role `web`: one aiohttp server for the management API, the webhook receiver, health and
metrics."""

from __future__ import annotations

import asyncio
import logging
import platform
from collections.abc import Awaitable, Callable, Mapping

import aiokafka
from aiohttp import web

from agents.ingest.admission import Admission
from agents.ingest.dedup import SeenIds
from agents.ingest.webhooks import Receiver
from agents.web import api
from agents.web.console import Console
from agents.web.dashboard import Dashboard, asset, open_database, page
from agents.web.push import Hub
from agents.web.replays import Replays
from dashpipe import __version__, http, kafka
from dashpipe.batcher import BatchSender
from dashpipe.members import Members
from dashpipe.runtime import Runtime
from streams.deadletters.counts import DeadLetterCounts

log = logging.getLogger(__name__)


Fast = Callable[[web.Request, str], Awaitable[web.StreamResponse]]
ADMISSION = web.AppKey("admission", Admission)  # the cap on webhooks in flight


def fast_webhooks(runner: web.AppRunner, fast: Fast, pipelines: Mapping[str, object]) -> None:
    """Hand `POST /webhooks/<id>` for a known pipeline id straight to the receiver, past the
    router: the runner's server (`AppRunner.server`, after `setup()`) gets a request handler
    that wraps the application's. Every other request goes the usual way, and so does a webhook
    that needs it (an `Expect` header, a query string, an unknown or percent-encoded id); the
    router serves `/webhooks/{id}` with the same handler, so both paths answer alike."""
    server = runner.server
    assert server is not None, "call after runner.setup()"
    usual = server.request_handler

    async def dispatch(request: web.BaseRequest) -> web.StreamResponse:
        path = request.raw_path
        if path.startswith("/webhooks/") and request.method == "POST" and \
                path[10:] in pipelines and "Expect" not in request.headers:
            return await fast(request, path[10:])  # type: ignore[arg-type]
        return await usual(request)

    server.request_handler = dispatch


async def version(request: web.Request) -> web.Response:
    """What runs, without auth (as /healthz): the version `dashpipe --version` prints, the
    Python and the Kafka client (aiokafka) versions."""
    return http.json_response({"version": __version__, "python": platform.python_version(),
                               "kafka_client": aiokafka.__version__})


def make_app(rt: Runtime, sender: BatchSender, board: Dashboard, members: Members | None = None
             ) -> tuple[web.Application, Receiver]:
    max_body = rt.settings.webhook.max_body_bytes
    app = web.Application(client_max_size=max_body)
    receiver = Receiver(rt.registry, sender, rt.settings.webhook, rt.metrics,
                        SeenIds(ttl=rt.settings.webhook.dedup_seconds), members=members)
    admission = app[ADMISSION] = Admission(rt.settings.web.webhooks_in_flight,
                                           rt.settings.web.webhooks_retry_after_seconds,
                                           rt.metrics)  # one count for both webhook paths
    app.router.add_post("/webhooks/{pipeline_id}", admission.guard(receiver.handle))
    app.router.add_get("/webhooks/{pipeline_id}", receiver.handshake)  # Meta's subscription check
    app.add_subapp("/api/", api.make_api(rt.service, rt.settings.api, max_body,
                                         board.routes() + Replays(rt).routes()
                                         + Console(rt).routes()))
    app.router.add_get("/", page)
    app.router.add_get("/static/{name:.+}", asset)

    async def healthz(request: web.Request) -> web.Response:
        return http.json_response({"status": "ok"})

    async def readyz(request: web.Request) -> web.Response:
        if (reason := await rt.not_ready()) is not None:
            return http.error(503, reason, {"Retry-After": "5"})
        return http.json_response({"status": "ready", "pipelines": len(rt.registry.pipelines),
                                  "storage": await board.describe_storage()})

    app.router.add_get("/healthz", healthz)
    app.router.add_get("/version", version)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", http.metrics_handler(rt.metrics))
    app.router.add_route("*", "/{tail:.*}", api.not_found)  # JSON 404 for any other path
    return app, receiver


async def run_web(rt: Runtime) -> None:
    producer = rt.producer
    raw_partitions = len(await kafka.partitions(producer, rt.names.raw))
    await kafka.partitions(producer, rt.names.members)  # missing: says `dashpipe topics create`
    sender = BatchSender(producer, rt.names.raw, raw_partitions,
                         timeout=rt.settings.webhook.ack_timeout_seconds)
    counts = DeadLetterCounts(rt.bootstrap, rt.settings.kafka, rt.names.dlq, rt.metrics)
    rt.service.dead_letters = counts.of
    hub = Hub(rt)
    pool, storage = await open_database(rt)
    board = Dashboard(rt, hub, pool, storage)
    rt.roles["web"] = board
    members = Members(producer, rt.bootstrap, rt.settings.kafka, rt.names.members, "web")
    background = [asyncio.create_task(counts.run(), name="dead-letter counts"),
                  asyncio.create_task(hub.run(), name="live rows"),
                  asyncio.create_task(members.run(), name="web members")]
    await asyncio.wait_for(hub.ready.wait(), 60)
    await asyncio.wait_for(members.ready.wait(), 60)  # shares known before the first request
    app, receiver = make_app(rt, sender, board, members)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    fast_webhooks(runner, app[ADMISSION].guard(receiver.receive), rt.registry.pipelines)
    # reuse_port: `dashpipe run web --processes N` runs N of these on one port
    site = web.TCPSite(runner, rt.settings.web.host, rt.settings.web.port,
                       reuse_port=rt.settings.web.reuse_port)
    await site.start()
    port = runner.addresses[0][1]
    rt.web_url = f"http://{rt.settings.web.host}:{port}"
    rt.web_ready.set()
    log.info("web listening on %s", rt.web_url)
    try:
        await asyncio.Event().wait()
    finally:
        for task in background:
            task.cancel()
        await runner.cleanup()
        if pool is not None:
            await asyncio.wait_for(pool.close(), 10)
