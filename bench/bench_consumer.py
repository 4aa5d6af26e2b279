"""Consumer throughput: our read path against Kafka's ConsumerPerformance.

A fresh topic is filled with `--records` Bronze-shaped records by our producer path, then read
from the start by each side with its own fresh group. Ours: `dashpipe.kafka.consumer`
(read_committed, manual commits) with `getmany` in a loop and an orjson parse of every value,
as our roles read. Baseline: `org.apache.kafka.tools.ConsumerPerformance`. Both figures include
joining the group (the tool's `nMsg.sec` is measured from before `subscribe`); the tool's
figure is its own, so JVM startup is not counted.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import statistics
import time

import orjson
from bench_producer import produce
from harness import (
    bootstrap_servers,
    java_tool,
    record,
    record_args,
    scratch_topic,
    setup_logging,
    unique,
)

from dashpipe import kafka
from dashpipe.settings import KafkaSettings, Settings, load_settings

log = logging.getLogger("bench.consumer")

PERF_CLASS = "org.apache.kafka.tools.ConsumerPerformance"
FIELDS = ("start.time", "end.time", "data.consumed.in.MB", "MB.sec", "data.consumed.in.nMsg",
          "nMsg.sec", "rebalance.time.ms", "fetch.time.ms", "fetch.MB.sec", "fetch.nMsg.sec")
IDLE_LIMIT_S = 30.0


async def consume(servers: str, ks: KafkaSettings, topic: str, n: int) -> tuple[float, float]:
    """Read `n` records with our consumer; returns (records/s, seconds to the first records)."""
    consumer = kafka.consumer(servers, ks, topic, group_id=unique("consumer"))
    start = time.perf_counter()
    first: float | None = None
    read = 0
    async with kafka.started(consumer):
        last = time.perf_counter()
        while read < n:
            batches = await consumer.getmany(timeout_ms=100)
            now = time.perf_counter()
            if not batches:
                if now - last > IDLE_LIMIT_S:
                    raise RuntimeError(f"read {read} of {n} records, then nothing for "
                                       f"{IDLE_LIMIT_S:.0f}s")
                continue
            last = now
            first = now if first is None else first
            for records in batches.values():
                for rec in records:
                    orjson.loads(rec.value)
                read += len(records)
        elapsed = time.perf_counter() - start
    return read / elapsed, (first or start) - start


async def baseline(settings: Settings, servers: str, topic: str, n: int) -> dict[str, float]:
    """ConsumerPerformance's own summary line (measured inside the JVM, after startup)."""
    out = await java_tool(settings, PERF_CLASS, "--bootstrap-server", servers, "--topic", topic,
                          "--messages", str(n), "--group", unique("perf-consumer"),
                          "--hide-header")
    if "WARNING" in out:
        raise RuntimeError(f"ConsumerPerformance stopped early:\n{out[-2000:]}")
    rows = [line.split(", ") for line in out.splitlines()]
    summary = [r for r in rows if len(r) == len(FIELDS)]
    if not summary:
        raise RuntimeError(f"no summary line in:\n{out[-2000:]}")
    figures = {k: float(v) for k, v in zip(FIELDS[2:], summary[-1][2:], strict=True)}
    if int(figures["data.consumed.in.nMsg"]) < n:
        raise RuntimeError(f"ConsumerPerformance read {figures['data.consumed.in.nMsg']} of {n}")
    return figures


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    return record_args(__doc__, argv)


async def run(args: argparse.Namespace) -> None:
    settings = load_settings()
    servers = await bootstrap_servers(settings)
    ratios = []
    async with scratch_topic(servers, settings, "consumer") as topic:
        fill = await produce(servers, settings.kafka, topic, args.records, args.size)
        log.info("filled %s with %d records at %.0f records/s", topic, args.records, fill)
        for round_ in range(1, args.rounds + 1):
            base = await baseline(settings, servers, topic, args.records)
            ours, to_first = await consume(servers, settings.kafka, topic, args.records)
            ratios.append(record(
                "consumer", ours=round(ours), baseline=round(base["nMsg.sec"]),
                records=args.records, size=args.size, round=round_,
                ours_first_records_s=round(to_first, 3),
                baseline_rebalance_s=base["rebalance.time.ms"] / 1000,
                baseline_fetch_only=round(base["fetch.nMsg.sec"]), quick=args.quick))
    if len(ratios) > 1:
        print(f"consumer: median ratio {statistics.median(ratios):.3f} over {len(ratios)} rounds")


def main(argv: list[str] | None = None) -> None:
    setup_logging()
    asyncio.run(run(parse_args(argv)))


if __name__ == "__main__":
    main()
