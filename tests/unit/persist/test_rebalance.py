"""The persist role's offsets across a revocation (`agents.persist.persister`), with a writer
and a consumer of our own (no Kafka, no database): what was read before partitions were
revoked never commits after, so a partition that comes back is not moved behind what another
member stored meanwhile."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any

from aiokafka import TopicPartition

from agents.persist.persister import Persister, _Assignments, _Handover, _write_loop
from dashpipe.metrics import Metrics
from tests.helpers import wait_until

TP = TopicPartition("t.transformed", 5)


class Writer:
    """Holds every write until `release` is set."""

    def __init__(self) -> None:
        self.unavailable = False
        self.writing = asyncio.Event()
        self.release = asyncio.Event()

    async def write(self, rows: list[Any], months: Any = None) -> list[Any]:
        self.writing.set()
        await self.release.wait()
        return []


class Consumer:
    def __init__(self) -> None:
        self.commits: list[dict[TopicPartition, int]] = []

    def assignment(self) -> set[TopicPartition]:
        return {TP}  # the partition is assigned again, to the same process

    async def commit(self, offsets: dict[TopicPartition, int]) -> None:
        self.commits.append(dict(offsets))


def records(*offsets: int) -> dict[TopicPartition, list[Any]]:
    # a pipeline without persist_data: no rows to convert, the offsets are what matters here
    return {TP: [SimpleNamespace(partition=TP.partition, offset=o, timestamp=0, value=b"{}",
                                 headers=[("dashpipe-pipeline-id", b"p")]) for o in offsets]}


def setup() -> tuple[Persister, Writer, Consumer, _Handover, _Assignments, Any]:
    rt: Any = SimpleNamespace(registry=SimpleNamespace(pipelines={}, on_change=lambda f: None),
                              metrics=Metrics())
    writer, consumer, handover = Writer(), Consumer(), _Handover(100)
    persister = Persister(rt, writer, 1)  # type: ignore[arg-type]
    return persister, writer, consumer, handover, _Assignments(rt, persister, consumer,
                                                                handover), rt


async def test_a_batch_written_across_a_revocation_commits_nothing() -> None:
    persister, writer, consumer, handover, listener, rt = setup()
    handover.add(persister, records(10, 11, 12))
    task = asyncio.create_task(_write_loop(rt, consumer, persister, handover))
    try:
        await asyncio.wait_for(writer.writing.wait(), 5)
        await listener.on_partitions_revoked({TP})  # while the batch is being written
        writer.release.set()
        await wait_until(lambda: not handover.writing, 5, "the writer took the next batch")
        assert persister.stored == {}
        await persister.commit(consumer)
        assert all(TP not in c for c in consumer.commits)
    finally:
        task.cancel()


async def test_a_batch_written_without_a_revocation_commits_its_offsets() -> None:
    persister, writer, consumer, handover, _, rt = setup()
    handover.add(persister, records(10, 11, 12))
    writer.release.set()
    task = asyncio.create_task(_write_loop(rt, consumer, persister, handover))
    try:
        await wait_until(lambda: {TP: 13} in consumer.commits or persister.stored == {TP: 13},
                         5, "the batch's offsets were stored")
    finally:
        task.cancel()


async def test_records_collected_before_a_revocation_are_dropped() -> None:
    persister, _, _, handover, listener, _ = setup()
    handover.add(persister, records(20, 21))
    await listener.on_partitions_revoked({TP})
    assert handover.batch.size == 0 and not handover.batch.records
    assert persister.revocations == 1
