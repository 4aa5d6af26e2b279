"""The database the stack gives, for real, on both storages."""

import asyncpg

from tests.conftest import Storage


async def test_each_test_has_its_own_schema(db: asyncpg.Pool, storage: Storage) -> None:
    async with db.acquire() as conn:
        await conn.execute("CREATE TABLE probe (id int PRIMARY KEY)")
        await conn.execute("INSERT INTO probe VALUES (1), (2)")
        assert await conn.fetchval("SELECT count(*) FROM probe") == 2
        schema = await conn.fetchval("SELECT current_schema()")
    assert schema.startswith("t_")
    other = await asyncpg.connect(storage.url.get_secret_value())
    try:
        visible = await other.fetchval("SELECT to_regclass('public.probe')")
    finally:
        await other.close()
    assert visible is None


async def test_each_storage_is_what_it_says(db: asyncpg.Pool, storage: Storage) -> None:
    async with db.acquire() as conn:
        version = await conn.fetchval("SHOW server_version_num")
        installed = await conn.fetchval(
            "SELECT extversion FROM pg_extension WHERE extname = 'timescaledb'")
    assert int(version) >= 150000
    if storage.name == "timescaledb":
        assert installed is not None and installed.startswith("2.")
    else:
        assert installed is None
