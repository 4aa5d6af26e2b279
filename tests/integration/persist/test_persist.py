"""The `persist` role against the real broker and PostgreSQL: rows stored once (also after a
replay and a kill -9), later versions replacing earlier ones, refused rows as dead letters, and
the database going away for 30 seconds mid-stream."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import asyncpg
import orjson
import pytest
from pydantic import SecretStr

from dashpipe import kafka
from dashpipe.settings import ADMIN, DatabaseSettings, Settings
from schemas.records import DeadLetter, raw_headers
from tests.helpers import read_topic, wait_until
from tests.integration.mapping.test_mapper import webhook_pipeline, write_raw

READINGS = {"records": "readings[*]", "time": {"path": "t", "format": "epoch_s"},
            "key": "sensor", "fields": {"sensor": {"path": "id", "type": "string",
                                                   "required": True},
                                        "temp": {"path": "temp", "type": "float"}}}


def persisting(pid: str, mapping: dict[str, Any] | None = READINGS) -> dict[str, Any]:
    return {**webhook_pipeline(pid, mapping), "persist_data": True}


def readings(*items: tuple[str, int, float]) -> bytes:
    return orjson.dumps({"readings": [{"id": s, "t": t, "temp": v} for s, t, v in items]})


async def count(db: asyncpg.Pool, pid: str) -> int:
    if not await table_exists(db):  # the role migrates as it starts
        return 0
    return int(await db.fetchval("SELECT count(*) FROM pipeline_data WHERE pipeline_id = $1",
                                 pid))


async def table_exists(db: asyncpg.Pool) -> bool:
    return bool(await db.fetchval("SELECT to_regclass('pipeline_data') IS NOT NULL"))


async def test_rows_are_stored_once_and_a_later_version_replaces_them(
        start_roles: Any, settings: Settings, db: asyncpg.Pool) -> None:
    rt = await start_roles("map", "persist")
    await rt.service.create(persisting("sensors"), ADMIN)
    await rt.service.create(webhook_pipeline("not-stored"), ADMIN)
    await write_raw(settings, rt.names.raw, "sensors",
                    [readings(("a", 1764300000, 20.5), ("b", 1764300000, 18.0))])
    await write_raw(settings, rt.names.raw, "not-stored", [b'{"x": 1}'])
    await wait_until(lambda: count(db, "sensors"), what="the rows in PostgreSQL")
    # the same reading polled again, and a correction of b: still two rows, b updated
    await write_raw(settings, rt.names.raw, "sensors",
                    [readings(("a", 1764300000, 20.5), ("b", 1764300000, 18.4))])
    await wait_until(lambda: _temp(db, "b"), what="b corrected")
    assert await _temp(db, "b") == 18.4
    rows = await db.fetch("SELECT row_key, time, data, mapping_version, raw_offset "
                          "FROM pipeline_data ORDER BY row_key")
    assert [(r["row_key"], r["time"].timestamp(), orjson.loads(r["data"])) for r in rows] == [
        ("a", 1764300000.0, {"sensor": "a", "temp": 20.5}),
        ("b", 1764300000.0, {"sensor": "b", "temp": 18.4})]
    assert {r["mapping_version"] for r in rows} == {1}
    assert await count(db, "not-stored") == 0  # persist_data false


async def _temp(db: asyncpg.Pool, sensor: str) -> float | None:
    value = await db.fetchval("SELECT (data->>'temp')::float8 FROM pipeline_data "
                              "WHERE row_key = $1", sensor)
    return value if value != 18.0 else None


async def test_a_replay_of_the_transformed_topic_adds_nothing(
        start_roles: Any, settings: Settings, db: asyncpg.Pool) -> None:
    rt = await start_roles("map", "persist")
    await rt.service.create(persisting("plain", None), ADMIN)  # no key: lineage is identity
    await write_raw(settings, rt.names.raw, "plain", [b'{"n": %d}' % i for i in range(50)])
    await wait_until(lambda: _equals(count(db, "plain"), 50), what="50 rows")
    transformed = await read_topic(settings, rt.names.transformed, 50)
    producer = kafka.producer(settings.kafka.bootstrap_servers, settings.kafka)
    async with kafka.started(producer):  # every row again, as a full replay writes them
        for r in transformed:
            await producer.send(rt.names.transformed, r.value, key=r.key,
                                headers=list(r.headers))
        await producer.flush()
    await wait_until(lambda: _committed(rt, settings, 100), what="the replay consumed")
    assert await count(db, "plain") == 50
    distinct = await db.fetchval("SELECT count(DISTINCT (raw_partition, raw_offset, row_index))"
                                 " FROM pipeline_data")
    assert distinct == 50


async def _equals(value: Any, expected: Any) -> bool:
    return bool(await value == expected)


async def _committed(rt: Any, settings: Settings, total: int) -> bool:
    admin = kafka.admin(settings.kafka.bootstrap_servers, settings.kafka)
    async with kafka.started(admin):
        offsets = await admin.list_consumer_group_offsets(rt.group("persist"))
    return sum(meta.offset for meta in offsets.values()) >= total


async def test_a_refused_row_is_a_dead_letter_and_its_batch_lands(
        start_roles: Any, settings: Settings, db: asyncpg.Pool) -> None:
    rt = await start_roles("map", "persist")
    await rt.service.create(persisting("odd", None), ADMIN)
    # jsonb refuses \u0000 in text (SQLSTATE 22P05); the payload itself is valid JSON
    await write_raw(settings, rt.names.raw, "odd",
                    [b'{"n": 1}', b'{"n": 2, "s": "a\\u0000b"}', b'{"n": 3}'])
    await wait_until(lambda: _equals(count(db, "odd"), 2), what="the two good rows")
    [dead] = await read_topic(settings, rt.names.dlq, 1)
    letter = DeadLetter.model_validate_json(dead.value)
    assert letter.stage == "persist" and letter.reason.startswith(
        "database refused the row: SQLSTATE 22P05 (data exception)")
    assert letter.record["fields"] == {"n": 2, "s": "a\x00b"}
    assert sorted(orjson.loads(r)["n"] for r in await db.fetchval(
        "SELECT array_agg(data::text) FROM pipeline_data")) == [1, 3]


def _process(role: str, settings: Settings, url: str, schema: str) -> subprocess.Popen[bytes]:
    env = {**os.environ, "DASHPIPE_KAFKA_BOOTSTRAP_SERVERS": settings.kafka.bootstrap_servers,
           "DASHPIPE_KAFKA_GROUP_PREFIX": settings.kafka.group_prefix,
           "DASHPIPE_TOPIC_PREFIX": settings.topics.prefix,
           "DASHPIPE_DATABASE_URL": url, "DASHPIPE_DATABASE_SCHEMA_NAME": schema,
           "DASHPIPE_DATABASE_PERSIST_BATCH_ROWS": "100"}
    return subprocess.Popen([sys.executable, "-m", "dashpipe.cli", "run", role], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


async def test_kill_9_of_persist_mid_stream_duplicates_nothing(
        start_roles: Any, settings: Settings, db: asyncpg.Pool) -> None:
    """The first half is stored; the test then holds a lock on the table so persist's next
    write waits in the database, with the second half fetched, and kills it there (its
    database session too). The restarted process must store the second half: offsets
    committed before the rows would lose it."""
    rt = await start_roles("map")
    await rt.service.create(persisting("many", None), ADMIN)
    url = settings.database.url.get_secret_value() if settings.database.url else ""
    half = 2000
    await write_raw(settings, rt.names.raw, "many", [b'{"n": %d}' % i for i in range(half)])
    first = _process("persist", settings, url, settings.database.schema_name)
    try:
        await wait_until(lambda: _equals(count(db, "many"), half), 60, "the first half stored")
        async with db.acquire() as holder:
            gate = holder.transaction()
            await gate.start()
            await holder.execute("LOCK TABLE pipeline_data IN EXCLUSIVE MODE")
            await write_raw(settings, rt.names.raw, "many",
                            [b'{"n": %d}' % i for i in range(half, 2 * half)])
            await wait_until(lambda: _write_waiting(db), 60, "persist's write waiting on the lock")
            first.send_signal(signal.SIGKILL)
            assert first.wait(10) == -signal.SIGKILL
            # the COPY was sent whole, so its backend would still finish it: end it too, as a
            # crash before the commit does
            await holder.execute("SELECT pg_terminate_backend(pid) FROM pg_locks WHERE NOT "
                                 "granted AND relation = 'pipeline_data'::regclass")
            await gate.rollback()
        assert await count(db, "many") == half
        second = _process("persist", settings, url, settings.database.schema_name)
        try:
            await wait_until(lambda: _equals(count(db, "many"), 2 * half), 90, "every row")
        finally:
            second.kill()
            second.wait()
    finally:
        first.kill()
        first.wait()
    distinct = await db.fetchval("SELECT count(DISTINCT (raw_partition, raw_offset, row_index))"
                                 " FROM pipeline_data")
    assert distinct == 2 * half == await count(db, "many")


async def _write_waiting(db: asyncpg.Pool) -> bool:
    return bool(await db.fetchval("SELECT count(*) FROM pg_locks WHERE NOT granted"
                                  " AND relation = 'pipeline_data'::regclass"))


def dashpipe(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "dashpipe.cli", *args], env=env,
                          capture_output=True, text=True, timeout=240, check=False)


@pytest.fixture
def own_postgres(tmp_path: Path, settings: Settings) -> Any:
    """A PostgreSQL of this test's own (`dashpipe up` in a temporary state folder, Kafka given),
    so stopping it disturbs no other test."""
    env = {k: v for k, v in os.environ.items() if k != "DASHPIPE_DATABASE_URL"}
    env.update(DASHPIPE_STATE_DIR=str(tmp_path / "state"),
               DASHPIPE_KAFKA_BOOTSTRAP_SERVERS=settings.kafka.bootstrap_servers)
    up = dashpipe("up", env=env)
    assert up.returncode == 0, up.stderr
    exports = dict(line.removeprefix("export ").split("=", 1) for line in
                   dashpipe("status", "--env", env=env).stdout.splitlines() if "=" in line)
    url = exports["DASHPIPE_DATABASE_URL"].strip("'\"")
    yield url, env
    dashpipe("down", env=env)


async def test_postgres_down_for_30_seconds_loses_and_duplicates_nothing(
        start_roles: Any, settings: Settings, own_postgres: Any) -> None:
    url, env = own_postgres
    ds = DatabaseSettings(url=SecretStr(url), schema_name=settings.database.schema_name,
                          acquire_timeout_seconds=2, statement_timeout_seconds=5,
                          persist_batch_rows=200)
    rt = await start_roles("map", "persist", database=ds)
    await rt.service.create(persisting("steady", None), ADMIN)
    conn = await asyncpg.connect(url)
    try:
        await conn.execute(f'SET search_path = "{ds.schema_name}"')
        await wait_until(lambda: _table_ready(conn), 30, "the migration")
        await write_raw(settings, rt.names.raw, "steady", [b'{"n": %d}' % i for i in range(300)])
        await wait_until(lambda: _equals(_rows(conn), 300), 30, "the first 300 rows")
    finally:
        await conn.close()
    assert dashpipe("down", env=env).returncode == 0  # PostgreSQL stops
    stopped_at = time.monotonic()
    await _write_numbers(settings, rt.names.raw, "steady", range(300, 1300))
    await wait_until(lambda: rt.metrics.value("dashpipe_persist_retries_total") > 0, 30,
                     "the writer to notice")
    await wait_until(lambda: time.monotonic() - stopped_at >= 30, 40, "30 seconds")
    assert dashpipe("up", env=env).returncode == 0  # back, same data folder
    conn = await asyncpg.connect(url)
    try:
        await conn.execute(f'SET search_path = "{ds.schema_name}"')
        await wait_until(lambda: _equals(_rows(conn), 1300), 90, "the backlog to drain")
        distinct = await conn.fetchval("SELECT count(DISTINCT raw_offset || ':' || "
                                       "raw_partition) FROM pipeline_data")
        assert distinct == 1300
    finally:
        await conn.close()
    # never left the group
    assert rt.metrics.value("dashpipe_assignments_total", role="persist") == 1


async def _table_ready(conn: asyncpg.Connection) -> bool:
    return bool(await conn.fetchval("SELECT to_regclass('pipeline_data') IS NOT NULL"))


async def _rows(conn: asyncpg.Connection) -> int:
    return int(await conn.fetchval("SELECT count(*) FROM pipeline_data"))


async def _write_numbers(settings: Settings, topic: str, pid: str, numbers: range) -> None:
    producer = kafka.producer(settings.kafka.bootstrap_servers, settings.kafka)
    async with kafka.started(producer):
        for n in numbers:
            now_ms = int(time.time() * 1000)
            await producer.send(topic, b'{"n": %d}' % n, key=pid.encode(), timestamp_ms=now_ms,
                                headers=raw_headers(pid, "team-a", "webhook", now_ms, f"n{n}"))
        await producer.flush()
