"""Two, then three `dashpipe run poll` processes, then one of them `kill -9`'d: each pipeline
is polled once per interval throughout (never twice within one), the killed one's pipelines
come back once the group notices, and Bronze holds one page per counted poll of the living."""

from __future__ import annotations

import asyncio
import itertools
import re
import signal
import time
from collections import defaultdict
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiohttp import web

from agents.ingest.poller import partition_of
from dashpipe import kafka
from dashpipe.settings import ADMIN, Settings
from tests.helpers import wait_until
from tests.integration.ingest.test_poller import polling
from tests.processes import Role, role_env

PIPELINES = 6
INTERVAL = 2  # seconds
SESSION_SECONDS = 10  # aiokafka's default session timeout: how long a dead member owns


class Api:
    """A polled API that records when each pipeline's path was asked."""

    def __init__(self) -> None:
        self.times: dict[str, list[float]] = defaultdict(list)
        self.url = ""

    async def handle(self, request: web.Request) -> web.Response:
        self.times[request.path.strip("/")].append(time.monotonic())
        return web.json_response({"at": time.time()})

    def polls(self) -> int:
        return min((len(self.times[f"p{i}"]) for i in range(PIPELINES)), default=0)


@pytest.fixture
async def polled() -> AsyncIterator[Api]:
    api = Api()
    app = web.Application()
    app.router.add_get("/{name}", api.handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    api.url = f"http://127.0.0.1:{runner.addresses[0][1]}"
    yield api
    await runner.cleanup()


def _gaps(times: list[float]) -> list[float]:
    return [b - a for a, b in itertools.pairwise(times)]


async def test_each_pipeline_is_polled_once_per_interval_by_2_and_3_processes_and_after_a_kill(
        start_roles: Any, polled: Api, settings: Settings, tmp_path: Path) -> None:
    rt = await start_roles()  # registry and topics only: the pollers run as processes
    for i in range(PIPELINES):
        await rt.service.create(polling(f"p{i}", f"{polled.url}/p{i}", interval=INTERVAL),
                                ADMIN)
    env = role_env(settings)
    procs = [Role(("poll",), env, tmp_path / f"poll-{i}.log") for i in range(3)]
    try:
        for p in procs[:2]:
            p.start()
        await wait_until(lambda: polled.polls() >= 4, 90, "4 polls of each by two processes")
        procs[2].start()
        two_until = time.monotonic()
        await wait_until(lambda: polled.polls() >= 9, 90, "5 more with three processes")
        procs[0].kill()  # kill -9: its partitions stay its own until the session times out
        killed_at = time.monotonic()
        await wait_until(lambda: all(t[-1] > killed_at + SESSION_SECONDS for t in
                                     (polled.times[f"p{i}"] for i in range(PIPELINES))),
                         90, "every pipeline polled again after the group noticed")
        settle = time.monotonic()
        await wait_until(lambda: all(sum(1 for at in polled.times[f"p{i}"] if at > settle)
                                     >= 3 for i in range(PIPELINES)), 60, "3 more polls each")
    finally:
        for p in procs:
            p.stop()
    for i in range(PIPELINES):
        times = polled.times[f"p{i}"]
        # never twice within an interval, whoever owned the pipeline (two, three, a kill)
        assert min(_gaps(times)) >= 0.8 * INTERVAL, (i, _gaps(times))
        # and on schedule while nothing died (the scheduler's tick adds a little)
        steady = [g for a, g in zip(times, _gaps(times), strict=False)
                  if a < killed_at - INTERVAL]
        assert max(steady) < INTERVAL + 1.5, (i, steady)
        # back on schedule after the dead member's session expired
        after = [t for t in times if t > settle]
        assert max(_gaps(after)) < INTERVAL + 1.5, (i, _gaps(after))
    assert two_until < killed_at
    # Bronze: a page per poll that was not cut off by the kill (at most one per pipeline)
    per = await _pages(settings, rt.names.raw)
    for i in range(PIPELINES):
        assert len(polled.times[f"p{i}"]) - 1 <= per[f"p{i}"] <= len(polled.times[f"p{i}"])


async def _pages(settings: Settings, topic: str) -> dict[str, int]:
    """Committed records per key."""
    per: dict[str, int] = defaultdict(int)
    for r in await _committed(settings, topic):
        per[r.key.decode()] += 1
    return per


async def _committed(settings: Settings, topic: str) -> list[Any]:
    """Every committed record of `topic`, read to the end of every partition."""
    consumer = kafka.consumer(settings.kafka.bootstrap_servers, settings.kafka, group_id=None)
    out: list[Any] = []
    async with kafka.started(consumer):
        tps = await kafka.partitions(consumer, topic)
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        ends = await consumer.end_offsets(tps)

        async def done() -> bool:
            for records in (await consumer.getmany(timeout_ms=200)).values():
                out.extend(records)
            return all([await consumer.position(tp) >= ends[tp] for tp in tps])

        await wait_until(done, 30, "the topic read to its end")
    return out


async def test_a_poller_paused_past_its_session_adds_nothing_when_it_wakes(
        start_roles: Any, settings: Settings, tmp_path: Path) -> None:
    """SIGSTOP of the owner in the middle of a poll, until the other process has taken the
    pipeline over and polled it; after SIGCONT the paused one's page must not reach Bronze
    (its transaction is fenced or cut off by the rebalance it wakes into)."""
    release = asyncio.Event()
    asked: list[float] = []

    async def handle(request: web.Request) -> web.Response:
        asked.append(time.monotonic())
        n = len(asked)
        if n == 1:
            await release.wait()  # the first poll hangs until its poller is paused and back
        return web.json_response({"request": n})

    app = web.Application()
    app.router.add_get("/slow", handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    url = f"http://127.0.0.1:{runner.addresses[0][1]}/slow"
    rt = await start_roles()
    env = role_env(settings)
    procs = [Role(("poll",), env, tmp_path / f"poll-{i}.log").start() for i in range(2)]
    try:
        await wait_until(lambda: all(_owned(p) is not None for p in procs) and
                         sum(len(_owned(p) or ()) for p in procs) == 3, 90,
                         "both pollers own their partitions")
        await rt.service.create(polling("slow", url, interval=INTERVAL), ADMIN)
        await wait_until(lambda: asked, 30, "the first poll asked")
        part = partition_of("slow", 3)
        owner = next(p for p in procs if part in (_owned(p) or ()))
        other = next(p for p in procs if p is not owner)
        owner.kill(signal.SIGSTOP)
        await wait_until(lambda: part in (_owned(other) or ()), 60, "the other took it over")
        await wait_until(lambda: len(asked) >= 3, 30, "two polls by the new owner")
        joins = owner.log.read_text().count("poller owns")
        release.set()
        owner.kill(signal.SIGCONT)
        await wait_until(lambda: owner.log.read_text().count("poller owns") > joins, 60,
                         "the paused one woke into a rebalance")
        await wait_until(lambda: len(asked) >= 4, 30, "one more poll after it")
        values = await _values(settings, rt.names.raw, "slow")
        # every page but the paused poll's, each once
        assert 1 not in values and len(values) == len(set(values)) >= 2, values
    finally:
        release.set()
        for p in procs:
            p.kill(signal.SIGCONT)
            p.stop()
        await runner.cleanup()


def _owned(role: Role) -> set[int] | None:
    """The partitions the poller's log last said it owns."""
    found = re.findall(r"poller owns partitions \[([0-9, ]*)\]", role.log.read_text())
    return {int(x) for x in found[-1].split(",") if x.strip()} if found else None


async def _values(settings: Settings, topic: str, key: str) -> list[int]:
    return [orjson.loads(r.value)["request"] for r in await _committed(settings, topic)
            if r.key == key.encode()]
