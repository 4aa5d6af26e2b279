"""What the roles of one process share: the registry, one idempotent producer, one HTTP
client session and the metrics; started once, stopped once. And how the roles run together:
the first role that fails stops the others, then the process."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

import aiohttp
from aiokafka import AIOKafkaProducer

from dashpipe import egress, kafka
from dashpipe.metrics import Metrics
from dashpipe.pipelines import PipelineService
from dashpipe.registry import Registry, RegistryWriter
from dashpipe.settings import Settings
from dashpipe.topics import TopicNames

log = logging.getLogger(__name__)



class ProcessService(PipelineService):
    """The pipeline service of a running process. `stopping` is set the moment the process
    begins to stop (a role failed, or a signal), so the API answers 503 instead of reaching
    for clients that are being closed."""

    def __init__(self, registry: Registry, writer: RegistryWriter,
                 stopping: asyncio.Event | None = None) -> None:
        super().__init__(registry, writer)
        self.stopping = stopping if stopping is not None else asyncio.Event()


@dataclass
class Runtime:
    settings: Settings
    bootstrap: str
    names: TopicNames
    registry: Registry
    writer: RegistryWriter
    service: ProcessService
    http: aiohttp.ClientSession
    producer: AIOKafkaProducer  # the process's one idempotent producer (acks=all)
    metrics: Metrics = field(default_factory=Metrics)
    web_url: str | None = None
    web_ready: asyncio.Event = field(default_factory=asyncio.Event)
    roles: dict[str, object] = field(default_factory=dict)  # role -> its running object

    @property
    def stopping(self) -> asyncio.Event:
        """Set once the roles of this process are being stopped; never cleared."""
        return self.service.stopping

    def __post_init__(self) -> None:
        self.metrics.team_of = self._team_of

    def _team_of(self, pipeline_id: str) -> str | None:
        p = self.registry.pipelines.get(pipeline_id)
        return p.team_id if p is not None else None

    def group(self, role: str) -> str:
        return f"{self.settings.kafka.group_prefix}-{role}"

    async def not_ready(self) -> str | None:
        """Why this process should not take traffic now (None: ready): it is stopping, or
        Kafka does not answer a metadata request within 3 s."""
        if self.stopping.is_set():  # load balancers drain a process that is going down
            return "dashpipe is stopping"
        try:
            await asyncio.wait_for(self.producer.client.fetch_all_metadata(), 3)
        except Exception as exc:  # any failure here means: not ready
            return f"Kafka unreachable: {type(exc).__name__}"
        return None


@asynccontextmanager
async def open_runtime(settings: Settings, bootstrap: str) -> AsyncIterator[Runtime]:
    names = TopicNames.from_prefix(settings.topics.prefix)
    registry = Registry(bootstrap, settings.kafka, names)
    producer = kafka.producer(bootstrap, settings.kafka)
    try:  # a client whose start failed (Kafka unreachable) is stopped too: no "Unclosed"
        await producer.start()
        await registry.start()
        await asyncio.wait_for(registry.ready.wait(), 60)
        writer = RegistryWriter(producer, registry)
        async with aiohttp.ClientSession(  # every outgoing request passes the egress policy
                connector=egress.connector(settings.egress.allow)) as http:
            yield Runtime(settings, bootstrap, names, registry, writer,
                          ProcessService(registry, writer), http, producer)
    finally:
        await _bounded(registry.stop(), "registry consumer")
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
