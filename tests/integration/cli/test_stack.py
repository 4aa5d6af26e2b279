"""`dashpipe up | down | status` and `dashpipe run` as a user runs them, in a state folder of
their own (a second broker and cluster beside the session's). The helpers that start a stack of
its own and find a partition's leader are shared with tests/integration/platform/
test_broker_failover.py."""

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from dashpipe import topics
from dashpipe.cli.stack import Endpoints
from dashpipe.settings import Settings

ENV_KEYS = ("DASHPIPE_KAFKA_BOOTSTRAP_SERVERS", "DASHPIPE_DATABASE_URL")


def own_env(**extra: str) -> dict[str, str]:
    """The environment of a `dashpipe` command on a stack of its own: this one's, less the
    session's broker and database, plus `extra`."""
    env = {k: v for k, v in os.environ.items() if k not in ENV_KEYS}
    env.update(extra)
    return env


def dashpipe(*args: str, env: dict[str, str],
             timeout: float = 240) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "dashpipe.cli", *args], env=env,
                          capture_output=True, text=True, timeout=timeout, check=False)


@pytest.fixture
def own_stack(tmp_path: Path) -> Iterator[dict[str, str]]:
    env = own_env(DASHPIPE_STATE_DIR=str(tmp_path / "state"))
    yield env
    dashpipe("down", "--purge", env=env)


def exports(env: dict[str, str]) -> dict[str, str]:
    done = dashpipe("status", "--env", env=env)
    assert done.returncode == 0, done.stderr
    pairs = [line.removeprefix("export ").split("=", 1) for line in done.stdout.splitlines()]
    return {k: v.strip("'") for k, v in pairs}


async def test_down_then_up_keeps_the_log_and_the_tables(own_stack: dict[str, str]) -> None:
    env = own_stack
    first = dashpipe("up", env=env)
    assert first.returncode == 0, first.stderr
    assert dashpipe("up", env=env).returncode == 0  # idempotent
    ex = exports(env)
    bootstrap, url = ex["DASHPIPE_KAFKA_BOOTSTRAP_SERVERS"], ex["DASHPIPE_DATABASE_URL"]

    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all")
    await producer.start()
    sent = await producer.send_and_wait("outside.topic", b"kept", key=b"k")
    await producer.stop()
    conn = await asyncpg.connect(url)
    await conn.execute("CREATE TABLE kept (v text); INSERT INTO kept VALUES ('row')")
    await conn.close()

    down = dashpipe("down", env=env)
    assert down.returncode == 0 and "kafka" in down.stdout and "postgresql" in down.stdout
    status = dashpipe("status", env=env)
    assert status.returncode == 1 and status.stdout.count("stopped") == 2

    assert dashpipe("up", env=env).returncode == 0
    ex = exports(env)
    consumer = AIOKafkaConsumer("outside.topic",
                                bootstrap_servers=ex["DASHPIPE_KAFKA_BOOTSTRAP_SERVERS"],
                                auto_offset_reset="earliest", group_id=None)
    await consumer.start()
    try:
        values: list[bytes] = []
        deadline = time.monotonic() + 30
        while not values and time.monotonic() < deadline:
            batch = await consumer.getmany(timeout_ms=500)
            values = [m.value for msgs in batch.values() for m in msgs]
    finally:
        await consumer.stop()
    assert values == [b"kept"] and sent.offset == 0
    conn = await asyncpg.connect(ex["DASHPIPE_DATABASE_URL"])
    assert await conn.fetchval("SELECT v FROM kept") == "row"
    await conn.close()


def test_missing_java_is_a_clear_error(tmp_path: Path) -> None:
    env = own_env(DASHPIPE_STATE_DIR=str(tmp_path), PATH="/nonexistent")
    done = dashpipe("up", env=env, timeout=60)
    assert done.returncode == 1  # a failure, not a usage error (see dashpipe.cli.exits)
    assert done.stderr.strip().startswith("dashpipe: error: java not found: install")
    assert "Traceback" not in done.stderr


