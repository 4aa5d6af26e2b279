"""Kafka clients configured one way for every role: idempotent producers, manual commits."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import asynccontextmanager
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import CommitFailedError, KafkaError

from dashpipe.errors import Unavailable
from dashpipe.settings import KafkaSettings

log = logging.getLogger(__name__)


def producer(bootstrap: str, ks: KafkaSettings, **overrides: Any) -> AIOKafkaProducer:
    """Idempotent, `acks=all`: a send that returned was written once, on every in-sync replica."""
    options: dict[str, Any] = {
        "bootstrap_servers": bootstrap,
        "client_id": ks.client_id,
        "enable_idempotence": True,
        "acks": "all",
        "linger_ms": ks.linger_ms,
        "max_batch_size": ks.max_batch_size,
        "request_timeout_ms": ks.request_timeout_ms,
    }
    options.update(overrides)
    return AIOKafkaProducer(**options)


def consumer(bootstrap: str, ks: KafkaSettings, *topics: str, group_id: str | None,
             **overrides: Any) -> AIOKafkaConsumer:
    """At-least-once: offsets are committed by the caller once the effect is durable."""
    options: dict[str, Any] = {
        "bootstrap_servers": bootstrap,
        "client_id": ks.client_id,
        "group_id": group_id,
        "enable_auto_commit": False,
        "auto_offset_reset": "earliest",
        "isolation_level": "read_committed",
    }
    options.update(overrides)
    return AIOKafkaConsumer(*topics, **options)


def admin(bootstrap: str, ks: KafkaSettings) -> AIOKafkaAdminClient:
    return AIOKafkaAdminClient(bootstrap_servers=bootstrap, client_id=ks.client_id,
                               request_timeout_ms=ks.request_timeout_ms)


@asynccontextmanager
async def started(client: Any) -> AsyncIterator[Any]:
    """`start()` a client, and always `stop()` (or `close()` for the admin) it after."""
    await client.start()
    try:
        yield client
    finally:
        await (client.close() if isinstance(client, AIOKafkaAdminClient) else client.stop())


async def partitions(client: Any, *topics: str, timeout: float = 15.0) -> list[TopicPartition]:
    """Every partition of `topics`, from a fresh metadata request (a consumer's own view
    covers only what it already reads), waiting up to `timeout` for just-created topics."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        # a consumer has no public call that refreshes its metadata; its client's is the one
        # Kafka-facing object aiokafka gives both kinds (the producer's is public)
        inner = client.client if isinstance(client, AIOKafkaProducer) else \
            client._client  # noqa: SLF001
        cluster = await inner.fetch_all_metadata()
        found = {t: cluster.partitions_for_topic(t) for t in topics}
        if all(found.values()):
            return [TopicPartition(t, p) for t in topics for p in sorted(found[t])]
        if loop.time() > deadline:
            missing = [t for t, parts in found.items() if not parts]
            raise Unavailable(f"topic {', '.join(missing)} does not exist: run "
                              "`dashpipe topics create`")
        await asyncio.sleep(0.2)


async def partition_counts(client: Any, *topics: str) -> dict[str, int]:
    """Topic -> its number of partitions."""
    counts: dict[str, int] = {}
    for tp in await partitions(client, *topics):
        counts[tp.topic] = counts.get(tp.topic, 0) + 1
    return counts


async def until_acknowledged(send: Callable[[], Awaitable[Any]], what: str) -> None:
    """Call `send()` until Kafka acknowledges it (backoff 0.5 s doubling to 30 s): a record a
    role owes the log (rows, a retry, a dead letter) is never dropped, however long Kafka is
    away; the role's offsets wait for it."""
    delay = 0.5
    while True:
        try:
            await send()
            return
        except (KafkaError, TimeoutError) as exc:
            log.warning("%s: write failed (%s); retrying in %.1fs", what, type(exc).__name__,
                        delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 30.0)


async def consumed(consumer: Any, batch: Mapping[TopicPartition, list[Any]]
                   ) -> dict[TopicPartition, int]:
    """The offsets to commit once `batch` (a `getmany` result) is done: past its last record,
    and past the transaction markers after it (which no record shows), so a read-committed
    group's lag comes back to 0."""
    assigned = consumer.assignment()
    out = {}
    for tp, records in batch.items():
        end = records[-1].offset + 1
        out[tp] = max(end, await consumer.position(tp)) if tp in assigned else end
    return out


async def commit_assigned(consumer: Any, offsets: Mapping[TopicPartition, int], what: str
                          ) -> None:
    """Commit the offsets of the partitions the consumer still owns. A rebalance meanwhile
    (`CommitFailedError`) is logged, not raised: the new owner repeats those records, which
    every effect of ours takes idempotently."""
    assigned = consumer.assignment()
    todo = {tp: o for tp, o in offsets.items() if tp in assigned}
    if not todo:
        return
    try:
        await consumer.commit(todo)
    except CommitFailedError as exc:
        log.warning("%s: offsets not committed (%s); the new owner repeats them", what, exc)
