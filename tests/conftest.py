"""Fixtures for real services.

Where Kafka and PostgreSQL come from, in order: the `DASHPIPE_` variables if both are set;
else testcontainers when a Docker engine answers; else the local stack (`dashpipe up`),
started once per test session. With CI=true a missing service fails the run, never skips.

Each test gets its own topic prefix, consumer-group prefix and database schema. A test that
uses the database (the `db` or `storage` fixture) runs twice: on plain PostgreSQL and on
TimescaleDB, two databases of the same server (`<db>_plain` without the extension, the stack's
database with it; `DASHPIPE_PG_BIN_DIR=$(../shared/timescaledb/install.sh)` gives the stack a
server that has it). Without TimescaleDB the second run skips, or fails in CI.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import AsyncExitStack
from dataclasses import dataclass, replace
from ipaddress import ip_network
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from pydantic import SecretStr

from dashpipe import kafka, topics
from dashpipe.cli import stack
from dashpipe.cli.stack import Endpoints, postgres
from dashpipe.settings import (
    DatabaseSettings,
    EgressSettings,
    KafkaSettings,
    Settings,
    StackSettings,
    TopicSettings,
    WebSettings,
    load_settings,
)

ROOT = Path(__file__).resolve().parent.parent
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


def _unavailable(reason: str) -> None:
    if IN_CI:
        pytest.fail(f"integration services unavailable in CI: {reason}", pytrace=False)
    pytest.skip(f"integration services unavailable: {reason}")


def _docker_answers() -> bool:
    if shutil.which("docker") is None:
        return False
    done = subprocess.run(["docker", "info"], capture_output=True, timeout=10, check=False)
    return done.returncode == 0


def _containers() -> Iterator[Endpoints]:
    from tests import containers  # imports testcontainers only when Docker answers

    yield from containers.started()


@pytest.fixture(scope="session")
def services() -> Iterator[Endpoints]:
    base = load_settings()
    if base.kafka.bootstrap_servers and base.database.url is not None:
        yield stack.endpoints(base)
        return
    if _docker_answers():
        yield from _containers()
        return
    started = not all(s.state.startswith("running") for s in stack.status(base)
                      if s.name != "storage")
    try:
        ends = stack.up(base)
    except Exception as exc:
        _unavailable(f"could not start the local stack: {exc}")
    yield ends
    if started and not os.environ.get("DASHPIPE_TEST_KEEP_STACK"):
        stack.down(base)


STORAGES = ("postgres", "timescaledb")


@dataclass(frozen=True)
class Storage:
    name: str  # one of STORAGES
    url: SecretStr


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """Every test of the database on each storage; `@pytest.mark.storages(...)` narrows it."""
    if "storage" in metafunc.fixturenames:
        only = metafunc.definition.get_closest_marker("storages")
        metafunc.parametrize("storage", only.args if only else STORAGES, indirect=True)


def pytest_terminal_summary(terminalreporter: Any) -> None:
    """How many tests of the database ran on each storage (CI's log shows both paths)."""
    passed = terminalreporter.stats.get("passed", [])
    counts = {name: sum(f"[{name}" in r.nodeid or f"-{name}" in r.nodeid for r in passed)
              for name in STORAGES}
    if any(counts.values()):
        terminalreporter.write_line("database tests passed: " + ", ".join(
            f"{n} on {name}" for name, n in counts.items()))


@pytest.fixture(scope="session")
def databases(services: Endpoints) -> dict[str, str]:
    return asyncio.run(postgres.storages(services.database_url.get_secret_value()))


@pytest.fixture
def storage(request: pytest.FixtureRequest, databases: dict[str, str]) -> Storage:
    """Which database this run of the test uses: plain PostgreSQL or TimescaleDB."""
    name = request.param
    if name not in databases:
        _unavailable("TimescaleDB is not installed in the test PostgreSQL: start the stack "
                     "with DASHPIPE_PG_BIN_DIR=$(../shared/timescaledb/install.sh)")
    return Storage(name, SecretStr(databases[name]))


def make_settings(ends: Endpoints, tag: str, state_dir: Path | None = None,
                  database_url: SecretStr | None = None) -> Settings:
    """Settings that point at the test services, with names no other test uses."""
    return Settings(
        kafka=KafkaSettings(bootstrap_servers=ends.bootstrap_servers, group_prefix=f"g{tag}"),
        database=DatabaseSettings(url=database_url or ends.database_url,
                                  schema_name=f"t_{tag}"),
        topics=TopicSettings(prefix=f"t{tag}", partitions=3, control_partitions=3),
        stack=StackSettings(state_dir=state_dir or ROOT / ".dashpipe"),
        web=WebSettings(port=0),
        # the tests' receivers and APIs listen on loopback; the SSRF tests take this away
        egress=EgressSettings(allow=[ip_network("127.0.0.0/8"), ip_network("::1/128")]),
    )


@pytest.fixture
async def settings(request: pytest.FixtureRequest, services: Endpoints
                   ) -> AsyncIterator[Settings]:
    """Per-test settings (on the storage of this run when the test uses one); the test's
    topics exist and are deleted afterwards."""
    tag = uuid.uuid4().hex[:10]
    url = request.getfixturevalue("storage").url if "storage" in request.fixturenames else None
    s = make_settings(services, tag, database_url=url)
    async with kafka.started(kafka.admin(services.bootstrap_servers, s.kafka)) as admin:
        specs = topics.catalogue(s.topics)
        await topics.create_all(admin, specs)
        yield s
        await admin.delete_topics([spec.name for spec in specs])


@pytest.fixture
def names(settings: Settings) -> topics.TopicNames:
    return topics.TopicNames.from_prefix(settings.topics.prefix)


@pytest.fixture
async def db(settings: Settings, storage: Storage) -> AsyncIterator[asyncpg.Pool]:
    """A pool whose connections use the test's own schema, dropped afterwards."""
    schema = settings.database.schema_name
    url = storage.url.get_secret_value()
    admin = await asyncpg.connect(url, timeout=10)
    await admin.execute(f'CREATE SCHEMA "{schema}"')
    pool = await asyncpg.create_pool(url, min_size=1, max_size=4,
                                     server_settings={"search_path": schema})
    try:
        yield pool
    finally:
        await pool.close()
        await _drop_schema(admin, schema)
        await admin.close()


async def _drop_schema(conn: asyncpg.Connection, schema: str) -> None:
    """Drop a test's schema. TimescaleDB's background jobs (rollup refreshes, compression)
    may touch its tables meanwhile: remove them first, and retry what still collides."""
    if await conn.fetchval("SELECT 1 FROM pg_extension WHERE extname = 'timescaledb'"):
        await conn.execute(
            "SELECT delete_job(job_id) FROM timescaledb_information.jobs "
            "WHERE hypertable_schema = $1", schema)
    for attempt in range(5):
        try:
            await conn.execute(f'DROP SCHEMA "{schema}" CASCADE')
            return
        except (asyncpg.InternalServerError, asyncpg.DeadlockDetectedError):
            if attempt == 4:
                raise
            await asyncio.sleep(0.5)  # a job's transaction in the way: retry after it


@pytest.fixture
async def start_roles(settings: Settings) -> AsyncIterator[Any]:
    """`await start_roles("web", "poll", **overrides)` runs roles in this process (as
    `dashpipe run` does) against the test's topics; everything stops after the test."""
    from dashpipe.cli.roles import run_roles
    from dashpipe.runtime import Runtime, open_runtime

    stack_ = AsyncExitStack()
    tasks: list[asyncio.Task[None]] = []

    async def start(*roles: str, **overrides: Any) -> Runtime:
        s = replace(settings, **overrides)
        rt = await stack_.enter_async_context(open_runtime(s, s.kafka.bootstrap_servers))
        tasks.append(asyncio.create_task(run_roles(rt, list(roles))))
        if "web" in roles:
            await asyncio.wait_for(rt.web_ready.wait(), 30)
        return rt

    yield start
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    await stack_.aclose()