def test_run_starts_a_role_and_stops_on_sigterm(settings: Settings, services: Endpoints,
                                                tmp_path: Path) -> None:
    env = own_env(DASHPIPE_KAFKA_BOOTSTRAP_SERVERS=services.bootstrap_servers,
               DASHPIPE_DATABASE_URL=services.database_url.get_secret_value(),
               DASHPIPE_TOPIC_PREFIX=settings.topics.prefix,
               DASHPIPE_KAFKA_GROUP_PREFIX=settings.kafka.group_prefix,
               DASHPIPE_STATE_DIR=str(tmp_path))
    log = tmp_path / "run.log"
    with open(log, "w") as out:
        proc = subprocess.Popen([sys.executable, "-m", "dashpipe.cli", "run", "map"], env=env,
                                stdout=out, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 60
        while "role map ready" not in log.read_text() and time.monotonic() < deadline:
            assert proc.poll() is None, log.read_text()
            time.sleep(0.2)
        assert "role map ready" in log.read_text()
    finally:
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(timeout=60)
    assert code == 0, log.read_text()[-2000:]
    assert "Traceback" not in log.read_text()


def leader_pid(state: Path, admin_meta: Any, topic: str, partition: int = 0
               ) -> tuple[int, int]:
    """(node id, pid) of the leader of `partition` of `topic` in `admin_meta` (what
    `describe_topics` answered), in the stack under `state`."""
    leader = next(p["leader"] for t in admin_meta if t["topic"] == topic
                  for p in t["partitions"] if p["partition"] == partition)
    return leader, int((state / "kafka" / f"node-{leader}" / "pid").read_text())


async def _read_all(bootstrap: str, topic: str, expected: int) -> list[bytes]:
    consumer = AIOKafkaConsumer(topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest",
                                enable_auto_commit=False, group_id=None)
    await consumer.start()
    try:
        got: list[bytes] = []
        deadline = time.monotonic() + 60
        while len(got) < expected and time.monotonic() < deadline:
            for records in (await consumer.getmany(timeout_ms=1000)).values():
                got += [r.value for r in records]
        return got
    finally:
        await consumer.stop()


async def test_three_brokers_keep_acknowledged_writes_when_the_leader_dies(
        tmp_path: Path, services: Endpoints) -> None:
    from aiokafka.admin import AIOKafkaAdminClient

    state = tmp_path / "state"
    env = own_env(DASHPIPE_STATE_DIR=str(state),
               DASHPIPE_DATABASE_URL=services.database_url.get_secret_value())
    try:
        up = dashpipe("up", "--brokers", "3", env=env)
        assert up.returncode == 0, up.stderr + up.stdout
        assert [line.split()[0] for line in up.stdout.splitlines()
                if line.startswith("kafka-")] == ["kafka-1", "kafka-2", "kafka-3"]
        bootstrap = exports(env)["DASHPIPE_KAFKA_BOOTSTRAP_SERVERS"]
        assert len(bootstrap.split(",")) == 3
        admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
        await admin.start()
        try:
            assert len((await admin.describe_cluster())["brokers"]) == 3
            meta = (await admin.describe_topics(["dashpipe.raw"]))
            assert {len(p["replicas"]) for p in meta[0]["partitions"]} == {3}
            config = await topics.describe_config(admin, "dashpipe.raw")
            assert config["min.insync.replicas"] == "2"
            producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all",
                                        enable_idempotence=True)
            await producer.start()
            try:
                for i in range(50):
                    await producer.send_and_wait("dashpipe.raw", b"before-%d" % i, partition=0)
                node, pid = leader_pid(state, meta, "dashpipe.raw")
                os.kill(pid, signal.SIGKILL)  # the leader of partition 0, mid-stream
                for i in range(50):
                    await producer.send_and_wait("dashpipe.raw", b"after-%d" % i, partition=0)
            finally:
                await producer.stop()
        finally:
            await admin.close()
        values = await _read_all(bootstrap, "dashpipe.raw", 100)
        assert sorted(values) == sorted([b"before-%d" % i for i in range(50)]
                                        + [b"after-%d" % i for i in range(50)])
        again = dashpipe("up", env=env)  # no flag: as many nodes as the log was made for
        assert again.returncode == 0, again.stderr
        assert f"kafka-{node}" in again.stdout and "stopped" not in again.stdout
        assert dashpipe("down", env=env).returncode == 0
        assert dashpipe("up", env=env).returncode == 0  # the log survives down and up
        bootstrap = exports(env)["DASHPIPE_KAFKA_BOOTSTRAP_SERVERS"]
        assert len(await _read_all(bootstrap, "dashpipe.raw", 100)) == 100
    finally:
        dashpipe("down", "--purge", env=env)
