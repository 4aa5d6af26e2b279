"""Kafka and TimescaleDB in Docker, for the test fixtures when a Docker engine answers.

Built on testcontainers' generic `DockerContainer` because its Kafka module takes only
Confluent images, and we run the same `apache/kafka` the local stack and the compose file use.
Each definition is plain data (`ContainerSpec`: image, environment, ports, readiness) so it can
be checked without an engine; `build` applies one to a container, and `started` runs both.

Readiness has two halves. Inside the container, testcontainers waits for the service's own
log line (and for PostgreSQL, `pg_isready` over TCP). Then, from the host, a real client call
with a deadline: a Kafka metadata request (`dashpipe.cli.stack.wait_for_kafka`) and an asyncpg
connection that checks the server is PostgreSQL 15 with TimescaleDB 2.28.3 available.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass

import asyncpg
from docker.errors import APIError  # type: ignore[import-untyped]
from pydantic import SecretStr
from testcontainers.core.container import DockerContainer
from testcontainers.core.wait_strategies import (
    CompositeWaitStrategy,
    ExecWaitStrategy,
    LogMessageWaitStrategy,
)
from testcontainers.core.waiting_utils import WaitStrategy

from dashpipe.cli.stack import Endpoints, wait_for_kafka
from dashpipe.cli.stack.state import free_port
from dashpipe.errors import StackError

KAFKA_IMAGE = "apache/kafka:4.1.1"
TIMESCALEDB_VERSION = "2.28.3"
POSTGRES_MAJOR = 15  # the major the local stack runs (the machine's PostgreSQL)
TIMESCALEDB_IMAGE = f"timescale/timescaledb:{TIMESCALEDB_VERSION}-pg{POSTGRES_MAJOR}"

KAFKA_NODE_ID = 1
KAFKA_CONTROLLER_PORT = 9093  # inside the container only, never published
# a fixed KRaft cluster id (22 characters of URL-safe base64, as `kafka-storage random-uuid`
# prints): each container is new and formats its own empty log with it
KAFKA_CLUSTER_ID = "ZGFzaHBpcGUtdGVzdHMtMQ"
KAFKA_READY_LINE = r"Kafka Server started"

PG_PORT = 5432
PG_USER = PG_PASSWORD = PG_DATABASE = "dashpipe"
# the image's entrypoint runs a temporary server for its init scripts (it logs the line once,
# listening on no TCP port), stops it, then starts the real one: the second line is the one
PG_READY_LINE = r"database system is ready to accept connections"

STARTUP_TIMEOUT_S = 180  # each wait step, counted once the container runs (after any pull)
CLIENT_TIMEOUT_S = 60.0  # the host-side check after the container's own wait
PORT_ATTEMPTS = 3


@dataclass(frozen=True)
class Readiness:
    """When a started container counts as ready, judged inside the container."""

    log_pattern: str  # a regular expression searched in the container's stdout and stderr
    occurrences: int = 1  # how many times it must have appeared
    command: tuple[str, ...] = ()  # then run in the container until it exits 0
    timeout_s: int = STARTUP_TIMEOUT_S
    poll_s: float = 0.5


@dataclass(frozen=True)
class ContainerSpec:
    image: str
    env: Mapping[str, str]
    # container port -> host port: a number binds that host port, None lets Docker pick one
    ports: Mapping[int, int | None]
    readiness: Readiness


def kafka_spec(port: int, host: str = "127.0.0.1") -> ContainerSpec:
    """One combined broker + controller node in KRaft mode, reachable at `host:port`.

    A Kafka client connects to the bootstrap address, then to whatever address the broker
    advertises, so the advertised address must work from the host. A randomly mapped port is
    only known after the container started, too late for the broker's configuration. So the
    caller picks a free host port first, and the broker listens on that same port inside the
    container, bound to the same host port, and advertises `host:port`. That address then
    works on both sides: from the host through the port binding, and inside the container,
    where the broker reaches itself on loopback. The controller listener stays inside.
    The engine must be local (the host's 127.0.0.1 is where Docker publishes ports).
    """
    if not 0 < port < 65536 or port == KAFKA_CONTROLLER_PORT:
        raise ValueError(f"not a usable broker port: {port}")
    env = {
        "CLUSTER_ID": KAFKA_CLUSTER_ID,
        "KAFKA_NODE_ID": str(KAFKA_NODE_ID),
        "KAFKA_PROCESS_ROLES": "broker,controller",
        "KAFKA_LISTENERS":
            f"PLAINTEXT://0.0.0.0:{port},CONTROLLER://127.0.0.1:{KAFKA_CONTROLLER_PORT}",
        "KAFKA_ADVERTISED_LISTENERS": f"PLAINTEXT://{host}:{port}",
        "KAFKA_CONTROLLER_QUORUM_VOTERS": f"{KAFKA_NODE_ID}@127.0.0.1:{KAFKA_CONTROLLER_PORT}",
        "KAFKA_CONTROLLER_LISTENER_NAMES": "CONTROLLER",
        "KAFKA_INTER_BROKER_LISTENER_NAME": "PLAINTEXT",
        "KAFKA_LISTENER_SECURITY_PROTOCOL_MAP": "PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
        # one broker: every internal topic has a single replica
        "KAFKA_OFFSETS_TOPIC_REPLICATION_FACTOR": "1",
        "KAFKA_TRANSACTION_STATE_LOG_REPLICATION_FACTOR": "1",
        "KAFKA_TRANSACTION_STATE_LOG_MIN_ISR": "1",
        "KAFKA_SHARE_COORDINATOR_STATE_TOPIC_REPLICATION_FACTOR": "1",
        "KAFKA_SHARE_COORDINATOR_STATE_TOPIC_MIN_ISR": "1",
        "KAFKA_GROUP_INITIAL_REBALANCE_DELAY_MS": "0",
        "KAFKA_LOG_DIRS": "/tmp/kraft-combined-logs",
    }
    return ContainerSpec(KAFKA_IMAGE, env, {port: port}, Readiness(KAFKA_READY_LINE))


def timescaledb_spec() -> ContainerSpec:
    """PostgreSQL 15 with TimescaleDB, on a port Docker picks."""
    env = {"POSTGRES_USER": PG_USER, "POSTGRES_PASSWORD": PG_PASSWORD, "POSTGRES_DB": PG_DATABASE}
    # pg_isready over TCP: the init-time temporary server listens on the socket only
    ready = ("pg_isready", "--host=127.0.0.1", f"--port={PG_PORT}",
             f"--username={PG_USER}", f"--dbname={PG_DATABASE}")
    return ContainerSpec(TIMESCALEDB_IMAGE, env, {PG_PORT: None},
                         Readiness(PG_READY_LINE, occurrences=2, command=ready))


def database_url(host: str, port: int) -> str:
    return f"postgresql://{PG_USER}:{PG_PASSWORD}@{host}:{port}/{PG_DATABASE}"


def log_regex(readiness: Readiness) -> re.Pattern[str]:
    """One pattern that matches once `log_pattern` appeared `occurrences` times."""
    if readiness.occurrences < 1:
        raise ValueError("occurrences must be at least 1")
    # LogMessageWaitStrategy searches the whole log each poll; its own `times` is not applied
    # by testcontainers 4.15, so the count is in the pattern
    one = f"(?:{readiness.log_pattern})"
    return re.compile("(?:" + one + ".*?){" + str(readiness.occurrences - 1) + "}" + one,
                      re.DOTALL)


def wait_strategy(readiness: Readiness) -> WaitStrategy:
    steps: list[WaitStrategy] = [LogMessageWaitStrategy(log_regex(readiness))]
    if readiness.command:
        steps.append(ExecWaitStrategy(list(readiness.command)))
    return (CompositeWaitStrategy(*steps)
            .with_startup_timeout(readiness.timeout_s)
            .with_poll_interval(readiness.poll_s))


def build(spec: ContainerSpec,
          factory: Callable[[str], DockerContainer] = DockerContainer) -> DockerContainer:
    """A container (not started) with `spec` applied. `factory` makes the bare container:
    constructing a `DockerContainer` already connects to the engine."""
    container = factory(spec.image)
    for key, value in spec.env.items():
        container.with_env(key, value)
    for inside, outside in spec.ports.items():
        if outside is None:
            container.with_exposed_ports(inside)
        else:
            container.with_bind_ports(inside, outside)
    container.waiting_for(wait_strategy(spec.readiness))
    return container


async def check_database(url: str, timeout: float = CLIENT_TIMEOUT_S) -> str:
    """Connect from the host until `timeout`; return TimescaleDB's version; raise if the server
    is not the PostgreSQL major and TimescaleDB version these definitions pin."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            conn = await asyncpg.connect(url, timeout=5)
            break
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            if time.monotonic() > deadline:
                raise StackError(f"PostgreSQL did not accept connections in {timeout:.0f}s: "
                                 f"{exc}") from None
            await asyncio.sleep(0.5)
    try:
        major = int(await conn.fetchval("SHOW server_version_num")) // 10000
        version = await conn.fetchval(
            "SELECT default_version FROM pg_available_extensions WHERE name = 'timescaledb'")
    finally:
        await conn.close()
    if major != POSTGRES_MAJOR or version != TIMESCALEDB_VERSION:
        raise StackError(f"{TIMESCALEDB_IMAGE} runs PostgreSQL {major} with TimescaleDB "
                         f"{version}, expected {POSTGRES_MAJOR} and {TIMESCALEDB_VERSION}")
    return str(version)


def _port_taken(exc: Exception) -> bool:
    text = str(exc).lower()
    return "already allocated" in text or "address already in use" in text


def _start_kafka() -> tuple[DockerContainer, str]:
    """Start the broker on a free host port; another process may take the port between the
    check and Docker's bind, so a taken port means another try on a new one."""
    for attempt in range(1, PORT_ATTEMPTS + 1):
        port = free_port()
        broker = build(kafka_spec(port))
        try:
            broker.start()
        except APIError as exc:
            broker.stop()
            if attempt == PORT_ATTEMPTS or not _port_taken(exc):
                raise
            continue
        except BaseException:
            broker.stop()
            raise
        return broker, f"127.0.0.1:{port}"
    raise AssertionError("unreachable")


def started() -> Iterator[Endpoints]:
    """Kafka and TimescaleDB running and answering, as `Endpoints` that name neither as local
    (`dashpipe down` has nothing to stop); both are removed when the generator closes."""
    broker, bootstrap = _start_kafka()
    try:
        with build(timescaledb_spec()) as pg:
            url = database_url(pg.get_container_host_ip(), pg.get_exposed_port(PG_PORT))
            asyncio.run(wait_for_kafka(bootstrap, timeout=CLIENT_TIMEOUT_S))
            asyncio.run(check_database(url))
            yield Endpoints(bootstrap, SecretStr(url), False, False)
    finally:
        broker.stop()

