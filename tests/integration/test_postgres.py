"""The database the stack gives, for real."""

import asyncpg

from dashpipe.stack import Endpoints


async def test_each_test_has_its_own_schema(db: asyncpg.Pool, services: Endpoints) -> None:
    async with db.acquire() as conn:
        await conn.execute("CREATE TABLE probe (id int PRIMARY KEY)")
        await conn.execute("INSERT INTO probe VALUES (1), (2)")
        assert await conn.fetchval("SELECT count(*) FROM probe") == 2
        schema = await conn.fetchval("SELECT current_schema()")
    assert schema.startswith("t_")
    other = await asyncpg.connect(services.database_url.get_secret_value())
    try:
        visible = await other.fetchval("SELECT to_regclass('public.probe')")
    finally:
        await other.close()
    assert visible is None


async def test_server_is_postgresql_with_timescaledb_when_available(
        db: asyncpg.Pool, services: Endpoints) -> None:
    async with db.acquire() as conn:
        version = await conn.fetchval("SHOW server_version_num")
        available = await conn.fetchval(
            "SELECT count(*) FROM pg_available_extensions WHERE name = 'timescaledb'")
        installed = await conn.fetchval(
            "SELECT count(*) FROM pg_extension WHERE extname = 'timescaledb'")
    assert int(version) >= 140000
    if services.database_local:  # `dashpipe up` enables it exactly when the server has it
        assert installed == available
