"""The registry on the log: every process materialises the compacted `pipelines` and
`pipeline-status` topics into dicts and keeps tailing them, as Kafka Connect keeps its configs.

Reads are local and instant; writes go to the log and return once this process has read them
back, so a caller sees its own write (and every other process sees it within a poll interval).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

from aiokafka import AIOKafkaProducer, TopicPartition
from pydantic import ValidationError

from dashpipe import kafka
from dashpipe.errors import Unavailable
from dashpipe.settings import KafkaSettings
from dashpipe.topics import TopicNames
from schemas.pipeline import Pipeline, PipelineStatus, SinkStatus

log = logging.getLogger(__name__)

Listener = Callable[[str, Pipeline | None, Pipeline | None], None]


class Registry:
    def __init__(self, bootstrap: str, ks: KafkaSettings, names: TopicNames) -> None:
        self.names = names
        self.pipelines: dict[str, Pipeline] = {}
        self.status: dict[str, PipelineStatus] = {}
        self.sink_status: dict[str, SinkStatus] = {}  # key sink:<id>:<index>:<process>
        self._consumer = kafka.consumer(bootstrap, ks, group_id=None)
        self._positions: dict[TopicPartition, int] = {}
        self._moved = asyncio.Condition()
        self._listeners: list[Listener] = []
        self.own_status: dict[str, bytes] = {}  # status this process wrote, not yet read back
        self._task: asyncio.Task[None] | None = None
        self.ready = asyncio.Event()

    def on_change(self, listener: Listener) -> None:
        """Call `listener(id, old, new)` for every definition change (new None = deleted)."""
        self._listeners.append(listener)

    async def start(self) -> None:
        await self._consumer.start()
        tps = await kafka.partitions(self._consumer, self.names.pipelines, self.names.status)
        self._consumer.assign(tps)
        await self._consumer.seek_to_beginning(*tps)
        ends = await self._consumer.end_offsets(tps)
        self._positions = {tp: 0 for tp in tps}
        self._task = asyncio.create_task(self._run(ends), name="registry")

    async def stop(self) -> None:
        if self._task:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        await self._consumer.stop()

    async def _run(self, ends: dict[TopicPartition, int]) -> None:
        if all(end == 0 for end in ends.values()):
            self.ready.set()
        while True:
            batch = await self._consumer.getmany(timeout_ms=200)
            for tp, records in batch.items():
                for record in records:
                    self._apply(tp.topic, record.key, record.value)
                if records:
                    self._positions[tp] = records[-1].offset + 1
            moved = bool(batch)
            for tp, at in self._positions.items():
                # past what no record shows: the markers of transactions (the poller's)
                position = await self._consumer.position(tp)
                if position > at:
                    self._positions[tp], moved = position, True
            if moved:
                async with self._moved:
                    self._moved.notify_all()
            if not self.ready.is_set() and all(
                    self._positions[tp] >= end for tp, end in ends.items()):
                log.info("registry loaded: %d pipelines", len(self.pipelines))
                self.ready.set()

    def _apply(self, topic: str, key: bytes | None, value: bytes | None) -> None:
        if key is None:
            return
        pid = key.decode()
        try:
            if topic == self.names.pipelines:
                new = Pipeline.model_validate_json(value) if value is not None else None
                old = self.pipelines.pop(pid, None)
                if new is not None:
                    self.pipelines[pid] = new
                for listener in self._listeners:
                    listener(pid, old, new)
            elif pid.startswith("sink:"):
                if value is None:
                    self.sink_status.pop(pid, None)
                else:
                    self.sink_status[pid] = SinkStatus.model_validate_json(value)
            elif value is None:
                self.status.pop(pid, None)
            elif self.own_status.get(pid) == value:
                del self.own_status[pid]  # our own write: the view has it already
            else:
                self.status[pid] = PipelineStatus.model_validate_json(value)
        except ValidationError as exc:  # written by another version: skip it, never stall
            log.warning("skipping unreadable %s record for %s: %s", topic, pid,
                        exc.errors()[0]["msg"])

    async def sync(self, timeout: float = 10.0) -> None:
        """Return once this process has read every definition written before the call."""
        tps = [tp for tp in self._positions if tp.topic == self.names.pipelines]
        ends = await self._consumer.end_offsets(tps)
        for tp, end in ends.items():
            if end > 0:
                await self.wait_for(tp, end - 1, timeout)

    async def wait_for(self, tp: TopicPartition, offset: int, timeout: float = 10.0) -> None:
        """Return once this process has read the record at `offset` of `tp`."""
        async def caught_up() -> None:
            async with self._moved:
                await self._moved.wait_for(lambda: self._positions.get(tp, 0) > offset)

        try:
            await asyncio.wait_for(caught_up(), timeout)
        except TimeoutError:
            raise Unavailable("the registry did not read back its write in time") from None


class RegistryWriter:
    """Writes definitions and status to the log, keyed by pipeline id."""

    def __init__(self, producer: AIOKafkaProducer, registry: Registry) -> None:
        self.producer = producer
        self.registry = registry

    async def _write(self, topic: str, key: str, value: bytes | None, wait: bool) -> None:
        meta: Any = await self.producer.send_and_wait(topic, value, key=key.encode())
        if wait:
            await self.registry.wait_for(meta.topic_partition, meta.offset)

    async def put(self, pipeline: Pipeline) -> None:
        await self._write(self.registry.names.pipelines, pipeline.id,
                          pipeline.model_dump_json().encode(), wait=True)

    async def delete(self, pipeline_id: str) -> None:
        await self._write(self.registry.names.pipelines, pipeline_id, None, wait=True)
        await self._write(self.registry.names.status, pipeline_id, None, wait=False)

    async def put_sink_status(self, status: SinkStatus) -> None:
        key = f"sink:{status.pipeline_id}:{status.sink_index}:{status.process}"
        self.registry.sink_status[key] = status
        await self._write(self.registry.names.status, key, status.model_dump_json().encode(),
                          wait=False)

    async def put_status(self, status: PipelineStatus) -> None:
        """Write the status; the local view changes at once (the writer owns the pipeline)."""
        value = status.model_dump_json().encode()
        self.own(status, value)
        await self._write(self.registry.names.status, status.pipeline_id, value, wait=False)

    def own(self, status: PipelineStatus, value: bytes) -> None:
        """The local view changed as if `value` (the status record) were written: for a caller
        that writes it itself (in a transaction)."""
        self.registry.status[status.pipeline_id] = status
        self.registry.own_status[status.pipeline_id] = value
