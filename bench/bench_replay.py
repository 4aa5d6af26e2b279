"""Replay: raw records/s of `streams.replay.replay.replay` (written) against the records/s Kafka's
ConsumerPerformance reads the same raw records at.

Setup (as `bench_mapper.py`): a fresh topic prefix (and consumer-group prefix) with the whole
catalogue; one realtime webhook pipeline `quakes` carrying the README's quake mapping (the one
`bench_mapping.py` uses: `features[*]`, epoch_ms time, key `quake_id`, five typed fields,
`depth_m` scaled and rounded, filter `mag >= 0`), written straight to `<prefix>.pipelines`
(`mapping_version` 1). The raw topic is filled with `--records` (200,000; `--quick`: 20,000)
Bronze records as the webhook receiver writes them: key = the pipeline id, so all of them land
in one raw partition (the topic's other partitions stay empty), headers from
`schemas.records.raw_headers`, each a ~730-byte GeoJSON payload with one feature that maps to
exactly one row (no row filtered, no dead letter).

Baseline: `org.apache.kafka.tools.ConsumerPerformance` reading those `--records` records from
the raw topic (all its partitions, with its own group) as `bench_consumer.py` runs it; its own
`nMsg.sec`, measured inside the JVM from before `subscribe` (so JVM start-up is not counted,
joining the group is), and its fetch-only rate `fetch.nMsg.sec` (joining the group excluded),
reported as a second ratio.

Ours: `streams.replay.replay.replay(rt, pipeline, "0", None, workers=--workers)`, a written replay
(not a dry run) of the whole range, on 2 worker processes by default (`--workers 1`: in this
process; see `streams/replay/workers.py`), driven from this process, on a runtime opened by
`dashpipe.runtime.open_runtime` on the scratch prefix. The timed span is from the call to its
return: finding the partition and the offsets (`bounds()`: metadata + a short-lived consumer),
starting the replay's consumer, then reading the partition with `getmany`, mapping every record
with the pipeline's compiled mapping, writing each batch's transformed rows with the batch API and
waiting for Kafka's acks before the next `getmany`, and the checkpoint file written after each
batch (into a temporary state dir). Excluded: the runtime's start-up (producer start, registry read
to the end, HTTP session), like JVM start-up on the other side. `loop` figures count from the
replay's own `ReplayStatus.started` (after `bounds()`) to the end. This process's CPU time, its
workers' included (utime + stime of every thread, the Kafka clients' included; the broker is
another process) over the call is reported per 1,000 records. `--rounds` (3): each round runs
the tool, then ours; the median of the rounds' ratios is the figure. The written rows are checked:
`--records` records and rows, no dead letter, and `--records` more records on
`<prefix>.transformed` each round. Worker start-up (a Python process each) is inside the timed
span.

Also measured, not compared: a dry run over the same range, after the written replay. A dry run
writes nothing but reads the current transformed rows of the same raw records (here the
`--records` rows the written replay wrote) and diffs them by lineage, so it reads twice the
records and is slower; its raw records/s is printed for reference (its diff must say every row
unchanged).

Printed / recorded (`replay`): ours records/s (= rows/s here: one row per record), the tool's
`nMsg.sec`, ratio ours / tool (goal >= 0.3), and the fetch-only ratio, loop rate, CPU per 1k
records, dry-run rate as extras. The `--quick` ratio means only "it runs": over 20,000 records
the tool's figure is dominated by its group join. To profile ours: `py-spy record -r 200 -o
out.txt -f raw -- python bench/bench_replay.py --no-dry-run`, then keep the stacks that hold
`replay (streams/replay.py` (the fill's stacks are in the same file).
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import logging
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from aiokafka.errors import KafkaError
from bench_consumer import baseline
from bench_mapper import PIPELINE_ID, fill, write_pipeline
from harness import (
    bootstrap_servers,
    cpu_seconds,
    record,
    scratch_prefix,
    setup_logging,
    topic_counter,
)

from dashpipe.errors import DashpipeError
from dashpipe.runtime import open_runtime
from dashpipe.settings import ADMIN, Settings, load_settings
from dashpipe.topics import TopicNames
from streams.replay.replay import replay
from streams.replay.status import ReplayStatus

log = logging.getLogger("bench.replay")


@dataclasses.dataclass(frozen=True)
class Run:
    summary: dict[str, Any]
    seconds: float  # call to return
    loop_seconds: float  # ReplayStatus.started (after bounds()) to the end
    cpu_s: float  # this process, over the call

    @property
    def rate(self) -> float:
        return int(self.summary["records"]) / self.seconds

    @property
    def rows_rate(self) -> float:
        return int(self.summary["rows"]) / self.seconds

    @property
    def loop_rate(self) -> float:
        return int(self.summary["records"]) / self.loop_seconds

    @property
    def cpu_s_per_1k(self) -> float:
        return self.cpu_s / max(int(self.summary["records"]), 1) * 1000


def scoped(settings: Settings, prefix: str, state_dir: Path) -> Settings:
    """The settings of a runtime on the scratch prefix (checkpoints into `state_dir`)."""
    return dataclasses.replace(
        settings, topics=settings.topics.model_copy(update={"prefix": prefix}),
        kafka=settings.kafka.model_copy(update={"group_prefix": prefix}),
        stack=settings.stack.model_copy(update={"state_dir": state_dir}))


async def replay_once(settings: Settings, servers: str, dry_run: bool, workers: int = 1
                      ) -> Run:
    """One replay of the whole raw range, timed from the call to its return."""
    async with open_runtime(settings, servers) as rt:
        p = rt.service.get(PIPELINE_ID, ADMIN)
        ended: list[float] = []
        started: list[float] = []

        def progress(status: ReplayStatus) -> None:
            if not started:
                started.append(status.started)
            if status.done:
                ended.append(time.monotonic())

        what = "dry run" if dry_run else "written replay"
        log.info("%s of %s starting (runtime up)", what, p.id)
        pid = os.getpid()
        cpu, start = cpu_seconds(pid, children=True), time.perf_counter()
        summary = await replay(rt, p, "0", None, dry_run=dry_run, progress=progress,
                               workers=workers)
        elapsed, cpu_end = time.perf_counter() - start, cpu_seconds(pid, children=True)
    log.info("%s done: %d records, %d rows, %d dead letters in %.2fs", what,
             summary["records"], summary["rows"], summary["dead_letters"], elapsed)
    loop = ended[0] - started[0] if started and ended else elapsed
    return Run(summary, elapsed, loop, cpu_end - cpu)


def check(run: Run, n: int, dry_run: bool) -> None:
    s = run.summary
    if (s["records"], s["rows"], s["dead_letters"]) != (n, n, 0):
        raise RuntimeError(f"{'dry run' if dry_run else 'replay'}: {s['records']} records, "
                           f"{s['rows']} rows, {s['dead_letters']} dead letters; expected "
                           f"{n}, {n}, 0")
    if dry_run:
        d = s["diff"]
        if (d["rows_before"], d["unchanged"]) != (n, n):
            raise RuntimeError(f"dry run: diff {d['rows_before']} rows before, "
                               f"{d['unchanged']} unchanged; expected {n}, {n}")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--records", type=int, default=200_000)
    parser.add_argument("--no-dry-run", dest="dry_run", action="store_false",
                        help="skip the (reference only) dry-run measurement")
    parser.add_argument("--quick", action="store_true", help="smoke run (20k records)")
    parser.add_argument("--rounds", type=int, default=3,
                        help="the tool then ours, this many times; the median ratio counts")
    parser.add_argument("--workers", type=int, default=2,
                        help="worker processes of the written replay (dashpipe replay "
                             "--workers; 1: in this process)")
    args = parser.parse_args(argv)
    if args.quick:
        args.records, args.rounds = min(args.records, 20_000), 1
    if args.records < 1:
        parser.error("--records must be positive")
    return args


async def run(args: argparse.Namespace) -> None:
    settings = load_settings()
    servers = await bootstrap_servers(settings)
    async with scratch_prefix(servers, settings, "replay") as prefix:
        names = TopicNames.from_prefix(prefix)
        await write_pipeline(servers, settings, names.pipelines)
        filled = await fill(servers, settings.kafka, names.raw, args.records)
        log.info("filled %s with %d records at %.0f records/s", names.raw, args.records, filled)
        ratios = []
        with tempfile.TemporaryDirectory(prefix="bench-replay-state-") as state:
            ours_settings = scoped(settings, prefix, Path(state))
            for round_ in range(1, args.rounds + 1):
                base = await baseline(settings, servers, names.raw, args.records)
                ours = await replay_once(ours_settings, servers, dry_run=False,
                                         workers=args.workers)
                check(ours, args.records, dry_run=False)
                async with topic_counter(servers, settings, names.transformed) as count:
                    written = await count()
                if written != args.records * round_:
                    raise RuntimeError(f"{names.transformed} holds {written} records, expected "
                                       f"{args.records * round_}")
                dry = await replay_once(ours_settings, servers, dry_run=True) \
                    if args.dry_run and round_ == args.rounds else None
                if dry is not None:
                    check(dry, args.records, dry_run=True)
                ratios.append(report(args, ours, base, dry, filled, round_))
    if len(ratios) > 1:
        print(f"replay: median ratio {statistics.median(ratios):.3f} over {len(ratios)} rounds "
              f"(each: the tool, then ours; goal >= 0.3)")


def report(args: argparse.Namespace, ours: Run, base: dict[str, float], dry: Run | None,
           filled: float, round_: int) -> float:
    tool, fetch_only = base["nMsg.sec"], base["fetch.nMsg.sec"]
    ratio = ours.rate / tool
    print(f"replay: ours ({args.workers} worker{'s' * (args.workers > 1)}) {ours.rate:,.0f} "
          f"records/s = {ours.rows_rate:,.0f} rows/s "
          f"({args.records:,} records in {ours.seconds:.2f}s call to return; loop "
          f"{ours.loop_rate:,.0f} records/s), ConsumerPerformance {tool:,.0f} records/s "
          f"(fetch only {fetch_only:,.0f}), ratio {ratio:.3f} (goal >= 0.3), fetch-only ratio "
          f"{ours.rate / fetch_only:.3f}; ours {ours.cpu_s_per_1k:.3f} CPU s per 1k records "
          f"({ours.cpu_s / ours.seconds:.0%} of a core)", flush=True)
    if dry is not None:
        print(f"replay: dry run {dry.rate:,.0f} raw records/s ({dry.seconds:.2f}s; it also "
              f"reads and diffs the {args.records:,} current transformed rows, so it is "
              "slower; not compared)", flush=True)
    record("replay", ours=round(ours.rate), baseline=round(tool), records=args.records,
           ours_rows_s=round(ours.rows_rate), seconds=round(ours.seconds, 3),
           ours_loop=round(ours.loop_rate), ours_cpu_s_per_1k=round(ours.cpu_s_per_1k, 4),
           baseline_fetch_only=round(fetch_only),
           ratio_fetch_only=round(ours.rate / fetch_only, 4),
           baseline_rebalance_s=base["rebalance.time.ms"] / 1000,
           dry_run=round(dry.rate) if dry is not None else None, fill_rate=round(filled),
           workers=args.workers, round=round_, quick=args.quick)
    return ratio


def main(argv: list[str] | None = None) -> None:
    setup_logging()
    args = parse_args(argv)
    try:
        asyncio.run(run(args))
    except (RuntimeError, DashpipeError, KafkaError) as exc:
        print(f"bench_replay: error: {type(exc).__name__}: {exc}", file=sys.stderr)
        raise SystemExit(1) from None


if __name__ == "__main__":
    main()
