"""Producer throughput: our Bronze write path against Kafka's ProducerPerformance.

Ours: `dashpipe.kafka.producer` (idempotent, acks=all, linger from settings), each record an
orjson payload of about `--size` bytes with `RawMetadata` headers built per record, keyed by a
handful of pipeline ids; sends are issued without awaiting each one (a sliding window of
futures). Baseline: `org.apache.kafka.tools.ProducerPerformance` with the same acks,
idempotence and linger, the same record size, on the same topic. The baseline's figure is the
one the tool reports itself, so JVM startup is not counted.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import re
import statistics
import time
import uuid
from collections import deque
from collections.abc import Callable

import orjson
from harness import (
    bootstrap_servers,
    java_tool,
    record,
    record_args,
    scratch_topic,
    setup_logging,
)

from dashpipe import kafka
from dashpipe.settings import KafkaSettings, Settings, load_settings
from schemas.records import RawMetadata, now

log = logging.getLogger("bench.producer")

PIPELINES = [f"pipeline-{i:02d}" for i in range(6)]
PERF_CLASS = "org.apache.kafka.tools.ProducerPerformance"
SUMMARY = re.compile(r"^(\d+) records sent, ([\d.]+) records/sec \(([\d.]+) MB/sec\).*50th",
                     re.MULTILINE)

Record = tuple[bytes, bytes, list[tuple[str, bytes]]]


def record_maker(size: int) -> Callable[[int], Record]:
    """`make(i)` -> (key, value, headers) the way ingest writes a Bronze record."""
    run = uuid.uuid4().hex[:8]

    def payload(i: int, pad: str) -> dict[str, object]:
        return {"seq": i, "status": "ok", "region": "eu-west",
                "metrics": {"latency_ms": 12.5, "requests": 1042, "errors": 3}, "note": pad}

    pad = "x" * max(0, size - len(orjson.dumps(payload(100_000, ""))))

    def make(i: int) -> Record:
        pipeline = PIPELINES[i % len(PIPELINES)]
        meta = RawMetadata(pipeline_id=pipeline, team_id="team-bench", source="poll",
                           received_at=now(), ingest_id=f"{run}-{i}",
                           url="https://api.example.com/v1/metrics", http_status=200)
        return pipeline.encode(), orjson.dumps(payload(i, pad)), meta.to_headers()

    return make


def serialise_rate(size: int, n: int) -> tuple[float, int]:
    """Records/s of building records alone (no Kafka), and the bytes of one record."""
    make = record_maker(size)
    start = time.perf_counter()
    for i in range(n):
        make(i)
    rate = n / (time.perf_counter() - start)
    key, value, headers = make(100_000)
    return rate, len(key) + len(value) + sum(len(k) + len(v) for k, v in headers)


async def produce(servers: str, ks: KafkaSettings, topic: str, n: int, size: int,
                  window: int = 20_000) -> float:
    """Send `n` records through our producer; returns records/s from first send to last ack."""
    make = record_maker(size)
    async with kafka.started(kafka.producer(servers, ks)) as producer:
        pending: deque[asyncio.Future[object]] = deque()
        start = time.perf_counter()
        for i in range(n):
            key, value, headers = make(i)
            pending.append(await producer.send(topic, value, key=key, headers=headers))
            if len(pending) >= window:
                await pending.popleft()
        await asyncio.gather(*pending)
        elapsed = time.perf_counter() - start
    return n / elapsed


async def baseline(settings: Settings, servers: str, topic: str, n: int,
                   size: int) -> tuple[float, float]:
    """ProducerPerformance's own records/sec (measured inside the JVM, after startup), and
    the tool's wall time in seconds including JVM startup (for information only)."""
    props = [f"bootstrap.servers={servers}", "acks=all", "enable.idempotence=true",
             f"linger.ms={settings.kafka.linger_ms}"]
    start = time.perf_counter()
    out = await java_tool(settings, PERF_CLASS, "--topic", topic, "--num-records", str(n),
                          "--record-size", str(size), "--throughput", "-1",
                          "--producer-props", *props)
    found = SUMMARY.findall(out)
    if not found or int(found[-1][0]) != n:
        raise RuntimeError(f"no final summary for {n} records in:\n{out[-2000:]}")
    return float(found[-1][1]), time.perf_counter() - start


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    return record_args(__doc__, argv)


async def run(args: argparse.Namespace) -> None:
    settings = load_settings()
    servers = await bootstrap_servers(settings)
    floor, record_bytes = serialise_rate(args.size, min(args.records, 20_000))
    ratios = []
    async with scratch_topic(servers, settings, "producer") as topic:
        for round_ in range(1, args.rounds + 1):
            base, wall = await baseline(settings, servers, topic, args.records, args.size)
            ours = await produce(servers, settings.kafka, topic, args.records, args.size)
            ratios.append(record("producer", ours=round(ours), baseline=round(base),
                                 records=args.records, size=args.size, round=round_,
                                 ours_record_bytes=record_bytes, serialise_only=round(floor),
                                 baseline_wall_s=round(wall, 2), quick=args.quick))
    if len(ratios) > 1:
        print(f"producer: median ratio {statistics.median(ratios):.3f} over {len(ratios)} rounds")


def main(argv: list[str] | None = None) -> None:
    setup_logging()
    asyncio.run(run(parse_args(argv)))


if __name__ == "__main__":
    main()
