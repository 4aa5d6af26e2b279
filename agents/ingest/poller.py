"""Role `poll`: fetch every active polling pipeline on its interval, each page into Bronze.

Ownership: the `poll` processes form the consumer group `<prefix>-poll` on the pipelines
topic; a process polls exactly the pipelines whose key falls in the partitions it is
assigned, so any number of processes poll each pipeline once. On a rebalance the revoked
pipelines' polls are cancelled before the partitions move. Schedule and cursor live in the
status topic, so a restart neither polls early nor loses the cursor; a poll's pages and its
status are one transaction, so an owner that was paused past its session and wakes up cannot
add a page twice (`transactions`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

from aiokafka import ConsumerRebalanceListener, TopicPartition
from aiokafka.errors import KafkaError, ProducerFenced
from yarl import URL

from agents.ingest.schedule import Policy, after_failure, after_success
from agents.ingest.sources import SOURCES
from agents.ingest.sources.base import FetchResult, SourceError
from agents.ingest.transactions import Fenced, Transactions
from dashpipe import kafka, logs
from dashpipe.batcher import partition_for
from dashpipe.errors import ConfigError, DashpipeError
from dashpipe.runtime import Runtime
from schemas.pipeline import MASK, SECRET_HEADER_WORDS, Pipeline, PipelineStatus
from schemas.records import RawMetadata, now

log = logging.getLogger(__name__)


def partition_of(pipeline_id: str, partitions: int) -> int:
    return partition_for(pipeline_id.encode(), partitions)


class Poller(ConsumerRebalanceListener):  # type: ignore[misc]
    def __init__(self, rt: Runtime) -> None:
        self.rt = rt
        self.owned: set[int] = set()
        self.partitions = 0
        self.running: dict[str, asyncio.Task[None]] = {}
        self.due_now: set[str] = set()
        self.forced: set[str] = set()  # started by due_now, not by the schedule
        self.slots = asyncio.Semaphore(rt.settings.poll.concurrency)
        ps = rt.settings.poll
        self.policy = Policy(ps.retry_base_seconds, ps.retry_cap_seconds, ps.attempts_per_run)
        self.txns = Transactions(rt.bootstrap, rt.settings.kafka, rt.group("poll"))
        rt.registry.on_change(self._changed)

    def _changed(self, pid: str, old: Pipeline | None, new: Pipeline | None) -> None:
        if new is not None and new.status == "active" and (old is None or old.status != "active"):
            self.due_now.add(pid)  # polled at once when it becomes active

    async def on_partitions_revoked(self, revoked: list[TopicPartition]) -> None:
        lost = {tp.partition for tp in revoked}
        self.owned -= lost
        if self.partitions:
            tasks = [t for pid, t in self.running.items()
                     if partition_of(pid, self.partitions) in lost]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        for partition in lost:
            await self.txns.close(partition)

    async def on_partitions_assigned(self, assigned: list[TopicPartition]) -> None:
        self.rt.metrics.inc("dashpipe_assignments_total", role="poll")
        partitions = {tp.partition for tp in assigned}
        for partition in set(self.txns.producers) - partitions:
            await self.txns.close(partition)
        for partition in sorted(partitions):
            try:
                await self.txns.open(partition)  # fences a previous owner first
            except KafkaError as exc:  # polled by nobody until the group rebalances again
                log.warning("poller cannot take partition %d of %s: %s", partition,
                            self.rt.names.pipelines, type(exc).__name__)
                partitions.discard(partition)
        self.owned = partitions
        log.info("poller owns partitions %s of %s", sorted(self.owned),
                 self.rt.names.pipelines)

    def due(self) -> list[Pipeline]:
        if not self.partitions:
            return []
        at = now()
        out = []
        for pid, p in self.rt.registry.pipelines.items():
            if p.type != "polling" or p.status != "active" or pid in self.running:
                continue
            if partition_of(pid, self.partitions) not in self.owned:
                continue
            st = self.rt.registry.status.get(pid)
            if pid in self.due_now or st is None or _due_at(p, st) <= at:
                out.append(p)
        return out

    async def run(self) -> None:
        rt = self.rt
        group = kafka.consumer(rt.bootstrap, rt.settings.kafka, group_id=rt.group("poll"),
                               auto_offset_reset="latest")
        group.subscribe([rt.names.pipelines], listener=self)
        await group.start()
        try:
            self.partitions = len(group.partitions_for_topic(rt.names.pipelines) or [])
            keepalive = asyncio.create_task(self._stay_in_group(group))
            try:
                while True:
                    for p in self.due():
                        if p.id in self.due_now:
                            self.due_now.discard(p.id)
                            self.forced.add(p.id)
                        self.running[p.id] = asyncio.create_task(self._poll(p))
                    await asyncio.sleep(rt.settings.poll.tick_seconds)
            finally:
                keepalive.cancel()
                for task in [keepalive, *self.running.values()]:
                    task.cancel()
                await asyncio.gather(keepalive, *self.running.values(), return_exceptions=True)
        finally:
            await group.stop()
            await self.txns.close_all()

    async def _stay_in_group(self, group: Any) -> None:
        while True:  # the records are not needed: the registry reads the topic
            await group.getmany(timeout_ms=1000)
            if not self.partitions:
                self.partitions = len(group.partitions_for_topic(self.rt.names.pipelines) or [])

    async def _poll(self, p: Pipeline) -> None:
        try:
            with logs.for_pipeline(p.id):  # what the sources log, too, names the pipeline
                async with self.slots:
                    await self.poll_once(p)
        finally:
            self.running.pop(p.id, None)

    async def poll_once(self, p: Pipeline) -> None:
        rt = self.rt
        old = rt.registry.status.get(p.id)
        started = now()
        due = _due_at(p, old) if old is not None and p.id not in self.forced else started
        self.forced.discard(p.id)
        clock = time.perf_counter()
        interval = float(p.interval_seconds or 60)
        try:
            result: FetchResult = await SOURCES[p.source_type].fetch(
                p.source_config, old.cursor if old else None, rt.http)
            status = PipelineStatus(
                pipeline_id=p.id, state="active", last_run_at=started, last_success_at=now(),
                next_due_at=after_success(due, started, now(), interval), cursor=result.cursor,
                updated_at=now())
            await self._commit(p, result, status)
        except (Fenced, ProducerFenced) as exc:  # polled by the partition's new owner
            log.info("poll of %s dropped: %s", p.id, exc)
            return
        except (SourceError, ConfigError, KafkaError, TimeoutError) as exc:
            message = str(exc) if isinstance(exc, DashpipeError) else \
                f"Kafka unavailable: {type(exc).__name__}"
            retry_after = exc.retry_after if isinstance(exc, SourceError) else None
            failures = (old.consecutive_failures if old else 0) + 1
            in_error = old is not None and old.state == "error"
            attempts = (old.attempts_in_run if in_error and old else 0) + 1
            run_started = (old.run_started_at if in_error and old else None) or started
            due, attempts = after_failure(self.policy, run_started, now(), interval, failures,
                                          attempts, retry_after)
            log.warning("poll of %s failed (%d in a row): %s", p.id, failures, message)
            rt.metrics.inc("dashpipe_failed_total", pipeline_id=p.id, stage="poll")
            status = PipelineStatus(
                pipeline_id=p.id, state="error", error_message=message, last_run_at=started,
                last_success_at=old.last_success_at if old else None, next_due_at=due,
                cursor=old.cursor if old else None, consecutive_failures=failures,
                attempts_in_run=attempts, run_started_at=run_started if attempts else None,
                updated_at=now())
            with contextlib.suppress(Fenced, KafkaError, TimeoutError):
                await self._commit(p, None, status)
        else:
            rt.metrics.observe("dashpipe_poll_seconds", time.perf_counter() - clock,
                               pipeline_id=p.id)
            rt.metrics.inc("dashpipe_polled_total", len(result.pages), pipeline_id=p.id)

    async def _commit(self, p: Pipeline, result: FetchResult | None,
                      status: PipelineStatus) -> None:
        """The poll's pages and its status (the cursor) in one transaction of the partition
        that owns the pipeline: both land, or neither (see `transactions`)."""
        rt = self.rt
        keep_status = p.id in rt.registry.pipelines  # not deleted meanwhile
        value = status.model_dump_json().encode()
        async with asyncio.timeout(rt.settings.kafka.request_timeout_ms / 1000), \
                self.txns.transaction(partition_of(p.id, self.partitions)) as producer:
            for page in result.pages if result else ():
                received = now()
                meta = RawMetadata(pipeline_id=p.id, team_id=p.team_id, source="poll",
                                   received_at=received, ingest_id=uuid.uuid4().hex,
                                   content_type=page.content_type,
                                   url=_public_url(page.url, _key_param(p)),
                                   http_status=page.status)
                await producer.send(rt.names.raw, page.body, key=p.id.encode(),
                                    headers=meta.to_headers(),
                                    timestamp_ms=int(received.timestamp() * 1000))
            if keep_status:
                await producer.send(rt.names.status, value, key=p.id.encode())
        if keep_status:
            rt.writer.own(status, value)


def _due_at(p: Pipeline, st: PipelineStatus) -> datetime:
    """The stored due time; after a success, an interval shortened since applies at once."""
    if st.next_due_at is None or st.last_run_at is None:
        return datetime.min.replace(tzinfo=UTC)
    if st.state == "active":
        return min(st.next_due_at, st.last_run_at + timedelta(seconds=p.interval_seconds or 60))
    return st.next_due_at


def _key_param(p: Pipeline) -> str | None:
    """The query parameter that carries the source's API key, if it goes in the query."""
    source = p.source_config
    if getattr(source, "auth_type", None) == "api_key" and \
            getattr(source, "api_key_in", None) == "query":
        return str(getattr(source, "api_key_param", ""))
    return None


def _public_url(url: str, key_param: str | None = None) -> str:
    """The URL without user info, and with the API key's parameter and query values named
    like credentials masked: secrets never go into record metadata."""
    parsed = URL(url).with_user(None)
    query = [(k, MASK if k == key_param or any(w in k.lower() for w in SECRET_HEADER_WORDS)
              else v) for k, v in parsed.query.items()]
    return str(parsed.with_query(query) if query else parsed)


async def run_poller(rt: Runtime) -> None:
    poller = rt.roles["poll"] = Poller(rt)
    await poller.run()
