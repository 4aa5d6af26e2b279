"""The Docker definitions in tests/containers.py, checked without a Docker engine.

Constructing a testcontainers `DockerContainer` already connects to the engine, so the
definitions are plain data; these tests check that data, the wait strategies it configures
(run against a fake container that follows testcontainers' public `WaitStrategyTarget`
shape) and how `build` applies a spec to a container.
"""

from __future__ import annotations

import base64
import re
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, cast

import pytest
import yaml
from docker.errors import APIError  # type: ignore[import-untyped]
from testcontainers.core.container import DockerContainer

from tests import containers as c

ROOT = Path(__file__).resolve().parents[2]
KAFKA_LOG_LINE = (b"[2026-01-05 10:00:03,120] INFO [KafkaRaftServer nodeId=1] "
                  b"Kafka Server started (kafka.server.KafkaRaftServer)\n")
PG_LOG_LINE = (b"2026-01-05 10:00:01.000 UTC [48] LOG:  database system is ready to accept "
               b"connections\n")


def _props(value: str) -> dict[str, str]:
    """'NAME://host:port,...' as {NAME: 'host:port'}."""
    return dict(item.split("://", 1) for item in value.split(","))


# --- images -------------------------------------------------------------------------------

def test_images_are_pinned_to_the_local_stack_versions() -> None:
    assert c.KAFKA_IMAGE == "apache/kafka:4.1.1"
    assert c.TIMESCALEDB_IMAGE == "timescale/timescaledb:2.28.3-pg15"
    for image in (c.KAFKA_IMAGE, c.TIMESCALEDB_IMAGE):
        _, _, tag = image.partition(":")
        assert tag and "latest" not in tag, image
        assert re.fullmatch(r"\d+\.\d+\.\d+(-pg\d+)?", tag), image
    # Docker Hub's naming for timescale/timescaledb: <timescaledb version>-pg<postgres major>
    assert c.TIMESCALEDB_IMAGE.endswith(f":{c.TIMESCALEDB_VERSION}-pg{c.POSTGRES_MAJOR}")
    assert c.POSTGRES_MAJOR == 15


def test_specs_use_the_constants() -> None:
    assert c.kafka_spec(39092).image == c.KAFKA_IMAGE
    assert c.timescaledb_spec().image == c.TIMESCALEDB_IMAGE


def test_compose_file_pins_the_same_images() -> None:
    compose = yaml.safe_load((ROOT / "docker-compose.kafka.yml").read_text())
    # the services pulled, not built (dashpipe's own come from the Dockerfile: test_deploy.py)
    images = {name: svc["image"] for name, svc in compose["services"].items()
              if "build" not in svc}
    assert images == {"kafka": c.KAFKA_IMAGE, "postgres": c.TIMESCALEDB_IMAGE}
    env = compose["services"]["postgres"]["environment"]
    assert (env["POSTGRES_USER"], env["POSTGRES_DB"]) == (c.PG_USER, c.PG_DATABASE)


# --- Kafka --------------------------------------------------------------------------------

def test_kafka_is_one_combined_kraft_node() -> None:
    env = c.kafka_spec(39092).env
    assert env["KAFKA_PROCESS_ROLES"] == "broker,controller"
    node = env["KAFKA_NODE_ID"]
    voters = env["KAFKA_CONTROLLER_QUORUM_VOTERS"].split(",")
    assert voters == [f"{node}@127.0.0.1:{c.KAFKA_CONTROLLER_PORT}"]
    # the controller listener the voters name is the one the node listens on
    listeners = _props(env["KAFKA_LISTENERS"])
    assert listeners[env["KAFKA_CONTROLLER_LISTENER_NAMES"]] == \
        f"127.0.0.1:{c.KAFKA_CONTROLLER_PORT}"
    # every listener has a security protocol
    protocols = dict(p.split(":") for p in env["KAFKA_LISTENER_SECURITY_PROTOCOL_MAP"].split(","))
    assert set(listeners) <= set(protocols)
    assert env["KAFKA_INTER_BROKER_LISTENER_NAME"] in listeners
    # a KRaft cluster id is 16 bytes in URL-safe base64 without padding
    assert len(base64.urlsafe_b64decode(env["CLUSTER_ID"] + "==")) == 16


@pytest.mark.parametrize("port", [39092, 50123])
def test_kafka_advertises_the_port_bound_on_the_host(port: int) -> None:
    spec = c.kafka_spec(port)
    env = spec.env
    advertised = _props(env["KAFKA_ADVERTISED_LISTENERS"])
    assert advertised == {"PLAINTEXT": f"127.0.0.1:{port}"}
    # the broker listens on that same port inside the container...
    assert _props(env["KAFKA_LISTENERS"])["PLAINTEXT"] == f"0.0.0.0:{port}"
    # ...which is bound to that same host port, and the controller is not published
    assert dict(spec.ports) == {port: port}
    assert c.KAFKA_CONTROLLER_PORT not in spec.ports


