"""Acknowledged writes survive broker failure: 100,000 records through the producer the roles
use (`dashpipe.kafka.producer`, as `Runtime.producer`; half through the webhook receiver's
`BatchSender`, half through the stream processors' `send_records`) into a three-broker stack
of its own (replication factor 3, `min.insync.replicas` 2), while the leader of a partition is
`kill -9`'d and restarted (`dashpipe up`) several times mid-stream. Afterwards every
acknowledged record is in the topic exactly once (at the offset its acknowledgement named, for
the `BatchSender` ones); records whose send failed are reported, present or not, and are never
written twice either."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import KafkaError

from dashpipe import kafka
from dashpipe.batcher import BatchSender, Record, partition_for, send_records
from dashpipe.cli.stack import Endpoints
from dashpipe.cli.stack import kafka as stack_kafka
from dashpipe.settings import KafkaSettings
from tests.helpers import wait_until
from tests.integration.cli.test_stack import dashpipe, exports, leader_pid, own_env

TOPIC = "dashpipe.raw"  # created by `dashpipe up` with replication factor 3
RECORDS = 100_000
KILLS = 3
CHUNK = 500  # records per send: one getmany's worth of a stream processor
WINDOW = 4  # chunks in flight at once
PAD = b"x" * 120


def record_id(n: int) -> bytes:
    return b"r%06d" % n


@dataclass(frozen=True)
class Kill:
    node: int
    after_records: int  # records submitted when it was killed
    at_seconds: float  # into the run
    back_in_sync_seconds: float  # from the kill to all replicas in sync again


@dataclass
class Outcome:
    acked: dict[bytes, tuple[int, int] | None] = field(default_factory=dict)  # id -> position
    failed: dict[bytes, str] = field(default_factory=dict)  # id -> why (the error's type)
    kills: list[Kill] = field(default_factory=list)


async def dashpipe_async(*args: str, env: dict[str, str], timeout: float = 240
                         ) -> tuple[int, str]:
    """`dashpipe ARGS` without blocking the event loop (the producer keeps writing)."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "dashpipe.cli", *args, env=env, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT)
    try:
        out, _ = await asyncio.wait_for(proc.communicate(), timeout)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    return proc.returncode or 0, out.decode(errors="replace")


async def describe(admin: AIOKafkaAdminClient) -> list[Any] | None:
    """The topic's metadata, or None when the node the admin client asked is the dead one."""
    try:
        return await admin.describe_topics([TOPIC])  # type: ignore[no-any-return]
    except KafkaError:
        return None


async def in_sync(admin: AIOKafkaAdminClient) -> bool:
    """Every partition of the topic has a leader and all three replicas in sync."""
    meta = await describe(admin)
    return meta is not None and all(p["leader"] >= 0 and len(p["isr"]) == 3
                                    for p in meta[0]["partitions"])


class FailoverRun:
    """One writer of RECORDS ids and one killer of the leader of partition 0: the writer waits
    at each kill's threshold until the previous killed node is back in sync, so every kill
    meets a full cluster and records in flight."""

    def __init__(self, producer: AIOKafkaProducer, admin: AIOKafkaAdminClient, state: Path,
                 env: dict[str, str], partitions: int) -> None:
        self.producer, self.admin, self.state, self.env = producer, admin, state, env
        self.partitions = partitions
        self.sender = BatchSender(producer, TOPIC, partitions, timeout=5.0)
        self.out = Outcome()
        self.submitted = 0
        self.progress = asyncio.Condition()
        step = RECORDS // (KILLS + 1)
        self.thresholds = [step * (k + 1) for k in range(KILLS)]
        self.back = [asyncio.Event() for _ in range(KILLS)]  # node of kill k in sync again
        self.started = time.monotonic()

    async def write(self) -> None:
        window = asyncio.Semaphore(WINDOW)
        settling: set[asyncio.Task[None]] = set()
        for j, start in enumerate(range(0, RECORDS, CHUNK)):
            for k, threshold in enumerate(self.thresholds[1:]):
                if start == threshold:
                    await self.back[k].wait()
            ids = [record_id(n) for n in range(start, min(start + CHUNK, RECORDS))]
            await window.acquire()
            task = asyncio.create_task(self._sender_chunk(ids) if j % 2 == 0
                                       else self._records_chunk(ids))
            settling.add(task)
            task.add_done_callback(lambda t: (settling.discard(t), window.release()))
            async with self.progress:
                self.submitted = start + len(ids)
                self.progress.notify_all()
        await asyncio.gather(*settling)

    async def _sender_chunk(self, ids: list[bytes]) -> None:
        """As the webhook receiver writes: a future per record, (partition, offset) on ack."""
        futures = [self.sender.send(i, i + b":" + PAD, [("test-id", i)]) for i in ids]
        for i, result in zip(ids, await asyncio.gather(*futures, return_exceptions=True),
                             strict=True):
            if isinstance(result, BaseException):
                self.out.failed[i] = type(result).__name__
            else:
                self.out.acked[i] = result

    async def _records_chunk(self, ids: list[bytes]) -> None:
        """As map and persist's dead letters write: one call for a batch, all or nothing."""
        by_partition: dict[tuple[str, int], list[Record]] = {}
        for i in ids:
            by_partition.setdefault((TOPIC, partition_for(i, self.partitions)), []).append(
                (i, i + b":" + PAD, [("test-id", i)], None))
        try:
            async with asyncio.timeout(60):
                await send_records(self.producer, dict(sorted(by_partition.items())))
        except Exception as exc:  # the caller learns only that the batch did not complete
            self.out.failed.update(dict.fromkeys(ids, type(exc).__name__))
        else:
            self.out.acked.update(dict.fromkeys(ids))

    async def kill(self) -> None:
        for k, threshold in enumerate(self.thresholds):
            async with self.progress:
                await self.progress.wait_for(lambda t=threshold: self.submitted >= t)
            meta = await wait_until(lambda: describe(self.admin), what="the topic's leaders")
            node, pid = leader_pid(self.state, meta, TOPIC, 0)
            os.kill(pid, signal.SIGKILL)
            killed, submitted = time.monotonic(), self.submitted
            code, text = await dashpipe_async("up", env=self.env)  # restarts the dead node
            assert code == 0 and f"kafka-{node}" in text and "stopped" not in text, text
            await wait_until(lambda: in_sync(self.admin), timeout=180,
                             what=f"node {node} back in sync after kill {k + 1}")
            self.out.kills.append(Kill(node, submitted, round(killed - self.started, 1),
                                       round(time.monotonic() - killed, 1)))
            self.back[k].set()


