"""Polling cost: CPU time per poll of our `poll` role against a bare aiohttp + aiokafka loop.

Setup: a fresh topic prefix (and consumer-group prefix); a local API (`bench/bare.py api`, a
subprocess) answering `GET /data/{n}` with ~700 bytes of JSON; `--pipelines` (1,000) polling
`http_api` pipelines, each on its own URL, due every `--interval` (1) second, written straight
to `<prefix>.pipelines` as the management API would (`Pipeline(...).model_dump_json()`, key =
id).

Ours: `dashpipe run poll` in a subprocess. Baseline: `bench/bare.py poll`, one aiohttp session
fetching the same URLs every interval (at most 64 at a time, like our default
`DASHPIPE_POLL_CONCURRENCY`) and producing each body with a plain aiokafka producer (same
acks/idempotence/linger, no headers, no status records, no registry). Each side warms up, then
is measured for `--seconds`: its process's CPU time (utime + stime from /proc/<pid>/stat) and
the polls it did (records the raw topic gained: end offsets). The sides run one after the
other, never together.

Printed: CPU ms per poll of each side, polls/s against the target (pipelines / interval),
and the ratio baseline CPU per poll / ours (1.0 = as cheap as the bare loop; higher is better).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from harness import (
    Child,
    bench_script,
    bootstrap_servers,
    child,
    child_env,
    cpu_seconds,
    dashpipe_command,
    free_port,
    machine_busy,
    record,
    scratch_prefix,
    setup_logging,
    topic_counter,
)

from dashpipe import kafka
from dashpipe.settings import Settings, load_settings
from dashpipe.topics import TopicNames
from schemas.pipeline import Pipeline
from schemas.records import now

log = logging.getLogger("bench.poll")

Counter = Callable[[], Awaitable[int]]


@dataclass(frozen=True)
class Sample:
    seconds: float
    cpu_s: float  # the measured process
    polls: int  # records the raw topic gained
    api_cpu_s: float  # the local API server, for context
    machine_busy: float  # share of all cores busy (poller, API, Kafka, the rest)

    @property
    def cpu_ms_per_poll(self) -> float:
        return self.cpu_s / max(self.polls, 1) * 1000

    @property
    def rate(self) -> float:
        return self.polls / self.seconds


def pipeline_id(n: int) -> str:
    return f"poll-{n:05d}"


async def write_pipelines(servers: str, settings: Settings, topic: str, api: str, count: int,
                          interval: int) -> None:
    """The definitions, as the API would write them, straight onto the pipelines topic."""
    at = now()
    async with kafka.started(kafka.producer(servers, settings.kafka)) as producer:
        futures = []
        for n in range(count):
            p = Pipeline(id=pipeline_id(n), team_id="bench", name=f"poll bench {n}",
                         type="polling", source_type="http_api", interval_seconds=interval,
                         source_config={"url": f"{api}/{n}"}, created_at=at, updated_at=at)
            futures.append(await producer.send(topic, p.model_dump_json().encode(),
                                               key=p.id.encode()))
        await asyncio.gather(*futures)
    log.info("wrote %d polling pipelines to %s", count, topic)


async def wait_for_polls(count: Counter, proc: Child, timeout: float = 90.0) -> None:
    start, deadline = await count(), time.monotonic() + timeout
    while await count() == start:
        proc.check_alive()
        if time.monotonic() > deadline:
            raise RuntimeError(f"{proc.name}: no poll within {timeout:.0f}s:\n{proc.output()}")
        await asyncio.sleep(0.2)


async def measure(proc: Child, api: Child, count: Counter, warmup: float,
                  seconds: float) -> Sample:
    await wait_for_polls(count, proc)
    await asyncio.sleep(warmup)
    cpu, api_cpu, (busy, total) = cpu_seconds(proc.pid), cpu_seconds(api.pid), machine_busy()
    polls, start = await count(), time.monotonic()
    await asyncio.sleep(seconds)
    cpu2, api_cpu2, (busy2, total2) = cpu_seconds(proc.pid), cpu_seconds(api.pid), machine_busy()
    polls2, elapsed = await count(), time.monotonic() - start
    proc.check_alive()
    return Sample(seconds=elapsed, cpu_s=cpu2 - cpu, polls=polls2 - polls,
                  api_cpu_s=api_cpu2 - api_cpu,
                  machine_busy=(busy2 - busy) / max(total2 - total, 1.0))


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--pipelines", type=int, default=1000)
    parser.add_argument("--interval", type=int, default=1, help="seconds between polls")
    parser.add_argument("--seconds", type=float, default=40.0, help="measured window per side")
    parser.add_argument("--warmup", type=float, default=15.0, help="seconds after first polls")
    parser.add_argument("--log-level", default="info", choices=["debug", "info", "warn", "error"],
                        help="of the measured role (info: as the Procfile runs it)")
    parser.add_argument("--quick", action="store_true", help="smoke run: 5 s warm-up, 8 s")
    args = parser.parse_args(argv)
    if args.quick:
        args.seconds, args.warmup = min(args.seconds, 8.0), min(args.warmup, 5.0)
    return args


async def run(args: argparse.Namespace) -> None:
    settings = load_settings()
    servers = await bootstrap_servers(settings)
    target = args.pipelines / args.interval
    async with scratch_prefix(servers, settings, "poll") as prefix:
        names = TopicNames.from_prefix(prefix)
        port = free_port()
        api_url = f"http://127.0.0.1:{port}/data"
        with child("api", bench_script("bare.py", "api", "--port", str(port))) as api:
            await api.wait_for_output("listening on")
            await write_pipelines(servers, settings, names.pipelines, api_url, args.pipelines,
                                  args.interval)
            async with topic_counter(servers, settings, names.raw) as count:
                with child("poll", dashpipe_command("run", "poll", "--log-level", args.log_level),
                           child_env(servers, prefix)) as poll:
                    ours = await measure(poll, api, count, args.warmup, args.seconds)
                log.info("ours: %.1f polls/s, %.2f CPU ms/poll", ours.rate, ours.cpu_ms_per_poll)
                bare_cmd = bench_script("bare.py", "poll", "--base", api_url, "--count",
                                        str(args.pipelines), "--topic", names.raw,
                                        "--interval", str(args.interval))
                with child("bare-poll", bare_cmd, child_env(servers, prefix)) as bare:
                    base = await measure(bare, api, count, args.warmup, args.seconds)
    for side, s in (("ours", ours), ("baseline", base)):
        print(f"poll: {side:<8} {s.cpu_ms_per_poll:.3f} CPU ms/poll, {s.rate:,.0f} polls/s of "
              f"{target:,.0f}/s target ({s.rate / target:.0%}), process CPU "
              f"{s.cpu_s / s.seconds:.0%} of a core, machine busy {s.machine_busy:.0%}",
              flush=True)
    # ours/baseline as polls per CPU-second, so the ratio is baseline CPU/poll over ours
    record("poll", unit="polls/cpu-s", ours=round(1000 / ours.cpu_ms_per_poll),
           baseline=round(1000 / base.cpu_ms_per_poll),
           ours_cpu_ms_per_poll=round(ours.cpu_ms_per_poll, 3),
           baseline_cpu_ms_per_poll=round(base.cpu_ms_per_poll, 3),
           ours_polls_per_s=round(ours.rate, 1), baseline_polls_per_s=round(base.rate, 1),
           target_polls_per_s=target, pipelines=args.pipelines, interval_s=args.interval,
           ours_cpu_share=round(ours.cpu_s / ours.seconds, 2),
           baseline_cpu_share=round(base.cpu_s / base.seconds, 2),
           ours_api_cpu_ms_per_poll=round(ours.api_cpu_s / max(ours.polls, 1) * 1000, 3),
           ours_machine_busy=round(ours.machine_busy, 2),
           baseline_machine_busy=round(base.machine_busy, 2),
           seconds=args.seconds, quick=args.quick)


def main(argv: list[str] | None = None) -> None:
    setup_logging()
    asyncio.run(run(parse_args(argv)))


if __name__ == "__main__":
    main()
