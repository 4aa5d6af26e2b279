"""Role `map` end to end: transformed records/s of `dashpipe run map` against the records/s
Kafka's ConsumerPerformance reads the same raw topic at.

Setup: a fresh topic prefix (and consumer-group prefix) with the whole catalogue; one realtime
webhook pipeline `quakes` carrying the README's mapping (the one `bench_mapping.py` uses:
`features[*]`, epoch_ms time, key `quake_id`, five typed fields, `depth_m` scaled and rounded,
filter `mag >= 0`), written straight to `<prefix>.pipelines` as the management API would
(`Pipeline(...).model_dump_json()`, `mapping_version` 1, key = id). The raw topic is then
filled with `--records` (200,000) Bronze records as the webhook receiver writes them (key: the
pipeline id, headers from `schemas.records.raw_headers`), each a ~730-byte GeoJSON payload
holding one feature that maps to exactly one row (no rows filtered or failed), sent through our
producer with a sliding window of futures as `bench_producer.py` does.

Baseline: `org.apache.kafka.tools.ConsumerPerformance` reading those records from the raw topic
with its own group; its own `nMsg.sec` (measured inside the JVM: JVM startup is not counted,
joining the group is).

Ours: `dashpipe run map` in a subprocess (group `<prefix>-map`), reading the raw topic from the
start, mapping every record and writing one transformed record per row (batch API, offsets
committed after the acks). Its end offsets on `<prefix>.transformed` are polled every 50 ms;
the figure is the rows written between the first poll that sees transformed records and the
poll that sees all of them, over the time between those two polls. So process start-up,
registry read and group join are excluded, as is the first `getmany` batch (up to 2,000 rows);
what is left is steady consumption + mapping + producing. The map process's CPU time over the
same window (utime + stime, /proc/<pid>/stat) is reported per 1,000 records.

Printed: transformed records/s of ours, the tool's records/s, the ratio ours / tool (goal
>= 0.25) and ours' CPU seconds per 1k records. `--profile FILE` also runs
`py-spy record -f raw` on the map process during the measured window (needs py-spy).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import random
import sys
import time
import uuid
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

from aiokafka.errors import KafkaError
from bench_consumer import baseline
from bench_mapping import MAPPING, payload
from harness import (
    Child,
    bootstrap_servers,
    child,
    child_env,
    cpu_seconds,
    dashpipe_command,
    profiler,
    record,
    scratch_prefix,
    setup_logging,
    topic_counter,
)

from dashpipe import kafka
from dashpipe.errors import DashpipeError
from dashpipe.settings import KafkaSettings, Settings, load_settings
from dashpipe.topics import TopicNames
from schemas.pipeline import Pipeline
from schemas.records import now, raw_headers

log = logging.getLogger("bench.mapper")

PIPELINE_ID, TEAM_ID = "quakes", "team-bench"
POLL_S = 0.05
IDLE_LIMIT_S = 60.0
Counter = Callable[[], Awaitable[int]]


@dataclass(frozen=True)
class Sample:
    rows: int  # transformed records written inside the measured window
    seconds: float
    cpu_s: float  # the map process, over the same window
    first_rows: int  # already there at the first poll that saw any (excluded)

    @property
    def rate(self) -> float:
        return self.rows / self.seconds

    @property
    def cpu_s_per_1k(self) -> float:
        return self.cpu_s / max(self.rows, 1) * 1000


async def write_pipeline(servers: str, settings: Settings, topic: str) -> None:
    """The definition, as the API would write it, straight onto the pipelines topic."""
    at = now()
    p = Pipeline(id=PIPELINE_ID, team_id=TEAM_ID, name="map bench", type="realtime",
                 source_type="webhook", source_config={"webhook_secret": "bench"},
                 data_mapping=MAPPING, mapping_version=1, rate_limit_per_minute=1_000_000,
                 created_at=at, updated_at=at)
    async with kafka.started(kafka.producer(servers, settings.kafka)) as producer:
        await producer.send_and_wait(topic, p.model_dump_json().encode(), key=p.id.encode())
    log.info("wrote pipeline %s (mapping version 1) to %s", p.id, topic)


async def fill(servers: str, ks: KafkaSettings, topic: str, n: int,
               window: int = 20_000) -> float:
    """`n` Bronze records of one-feature payloads; returns records/s from first send to last
    ack (as `bench_producer.produce`, with our payloads and the receiver's key and headers)."""
    rng = random.Random(11)
    run = uuid.uuid4().hex[:8]
    key = PIPELINE_ID.encode()
    async with kafka.started(kafka.producer(servers, ks)) as producer:
        pending: deque[asyncio.Future[object]] = deque()
        start = time.perf_counter()
        for i in range(n):
            now_ms = int(time.time() * 1000)
            headers = raw_headers(PIPELINE_ID, TEAM_ID, "webhook", now_ms, f"{run}-{i}")
            pending.append(await producer.send(topic, payload(rng, i, 1, clean=True), key=key,
                                               headers=headers, timestamp_ms=now_ms))
            if len(pending) >= window:
                await pending.popleft()
        await asyncio.gather(*pending)
        elapsed = time.perf_counter() - start
    return n / elapsed




async def measure(proc: Child, count: Counter, expected: int, profile: Path | None,
                  profile_seconds: float) -> Sample:
    """From the first poll that sees transformed records to the one that sees `expected`."""
    deadline = time.monotonic() + IDLE_LIMIT_S
    while (first := await count()) == 0:
        proc.check_alive()
        if time.monotonic() > deadline:
            raise RuntimeError(f"no transformed record within {IDLE_LIMIT_S:.0f}s of the map "
                               f"process starting:\n{proc.output()}")
        await asyncio.sleep(POLL_S)
    start, cpu = time.perf_counter(), cpu_seconds(proc.pid)
    with profiler(proc.pid, profile, profile_seconds, "map process"):
        seen, last_change = first, time.monotonic()
        while seen < expected:
            await asyncio.sleep(POLL_S)
            now_count = await count()
            if now_count != seen:
                seen, last_change = now_count, time.monotonic()
            elif time.monotonic() - last_change > IDLE_LIMIT_S:
                raise RuntimeError(f"the transformed topic holds {seen} of {expected} rows and "
                                   f"gained none for {IDLE_LIMIT_S:.0f}s:\n{proc.output()}")
            proc.check_alive()
        elapsed, cpu_end = time.perf_counter() - start, cpu_seconds(proc.pid)
    if seen > expected:
        raise RuntimeError(f"the transformed topic holds {seen} rows, more than the {expected} "
                           "expected (a rebalance repeated some?)")
    return Sample(rows=seen - first, seconds=elapsed, cpu_s=cpu_end - cpu, first_rows=first)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--records", type=int, default=200_000)
    parser.add_argument("--log-level", default="info", choices=["debug", "info", "warn", "error"],
                        help="of the measured role (info: as the Procfile runs it)")
    parser.add_argument("--profile", type=Path, default=None,
                        help="py-spy raw output of the map process over the measured window")
    parser.add_argument("--profile-seconds", type=float, default=10.0)
    parser.add_argument("--quick", action="store_true", help="smoke run (20k records)")
    args = parser.parse_args(argv)
    if args.quick:
        args.records = min(args.records, 20_000)
    if args.records < 10_000:
        parser.error("--records must be at least 10,000 (the first batch is not measured)")
    return args


async def run(args: argparse.Namespace) -> None:
    settings = load_settings()
    servers = await bootstrap_servers(settings)
    async with scratch_prefix(servers, settings, "mapper") as prefix:
        names = TopicNames.from_prefix(prefix)
        await write_pipeline(servers, settings, names.pipelines)
        filled = await fill(servers, settings.kafka, names.raw, args.records)
        log.info("filled %s with %d records at %.0f records/s", names.raw, args.records, filled)
        base = await baseline(settings, servers, names.raw, args.records)
        async with topic_counter(servers, settings, names.transformed) as count:
            with child("map", dashpipe_command("run", "map", "--log-level", args.log_level),
                       child_env(servers, prefix)) as mapper:
                ours = await measure(mapper, count, args.records, args.profile,
                                     args.profile_seconds)
    ratio = ours.rate / base["nMsg.sec"]
    print(f"mapper: ours {ours.rate:,.0f} transformed records/s ({ours.rows:,} rows in "
          f"{ours.seconds:.2f}s, first {ours.first_rows:,} excluded), ConsumerPerformance "
          f"{base['nMsg.sec']:,.0f} records/s, ratio {ratio:.3f} (goal >= 0.25); map process "
          f"{ours.cpu_s_per_1k:.3f} CPU s per 1k records ({ours.cpu_s / ours.seconds:.0%} of a "
          "core)", flush=True)
    record("mapper", ours=round(ours.rate), baseline=round(base["nMsg.sec"]),
           records=args.records, measured_rows=ours.rows, seconds=round(ours.seconds, 3),
           ours_cpu_s_per_1k=round(ours.cpu_s_per_1k, 4),
           ours_cpu_share=round(ours.cpu_s / ours.seconds, 2),
           baseline_fetch_only=round(base["fetch.nMsg.sec"]),
           baseline_rebalance_s=base["rebalance.time.ms"] / 1000, fill_rate=round(filled),
           quick=args.quick)


def main(argv: list[str] | None = None) -> None:
    setup_logging()
    args = parse_args(argv)
    try:
        asyncio.run(run(args))
    except (RuntimeError, DashpipeError, KafkaError) as exc:
        print(f"bench_mapper: error: {type(exc).__name__}: {exc}", file=sys.stderr)
        raise SystemExit(1) from None


if __name__ == "__main__":
    main()
