"""TimescaleDB for real, on a test schema that is not the extension's: the hypertable, its
policies brought to the settings at every start, and rows replayed into a compressed chunk
updated in place."""

import asyncio
import contextlib
import time
from datetime import UTC, datetime
from typing import Any

import aiohttp
import asyncpg
import orjson
import pytest

from agents.web import history
from dashpipe import db as dbm
from dashpipe.cli import stack
from dashpipe.settings import ADMIN, DatabaseSettings, Settings
from tests.conftest import Storage
from tests.helpers import wait_until
from tests.integration.mapping.test_mapper import webhook_pipeline, write_raw
from tests.integration.persist.test_persist import _equals, count, persisting, readings
from tests.integration.web.test_push import TOKENS, A


def _ds(settings: Settings, storage: Storage, **changes: Any) -> DatabaseSettings:
    return DatabaseSettings(url=storage.url, schema_name=settings.database.schema_name,
                            **changes)


async def _migrate(ds: DatabaseSettings) -> dbm.Storage:
    pool = await dbm.create_pool(ds)
    try:
        return await dbm.migrate(pool, ds)
    finally:
        await pool.close()


async def _policies(db: asyncpg.Pool, schema: str) -> dict[str, Any]:
    """Policy name -> its interval setting."""
    rows = await db.fetch(
        "SELECT proc_name, coalesce(config->>'compress_after', config->>'drop_after') "
        "FROM timescaledb_information.jobs "
        "WHERE hypertable_schema = $1 AND hypertable_name = 'pipeline_data'", schema)
    return {r[0]: r[1] for r in rows}


async def test_migrate_makes_a_hypertable_and_follows_the_settings(
        settings: Settings, storage: Storage, db: asyncpg.Pool) -> None:
    schema = settings.database.schema_name
    found = await _migrate(_ds(settings, storage))
    if storage.name == "postgres":
        assert found == dbm.Storage()
        assert await db.fetchval("SELECT relkind FROM pg_class WHERE oid = "
                                 "'pipeline_data'::regclass") == b"p"  # partitioned
        return
    assert found.hypertable and found.timescaledb == "2.28.3"
    assert found.extension_schema != schema  # the functions are found by their schema
    dims = await db.fetchrow(
        "SELECT column_name, time_interval FROM timescaledb_information.dimensions "
        "WHERE hypertable_schema = $1 AND hypertable_name = 'pipeline_data'", schema)
    assert (dims["column_name"], dims["time_interval"].days) == ("time", 1)
    segment = await db.fetchval(
        "SELECT attname FROM timescaledb_information.compression_settings "
        "WHERE hypertable_schema = $1 AND hypertable_name = 'pipeline_data' "
        "AND segmentby_column_index = 1", schema)
    assert segment == "pipeline_id"
    assert await _policies(db, schema) == {"policy_compression": "7 days"}
    # a second start with other settings moves the policies; a third changes nothing
    await _migrate(_ds(settings, storage, compress_after_days=3, retention_days=90))
    policies = await _policies(db, schema)
    assert policies == {"policy_compression": "3 days", "policy_retention": "90 days"}
    again = await _migrate(_ds(settings, storage, compress_after_days=3, retention_days=90))
    assert again.hypertable and await _policies(db, schema) == policies
    await _migrate(_ds(settings, storage, compress_after_days=3))
    assert set(await _policies(db, schema)) == {"policy_compression"}


@pytest.mark.storages("timescaledb")  # compression is TimescaleDB's
async def test_a_replay_into_a_compressed_chunk_updates_the_rows_in_place(
        start_roles: Any, settings: Settings, db: asyncpg.Pool) -> None:
    rt = await start_roles("map", "persist")
    await rt.service.create(persisting("sensors"), ADMIN)
    old = 1764300000  # 2025-11-28: long past the compression policy's 7 days
    await write_raw(settings, rt.names.raw, "sensors",
                    [readings(("a", old, 20.5), ("b", old, 18.0), ("c", old + 90000, 1.0))])
    await wait_until(lambda: _equals(count(db, "sensors"), 3), what="3 rows stored")
    ext = await _ext(db)
    chunks = await db.fetch(f"SELECT c FROM {ext}.show_chunks('pipeline_data') c")
    assert len(chunks) == 2  # two days, two chunks
    for (chunk,) in chunks:
        # the compression policy's job may get to a chunk first: compressed either way
        with contextlib.suppress(asyncpg.DuplicateObjectError):
            await db.execute(f"SELECT {ext}.compress_chunk($1, if_not_compressed => TRUE)",
                             chunk)
    assert await _compressed(db) == 2
    # the same readings again, b corrected: an overlapping poll or a replay
    await write_raw(settings, rt.names.raw, "sensors",
                    [readings(("a", old, 20.5), ("b", old, 18.4), ("c", old + 90000, 1.0))])
    await wait_until(lambda: _equals(_temp(db, "b"), 18.4), what="b corrected in place")
    assert await count(db, "sensors") == 3
    assert sorted(await db.fetch("SELECT row_key, (data->>'temp')::float8 AS t "
                                 "FROM pipeline_data"), key=lambda r: r[0]) == [
        ("a", 20.5), ("b", 18.4), ("c", 1.0)]


async def _ext(db: asyncpg.Pool) -> str:
    schema = await db.fetchval("SELECT extnamespace::regnamespace::text FROM pg_extension "
                               "WHERE extname = 'timescaledb'")
    return str(schema)


async def _compressed(db: asyncpg.Pool) -> int:
    return int(await db.fetchval(
        "SELECT count(*) FROM timescaledb_information.chunks WHERE hypertable_name = "
        "'pipeline_data' AND hypertable_schema = current_schema() AND is_compressed"))


