"""The data API under more readers than its pool has connections: 100 concurrent readers
against a pool of 10 while the persist role writes, each answered 200 or 503 with `Retry-After`
and a JSON error within its deadlines (never a hang, never a 500); with every connection taken,
every read is a quick 503 while `/recent` (memory) still answers; a query stuck behind a lock
is cut at the statement deadline; real broker, real PostgreSQL."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from typing import Any

import aiohttp
import asyncpg
import orjson

from dashpipe import kafka
from dashpipe.runtime import Runtime
from dashpipe.settings import ADMIN, Settings
from schemas.records import raw_headers
from tests.helpers import wait_until
from tests.integration.mapping.test_mapper import webhook_pipeline
from tests.integration.web.test_push import TOKENS, A

READERS = 100
POOL = 10
ACQUIRE_S, STATEMENT_S = 0.3, 1.0
DEADLINE_S = ACQUIRE_S + STATEMENT_S + 10  # a generous bound on an answer: never a hang
START = 1_764_300_000  # the first reading's time (epoch seconds)
MAPPING = {"records": "readings[*]", "time": {"path": "t", "format": "epoch_s"},
           "fields": {"v": {"path": "v", "type": "float"}}}
QUERY = "from=2025-11-28T03:00:00Z&to=2025-11-29T03:00:00Z&bucket=5m"


def readings(first: int, n: int) -> bytes:
    return orjson.dumps({"readings": [{"t": START + i, "v": i % 97 / 4}
                                      for i in range(first, first + n)]})


async def stored(db: asyncpg.Pool) -> int:
    if not await db.fetchval("SELECT to_regclass('pipeline_data') IS NOT NULL"):
        return 0
    return int(await db.fetchval("SELECT count(*) FROM pipeline_data"))


class Writer:
    """Bronze records for the pipeline, one after another, until stopped: persist writes all
    the while."""

    def __init__(self, settings: Settings, rt: Runtime) -> None:
        self.settings, self.topic, self.sent = settings, rt.names.raw, 0
        self.stop = asyncio.Event()

    async def run(self, per_record: int = 200) -> None:
        producer = kafka.producer(self.settings.kafka.bootstrap_servers, self.settings.kafka)
        async with kafka.started(producer):
            while not self.stop.is_set():
                now_ms = int(time.time() * 1000)
                await producer.send_and_wait(
                    self.topic, readings(self.sent, per_record), key=b"hist",
                    timestamp_ms=now_ms,
                    headers=raw_headers("hist", "team-a", "webhook", now_ms, f"w{self.sent}"))
                self.sent += per_record


async def read(http: aiohttp.ClientSession, url: str) -> tuple[int, str | None, Any]:
    """(status, Retry-After, JSON body) of one GET, within DEADLINE_S or the test fails."""
    async with http.get(url, headers=A, timeout=aiohttp.ClientTimeout(total=DEADLINE_S)) as r:
        return r.status, r.headers.get("Retry-After"), await r.json()


def check_answers(answers: list[tuple[int, str | None, Any]]) -> Counter[int]:
    for status, retry_after, body in answers:
        assert status in (200, 503), (status, body)
        if status == 503:
            assert retry_after is not None and int(retry_after) >= 1, body
            assert isinstance(body["error"], str) and body["error"], body
    return Counter(status for status, _, _ in answers)


async def test_many_readers_get_answers_or_quick_503s_and_persist_keeps_writing(
        db: asyncpg.Pool, settings: Settings, start_roles: Any) -> None:
    # `db` first: its schema is dropped after the roles stopped, not under them
    database = settings.database.model_copy(update={
        "pool_max_size": POOL, "api_acquire_timeout_seconds": ACQUIRE_S,
        "api_statement_timeout_seconds": STATEMENT_S})
    rt = await start_roles("web", "map", "persist", api=TOKENS, database=database)
    await rt.service.create({**webhook_pipeline("hist", MAPPING), "persist_data": True}, ADMIN)
    writer = Writer(settings, rt)
    writing = asyncio.create_task(writer.run())
    try:
        await wait_until(lambda: stored(db), timeout=60, what="the first rows stored")
        data = f"{rt.web_url}/api/pipelines/hist/data?{QUERY}"
        recent = f"{rt.web_url}/api/pipelines/hist/recent?limit=100"
        async with aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=READERS)) as http:
            # 1. 100 readers, 5 reads each, while persist writes
            before = await stored(db)

            async def reader() -> list[tuple[int, str | None, Any]]:
                return [await read(http, data) for _ in range(5)]

            answers = [a for got in await asyncio.gather(*(reader() for _ in range(READERS)))
                       for a in got]
            mix = check_answers(answers)
            await wait_until(lambda: _more(db, before), timeout=30,
                             what="persist writing while the readers read")
            print(f"\ndata API, {READERS} readers x 5 on a pool of {POOL} while persist "
                  f"writes: {dict(mix)}")
            assert mix[200] > 0

            # 2. every connection of the web's pool taken: quick 503s; /recent still answers
            pool = rt.roles["web"].pool  # type: ignore[attr-defined]
            held = [await pool.acquire() for _ in range(POOL)]
            try:
                busy = await asyncio.gather(*(read(http, data) for _ in range(READERS)))
                assert check_answers(busy) == {503: READERS}
                assert all(body["error"].startswith("the database is busy")
                           and retry == "1" for _, retry, body in busy), busy[0]
                status, _, body = await read(http, recent)
                assert status == 200 and "rows" in body
            finally:
                for conn in held:
                    await pool.release(conn)

            # 3. a query stuck behind a lock is cut at the statement deadline
            async with db.acquire() as lock, lock.transaction():
                await lock.execute("LOCK TABLE pipeline_data IN ACCESS EXCLUSIVE MODE")
                status, retry, body = await read(http, data)
            assert (status, retry) == (503, "5") and "deadline" in body["error"], body
            status, _, body = await read(http, data)  # the pool recovered
            assert status == 200 and body["points"], body
    finally:
        writer.stop.set()
        await writing


async def _more(db: asyncpg.Pool, than: int) -> bool:
    return await stored(db) > than