def test_kafka_rejects_ports_it_cannot_use() -> None:
    for port in (0, 70000, c.KAFKA_CONTROLLER_PORT):
        with pytest.raises(ValueError):
            c.kafka_spec(port)


def test_kafka_internal_topics_have_one_replica() -> None:
    env = c.kafka_spec(39092).env
    single = {k: v for k, v in env.items()
              if k.endswith("_REPLICATION_FACTOR") or k.endswith("_MIN_ISR")}
    assert {"KAFKA_OFFSETS_TOPIC_REPLICATION_FACTOR",
            "KAFKA_TRANSACTION_STATE_LOG_REPLICATION_FACTOR",
            "KAFKA_TRANSACTION_STATE_LOG_MIN_ISR"} <= set(single)
    assert set(single.values()) == {"1"}


def test_all_environment_values_are_strings() -> None:
    # docker passes the environment as text; a stray int would fail only at start
    for spec in (c.kafka_spec(39092), c.timescaledb_spec()):
        assert all(isinstance(v, str) for v in spec.env.values())


# --- TimescaleDB --------------------------------------------------------------------------

def test_timescaledb_environment_ports_and_url() -> None:
    spec = c.timescaledb_spec()
    assert spec.env == {"POSTGRES_USER": c.PG_USER, "POSTGRES_PASSWORD": c.PG_PASSWORD,
                        "POSTGRES_DB": c.PG_DATABASE}
    assert dict(spec.ports) == {5432: None}  # Docker picks the host port
    assert c.database_url("localhost", 49153) == \
        "postgresql://dashpipe:dashpipe@localhost:49153/dashpipe"


def test_timescaledb_ready_means_the_second_server_answers_over_tcp() -> None:
    ready = c.timescaledb_spec().readiness
    assert ready.occurrences == 2
    assert ready.command[0] == "pg_isready"
    assert "--host=127.0.0.1" in ready.command
    assert f"--port={c.PG_PORT}" in ready.command


# --- readiness, run against a fake container ----------------------------------------------

@dataclass
class _Result:
    exit_code: int
    output: bytes


@dataclass
class _Wrapped:
    status: str = "running"
    attrs: dict[str, Any] = field(default_factory=dict)

    def reload(self) -> None:
        pass


@dataclass
class FakeTarget:
    """A started container as a wait strategy sees it: logs grow one snapshot per poll, and
    once they run out the container has exited. `exec` answers with `exit_codes` in turn."""

    logs: list[bytes]
    exit_codes: list[int] = field(default_factory=lambda: [0])
    commands: list[list[str]] = field(default_factory=list)
    wrapped: _Wrapped = field(default_factory=_Wrapped)
    polls: int = 0

    def get_logs(self) -> tuple[bytes, bytes]:
        i = min(self.polls, len(self.logs) - 1)
        self.polls += 1
        if self.polls >= len(self.logs):
            self.wrapped.status = "exited"
        return b"", self.logs[i]  # both images log to stderr

    def get_wrapped_container(self) -> _Wrapped:
        return self.wrapped

    def reload(self) -> None:
        pass

    @property
    def status(self) -> str:
        return self.wrapped.status

    def get_container_host_ip(self) -> str:
        return "127.0.0.1"

    def get_exposed_port(self, port: int) -> int:
        return port

    def exec(self, command: list[str]) -> _Result:
        self.commands.append(list(command))
        code = self.exit_codes.pop(0) if len(self.exit_codes) > 1 else self.exit_codes[0]
        return _Result(code, b"")


def _fast(spec: c.ContainerSpec) -> c.Readiness:
    return replace(spec.readiness, poll_s=0.001, timeout_s=5)


def test_kafka_is_ready_on_its_started_line() -> None:
    target = FakeTarget([b"starting\n", b"starting\n" + KAFKA_LOG_LINE])
    c.wait_strategy(_fast(c.kafka_spec(39092))).wait_until_ready(target)
    assert target.polls == 2


def test_kafka_that_exits_before_its_started_line_is_not_ready() -> None:
    target = FakeTarget([b"starting\n", b"ERROR Exiting Kafka\n"])
    with pytest.raises(RuntimeError, match="exited"):
        c.wait_strategy(_fast(c.kafka_spec(39092))).wait_until_ready(target)


def test_postgres_ready_line_once_is_the_init_server_not_ready() -> None:
    # the entrypoint's temporary server logs the line once, then the container stops here
    target = FakeTarget([PG_LOG_LINE, PG_LOG_LINE + b"server stopped\n"])
    with pytest.raises(RuntimeError, match="exited"):
        c.wait_strategy(_fast(c.timescaledb_spec())).wait_until_ready(target)
    assert target.commands == []  # pg_isready never ran


def test_postgres_ready_after_the_second_line_and_pg_isready() -> None:
    second = PG_LOG_LINE + b"server stopped\nPostgreSQL init process complete\n" + PG_LOG_LINE
    target = FakeTarget([PG_LOG_LINE, second, second], exit_codes=[2, 2, 0])
    spec = c.timescaledb_spec()
    c.wait_strategy(_fast(spec)).wait_until_ready(target)
    assert target.commands == [list(spec.readiness.command)] * 3  # retried until exit 0


