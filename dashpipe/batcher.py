"""Many concurrent writers, one produce batch per partition per event-loop turn.

aiokafka's `send()` does per record what its batch API (`create_batch` / `send_batch`) does
once per batch (partitioner, accumulator, a future per record); docs/benchmarks.md has the costs.
The webhook receiver answers each request only after Kafka acknowledged its record, so
requests that arrive together are gathered here and written as one batch; each caller awaits
its own record's (partition, offset). Same idempotent producer, same partitioner.
"""

from __future__ import annotations

import asyncio
import struct
from collections import defaultdict
from collections.abc import Sequence
from functools import lru_cache

from aiokafka import AIOKafkaProducer

Headers = Sequence[tuple[str, bytes]]


@lru_cache(maxsize=65536)
def partition_for(key: bytes, partitions: int) -> int:
    """The partition Kafka's default partitioner gives `key` (as `producer.send` would)."""
    return (murmur2(key) & 0x7FFFFFFF) % partitions


_M = 0x5BD1E995


def murmur2(data: bytes) -> int:
    """Kafka's murmur2 (`Utils.murmur2`), as aiokafka's pure-Python one but reading the input
    in 32-bit words at once: faster, the same values (tested against it)."""
    length = len(data)
    h = (0x9747B28C ^ length) & 0xFFFFFFFF
    words = length // 4
    for k in struct.unpack_from(f"<{words}I", data):
        k = (k * _M) & 0xFFFFFFFF
        k ^= k >> 24
        h = ((h * _M) & 0xFFFFFFFF) ^ ((k * _M) & 0xFFFFFFFF)
    rest, i = length & 3, words * 4
    if rest == 3:
        h ^= data[i + 2] << 16
    if rest >= 2:
        h ^= data[i + 1] << 8
    if rest:
        h = ((h ^ data[i]) * _M) & 0xFFFFFFFF
    h ^= h >> 13
    h = (h * _M) & 0xFFFFFFFF
    return h ^ (h >> 15)


# key, value, headers, timestamp ms, and the future of the caller: a tuple, one per request
_Item = tuple[bytes, bytes, Headers, int | None, asyncio.Future[tuple[int, int]]]


class BatchSender:
    """One writer task per partition at a time: while its batch is in flight, new records
    gather, and go as the next batch the moment the previous one is acknowledged (batching
    that follows load, like the producer's own accumulator, without its per-record cost)."""

    def __init__(self, producer: AIOKafkaProducer, topic: str, partitions: int,
                 timeout: float = 5.0) -> None:
        self.producer = producer
        self.topic = topic
        self.partitions = partitions
        self.timeout = timeout  # per batch: a record waits at most two batches' timeouts
        self._pending: dict[int, list[_Item]] = defaultdict(list)
        self._writers: dict[int, asyncio.Task[None]] = {}

    def send(self, key: bytes, value: bytes, headers: Headers,
             timestamp_ms: int | None = None) -> asyncio.Future[tuple[int, int]]:
        """Queue one record; the future gives (partition, offset) once Kafka acknowledged it,
        or raises `TimeoutError` when Kafka did not acknowledge in time, or the Kafka error.
        (A plain function returning the future: one coroutine less per record.)"""
        done: asyncio.Future[tuple[int, int]] = asyncio.get_running_loop().create_future()
        partition = partition_for(key, self.partitions)
        self._pending[partition].append((key, value, headers, timestamp_ms, done))
        if partition not in self._writers:
            self._writers[partition] = asyncio.create_task(self._drain(partition))
        return done

    async def _drain(self, partition: int) -> None:
        try:
            while self._pending.get(partition):
                items = self._pending.pop(partition)
                await self._write(partition, items)
        finally:
            del self._writers[partition]

    async def _write(self, partition: int, items: list[_Item]) -> None:
        start = 0
        while start < len(items):
            batch = self.producer.create_batch()
            end = start
            while end < len(items):
                key, value, headers, timestamp, _ = items[end]
                if batch.append(key=key, value=value, timestamp=timestamp,
                                headers=headers) is None:
                    break  # full: the rest goes into the next batch
                end += 1
            if end == start:
                _fail(items[start:start + 1], ValueError("record larger than a batch"))
                start += 1
                continue
            try:
                async with asyncio.timeout(self.timeout):
                    sent = await self.producer.send_batch(batch, self.topic,
                                                          partition=partition)
                    meta = await asyncio.shield(sent)
            except Exception as exc:  # every caller of this batch learns why
                _fail(items[start:end], exc)
            else:
                for i, item in enumerate(items[start:end]):
                    if not item[4].done():
                        item[4].set_result((partition, meta.offset + i))
            start = end


def _fail(items: list[_Item], exc: BaseException) -> None:
    for *_, done in items:
        if not done.done():
            done.set_exception(exc)


Record = tuple[bytes | None, bytes, Headers, int | None]  # key, value, headers, timestamp ms


async def send_records(producer: AIOKafkaProducer,
                       records: dict[tuple[str, int], list[Record]]) -> None:
    """Write many records, already sorted by (topic, partition), as batches, and return once
    Kafka acknowledged all of them (or raise the first error). The consumer-side counterpart
    of `BatchSender`: a stream processor writes one `getmany` worth at a time."""
    acks: list[asyncio.Future[object]] = []
    for (topic, partition), items in records.items():
        batch = producer.create_batch()
        for key, value, headers, timestamp in items:
            if batch.append(key=key, value=value, timestamp=timestamp, headers=headers) is None:
                acks.append(await producer.send_batch(batch, topic, partition=partition))
                batch = producer.create_batch()
                if batch.append(key=key, value=value, timestamp=timestamp,
                                headers=headers) is None:
                    raise ValueError(f"a record of {len(value)} bytes is larger than a batch")
        if batch.record_count():
            acks.append(await producer.send_batch(batch, topic, partition=partition))
    if acks:
        await asyncio.gather(*acks)
