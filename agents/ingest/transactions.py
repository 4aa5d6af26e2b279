"""Exactly-once polls across owners: a poll's pages and the status that moves its cursor are
one Kafka transaction, written by the producer of the pipelines-topic partition that owns the
pipeline (transactional id `<group>-<partition>`), as Kafka Connect's exactly-once sources
write records and offsets together (KIP-618).

Why: a poll process that is paused (a long GC, SIGSTOP) past the group's session timeout loses
its partitions, and its successor polls from the stored cursor. When the old one wakes it may
still finish the poll it was in: without fencing, those pages would land in Bronze twice.
The successor's producer, started with the same transactional id, fences the old one's
(`ProducerFenced` on its next send or commit) and aborts its open transaction, and every
reader of Bronze and of the status topic reads committed records only. A crash between the
pages and the status likewise leaves neither.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from dashpipe import kafka
from dashpipe.settings import KafkaSettings


class Fenced(Exception):
    """The partition is not this process's any more (or not yet): nothing was written."""


class Transactions:
    def __init__(self, bootstrap: str, ks: KafkaSettings, group: str) -> None:
        self.bootstrap, self.ks, self.group = bootstrap, ks, group
        self.producers: dict[int, Any] = {}
        self.locks: dict[int, asyncio.Lock] = {}

    async def open(self, partition: int) -> None:
        """Start the partition's producer: from here on a previous owner is fenced."""
        if partition in self.producers:
            return
        producer = kafka.producer(self.bootstrap, self.ks,
                                  transactional_id=f"{self.group}-{partition}")
        await producer.start()  # init_transactions: fences the last holder of the id
        self.producers[partition] = producer
        self.locks[partition] = asyncio.Lock()

    async def close(self, partition: int) -> None:
        producer = self.producers.pop(partition, None)
        lock = self.locks.pop(partition, None)
        if producer is None or lock is None:
            return
        async with lock:  # let a transaction in progress end first
            await producer.stop()

    async def close_all(self) -> None:
        for partition in list(self.producers):
            await self.close(partition)

    @asynccontextmanager
    async def transaction(self, partition: int) -> AsyncIterator[Any]:
        """A producer inside a transaction that commits when the block ends (and aborts if it
        raises). One at a time per partition: a transactional producer has one open."""
        lock = self.locks.get(partition)
        if lock is None:
            raise Fenced(f"partition {partition} is not owned here")
        async with lock:
            producer = self.producers.get(partition)
            if producer is None:
                raise Fenced(f"partition {partition} is not owned here")
            async with producer.transaction():
                yield producer