async def _temp(db: asyncpg.Pool, sensor: str) -> float | None:
    value = await db.fetchval("SELECT (data->>'temp')::float8 FROM pipeline_data "
                              "WHERE row_key = $1", sensor)
    return None if value is None else float(value)


ROLLED = {"records": "readings[*]", "time": {"path": "t", "format": "epoch_s"},
          "key": "sensor", "fields": {"sensor": {"path": "id", "type": "string",
                                                 "required": True},
                                      "temp": {"path": "temp", "type": "float"},
                                      "level": {"path": "level", "type": "integer"}}}


@pytest.mark.storages("timescaledb")
async def test_coarse_buckets_come_from_the_rollup_and_equal_the_rows(
        start_roles: Any, settings: Settings, db: asyncpg.Pool) -> None:
    rt = await start_roles("web", "map", "persist", api=TOKENS)
    await rt.service.create({**webhook_pipeline("rolled", ROLLED), "persist_data": True},
                            ADMIN)
    rollup = await wait_until(lambda: _rollup(db, "rolled"), what="the rollup created")
    assert rollup["fields"] == ["temp", "level"]
    t0 = (int(time.time()) // 60 - 180) * 60  # three hours ago, on a minute
    # every 7 s for 20 minutes, two sensors; halves add up exactly, so sums are exact
    items = [{"id": s, "t": t0 + k * 7, "temp": (k % 13) * 0.5 if k % 11 else None,
              "level": k % 5} for k in range(172) for s in ("a", "b")]
    await write_raw(settings, rt.names.raw, "rolled",
                    [orjson.dumps({"readings": items[i:i + 50]}) for i in range(0, 344, 50)])
    await wait_until(lambda: _equals(count(db, "rolled"), 344), what="344 rows stored")
    await wait_until(lambda: _materialized(db, rollup["view_name"], "f0_n", 0),
                     what="the minutes materialised")
    start, end = t0 + 13, t0 + 17 * 60 + 29  # ragged ends: rows there, minutes between
    await _same_answers(rt, db, settings, start, end)
    # late rows in a minute already materialised: refreshed, the answers still equal
    late = [{"id": f"late{k}", "t": t0 + 120 + k, "temp": 1000.0, "level": 9}
            for k in range(3)]
    await write_raw(settings, rt.names.raw, "rolled", [orjson.dumps({"readings": late})])
    await wait_until(lambda: _materialized(db, rollup["view_name"], "f0_max", 999),
                     what="the late minute refreshed")
    await _same_answers(rt, db, settings, start, end)


async def _same_answers(rt: Any, db: asyncpg.Pool, settings: Settings, start: int,
                        end: int) -> None:
    pipeline = rt.registry.pipelines["rolled"]
    async with db.acquire() as conn:
        storage = await dbm.storage(conn, settings.database.schema_name)
    for agg in ("avg", "min", "max", "count"):
        for bucket in ("1m", "5m", "1h"):
            query = {"from": _iso(start), "to": _iso(end), "agg": agg, "bucket": bucket}
            async with aiohttp.ClientSession() as http, http.get(
                    f"{rt.web_url}/api/pipelines/rolled/data", params=query,
                    headers=A) as r:
                assert r.status == 200
                answer = await r.json()
            assert answer["source"] == "rollup"
            q = history.parse(query, pipeline, datetime.now(UTC))
            rows, source = await history.series(db, storage, "rolled", q, 5.0,
                                                settings.database.schema_name,
                                                use_rollups=False)
            assert source == "rows" and rows
            expected = orjson.loads(orjson.dumps(rows))
            assert answer["points"] == expected, (agg, bucket)


async def _rollup(db: asyncpg.Pool, pid: str) -> Any:
    if not await db.fetchval("SELECT to_regclass('pipeline_rollups') IS NOT NULL"):
        return None
    return await db.fetchrow("SELECT view_name, fields FROM pipeline_rollups "
                             "WHERE pipeline_id = $1", pid)


async def _materialized(db: asyncpg.Pool, view: str, column: str, above: float) -> bool:
    """Whether the view's materialised part (not its real-time part) has `column` > above."""
    where = await db.fetchrow(
        "SELECT materialization_hypertable_schema, materialization_hypertable_name "
        "FROM timescaledb_information.continuous_aggregates WHERE view_name = $1", view)
    top = await db.fetchval(f'SELECT max({column}) FROM "{where[0]}"."{where[1]}"')
    return top is not None and top > above


def _iso(t: int) -> str:
    return datetime.fromtimestamp(t, UTC).isoformat()


async def test_status_and_readyz_name_the_storage(
        start_roles: Any, settings: Settings, storage: Storage, db: asyncpg.Pool) -> None:
    rt = await start_roles("web", "persist")
    await wait_until(lambda: db.fetchval("SELECT to_regclass('pipeline_data') IS NOT NULL"),
                     what="the table migrated")
    expected = "hypertable" if storage.name == "timescaledb" else "native monthly partitions"
    async with aiohttp.ClientSession() as http, http.get(f"{rt.web_url}/readyz") as r:
        ready = await r.json()
    assert r.status == 200 and expected in ready["storage"], ready
    rows = await asyncio.to_thread(stack.status, settings)  # the database named: external
    [line] = [row for row in rows if row.name == "storage"]
    assert expected in line.where and settings.database.schema_name in line.where
    if storage.name == "timescaledb":
        assert line.where.startswith("TimescaleDB 2.28.3: hypertable ")
