"""Scaling: rows/s of the `map`, `persist` and `deliver` roles with 1 and with 2 `dashpipe run
<role>` processes draining the same backlog, side by side in one run; the ratio 2 / 1.

Each run (one role, one process count, one round) has its own topic prefix, consumer-group
prefix and, for persist, database schema, so no run meets another's records, offsets or rows.
The backlog is the same for every run of a role: `--records` N (200,000; deliver 100,000)
records made once in memory, written to the run's fresh topics with our producer in ONE Kafka
transaction that stays open while the role's processes start. Every dashpipe consumer reads
committed records only, so the processes start, read the registry and join their group on an
empty topic; once the group is Stable with every process a member owning partitions of the
input topic, the transaction is committed and the whole backlog appears at once. So neither
process start-up nor the rebalance a second process causes when it joins late (the local
broker has `group.initial.rebalance.delay.ms=0`) falls into the measurement, and the second
process cannot arrive to find the first one done.

- map: the raw topic holds N Bronze records (webhook headers, one ~730-byte one-feature GeoJSON
  payload each, the README's quake mapping, as `bench_mapper.py`) of one pipeline per raw
  partition (ids picked so that each partition gets exactly one: a pipeline's records share
  its partition, so N/partitions records each). Measured by the group's committed offsets on
  the raw topic, polled every 0.05 s: from the first poll that sees a commit to the one that
  sees every partition committed to its end; checked: the transformed topic holds N rows.
- persist: the transformed topic holds N records as the mapper writes them (`bench_persist`'s
  `transformed_values`: the quake mapping's rows, distinct identities, key = the row key), one
  pipeline with `persist_data: true`. The schema is migrated before the run, as
  `bench_persist.py` does (and its compression policy's first run awaited, so no side meets
  it). Measured by the database's clock, `stored_at` (the transaction start) of the rows:
  (rows in all but the last transaction) / (last transaction start - first); the end is seen
  in the group's committed offsets (the CPU window: the snapshots around the `stored_at`
  one, by the wall clock); checked: N rows stored.
- deliver: the transformed topic holds N rows of `bench_deliver.py` (one pipeline, one
  Standard Webhooks sink, concurrency 16 per process) posted to `bare.py receiver`, one
  aiohttp process answering an empty 200 (reset before each run). Measured by the receiver's
  own timestamps: (N - 1) / (N-th request - first); checked: no duplicate `webhook-id`, no
  dead letter.

Every process gets its own `DASHPIPE_KAFKA_CLIENT_ID`, so the group's description says which
process owns which partitions. Over each run's window (the first progress seen to the drain)
the bench samples utime + stime (/proc/<pid>/stat) of every role process, the broker (the
process listening on the bootstrap port), PostgreSQL (the postmaster listening on the
database's port and all its children, listed at every snapshot so that a job worker or
autovacuum started meanwhile counts; persist only) and the receiver (deliver only),
and the whole machine's busy share from /proc/stat. Printed per process: its share of a core
and its CPU microseconds per row (its CPU over the rows of the partitions it owns). The
broker and PostgreSQL are the dev stack's, shared with whoever else uses it; "other" is the
machine's busy time that none of the measured processes account for.

`--rounds` (3; --quick 1): per round every role with 1 and 2 processes, the order of the two
alternating by round; the ratio of each round and the median and range of the rounds are
printed, and one `record()` line per role: `scaling-<role>`, ours and baseline the 2- and
1-process rates of the round with the median ratio (so its ratio is the median), with the
medians of each side and every round's figures. Each run starts once the machine is under
25 % busy over half a second, waiting at most `--settle-seconds` (60; --quick 2): on a shared
machine the others' load still comes and goes mid-run, which the "other" figure shows; the
rounds where it stayed under 0.25 cores in both runs are also summarised on their own
("calm rounds").
`--quick`: 20,000 records (deliver 5,000), one round, about a minute. `--roles` picks roles.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import random
import signal
import statistics
import sys
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import asyncpg
import orjson
from aiokafka.coordinator.protocol import ConsumerProtocolMemberAssignment
from aiokafka.errors import KafkaError
from bench_deliver import Receiver, settle, sink_config
from bench_deliver import rows as deliver_rows
from bench_deliver import write_pipeline as write_deliver_pipeline
from bench_mapping import MAPPING, payload
from bench_persist import STORED_AT, scratch_schema, transformed_values
from harness import (
    Child,
    bench_script,
    bootstrap_servers,
    check_database,
    child,
    child_env,
    cpu_seconds,
    dashpipe_command,
    database_url,
    free_port,
    machine_busy,
    record,
    scratch_prefix,
    setup_logging,
    topic_counter,
)

from dashpipe import kafka
from dashpipe.batcher import Record, partition_for, send_records
from dashpipe.errors import DashpipeError
from dashpipe.settings import Settings, load_settings
from dashpipe.topics import TopicNames
from schemas.pipeline import Pipeline
from schemas.records import now, raw_headers

log = logging.getLogger("bench.scaling")

ROLES = ("map", "persist", "deliver")
TEAM_ID = "team-bench"
POLL_S = 0.05
JOIN_LIMIT_S = 120.0
IDLE_LIMIT_S = 60.0
CORES = os.cpu_count() or 1
CALM_CORES = 0.25  # a round is calm when the others' load stayed under this in both runs
BUSY_LIMIT = 0.25  # a run starts once the machine is less busy than this (--settle-seconds)
Progress = Callable[[], Awaitable[int]]
Backlog = dict[int, list[Record]]  # partition -> records (key, value, headers, timestamp)


# --- the backlogs ---------------------------------------------------------------------------

def map_pipeline_ids(partitions: int) -> list[str]:
    """One pipeline id per raw partition (by Kafka's default partitioner on the key)."""
    found: dict[int, str] = {}
    n = 0
    while len(found) < partitions:
        pid = f"scale-{n}"
        found.setdefault(partition_for(pid.encode(), partitions), pid)
        n += 1
    return [found[p] for p in range(partitions)]


def map_backlog(n: int, partitions: int) -> Backlog:
    rng = random.Random(11)
    ids = map_pipeline_ids(partitions)
    ms = int(time.time() * 1000)
    out: Backlog = {p: [] for p in range(partitions)}
    for i in range(n):
        p = i % partitions
        headers = raw_headers(ids[p], TEAM_ID, "webhook", ms, f"scale-{i}")
        out[p].append((ids[p].encode(), payload(rng, i, 1, clean=True), headers, ms))
    return out


def transformed_backlog(values: list[tuple[bytes, bytes]], pipeline_id: str,
                        partitions: int) -> Backlog:
    """Transformed records with the mapper's key and headers; Kafka time now (the topic keeps
    7 days)."""
    headers = [("dashpipe-pipeline-id", pipeline_id.encode()),
               ("dashpipe-team-id", TEAM_ID.encode())]
    ms = int(time.time() * 1000)
    out: Backlog = {p: [] for p in range(partitions)}
    for key, value in values:
        out[partition_for(key, partitions)].append((key, value, headers, ms))
    return out


def persist_backlog(n: int, partitions: int) -> Backlog:
    return transformed_backlog([(k, v) for k, v, _ in transformed_values(n)], "persisted",
                               partitions)


def deliver_backlog(n: int, partitions: int) -> Backlog:
    return transformed_backlog([(orjson.loads(v)["key"].encode(), v) for v in deliver_rows(n)],
                               "deliver", partitions)


async def write_definitions(servers: str, settings: Settings, topic: str,
                            pipelines: list[Pipeline]) -> None:
    async with kafka.started(kafka.producer(servers, settings.kafka)) as producer:
        for p in pipelines:
            await producer.send_and_wait(topic, p.model_dump_json().encode(), key=p.id.encode())


def pipeline(pid: str, **extra: Any) -> Pipeline:
    at = now()
    return Pipeline(id=pid, team_id=TEAM_ID, name="scaling bench", type="realtime",
                    source_type="webhook", source_config={"webhook_secret": "bench"},
                    data_mapping=MAPPING, mapping_version=1, rate_limit_per_minute=1_000_000,
                    created_at=at, updated_at=at, **extra)


@asynccontextmanager
async def held_back(servers: str, settings: Settings, topic: str,
                    backlog: Backlog) -> AsyncIterator[Callable[[], Awaitable[None]]]:
    """The backlog written in one open transaction; yields `commit()`, which makes all of it
    visible at once (aborted on the way out if never called)."""
    producer = kafka.producer(servers, settings.kafka, transactional_id=f"{topic}-fill",
                              transaction_timeout_ms=600_000)
    async with kafka.started(producer):
        await producer.begin_transaction()
        done = False
        try:
            start = time.perf_counter()
            items = [(p, r) for p, records in backlog.items() for r in records]
            for i in range(0, len(items), 20_000):
                chunk: dict[tuple[str, int], list[Record]] = {}
                for p, r in items[i:i + 20_000]:
                    chunk.setdefault((topic, p), []).append(r)
                await send_records(producer, chunk)
            log.info("wrote %d records to %s in %.1fs, not committed yet", len(items), topic,
                     time.perf_counter() - start)

            async def commit() -> None:
                nonlocal done
                await producer.commit_transaction()
                done = True

            yield commit
        finally:
            if not done:
                with contextlib.suppress(KafkaError):
                    await producer.abort_transaction()


# --- processes and CPU ----------------------------------------------------------------------

def listener_pid(port: int) -> int | None:
    """The process holding the listening TCP socket on `port` (None if not on this machine)."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError):
            for line in Path(table).read_text().splitlines()[1:]:
                cols = line.split()
                if cols[3] == "0A" and int(cols[1].rsplit(":", 1)[1], 16) == port:
                    inodes.add(f"socket:[{cols[9]}]")
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            for fd in (proc / "fd").iterdir():
                with contextlib.suppress(OSError):
                    if os.readlink(fd) in inodes:
                        return int(proc.name)
    return None


def children_of(pid: int) -> list[int]:
    """`pid` and its direct children (PostgreSQL: the postmaster, its backends and workers)."""
    out = [pid]
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            with contextlib.suppress(OSError, ValueError, IndexError):
                stat = (proc / "stat").read_text()
                if int(stat[stat.rindex(")") + 2:].split()[1]) == pid:
                    out.append(int(proc.name))
    return out


def cpu_of(pids: list[int]) -> dict[int, float]:
    out = {}
    for pid in pids:
        with contextlib.suppress(OSError):
            out[pid] = cpu_seconds(pid)
    return out


@dataclass
class Watched:
    """The processes whose CPU a run reports; `postgres` is the server's postmaster, whose
    children (backends, TimescaleDB's job workers, autovacuum) are listed at every snapshot."""

    role: list[Child]
    broker: list[int]
    postgres: int | None = None
    receiver: list[int] = field(default_factory=list)


@dataclass
class Snapshot:
    at: float  # perf_counter (CLOCK_MONOTONIC, the receiver's clock too)
    wall: float  # time.time(), the database's clock
    progress: int
    role: list[float]
    broker: dict[int, float]
    postgres: dict[int, float]
    receiver: dict[int, float]
    bench: float  # this process (its polling)
    machine: tuple[float, float]

    @classmethod
    def take(cls, w: Watched, progress: int) -> Snapshot:
        return cls(time.perf_counter(), time.time(), progress,
                   [cpu_seconds(c.pid) for c in w.role], cpu_of(w.broker),
                   cpu_of(children_of(w.postgres)) if w.postgres else {},
                   cpu_of(w.receiver), time.process_time(), machine_busy())


def spent(a: dict[int, float], b: dict[int, float]) -> float:
    """CPU seconds from `a` to `b`; a process that appeared in between counts in full."""
    return sum(b[p] - a.get(p, 0.0) for p in b)


# --- one run --------------------------------------------------------------------------------

@dataclass
class Run:
    role: str
    procs: int
    rate: float  # rows/s, by the role's clock (see the docstring)
    window_s: float  # the CPU window, around the rate's
    cpu_s: list[float]  # per role process, over the window
    shares: list[float]  # per role process: the part of the backlog its partitions hold
    broker_s: float
    postgres_s: float
    receiver_s: float
    bench_s: float
    busy: float  # the machine's busy share of all cores over the window
    extra: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def between(cls, role: str, owned: list[list[int]], backlog: Backlog, a: Snapshot,
                b: Snapshot, rate: float, **extra: Any) -> Run:
        n = sum(len(r) for r in backlog.values())
        shares = [sum(len(backlog[p]) for p in parts) / n for parts in owned]
        busy = (b.machine[0] - a.machine[0]) / max(b.machine[1] - a.machine[1], 1.0)
        return cls(role=role, procs=len(owned), rate=rate, window_s=b.at - a.at,
                   cpu_s=[y - x for x, y in zip(a.role, b.role, strict=True)], shares=shares,
                   broker_s=spent(a.broker, b.broker), postgres_s=spent(a.postgres, b.postgres),
                   receiver_s=spent(a.receiver, b.receiver), bench_s=b.bench - a.bench,
                   busy=busy, extra={"partitions": owned, **extra})

    def cores(self, seconds: float) -> float:
        return seconds / self.window_s

    @property
    def us_per_row(self) -> list[float]:
        """Per process: its CPU over the rows its partitions gave it in the window (the rate
        times the window)."""
        rows = self.rate * self.window_s
        return [cpu / max(rows * share, 1) * 1e6
                for cpu, share in zip(self.cpu_s, self.shares, strict=True)]

    @property
    def pipeline_us_per_row(self) -> float:
        """Everything this pipeline's run costs per row: role, broker, database, receiver."""
        return ((sum(self.cpu_s) + self.broker_s + self.postgres_s + self.receiver_s)
                / max(self.rate * self.window_s, 1) * 1e6)

    @property
    def other_cores(self) -> float:
        """Busy cores none of the watched processes (nor this bench) account for."""
        known = (sum(self.cpu_s) + self.broker_s + self.postgres_s + self.receiver_s
                 + self.bench_s)
        return max(0.0, self.busy * CORES - known / self.window_s)

    def line(self) -> str:
        per = ", ".join(f"{self.cores(c):.0%} of a core / {u:.1f} us per row"
                        for c, u in zip(self.cpu_s, self.us_per_row, strict=True))
        pg = f", PostgreSQL {self.cores(self.postgres_s):.2f}" if self.postgres_s else ""
        rc = f", receiver {self.cores(self.receiver_s):.2f}" if self.receiver_s else ""
        return (f"{self.role} x{self.procs}: {self.rate:,.0f} rows/s; per process {per}; "
                f"machine {self.busy:.0%} busy of {CORES} cores (in cores: role "
                f"{self.cores(sum(self.cpu_s)):.2f}, broker {self.cores(self.broker_s):.2f}"
                f"{pg}{rc}, this bench {self.cores(self.bench_s):.2f}, other "
                f"{self.other_cores:.2f}) over {self.window_s:.2f}s")


async def group_members(admin: Any, group: str, topic: str, clients: list[str]
                        ) -> tuple[str, dict[str, list[int]]]:
    """The group's state and, per member's client id (one of `clients`), the partitions of
    `topic` it owns."""
    [described] = await admin.describe_consumer_groups([group])
    _, _, state, _, _, members, *_ = described.groups[0]
    owned = {}
    for member in members:
        client = next(f for f in member if f in clients)
        assignment = ConsumerProtocolMemberAssignment.decode(member[-1]) if member[-1] else None
        owned[client] = sorted(tp.partition for tp in
                               (assignment.partitions() if assignment else [])
                               if tp.topic == topic)
    return state, owned


async def joined(admin: Any, group: str, topic: str, procs: list[Child], clients: list[str]
                 ) -> list[list[int]]:
    """Until the group is Stable with every process a member owning partitions of `topic`;
    the partitions each process owns."""
    deadline = time.monotonic() + JOIN_LIMIT_S
    while True:
        for proc in procs:
            proc.check_alive()
        with contextlib.suppress(KafkaError, ValueError, IndexError, StopIteration):
            state, owned = await group_members(admin, group, topic, clients)
            if state == "Stable" and len(owned) == len(procs) and all(owned.values()):
                return [owned[c] for c in clients]
        if time.monotonic() > deadline:
            raise RuntimeError(f"group {group} not Stable with {len(procs)} members within "
                               f"{JOIN_LIMIT_S:.0f}s:\n{procs[-1].output()}")
        await asyncio.sleep(0.2)


def committed_counter(admin: Any, group: str, topic: str, backlog: Backlog) -> Progress:
    """Records of `topic` the group has committed, each partition counted up to its backlog
    (a read-committed commit may also step over the transaction's marker)."""
    async def count() -> int:
        offsets = await admin.list_consumer_group_offsets(group)
        return sum(min(max(meta.offset, 0), len(backlog[tp.partition]))
                   for tp, meta in offsets.items() if tp.topic == topic)
    return count


async def drain(procs: list[Child], progress: Progress, n: int, watched: Watched
                ) -> list[Snapshot]:
    """A snapshot every POLL_S from now until `progress()` reaches `n`."""
    timeline = [Snapshot.take(watched, await progress())]
    last_change = time.monotonic()
    while timeline[-1].progress < n:
        await asyncio.sleep(POLL_S)
        for proc in procs:
            proc.check_alive()
        timeline.append(Snapshot.take(watched, await progress()))
        if timeline[-1].progress != timeline[-2].progress:
            last_change = time.monotonic()
        elif time.monotonic() - last_change > IDLE_LIMIT_S:
            raise RuntimeError(f"stuck at {timeline[-1].progress} of {n} for "
                               f"{IDLE_LIMIT_S:.0f}s:\n{procs[0].output()}")
    return timeline


def first_progress(timeline: list[Snapshot]) -> Snapshot:
    return next(s for s in timeline if s.progress > 0)


@dataclass
class Env:
    args: argparse.Namespace
    settings: Settings
    servers: str
    broker: list[int]
    url: str | None = None
    postgres: int | None = None
    receiver: Receiver | None = None
    receiver_pid: int | None = None
    hook: str = ""
    backlogs: dict[str, Backlog] = field(default_factory=dict)


async def prepare(env: Env, stack: contextlib.AsyncExitStack, role: str, names: TopicNames,
                  partitions: int) -> dict[str, str]:
    """The run's pipeline definitions (and schema, receiver); the role's extra environment."""
    settings, servers = env.settings, env.servers
    if role == "map":
        await write_definitions(servers, settings, names.pipelines,
                                [pipeline(pid) for pid in map_pipeline_ids(partitions)])
        return {}
    if role == "persist":
        assert env.url is not None
        schema = f"bench_scaling_{uuid.uuid4().hex[:8]}"
        hyper = await stack.enter_async_context(scratch_schema(env.url, schema))
        await write_definitions(servers, settings, names.pipelines,
                                [pipeline("persisted", persist_data=True)])
        return {"DASHPIPE_DATABASE_URL": env.url, "DASHPIPE_DATABASE_SCHEMA_NAME": schema,
                "hypertable": "1" if hyper else ""}
    assert env.receiver is not None
    await write_deliver_pipeline(servers, settings, names.pipelines,
                                 sink_config(env.hook, env.args.concurrency))
    await env.receiver.reset()
    return {}


async def persisted(url: str, schema: str, n: int, timeline: list[Snapshot]
                    ) -> tuple[float, Snapshot, Snapshot, dict[str, Any]]:
    """The rate by the `stored_at` clock and the snapshots around its window."""
    conn = await asyncpg.connect(url, server_settings={"search_path": schema})
    try:
        count = await conn.fetchval("SELECT count(*) FROM pipeline_data")
        first, last, in_last, transactions, _ = await conn.fetchrow(STORED_AT)
    finally:
        await conn.close()
    if count != n:
        raise RuntimeError(f"schema {schema} holds {count} rows, expected {n}")
    span = (last - first).total_seconds()
    a = next((s for s in reversed(timeline) if s.wall <= first.timestamp()), timeline[0])
    b = next((s for s in timeline if s.wall >= last.timestamp()), timeline[-1])
    return (n - in_last) / span, a, b, {"transactions": transactions}


async def one_run(env: Env, role: str, procs: int, round_: int) -> Run:
    settings, servers, backlog = env.settings, env.servers, env.backlogs[role]
    n = sum(len(r) for r in backlog.values())
    async with contextlib.AsyncExitStack() as stack:
        prefix = await stack.enter_async_context(
            scratch_prefix(servers, settings, f"scale{role[:3]}{procs}"))
        names = TopicNames.from_prefix(prefix)
        admin = await stack.enter_async_context(kafka.started(kafka.admin(servers,
                                                                          settings.kafka)))
        topic = names.raw if role == "map" else names.transformed
        extra = await prepare(env, stack, role, names, len(backlog))
        hyper = bool(extra.pop("hypertable", ""))
        commit = await stack.enter_async_context(held_back(servers, settings, topic, backlog))
        clients = [f"{prefix}-{role}-p{i}" for i in range(procs)]
        children = [stack.enter_context(child(
            f"{role}-{i}", dashpipe_command("run", role, "--log-level", "warn"),
            child_env(servers, prefix, DASHPIPE_KAFKA_CLIENT_ID=client, **extra)))
            for i, client in enumerate(clients)]
        group = f"{prefix}-{role}"
        owned = await joined(admin, group, topic, children, clients)
        watched = Watched(children, env.broker,
                          env.postgres if role == "persist" else None,
                          [env.receiver_pid] if role == "deliver" and env.receiver_pid else [])
        log.info("round %d, %s x%d: group %s Stable, partitions %s; committing the backlog",
                 round_, role, procs, group, owned)
        # the processes' start-up done, and on a shared machine a calm moment when there is one
        await settle(BUSY_LIMIT, env.args.settle_seconds)
        progress: Progress
        if role == "deliver":
            receiver = env.receiver
            assert receiver is not None

            async def requests() -> int:
                return int((await receiver.stats(n))["count"])
            progress = requests
        else:
            progress = committed_counter(admin, group, topic, backlog)
        await commit()
        timeline = await drain(children, progress, n, watched)
        for c in children:  # all at once: each stops while the others do
            with contextlib.suppress(ProcessLookupError):
                os.killpg(c.pid, signal.SIGTERM)
        if role == "map":
            a, b = first_progress(timeline), timeline[-1]
            async with topic_counter(servers, settings, names.transformed) as rows:
                written = await rows()
            if written != n:
                raise RuntimeError(f"the transformed topic holds {written} rows, expected {n}")
            return Run.between(role, owned, backlog, a, b, (n - a.progress) / (b.at - a.at))
        if role == "persist":
            assert env.url is not None
            rate, a, b, more = await persisted(env.url, extra["DASHPIPE_DATABASE_SCHEMA_NAME"],
                                               n, timeline)
            return Run.between(role, owned, backlog, a, b, rate, hypertable=hyper, **more)
        assert env.receiver is not None
        stats = await env.receiver.stats(n)
        async with topic_counter(servers, settings, names.dlq) as dead:
            dead_letters = await dead()
        if stats["distinct_ids"] != stats["count"] or dead_letters:
            raise RuntimeError(f"deliver: {stats['count'] - stats['distinct_ids']} duplicate "
                               f"requests, {dead_letters} dead letters")
        return Run.between(role, owned, backlog, first_progress(timeline), timeline[-1],
                           (n - 1) / (stats["nth"] - stats["first"]))
    raise AssertionError("unreachable")


# --- main -----------------------------------------------------------------------------------

def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--records", type=int, default=200_000, help="map and persist")
    parser.add_argument("--deliver-records", type=int, default=100_000)
    parser.add_argument("--concurrency", type=int, default=16,
                        help="the deliver sink's requests in flight, per process")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--settle-seconds", type=float, default=60.0,
                        help="before each run, wait at most this long for the machine to be "
                        f"under {BUSY_LIMIT:.0%} busy (a shared machine's calm moment)")
    parser.add_argument("--roles", default=",".join(ROLES),
                        help="comma-separated, of " + ", ".join(ROLES))
    parser.add_argument("--quick", action="store_true",
                        help="smoke run: 20,000 records (deliver 5,000), 1 round")
    args = parser.parse_args(argv)
    if args.quick:
        args.records, args.deliver_records, args.rounds = (min(args.records, 20_000),
                                                           min(args.deliver_records, 5_000), 1)
        args.settle_seconds = min(args.settle_seconds, 2.0)
    args.roles = [r for r in args.roles.split(",") if r]
    if not args.roles or any(r not in ROLES for r in args.roles):
        parser.error(f"--roles: of {', '.join(ROLES)}")
    if args.rounds < 1 or min(args.records, args.deliver_records) < 1_000:
        parser.error("--rounds at least 1, records at least 1,000")
    return args


def limit(one: Run, two: Run) -> str:
    """What the 2-process run ran into, from its CPU figures."""
    also = [w for w, v in (("the broker", two.broker_s), ("PostgreSQL", two.postgres_s),
                           ("the receiver", two.receiver_s)) if v]
    pipeline = two.cores(sum(two.cpu_s) + two.broker_s + two.postgres_s + two.receiver_s)
    ceiling = CORES / two.pipeline_us_per_row * 1e6
    shares = ", ".join(f"{two.cores(c):.0%}" for c in two.cpu_s)
    head = (f"with 2 processes the machine was {two.busy:.0%} busy: {pipeline:.2f} cores this "
            f"pipeline (each process {shares} of a core, and {', '.join(also)}), "
            f"{two.other_cores:.2f} other users' load; at its {two.pipeline_us_per_row:.0f} us "
            f"of CPU per row (role + {' + '.join(also)}) {CORES} cores carry at most "
            f"{ceiling:,.0f} rows/s, {ceiling / one.rate:.2f}x the 1-process rate")
    if two.busy >= 0.9:
        return head + ": the cores, shared by both processes with " + ", ".join(also) + \
            (" and the others" if two.other_cores > 0.1 else "")
    return head + ": the cores were not all busy, so the processes also waited on something " \
        "they share (" + ", ".join(also) + ")"


async def run(args: argparse.Namespace) -> None:
    settings = load_settings()
    servers = await bootstrap_servers(settings)
    broker = listener_pid(urlsplit(f"//{servers.split(',')[0]}").port or 9092)
    env = Env(args, settings, servers, [broker] if broker else [])
    partitions = settings.topics.partitions
    log.info("broker pid %s; %d partitions per topic; making the backlogs", broker, partitions)
    if "map" in args.roles:
        env.backlogs["map"] = map_backlog(args.records, partitions)
    if "persist" in args.roles:
        env.url = database_url(settings)
        await check_database(env.url)
        env.postgres = listener_pid(urlsplit(env.url).port or 5432)
        env.backlogs["persist"] = persist_backlog(args.records, partitions)
    if "deliver" in args.roles:
        env.backlogs["deliver"] = deliver_backlog(args.deliver_records, partitions)
    runs: dict[str, list[tuple[Run, Run]]] = {r: [] for r in args.roles}
    async with contextlib.AsyncExitStack() as stack:
        if "deliver" in args.roles:
            rport = free_port()
            proc = stack.enter_context(child("receiver", bench_script("bare.py", "receiver",
                                                                      "--port", str(rport))))
            await proc.wait_for_output("listening on")
            http = await stack.enter_async_context(aiohttp.ClientSession())
            env.receiver = Receiver(http, f"http://127.0.0.1:{rport}", proc)
            env.receiver_pid, env.hook = proc.pid, f"http://127.0.0.1:{rport}/hooks/deliver"
        for round_ in range(1, args.rounds + 1):
            for role in args.roles:
                order = (1, 2) if round_ % 2 else (2, 1)
                done = {procs: await one_run(env, role, procs, round_) for procs in order}
                for r in (done[1], done[2]):
                    print(f"scaling round {round_}: {r.line()}", flush=True)
                print(f"scaling round {round_}: {role} 2/1 = {done[2].rate / done[1].rate:.3f}",
                      flush=True)
                runs[role].append((done[1], done[2]))
    for role in args.roles:
        report(args, role, runs[role], partitions)


def report(args: argparse.Namespace, role: str, pairs: list[tuple[Run, Run]],
           partitions: int) -> None:
    ratios = [two.rate / one.rate for one, two in pairs]
    ones, twos = [one.rate for one, _ in pairs], [two.rate for _, two in pairs]
    one, two = pairs[sorted(range(len(pairs)), key=lambda i: ratios[i])[(len(pairs) - 1) // 2]]
    records = args.records if role != "deliver" else args.deliver_records

    def us(run: Run) -> str:
        return ", ".join(f"{u:.1f}" for u in run.us_per_row)

    print(f"scaling {role}: 1 process {statistics.median(ones):,.0f} rows/s, 2 processes "
          f"{statistics.median(twos):,.0f} rows/s (medians), ratio 2/1 median "
          f"{statistics.median(ratios):.3f} of {len(pairs)} round(s) (range {min(ratios):.3f}-"
          f"{max(ratios):.3f}); the median round: CPU us per row per process {us(one)} with 1, "
          f"{us(two)} with 2; machine busy {one.busy:.0%} with 1, {two.busy:.0%} with 2; "
          f"{records:,} records over {partitions} partitions", flush=True)
    calm = [r for r, (a, b) in zip(ratios, pairs, strict=True)
            if max(a.other_cores, b.other_cores) < CALM_CORES]
    if calm:
        print(f"scaling {role}: the {len(calm)} calm round(s) (other load under {CALM_CORES} "
              f"cores in both runs): ratio 2/1 median {statistics.median(calm):.3f} (range "
              f"{min(calm):.3f}-{max(calm):.3f})", flush=True)
    print(f"scaling {role}: what limits the second process: {limit(one, two)}", flush=True)

    def cores(attr: str) -> list[float]:
        return [round(r.cores(getattr(r, attr)), 2) for r in (one, two)]

    # the median round's own figures, so the recorded ratio is the median of the rounds'
    record(f"scaling-{role}", unit="rows/s", ours=round(two.rate), baseline=round(one.rate),
           median_1=round(statistics.median(ones)), median_2=round(statistics.median(twos)),
           records=records, partitions=partitions,
           rounds=len(pairs), ratios=[round(r, 3) for r in ratios],
           one_rounds=[round(r) for r in ones], two_rounds=[round(r) for r in twos],
           us_per_row_1=[round(u, 1) for u in one.us_per_row],
           us_per_row_2=[round(u, 1) for u in two.us_per_row],
           core_share_1=[round(one.cores(c), 2) for c in one.cpu_s],
           core_share_2=[round(two.cores(c), 2) for c in two.cpu_s],
           machine_busy=[round(one.busy, 2), round(two.busy, 2)],
           broker_cores=cores("broker_s"), postgres_cores=cores("postgres_s"),
           receiver_cores=cores("receiver_s"),
           other_cores=[round(one.other_cores, 2), round(two.other_cores, 2)],
           pipeline_us_per_row=[round(one.pipeline_us_per_row, 1),
                                round(two.pipeline_us_per_row, 1)],
           calm_ratios=[round(r, 3) for r in calm],
           concurrency=args.concurrency if role == "deliver" else None, quick=args.quick)


def main(argv: list[str] | None = None) -> None:
    setup_logging()
    args = parse_args(argv)
    try:
        asyncio.run(run(args))
    except (RuntimeError, DashpipeError, KafkaError, asyncpg.PostgresError, aiohttp.ClientError,
            OSError) as exc:
        print(f"bench_scaling: error: {type(exc).__name__}: {exc}", file=sys.stderr)
        raise SystemExit(1) from None


if __name__ == "__main__":
    main()
