"""Fixtures for real services.

Where Kafka and PostgreSQL come from, in order: the `DASHPIPE_` variables if both are set;
else testcontainers when a Docker engine answers; else the local stack (`dashpipe up`),
started once per test session. With CI=true a missing service fails the run, never skips.

Each test gets its own topic prefix, consumer-group prefix and database schema.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import AsyncExitStack
from dataclasses import replace
from ipaddress import ip_network
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from pydantic import SecretStr

from dashpipe import kafka, stack, topics
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
from dashpipe.stack import Endpoints

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
    from testcontainers.kafka import KafkaContainer
    from testcontainers.postgres import PostgresContainer

    with KafkaContainer("apache/kafka:4.1.1").with_kraft() as broker, PostgresContainer(
        "timescale/timescaledb:latest-pg16", driver=None
    ) as pg:
        yield Endpoints(broker.get_bootstrap_server(), SecretStr(pg.get_connection_url()),
                        False, False)


@pytest.fixture(scope="session")
def services() -> Iterator[Endpoints]:
    base = load_settings()
    if base.kafka.bootstrap_servers and base.database.url is not None:
        yield stack.endpoints(base)
        return
    if _docker_answers():
        yield from _containers()
        return
    started = not all(s.state.startswith("running") for s in stack.status(base))
    try:
        ends = stack.up(base)
    except Exception as exc:
        _unavailable(f"could not start the local stack: {exc}")
    yield ends
    if started and not os.environ.get("DASHPIPE_TEST_KEEP_STACK"):
        stack.down(base)


def make_settings(ends: Endpoints, tag: str, state_dir: Path | None = None) -> Settings:
    """Settings that point at the test services, with names no other test uses."""
    return Settings(
        kafka=KafkaSettings(bootstrap_servers=ends.bootstrap_servers, group_prefix=f"g{tag}"),
        database=DatabaseSettings(url=ends.database_url, schema_name=f"t_{tag}"),
        topics=TopicSettings(prefix=f"t{tag}", partitions=3, control_partitions=3),
        stack=StackSettings(state_dir=state_dir or ROOT / ".dashpipe"),
        web=WebSettings(port=0),
        # the tests' receivers and APIs listen on loopback; the SSRF tests take this away
        egress=EgressSettings(allow=[ip_network("127.0.0.0/8"), ip_network("::1/128")]),
    )


@pytest.fixture
async def settings(services: Endpoints) -> AsyncIterator[Settings]:
    """Per-test settings; the test's topics exist and are deleted afterwards."""
    tag = uuid.uuid4().hex[:10]
    s = make_settings(services, tag)
    async with kafka.started(kafka.admin(services.bootstrap_servers, s.kafka)) as admin:
        specs = topics.catalogue(s.topics)
        await topics.create_all(admin, specs)
        yield s
        await admin.delete_topics([spec.name for spec in specs])


@pytest.fixture
def names(settings: Settings) -> topics.TopicNames:
    return topics.TopicNames.from_prefix(settings.topics.prefix)


@pytest.fixture
async def db(settings: Settings, services: Endpoints) -> AsyncIterator[asyncpg.Pool]:
    """A pool whose connections use the test's own schema, dropped afterwards."""
    schema = settings.database.schema_name
    url = services.database_url.get_secret_value()
    admin = await asyncpg.connect(url, timeout=10)
    await admin.execute(f'CREATE SCHEMA "{schema}"')
    pool = await asyncpg.create_pool(url, min_size=1, max_size=4,
                                     server_settings={"search_path": schema})
    try:
        yield pool
    finally:
        await pool.close()
        await admin.execute(f'DROP SCHEMA "{schema}" CASCADE')
        await admin.close()


@pytest.fixture
async def start_roles(settings: Settings) -> AsyncIterator[Any]:
    """`await start_roles("web", "poll", **overrides)` runs roles in this process (as
    `dashpipe run` does) against the test's topics; everything stops after the test."""
    from dashpipe.runtime import Runtime, open_runtime, run_roles

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