def discard(state: Path) -> None:
    """Kill the test's nodes at once: a graceful stop of the last nodes of a cluster waits
    for a quorum that is gone, and this log is deleted anyway."""
    for home in sorted((state / "kafka").glob("node-*")):
        pid = stack_kafka.running_pid(home)
        if pid is not None:
            os.kill(pid, signal.SIGKILL)


async def read_back(bootstrap: str, ks: KafkaSettings) -> list[tuple[int, int, bytes]]:
    """(partition, offset, id) of every committed record of the topic, read to its end."""
    consumer = kafka.consumer(bootstrap, ks, group_id=None)
    async with kafka.started(consumer):
        tps = await kafka.partitions(consumer, TOPIC)
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        ends = await consumer.end_offsets(tps)
        got: list[tuple[int, int, bytes]] = []
        deadline = time.monotonic() + 60
        while [tp for tp in tps if await consumer.position(tp) < ends[tp]]:
            assert time.monotonic() < deadline, "the topic was not read to its end in 60s"
            for tp, records in (await consumer.getmany(timeout_ms=500)).items():
                got += [(tp.partition, r.offset, (r.value or b"").split(b":", 1)[0])
                        for r in records]
        return got


async def test_acknowledged_writes_survive_the_leader_killed_three_times(
        tmp_path: Path, services: Endpoints) -> None:
    state = tmp_path / "state"
    env = own_env(DASHPIPE_STATE_DIR=str(state),
                  DASHPIPE_DATABASE_URL=services.database_url.get_secret_value())
    try:
        up = await dashpipe_async("up", "--brokers", "3", env=env)
        assert up[0] == 0, up[1]
        bootstrap = exports(env)["DASHPIPE_KAFKA_BOOTSTRAP_SERVERS"]
        ks = KafkaSettings(bootstrap_servers=bootstrap)
        async with kafka.started(kafka.admin(bootstrap, ks)) as admin, \
                kafka.started(kafka.producer(bootstrap, ks)) as producer:
            await wait_until(lambda: in_sync(admin), timeout=60, what="a full cluster")
            partitions = len(await kafka.partitions(producer, TOPIC))
            run = FailoverRun(producer, admin, state, env, partitions)
            await asyncio.wait_for(asyncio.gather(run.write(), run.kill()), 420)
        written = time.monotonic() - run.started
        found = await read_back(bootstrap, ks)
    finally:
        discard(state)
        dashpipe("down", "--purge", env=env)
    out = run.out
    counts = Counter(i for _, _, i in found)
    where = {i: (p, o) for p, o, i in found}
    missing = [i for i in out.acked if counts[i] == 0]
    twice = sorted(i for i, c in counts.items() if c > 1)
    misplaced = [i for i, pos in out.acked.items() if pos is not None and where.get(i) != pos]
    strangers = set(counts) - {record_id(n) for n in range(RECORDS)}
    failed_present = sum(1 for i in out.failed if counts[i])
    print(f"\nbroker failover: {RECORDS} records in {written:.0f}s, leader killed "
          f"{len(out.kills)} times {out.kills}; acknowledged "
          f"{len(out.acked)}, read back {len(found)}; failed {len(out.failed)} "
          f"({failed_present} of them present; {dict(Counter(out.failed.values()))}); "
          f"missing {len(missing)}, duplicated {len(twice)}")
    assert len(out.kills) == KILLS
    assert len(out.acked) + len(out.failed) == RECORDS
    assert not missing, f"{len(missing)} acknowledged records lost, e.g. {missing[:5]}"
    assert not twice, f"{len(twice)} records written more than once, e.g. {twice[:5]}"
    assert not misplaced, f"{len(misplaced)} acknowledged at another offset: {misplaced[:5]}"
    assert not strangers
    assert len(out.acked) >= RECORDS // 2, "the producer hardly got through the failovers"
