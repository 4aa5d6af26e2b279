"""Waiting on conditions with deadlines (never sleeping as synchronisation), reading topics,
and serving a fake HTTP API on loopback."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

from aiohttp import web

from dashpipe import kafka
from dashpipe.settings import Settings


async def wait_until(check: Callable[[], Any], timeout: float = 20.0, what: str = "") -> Any:
    """Poll `check()` (sync or async) until it returns something truthy; fail at the deadline."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if isinstance(value, Awaitable):
            value = await value
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what or check}")
        await asyncio.sleep(0.05)


async def read_topic(settings: Settings, topic: str, count: int,
                     timeout: float = 20.0) -> list[Any]:
    """Read at least `count` records of `topic` from the beginning (all partitions)."""
    consumer = kafka.consumer(settings.kafka.bootstrap_servers, settings.kafka, group_id=None)
    async with kafka.started(consumer):
        tps = await kafka.partitions(consumer, topic)
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        got: list[Any] = []
        deadline = time.monotonic() + timeout
        while len(got) < count and time.monotonic() < deadline:
            batch = await consumer.getmany(timeout_ms=200)
            got += [r for records in batch.values() for r in records]
        return got


async def topic_size(settings: Settings, topic: str) -> int:
    """How many records `topic` holds (end offsets summed)."""
    consumer = kafka.consumer(settings.kafka.bootstrap_servers, settings.kafka, group_id=None)
    async with kafka.started(consumer):
        ends = await consumer.end_offsets(await kafka.partitions(consumer, topic))
        return int(sum(ends.values()))


@asynccontextmanager
async def serving(app: web.Application) -> AsyncIterator[str]:
    """`app` listening on a free loopback port; yields its base URL."""
    runner = web.AppRunner(app, shutdown_timeout=0.1)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    try:
        yield f"http://127.0.0.1:{runner.addresses[0][1]}"
    finally:
        await runner.cleanup()
