"""The local stack behind `dashpipe up | down | status`, and where every process finds its services.

A service named by a `DASHPIPE_` variable is used as it is and never started here.
"""

from __future__ import annotations

import asyncio
import logging
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

from pydantic import SecretStr

from dashpipe.cli.stack import kafka, postgres
from dashpipe.cli.stack import state as st
from dashpipe.errors import StackError, Unavailable
from dashpipe.settings import Settings, TopicSettings

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Endpoints:
    bootstrap_servers: str
    database_url: SecretStr
    kafka_local: bool
    database_local: bool


def endpoints(settings: Settings) -> Endpoints:
    """Where Kafka and PostgreSQL are: the settings first, else the running local stack
    (`Unavailable` when neither names them: exit code 4, as for a stack that is down)."""
    state = st.load(settings.stack.state_dir)
    bootstrap = settings.kafka.bootstrap_servers
    if not bootstrap:
        if not state.kafka_port:
            raise Unavailable("DASHPIPE_KAFKA_BOOTSTRAP_SERVERS is not set and the local stack "
                              "is not up: run `dashpipe up`")
        bootstrap = ",".join(f"127.0.0.1:{p}" for p in state.kafka_ports or [state.kafka_port])
    db = settings.database.url
    if db is None:
        if not state.pg_port:
            raise Unavailable("DASHPIPE_DATABASE_URL is not set and the local stack is not up: "
                              "run `dashpipe up`")
        db = SecretStr(postgres.url(state))
    return Endpoints(bootstrap, db, not settings.kafka.bootstrap_servers,
                     settings.database.url is None)


def resolved(settings: Settings) -> tuple[Settings, Endpoints]:
    """The settings with the local stack's Kafka and PostgreSQL filled in where the
    environment names none, and the endpoints."""
    ends = endpoints(settings)
    kafka = settings.kafka if settings.kafka.bootstrap_servers else \
        settings.kafka.model_copy(update={"bootstrap_servers": ends.bootstrap_servers})
    database = settings.database if settings.database.url is not None else \
        settings.database.model_copy(update={"url": ends.database_url})
    return replace(settings, kafka=kafka, database=database), ends


