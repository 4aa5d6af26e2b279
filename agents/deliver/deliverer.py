"""Role `deliver`: rows to each pipeline's sinks. Consumer group `<prefix>-deliver` on the
transformed topic and the retry topic.

Every sink of every pipeline has its own queue and `concurrency` workers, so a slow or failing
sink never holds up another sink, another pipeline or the partition; when a sink's queue is full,
new deliveries go to the retry topic instead of waiting. A failed attempt that may succeed later
is written to the retry topic with its due time (`DASHPIPE_DELIVERY_RETRY_SCHEDULE`, jittered,
at least the `Retry-After` asked for); the retry topic is read back by this role, each record
held until due. Nothing waits in memory only: offsets (of both topics) are committed up to the
first record whose deliveries are not settled (delivered, written to the retry topic, or
written as a dead letter), so a restart repeats what was in flight and loses nothing.
Receivers deduplicate by the message id (`webhook-id`), derived from the row's lineage and the
sink's index, the same on every attempt and every replay.
"""

from __future__ import annotations

import asyncio
import heapq
import logging
import random
import time
import uuid
from collections import defaultdict
from collections.abc import Awaitable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, NamedTuple

import aiohttp
import orjson
from aiokafka import ConsumerRebalanceListener, TopicPartition

from agents.deliver.sinks import SINKS, Attempt, Build, SinkRequest, answered, not_answered, start
from agents.deliver.sinks.queue import SinkQueue
from dashpipe import kafka
from dashpipe.batcher import BatchSender
from dashpipe.metrics import Labels, labels_key
from dashpipe.runtime import Runtime
from schemas.headers import Header, pipeline_id_header
from schemas.pipeline import HttpApiSink, Pipeline, SinkStatus
from schemas.records import dead_letter, message_id, retry_record

log = logging.getLogger(__name__)

Origin = tuple[TopicPartition, int]
# records taken from the consumer at a time. aiokafka sends no new fetch to a broker while
# records it fetched earlier wait unconsumed (up to 100 ms), so the sink queues would run dry
# behind records still sitting in its buffer if fewer were taken
INTAKE_RECORDS = 5000
PARK_SECONDS = 5.0  # a delivery parked because its failing sink is behind comes back then


class Target(NamedTuple):
    """One sink of a pipeline as the deliverer uses it."""
    sink_index: int
    enabled: bool
    batched: bool
    config: Any  # the typed sink config; None when disabled
    build: Build


@dataclass(slots=True)
class Delivery:
    pipeline_id: str
    sink_index: int
    rows: list[dict[str, Any]]
    msg_id: str
    attempts: list[dict[str, Any]] = field(default_factory=list)
    origins: list[Origin] = field(default_factory=list)  # records settled by this delivery
    due: float = 0.0
    body: bytes | None = None  # the one row's JSON as read from the topic
    # the rows' raw receipt times (ms), until the first success; unknown after a retry topic
    received: list[int] = field(default_factory=list)

    def retry_record(self) -> bytes:
        return retry_record(self.pipeline_id, self.sink_index, self.msg_id, self.rows,
                            self.attempts, self.due)

    @classmethod
    def from_retry(cls, value: bytes) -> Delivery:
        r = orjson.loads(value)
        return cls(r["pipeline_id"], r["sink_index"], r["rows"], r["msg_id"],
                   r.get("attempts", []), due=float(r["due_at"]))


class Offsets:
    """Per partition, the records whose deliveries are not settled; commit below the first."""

    def __init__(self) -> None:
        self.pending: dict[TopicPartition, dict[int, int]] = defaultdict(dict)
        self.next: dict[TopicPartition, int] = {}

    def add(self, tp: TopicPartition, offset: int, count: int) -> None:
        self.next[tp] = offset + 1
        if count:
            self.pending[tp][offset] = count

    def settle(self, origin: Origin) -> None:
        tp, offset = origin
        left = self.pending[tp].get(offset)
        if left is None:
            return  # the partition was revoked meanwhile
        if left <= 1:
            del self.pending[tp][offset]
        else:
            self.pending[tp][offset] = left - 1

    def committable(self) -> dict[TopicPartition, int]:
        return {tp: min(self.pending[tp], default=end) for tp, end in self.next.items()}

    def forget(self, tps: list[TopicPartition]) -> None:
        for tp in tps:
            self.pending.pop(tp, None)
            self.next.pop(tp, None)


