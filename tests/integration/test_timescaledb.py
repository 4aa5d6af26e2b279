"""TimescaleDB for real, on a test schema that is not the extension's: the hypertable, its
policies brought to the settings at every start, and rows replayed into a compressed chunk
updated in place."""

from typing import Any

import asyncpg
import pytest

from dashpipe import db as dbm
from dashpipe.settings import ADMIN, DatabaseSettings, Settings
from tests.conftest import Storage
from tests.helpers import wait_until
from tests.integration.test_mapper import write_raw
from tests.integration.test_persist import count, persisting, readings


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
    await wait_until(lambda: _is(count(db, "sensors"), 3), what="3 rows stored")
    ext = await _ext(db)
    chunks = await db.fetch(f"SELECT {ext}.compress_chunk(c) "
                            f"FROM {ext}.show_chunks('pipeline_data') c")
    assert len(chunks) == 2  # two days, two chunks, both compressed now
    assert await _compressed(db) == 2
    # the same readings again, b corrected: an overlapping poll or a replay
    await write_raw(settings, rt.names.raw, "sensors",
                    [readings(("a", old, 20.5), ("b", old, 18.4), ("c", old + 90000, 1.0))])
    await wait_until(lambda: _is(_temp(db, "b"), 18.4), what="b corrected in place")
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


async def _is(value: Any, expected: Any) -> bool:
    return bool(await value == expected)