async def wait_for_kafka(bootstrap: str, timeout: float = 90.0,
                         alive: Callable[[], bool] | None = None, brokers: int = 1) -> None:
    """Return once `brokers` brokers answer as one cluster; raise after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    quiet = logging.getLogger("aiokafka")
    level = quiet.level
    quiet.setLevel(logging.CRITICAL)  # "Unable connect" is expected until the broker listens
    try:
        await _wait(bootstrap, deadline, timeout, alive, brokers)
    finally:
        quiet.setLevel(level)


async def _wait(bootstrap: str, deadline: float, timeout: float,
                alive: Callable[[], bool] | None, brokers: int) -> None:
    from aiokafka.admin import AIOKafkaAdminClient

    last: Exception | None = None
    gone = 0  # consecutive checks that found no broker process (its exec can blink once)
    while time.monotonic() < deadline:
        gone = gone + 1 if alive is not None and not alive() else 0
        if gone >= 3:
            raise StackError("the Kafka broker exited while starting")
        admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=5000)
        try:
            await admin.start()
            found = len((await admin.describe_cluster())["brokers"])
            if found >= brokers:
                return
            last = StackError(f"{found} of {brokers} brokers in the cluster")
        except Exception as exc:  # the broker is still starting
            last = exc
        finally:
            await admin.close()
        await asyncio.sleep(0.5)
    raise StackError(f"Kafka at {bootstrap} did not answer within {timeout:.0f}s: {last}")


def up(settings: Settings) -> Endpoints:
    """Start what is not configured elsewhere and not already running. Idempotent."""
    stack = settings.stack
    state = st.load(stack.state_dir)
    if not settings.kafka.bootstrap_servers:
        state = kafka.start(stack, state)
        st.save(stack.state_dir, state)
        homes = kafka.homes(stack, len(state.kafka_ports))
        bootstrap = ",".join(f"127.0.0.1:{p}" for p in state.kafka_ports)
        try:
            asyncio.run(wait_for_kafka(
                bootstrap, brokers=len(homes),
                alive=lambda: all(kafka.running_pid(h) is not None for h in homes)))
        except StackError as exc:
            raise StackError(f"{exc}\n--- kafka log ---\n{kafka.log_tail(stack)}") from None
    if settings.database.url is None:
        state = postgres.start(stack, state)
        st.save(stack.state_dir, state)
        asyncio.run(postgres.create_database(state))
    return endpoints(settings)


def down(settings: Settings, purge: bool = False) -> list[str]:
    """Stop what `up` started; returns the names of what was stopped.

    `purge` also deletes the state folder (the Kafka log and the database) for a fresh start.
    """
    stack = settings.stack
    state = st.load(stack.state_dir)
    stopped = []
    if kafka.stop(stack):
        stopped.append("kafka")
    if state.pg_data and postgres.stop(stack, state):
        stopped.append("postgresql")
    if purge:
        if state.pg_data:
            shutil.rmtree(Path(state.pg_data).parent, ignore_errors=True)
        shutil.rmtree(stack.state_dir, ignore_errors=True)
    return stopped


@dataclass(frozen=True)
class ServiceStatus:
    name: str
    where: str
    state: str  # running | stopped | external


def status(settings: Settings) -> list[ServiceStatus]:
    stack = settings.stack
    state = st.load(stack.state_dir)
    out = []
    if settings.kafka.bootstrap_servers:
        out.append(ServiceStatus("kafka", settings.kafka.bootstrap_servers, "external"))
    else:
        homes = kafka.homes(stack, len(state.kafka_ports) or None)
        ports: list[int | None] = list(state.kafka_ports) or [state.kafka_port]
        for i, home in enumerate(homes):
            pid = kafka.running_pid(home)
            port = ports[i] if i < len(ports) else None
            name = "kafka" if len(homes) == 1 else f"kafka-{i + 1}"
            where = f"127.0.0.1:{port} (Apache Kafka {stack.kafka_version}, KRaft, " \
                    f"log in {home / 'data'})"
            out.append(ServiceStatus(name, where, f"running pid {pid}" if pid else "stopped"))
    if settings.database.url is not None:
        out.append(ServiceStatus("postgresql", _redact(settings.database.url), "external"))
    else:
        alive = postgres.running(stack, state)
        where = f"127.0.0.1:{state.pg_port} database {postgres.DATABASE} (data in {state.pg_data})"
        out.append(ServiceStatus("postgresql", where, "running" if alive else "stopped"))
    if out[-1].state != "stopped":
        out.append(_storage(settings, state))
    return out


def topic_settings(settings: Settings) -> TopicSettings:
    """The topic settings, with replication factor 3 when the local stack runs three brokers
    or more and `DASHPIPE_TOPIC_REPLICATION_FACTOR` does not say otherwise."""
    ts = settings.topics
    local = not settings.kafka.bootstrap_servers
    nodes = len(st.load(settings.stack.state_dir).kafka_ports) if local else 0
    if nodes >= 3 and "replication_factor" not in ts.model_fields_set:
        return ts.model_copy(update={"replication_factor": 3})
    return ts


def _storage(settings: Settings, state: st.StackState) -> ServiceStatus:
    """What holds the rows (TimescaleDB hypertable or native partitions), read from the
    database itself."""
    from dashpipe import db

    url = settings.database.url or SecretStr(postgres.url(state))

    async def read() -> str:
        import asyncpg

        conn = await asyncpg.connect(url.get_secret_value(), timeout=5)
        try:
            return await db.describe(conn, settings.database.schema_name)
        finally:
            await conn.close()

    try:
        return ServiceStatus("storage", asyncio.run(read()), "ok")
    except Exception as exc:  # a status line, never a traceback
        return ServiceStatus("storage", f"unknown: {type(exc).__name__}", "unreachable")


def _redact(url: SecretStr) -> str:
    """A database URL with its password replaced, for display."""
    from urllib.parse import urlsplit, urlunsplit

    parts = urlsplit(url.get_secret_value())
    if parts.password is None:
        return url.get_secret_value()
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@")
    return urlunsplit(parts._replace(netloc=netloc))