@dataclass
class _Batch:
    started: float
    rows: list[dict[str, Any]] = field(default_factory=list)
    origins: list[Origin] = field(default_factory=list)
    size: int = 0
    received: list[int] = field(default_factory=list)


@dataclass
class SinkCounts:
    delivered: int = 0
    dead: int = 0
    retrying: int = 0
    last_error: str | None = None
    last_error_at: datetime | None = None
    changed: bool = True
    healthy: bool = True  # the last attempt succeeded
    published: int = 0  # delivered already in /metrics


class Deliverer(ConsumerRebalanceListener):  # type: ignore[misc]
    def __init__(self, rt: Runtime, partitions: dict[str, int]) -> None:
        self.rt = rt
        self.settings = rt.settings.delivery
        self.partitions = partitions
        self.offsets = Offsets()
        self.queues: dict[tuple[str, int], SinkQueue[Delivery]] = {}
        self.workers: list[asyncio.Task[None]] = []
        self.held: list[tuple[float, int, Delivery]] = []  # retries not due yet (a heap)
        self.batches: dict[tuple[str, int], _Batch] = {}  # rows gathering for batched sinks
        self.counts: dict[tuple[str, int], SinkCounts] = defaultdict(SinkCounts)
        self.process = uuid.uuid4().hex[:12]
        producer = rt.producer
        self.retries = BatchSender(producer, rt.names.retry, partitions[rt.names.retry])
        self.dead_letters = BatchSender(producer, rt.names.dlq, partitions[rt.names.dlq])
        self._seq = 0
        self._plans: dict[str, tuple[Pipeline, list[Target]]] = {}

    # --- rebalance ----------------------------------------------------------------------
    async def on_partitions_revoked(self, revoked: list[TopicPartition]) -> None:
        gone = set(revoked)
        await self.flush_batches(everything=True)  # rows go out; revoked origins forgotten
        self.held = [h for h in self.held if not set(h[2].origins) & gone]
        heapq.heapify(self.held)
        self.offsets.forget(list(revoked))

    async def on_partitions_assigned(self, assigned: list[TopicPartition]) -> None:
        self.rt.metrics.inc("dashpipe_assignments_total", role="deliver")

    # --- intake -------------------------------------------------------------------------
    def take(self, tp: TopicPartition, record: Any) -> Awaitable[None] | None:
        """Plan the deliveries of one consumed record (transformed row or retry) and queue
        them; returns what to await when that could not be done without waiting (a full
        queue, a batch to flush), else None: no coroutine per row."""
        if tp.topic == self.rt.names.retry:
            delivery = Delivery.from_retry(record.value)
            delivery.origins.append((tp, record.offset))
            self.offsets.add(tp, record.offset, 1)
            self._hold(delivery)
            return None
        planned, batched = self.plan(record, (tp, record.offset))
        self.offsets.add(tp, record.offset, len(planned) + batched)
        for i, delivery in enumerate(planned):
            if not self.offer(delivery):
                return self._queue_rest(planned[i:], batched)
        return self.flush_batches() if batched else None

    async def _queue_rest(self, planned: list[Delivery], batched: int) -> None:
        for delivery in planned:
            await self.submit(delivery)
        if batched:
            await self.flush_batches()

    def plan(self, record: Any, origin: Origin) -> tuple[list[Delivery], int]:
        """The deliveries of one row, and how many batches it joined instead."""
        raw = pipeline_id_header(record.headers)
        p = self.rt.registry.pipelines.get(raw.decode("utf-8", "replace")) if raw else None
        if p is None or not p.sinks or record.value is None:
            return [], 0
        row = orjson.loads(record.value)
        out = []
        batched = 0
        for i, enabled, batching, _, _ in self._targets(p):
            if not enabled:
                self.rt.metrics.inc("dashpipe_deliver_skipped_total", pipeline_id=p.id,
                                    sink=str(i), reason="disabled")
                continue
            if batching:
                batch = self.batches.setdefault((p.id, i), _Batch(time.monotonic()))
                batch.rows.append(row)
                batch.origins.append(origin)
                batch.received.append(record.timestamp)
                batch.size += len(record.value)
                batched += 1
                continue
            out.append(Delivery(p.id, i, [row], message_id(p.id, row["lineage"], i),
                                origins=[origin], body=record.value,
                                received=[record.timestamp]))
        return out, batched

    def _targets(self, p: Pipeline) -> list[Target]:
        """Every sink of `p`, its typed config and request builder, worked out once per
        definition."""
        cached = self._plans.get(p.id)
        if cached is None or cached[0] is not p:
            targets = []
            for i, sink in enumerate(p.sinks):
                config = sink.sink_config if sink.enabled else None
                limits = config.batching if isinstance(config, HttpApiSink) else None
                targets.append(Target(i, sink.enabled, limits is not None and limits.max_rows > 1,
                                      config, SINKS[sink.sink_type]))
            cached = self._plans[p.id] = (p, targets)
        return cached[1]

    async def flush_batches(self, everything: bool = False) -> None:
        """Send the batches that are full (rows or bytes) or old enough."""
        now = time.monotonic()
        for (pid, index), batch in list(self.batches.items()):
            p = self.rt.registry.pipelines.get(pid)
            config = p.sinks[index].sink_config if p is not None and index < len(p.sinks) else None
            limits = config.batching if isinstance(config, HttpApiSink) else None
            if limits is not None and not everything and \
                    len(batch.rows) < limits.max_rows and batch.size < limits.max_bytes and \
                    now - batch.started < limits.max_wait_seconds:
                continue
            del self.batches[(pid, index)]
            first = batch.rows[0]
            msg_id = message_id(pid, first["lineage"], index) + f"-{len(batch.rows)}"
            await self.submit(Delivery(pid, index, batch.rows, msg_id, origins=batch.origins,
                                       received=batch.received))

    def _hold(self, delivery: Delivery) -> None:
        self._seq += 1
        heapq.heappush(self.held, (delivery.due, self._seq, delivery))
        self.counts[(delivery.pipeline_id, delivery.sink_index)].retrying += 1

    async def release_due(self) -> None:
        now = time.time()
        while self.held and self.held[0][0] <= now:
            _, _, delivery = heapq.heappop(self.held)
            counts = self.counts[(delivery.pipeline_id, delivery.sink_index)]
            counts.retrying = max(0, counts.retrying - 1)
            await self.submit(delivery)

    def offer(self, delivery: Delivery) -> bool:
        """Queue a delivery if its sink's queue has room (no task switch); False if not."""
        queue = self.queues.get((delivery.pipeline_id, delivery.sink_index))
        if queue is None or queue.full():
            return False
        queue.put_nowait(delivery)
        return True

    async def submit(self, delivery: Delivery) -> None:
        """Queue a delivery for its sink's workers. A full queue of a healthy sink makes the
        consumer wait (backpressure: it keeps up as fast as the sink answers); a full queue of
        a failing sink parks the delivery in the retry topic instead, so that sink never holds
        up the others."""
        key = (delivery.pipeline_id, delivery.sink_index)
        queue = self.queues.get(key)
        if queue is None:
            p = self.rt.registry.pipelines.get(delivery.pipeline_id)
            concurrency = p.sinks[delivery.sink_index].sink_config.concurrency \
                if p is not None and delivery.sink_index < len(p.sinks) else 1
            queue = self.queues[key] = SinkQueue(self.settings.queue_rows)
            self.workers += [asyncio.create_task(self._work(queue, self.counts[key]),
                                                 name=f"sink {key}")
                             for _ in range(concurrency)]
        if not queue.full():
            queue.put_nowait(delivery)
        elif self.counts[key].healthy:
            await queue.room()
            queue.put_nowait(delivery)
        else:
            delivery.due = time.time() + PARK_SECONDS
            self.rt.metrics.inc("dashpipe_delivery_parked_total",
                                pipeline_id=delivery.pipeline_id, sink=str(delivery.sink_index))
            self.workers.append(asyncio.create_task(self._park(delivery)))

    # --- delivery -----------------------------------------------------------------------
    async def _work(self, queue: SinkQueue[Delivery], counts: SinkCounts) -> None:
        """One worker of a sink. The request is made right here, not in a helper coroutine:
        every time the response wakes the worker, each coroutine in the chain is resumed, so
        each level less is less CPU per row."""
        http = self.rt.http
        while True:
            delivery = queue.get_nowait() or await queue.get()
            try:
                started = time.time()
                ready = self.prepare(delivery, int(started))
                if isinstance(ready, tuple):
                    request, timeout, p = ready
                    clock = time.perf_counter()
                    try:
                        resp = await start(http, request, timeout)
                        if 200 <= resp.status < 300 and resp.content.at_eof():
                            resp.release()  # the usual answer: no body to read, no Attempt
                            self._succeeded(counts, delivery, time.perf_counter() - clock)
                            continue
                        try:
                            head = await resp.content.read(300)
                        finally:
                            resp.release()
                        result = answered(resp, head, started, clock)
                    except (TimeoutError, aiohttp.ClientError) as exc:
                        result = not_answered(exc, timeout, started, clock)
                    if not self.delivered(p, delivery, result):
                        await self.failed(p, delivery, result)
                elif ready is not None:
                    await ready
            except Exception:  # never lose the worker; the delivery repeats after a restart
                log.exception("deliver: unexpected error for %s sink %d",
                              delivery.pipeline_id, delivery.sink_index,
                              extra={"pipeline_id": delivery.pipeline_id})

    def prepare(self, delivery: Delivery, now: int
                ) -> tuple[SinkRequest, float, Pipeline] | Awaitable[None] | None:
        """The request to make for `delivery` at unix time `now`; else what to await instead
        (the sink is disabled: a dead letter), or None (pipeline or sink deleted: settled)."""
        p = self.rt.registry.pipelines.get(delivery.pipeline_id)
        if p is None or delivery.sink_index >= len(p.sinks):
            self._settle(delivery)
            return None
        target = self._targets(p)[delivery.sink_index]
        if not target.enabled:
            reason = p.sinks[delivery.sink_index].disabled_reason
            return self._dead(delivery, p, f"sink disabled: {reason}")
        config = target.config
        request = target.build(config, delivery.rows, delivery.msg_id, now, delivery.body)
        return request, config.timeout_seconds, p

    def delivered(self, p: Pipeline, delivery: Delivery, result: Attempt) -> bool:
        counts = self.counts[(p.id, delivery.sink_index)]
        counts.healthy = result.outcome == "delivered"
        if counts.healthy:
            self._succeeded(counts, delivery, result.seconds)
        return counts.healthy

    def _succeeded(self, counts: SinkCounts, delivery: Delivery, seconds: float) -> None:
        counts.healthy = counts.changed = True
        counts.delivered += len(delivery.rows)  # counted into /metrics by `publish`
        self._observe(delivery, "delivered", seconds)
        if delivery.received:
            now, key = time.time() * 1000, self._labels(delivery)
            self.rt.metrics.observe_many("dashpipe_raw_to_delivered_seconds", key,
                                         [(now - t) / 1000 for t in delivery.received])
        for origin in delivery.origins:
            self.offsets.settle(origin)

    def _labels(self, delivery: Delivery, **more: str) -> Labels:
        return labels_key(pipeline_id=delivery.pipeline_id, sink=str(delivery.sink_index),
                          **more)

    def _observe(self, delivery: Delivery, outcome: str, seconds: float) -> None:
        self.rt.metrics.observe_key("dashpipe_sink_attempt_seconds",
                                    self._labels(delivery, outcome=outcome), seconds)

    async def failed(self, p: Pipeline, delivery: Delivery, result: Attempt) -> None:
        counts = self.counts[(p.id, delivery.sink_index)]
        self._observe(delivery, result.outcome, result.seconds)
        delivery.received = []  # counted from its first successful delivery only
        delivery.attempts.append(result.record())
        self._error(counts, result)
        if result.outcome == "gone":
            await self._disable(p, delivery.sink_index, result)
            return await self._dead(delivery, p, f"{result.error}: the sink is disabled")
        if result.outcome == "retry" and len(delivery.attempts) <= len(
                self.settings.retry_schedule):
            return await self._retry(delivery, result)
        reason = result.error or "failed"
        if result.outcome == "retry":
            reason = f"gave up after {len(delivery.attempts)} attempts: {reason}"
        return await self._dead(delivery, p, reason)

    async def _retry(self, delivery: Delivery, result: Attempt) -> None:
        delay = self.settings.retry_schedule[len(delivery.attempts) - 1]
        delay *= 1 + random.uniform(-self.settings.jitter, self.settings.jitter)
        delivery.due = time.time() + max(delay, result.retry_after or 0.0)
        key = f"{delivery.pipeline_id}:{delivery.sink_index}".encode()
        await _write(self.retries, key, delivery.retry_record(),
                     [(Header.PIPELINE_ID, delivery.pipeline_id.encode())])
        self.rt.metrics.inc("dashpipe_delivery_retries_total", pipeline_id=delivery.pipeline_id,
                            sink=str(delivery.sink_index))
        self._settle(delivery)

    async def _park(self, delivery: Delivery) -> None:
        key = f"{delivery.pipeline_id}:{delivery.sink_index}".encode()
        await _write(self.retries, key, delivery.retry_record(),
                     [(Header.PIPELINE_ID, delivery.pipeline_id.encode())])
        self._settle(delivery)

    async def _dead(self, delivery: Delivery, p: Pipeline, reason: str) -> None:
        first = delivery.rows[0] if delivery.rows else {}
        key, value, headers = dead_letter(
            "deliver", reason, p.id, p.team_id, first.get("lineage"),
            first.get("mapping_version"), first if len(delivery.rows) == 1 else delivery.rows,
            sink_index=delivery.sink_index, attempts=delivery.attempts)
        await _write(self.dead_letters, key, value, headers)
        counts = self.counts[(p.id, delivery.sink_index)]
        counts.dead += len(delivery.rows)
        counts.changed = True
        self.rt.metrics.inc("dashpipe_delivery_dead_total", len(delivery.rows),
                            pipeline_id=p.id, sink=str(delivery.sink_index))
        self._settle(delivery)

    async def _disable(self, p: Pipeline, index: int, result: Attempt) -> None:
        current = self.rt.registry.pipelines.get(p.id)
        if current is None or index >= len(current.sinks) or not current.sinks[index].enabled:
            return
        sinks = [s.model_dump(mode="json") for s in current.sinks]
        sinks[index].update(enabled=False, disabled_reason=f"{result.error} at "
                            f"{result.at.isoformat()}")
        updated = current.model_copy(update={"sinks": [type(current.sinks[0])(**s)
                                                       for s in sinks],
                                             "updated_at": datetime.now(UTC)})
        await self.rt.writer.put(updated)
        log.warning("deliver: sink %d of %s disabled (410 Gone); PATCH it to enable again",
                    index, p.id, extra={"pipeline_id": p.id})

    def _error(self, counts: SinkCounts, result: Attempt) -> None:
        counts.last_error, counts.last_error_at, counts.changed = result.error, result.at, True

    def _settle(self, delivery: Delivery) -> None:
        for origin in delivery.origins:
            self.offsets.settle(origin)

    async def publish(self) -> None:
        """The per-sink counts of this process, into the status topic and /metrics (changed
        ones only; per row they would cost more than the rest of a delivery)."""
        for (pid, index), c in list(self.counts.items()):
            if not c.changed:
                continue
            c.changed = False
            labels = {"pipeline_id": pid, "sink": str(index)}
            if done := c.delivered - c.published:
                self.rt.metrics.inc("dashpipe_delivered_total", done, **labels)
            c.published = c.delivered
            await self.rt.writer.put_sink_status(SinkStatus(
                pipeline_id=pid, sink_index=index, process=self.process,
                delivered=c.delivered, retrying=c.retrying, dead=c.dead,
                last_error=c.last_error, last_error_at=c.last_error_at,
                updated_at=datetime.now(UTC)))