def test_log_regex_counts_occurrences() -> None:
    two = c.log_regex(c.Readiness("ready", occurrences=2))
    assert two.search("ready\n") is None
    assert two.search("ready\nstop\nready\n") is not None
    assert c.log_regex(c.Readiness("ready")).search("x ready y") is not None
    with pytest.raises(ValueError):
        c.log_regex(c.Readiness("ready", occurrences=0))


# --- build: how a spec becomes a container ------------------------------------------------

class FakeContainer:
    """Records what `build` calls; the methods are DockerContainer's (checked below)."""

    def __init__(self, image: str) -> None:
        self.image = image
        self.env: dict[str, str] = {}
        self.bound: dict[int, int] = {}
        self.exposed: list[int] = []
        self.strategy: Any = None

    def with_env(self, key: str, value: str) -> FakeContainer:
        self.env[key] = value
        return self

    def with_bind_ports(self, container: int, host: int) -> FakeContainer:
        self.bound[container] = host
        return self

    def with_exposed_ports(self, *ports: int) -> FakeContainer:
        self.exposed.extend(ports)
        return self

    def waiting_for(self, strategy: Any) -> FakeContainer:
        self.strategy = strategy
        return self


def test_fake_container_only_uses_docker_container_methods() -> None:
    for name in ("with_env", "with_bind_ports", "with_exposed_ports", "waiting_for"):
        assert callable(getattr(DockerContainer, name)), name


def test_build_applies_kafka_spec() -> None:
    spec = c.kafka_spec(41234)
    built: Any = c.build(spec, factory=cast(Any, FakeContainer))
    assert built.image == c.KAFKA_IMAGE
    assert built.env == dict(spec.env)
    assert built.bound == {41234: 41234} and built.exposed == []
    target = FakeTarget([KAFKA_LOG_LINE])
    built.strategy.with_poll_interval(0.001).wait_until_ready(target)  # the configured wait


def test_build_applies_timescaledb_spec() -> None:
    spec = c.timescaledb_spec()
    built: Any = c.build(spec, factory=cast(Any, FakeContainer))
    assert built.image == c.TIMESCALEDB_IMAGE
    assert built.env == dict(spec.env)
    assert built.bound == {} and built.exposed == [5432]
    target = FakeTarget([PG_LOG_LINE])
    with pytest.raises(RuntimeError):  # one line is not enough for this container
        built.strategy.with_poll_interval(0.001).wait_until_ready(target)


# --- starting Kafka on a free port --------------------------------------------------------

class FakeBroker:
    def __init__(self, error: Exception | None) -> None:
        self.error = error
        self.stopped = False

    def start(self) -> FakeBroker:
        if self.error is not None:
            raise self.error
        return self

    def stop(self) -> None:
        self.stopped = True


def _fake_starts(monkeypatch: pytest.MonkeyPatch, errors: list[Exception | None]
                 ) -> tuple[list[int], list[FakeBroker]]:
    ports = iter(range(40001, 40010))
    asked: list[int] = []
    brokers: list[FakeBroker] = []

    def build(spec: c.ContainerSpec) -> FakeBroker:
        asked.append(next(iter(spec.ports)))
        brokers.append(FakeBroker(errors.pop(0)))
        return brokers[-1]

    monkeypatch.setattr(c, "free_port", lambda: next(ports))
    monkeypatch.setattr(c, "build", build)
    return asked, brokers


TAKEN = APIError("500 Server Error", explanation="Bind for 0.0.0.0:40001 failed: "
                 "port is already allocated")


def test_kafka_start_moves_to_a_new_port_when_its_port_was_taken(
        monkeypatch: pytest.MonkeyPatch) -> None:
    asked, brokers = _fake_starts(monkeypatch, [TAKEN, None])
    broker, bootstrap = c._start_kafka()
    assert asked == [40001, 40002]
    assert bootstrap == "127.0.0.1:40002" and broker is cast(Any, brokers[1])
    assert brokers[0].stopped and not brokers[1].stopped


def test_kafka_start_gives_up_after_its_attempts(monkeypatch: pytest.MonkeyPatch) -> None:
    asked, brokers = _fake_starts(monkeypatch, [TAKEN] * c.PORT_ATTEMPTS)
    with pytest.raises(APIError):
        c._start_kafka()
    assert len(asked) == c.PORT_ATTEMPTS and all(b.stopped for b in brokers)


def test_kafka_start_does_not_retry_other_engine_errors(monkeypatch: pytest.MonkeyPatch) -> None:
    asked, brokers = _fake_starts(monkeypatch, [APIError("pull access denied"), None])
    with pytest.raises(APIError, match="pull access denied"):
        c._start_kafka()
    assert asked == [40001] and brokers[0].stopped