async def _write(sender: BatchSender, key: bytes, value: bytes,
                 headers: list[tuple[str, bytes]]) -> None:
    """A retry or dead letter, written until Kafka acknowledged it. Concurrent writes to one
    partition go out together (one batch in flight per partition)."""
    await kafka.until_acknowledged(lambda: sender.send(key, value, headers), "deliver")


async def run_deliverer(rt: Runtime) -> None:
    names = rt.names
    counts = await kafka.partition_counts(rt.producer, names.retry, names.dlq)
    deliverer = Deliverer(rt, counts)
    rt.roles["deliver"] = deliverer
    consumer = kafka.consumer(rt.bootstrap, rt.settings.kafka, group_id=rt.group("deliver"))
    consumer.subscribe([names.transformed, names.retry], listener=deliverer)
    rt.metrics.track_lag("deliver", consumer)
    last_commit = last_publish = 0.0
    async with kafka.started(consumer):
        try:
            while True:
                batch = await consumer.getmany(timeout_ms=200, max_records=INTAKE_RECORDS)
                for tp, records in batch.items():
                    for record in records:
                        waiting = deliverer.take(tp, record)
                        if waiting is not None:
                            await waiting
                await deliverer.release_due()
                await deliverer.flush_batches()
                now = time.monotonic()
                if now - last_commit >= 1.0:
                    last_commit = now
                    await kafka.commit_assigned(consumer, deliverer.offsets.committable(),
                                                "deliver")
                if now - last_publish >= rt.settings.delivery.status_seconds:
                    last_publish = now
                    await deliverer.publish()
        finally:
            for task in deliverer.workers:
                task.cancel()
            await asyncio.gather(*deliverer.workers, return_exceptions=True)
