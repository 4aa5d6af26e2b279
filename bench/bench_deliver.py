"""Role `deliver`: rows/s `dashpipe run deliver` delivers to a local receiver, against a bare
aiohttp client posting the same request bodies to the same receiver at the same concurrency.

The receiver: `bench/bare.py receiver`, an aiohttp app in its own process (separate from both
clients, the same process for both sides) that reads each `POST /hooks/deliver`, answers an
empty 200 and notes `time.perf_counter()` after reading the body, and the request's
`webhook-id`. Both figures are taken there: rows/s = (N - 1) / (time of the N-th request - time
of the first), so process start-up, Kafka group join and connection set-up before the first
request are excluded on both sides.

Ours: a fresh topic prefix (and consumer-group prefix) with the whole catalogue; one realtime
pipeline `deliver` whose single sink is a `webhook` to the receiver (`concurrency: C`, default
16; a `whsec_` secret, Standard Webhooks signing), written straight to `<prefix>.pipelines` as
the management API would. The transformed topic is filled with `--records` N (20,000; --quick
2,000) transformed records of that pipeline, shaped as the mapper writes them (a
`TransformedRecord` as JSON: five quake fields, a distinct lineage per row, ~330 bytes; key the
quake id; headers `dashpipe-pipeline-id`, `dashpipe-team-id`) BEFORE `dashpipe run deliver`
starts in a subprocess, so it starts with the whole backlog. It consumes them (and the retry
topic), builds and signs one request per row and POSTs it with C workers per sink, settling
offsets as answers come. The role runs with its defaults: with a backlog, the sink's queue
(`DASHPIPE_DELIVERY_QUEUE_ROWS`, 1,000) fills and, the sink being healthy, holds the consumer
back; only a failing sink's rows are parked in the retry topic. The records the retry topic
gained are reported (expected: none). `--queue-rows` sets that setting for the run.

Baseline: `bench/bare.py post`, one aiohttp `ClientSession` in its own process with C
coroutines POSTing the same N requests: byte-identical bodies and the same header set (built
by the webhook sink's own request builder with the same message ids and secret; only the
timestamp and therefore the signature differ), in the same order. No Kafka, no signing at
send time. Each side starts once the machine is idle (under 30 % busy over 0.5 s, at most
10 s of waiting). After one unmeasured warm-up round (the receiver's first requests), each of
`--rounds` (3) rounds runs the baseline, ours (a new `deliver` process with a new consumer
group, so it reads the whole backlog again), the baseline again; a round's ratio is ours over
the mean of its two baselines, and the median of the rounds' ratios is the figure.

`--max-seconds` (300) bounds each measured side: past it, the rate is that of the requests
received so far and the record says `complete: false` (before 445a078 a backlog went
through the retry topic and took minutes).

Printed and recorded: rows/s of ours and of the baseline, the ratio ours / baseline (goal
>= 0.8), CPU seconds per 1,000 rows of the deliver process and of the bare client (utime +
stime from /proc/<pid>/stat between the first and the last poll of the receiver's counts,
every 20 ms, over the rows received in between), the receiver's share of a core over each
window (if it nears 100 % the receiver, not the client, is the limit), duplicates (requests
minus distinct `webhook-id`s) and records parked in the retry topic. `--profile FILE` runs
`py-spy record -f raw` on the deliver process during the measured window (needs py-spy).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import random
import statistics
import sys
import tempfile
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import orjson
from aiokafka.errors import KafkaError
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
    profiler,
    record,
    scratch_prefix,
    setup_logging,
    topic_counter,
)

from agents.deliver.sinks.webhook import webhook_request
from dashpipe import kafka
from dashpipe.errors import DashpipeError
from dashpipe.settings import KafkaSettings, Settings, load_settings
from dashpipe.signatures import new_secret
from dashpipe.topics import TopicNames
from schemas.pipeline import Pipeline, SinkSpec, WebhookSink
from schemas.records import SCHEMA_VERSION, message_id, now

log = logging.getLogger("bench.deliver")

PIPELINE_ID, TEAM_ID = "deliver", "team-bench"
POLL_S = 0.02
IDLE_LIMIT_S = 60.0
PLACES = ["Ridgecrest, CA", "Anza, CA", "Pahala, Hawaii", "Cobb, CA", "Toyah, Texas",
          "Petrolia, CA", "Sand Point, Alaska", "Ponce, Puerto Rico"]


@dataclass(frozen=True)
class Sample:
    rate: float  # rows/s at the receiver: (N - 1) / (N-th request - first request)
    seconds: float  # first to N-th request
    polled_rows: int  # rows received between the first and the last poll (the CPU window)
    cpu_s: float  # of the measured client process over that window
    receiver_cpu_s: float
    window_s: float
    busy: float  # share of all CPUs busy over the window
    requests: int  # at the receiver when the N-th was seen (or the deadline passed)
    distinct: int
    complete: bool  # False: --max-seconds passed first; the rate is of the rows received

    @property
    def cpu_s_per_1k(self) -> float:
        return self.cpu_s / max(self.polled_rows, 1) * 1000

    @property
    def receiver_share(self) -> float:
        return self.receiver_cpu_s / self.window_s


# --- the data -------------------------------------------------------------------------------

def rows(n: int) -> list[bytes]:
    """`n` transformed records as the mapper writes them (plain JSON, so a parse and dump by
    the deliver role gives the same bytes back)."""
    rng = random.Random(17)
    out = []
    for i in range(n):
        ms = 1_764_300_000_000 + i * 7_919 + rng.randrange(1000)
        depth = round(rng.uniform(-3.0, 600.0), 2)
        quake = f"{rng.choice(['ci', 'nc', 'hv', 'ak', 'us', 'tx'])}{40_000_000 + i}"
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ms // 1000))
        out.append(orjson.dumps({
            "pipeline_id": PIPELINE_ID, "team_id": TEAM_ID,
            "time": f"{stamp}.{ms % 1000:03d}Z", "key": quake,
            "fields": {"quake_id": quake, "mag": round(rng.uniform(0.0, 7.5), 2),
                       "place": f"{rng.randrange(1, 90)} km {rng.choice(PLACES)}",
                       "depth_km": depth, "depth_m": round(depth * 1000)},
            "lineage": {"raw_partition": i % 3, "raw_offset": i // 3, "row_index": 0},
            "mapping_version": 1, "ingest_id": f"bench-{i}",
            "schema_version": SCHEMA_VERSION}))
    return out


def sink_config(url: str, concurrency: int) -> dict[str, Any]:
    return {"url": url, "secret": new_secret(), "signing": "standard",
            "concurrency": concurrency, "timeout_seconds": 15}


async def write_pipeline(servers: str, settings: Settings, topic: str,
                         config: dict[str, Any]) -> None:
    """The definition, as the API would write it, straight onto the pipelines topic."""
    at = now()
    p = Pipeline(id=PIPELINE_ID, team_id=TEAM_ID, name="deliver bench", type="realtime",
                 source_type="webhook", source_config={"webhook_secret": "bench"},
                 sinks=[SinkSpec(sink_type="webhook", sink_config=config)],
                 rate_limit_per_minute=1_000_000, created_at=at, updated_at=at)
    async with kafka.started(kafka.producer(servers, settings.kafka)) as producer:
        await producer.send_and_wait(topic, p.model_dump_json().encode(), key=p.id.encode())
    log.info("wrote pipeline %s (one webhook sink, concurrency %d) to %s", p.id,
             config["concurrency"], topic)


async def fill(servers: str, ks: KafkaSettings, topic: str, values: list[bytes],
               window: int = 20_000) -> float:
    """The transformed records, with the mapper's key and headers; returns records/s."""
    headers = [("dashpipe-pipeline-id", PIPELINE_ID.encode()),
               ("dashpipe-team-id", TEAM_ID.encode())]
    async with kafka.started(kafka.producer(servers, ks)) as producer:
        pending: deque[asyncio.Future[object]] = deque()
        start = time.perf_counter()
        for value in values:
            key = orjson.loads(value)["key"].encode()
            pending.append(await producer.send(topic, value, key=key, headers=headers,
                                               timestamp_ms=int(time.time() * 1000)))
            if len(pending) >= window:
                await pending.popleft()
        await asyncio.gather(*pending)
        elapsed = time.perf_counter() - start
    return len(values) / elapsed


def request_file(values: list[bytes], config: dict[str, Any], path: Path) -> None:
    """The baseline's requests, built by the webhook sink itself, one `[headers, body]` a line;
    checks that the bodies are byte-identical to what the deliver role will send."""
    sink = WebhookSink.model_validate(config)
    stamp = int(time.time())
    with path.open("wb") as out:
        for value in values:
            row = orjson.loads(value)
            req = webhook_request(sink, [row], message_id(PIPELINE_ID, row["lineage"], 0), stamp)
            if req.body != value:
                raise RuntimeError("a row does not survive a JSON round trip byte for byte")
            out.write(orjson.dumps([req.headers, req.body.decode()]) + b"\n")


# --- measuring ------------------------------------------------------------------------------



async def settle(limit: float = 0.3, timeout: float = 10.0) -> None:
    """Until the machine is less than `limit` busy over half a second (the broker may still be
    flushing after the fill or a side's end), at most `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        a = machine_busy()
        await asyncio.sleep(0.5)
        b = machine_busy()
        if (b[0] - a[0]) / max(b[1] - a[1], 1.0) < limit:
            return
    log.info("the machine is still busy after %.0fs; measuring anyway", timeout)


class Receiver:
    def __init__(self, http: aiohttp.ClientSession, base: str, proc: Child) -> None:
        self.http, self.base, self.proc = http, base, proc

    async def reset(self) -> None:
        async with self.http.post(f"{self.base}/reset") as resp:
            resp.raise_for_status()

    async def stats(self, n: int) -> dict[str, Any]:
        async with self.http.get(f"{self.base}/stats", params={"n": str(n)}) as resp:
            resp.raise_for_status()
            stats: dict[str, Any] = await resp.json()
            return stats


async def measure(receiver: Receiver, client: Child, expected: int, max_seconds: float,
                  profile: Path | None = None, profile_seconds: float = 10.0) -> Sample:
    """From the first poll that sees a request at the receiver to the one that sees the
    `expected`-th; the rate from the receiver's own timestamps. After `max_seconds` from the
    first request, the rate of the requests received so far (`complete` False)."""
    deadline = time.monotonic() + IDLE_LIMIT_S
    while (stats := await receiver.stats(expected))["count"] == 0:
        client.check_alive()
        receiver.proc.check_alive()
        if time.monotonic() > deadline:
            raise RuntimeError(f"{client.name}: no request within {IDLE_LIMIT_S:.0f}s:\n"
                               f"{client.output()}")
        await asyncio.sleep(POLL_S)
    first_count, start = stats["count"], time.perf_counter()
    give_up = time.monotonic() + max_seconds
    cpu, rcpu, busy = cpu_seconds(client.pid), cpu_seconds(receiver.proc.pid), machine_busy()
    with profiler(client.pid, profile, profile_seconds, client.name):
        seen, last_change = first_count, time.monotonic()
        while stats["nth"] is None:
            await asyncio.sleep(POLL_S)
            stats = await receiver.stats(expected)
            if stats["nth"] is None and time.monotonic() > give_up:
                log.warning("%s: %d of %d requests after %.0fs; measuring those", client.name,
                            stats["count"], expected, max_seconds)
                stats = await receiver.stats(stats["count"])
                break
            if stats["count"] != seen:
                seen, last_change = stats["count"], time.monotonic()
            elif time.monotonic() - last_change > IDLE_LIMIT_S:
                raise RuntimeError(f"{client.name}: the receiver has {seen} of {expected} "
                                   f"requests and got none for {IDLE_LIMIT_S:.0f}s:\n"
                                   f"{client.output()}")
            client.check_alive()
            receiver.proc.check_alive()
        window = time.perf_counter() - start
        cpu_end, rcpu_end, busy_end = (cpu_seconds(client.pid), cpu_seconds(receiver.proc.pid),
                                       machine_busy())
    seconds = stats["nth"] - stats["first"]
    received = min(stats["count"], expected)
    return Sample(rate=(received - 1) / seconds, seconds=seconds,
                  polled_rows=stats["count"] - first_count, cpu_s=cpu_end - cpu,
                  receiver_cpu_s=rcpu_end - rcpu, window_s=window,
                  busy=(busy_end[0] - busy[0]) / max(busy_end[1] - busy[1], 1.0),
                  requests=stats["count"], distinct=stats["distinct_ids"],
                  complete=stats["count"] >= expected)


async def bare_side(receiver: Receiver, url: str, path: Path, args: argparse.Namespace,
                    label: str, profile: Path | None = None) -> Sample:
    await settle()
    await receiver.reset()
    cmd = bench_script("bare.py", "post", "--url", url, "--file", str(path),
                       "--concurrency", str(args.concurrency))
    with child(f"bare-post-{label}", cmd) as client:
        sample = await measure(receiver, client, args.records, args.max_seconds, profile,
                               args.profile_seconds)
        await client.wait_for_output("posted ")
        if " 0 not 2xx" not in client.output():
            raise RuntimeError(f"the bare client got non-2xx answers:\n{client.output()}")
    log.info("bare (%s): %.0f rows/s", label, sample.rate)
    return sample


def describe(name: str, s: Sample) -> str:
    return (f"{name}: {s.rate:,.0f} rows/s ({s.seconds:.2f}s first to last request), "
            f"{s.cpu_s_per_1k:.3f} CPU s per 1k rows ({s.cpu_s / s.window_s:.0%} of a core), "
            f"receiver {s.receiver_share:.0%} of a core, machine {s.busy:.0%} busy")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--records", type=int, default=20_000)
    parser.add_argument("--concurrency", type=int, default=16,
                        help="the sink's `concurrency` and the bare client's requests in flight")
    parser.add_argument("--queue-rows", type=int, default=None,
                        help="DASHPIPE_DELIVERY_QUEUE_ROWS for the deliver role (default: the "
                             "role's own default)")
    parser.add_argument("--log-level", default="info", choices=["debug", "info", "warn", "error"],
                        help="of the measured role (info: as the Procfile runs it)")
    parser.add_argument("--max-seconds", type=float, default=300.0,
                        help="stop measuring a side this long after its first request and "
                             "take the rate of the rows received so far (recorded "
                             "complete=false)")
    parser.add_argument("--profile", type=Path, default=None,
                        help="py-spy raw output of the deliver process over the measured window "
                             "(FILE), and of the bare client after it (FILE with .bare.txt)")
    parser.add_argument("--profile-seconds", type=float, default=10.0)
    parser.add_argument("--rounds", type=int, default=3,
                        help="bare, ours, bare this many times (ours with a new consumer group "
                             "each time); the median ratio counts")
    parser.add_argument("--quick", action="store_true", help="smoke run (2,000 rows, 1 round)")
    args = parser.parse_args(argv)
    if args.quick:
        args.records, args.rounds = min(args.records, 2_000), 1
    if args.records < 100:
        parser.error("--records must be at least 100")
    if not 1 <= args.concurrency <= 64:
        parser.error("--concurrency must be 1..64 (the sink's limit)")
    return args


async def run(args: argparse.Namespace) -> None:
    settings = load_settings()
    servers = await bootstrap_servers(settings)
    port = free_port()
    base, url = f"http://127.0.0.1:{port}", f"http://127.0.0.1:{port}/hooks/{PIPELINE_ID}"
    config = sink_config(url, args.concurrency)
    values = rows(args.records)
    extra = {} if args.queue_rows is None else {
        "DASHPIPE_DELIVERY_QUEUE_ROWS": str(args.queue_rows)}
    with tempfile.TemporaryDirectory(prefix="bench-deliver-") as tmp:
        requests = Path(tmp) / "requests.jsonl"
        request_file(values, config, requests)
        async with scratch_prefix(servers, settings, "deliver") as prefix:
            names = TopicNames.from_prefix(prefix)
            await write_pipeline(servers, settings, names.pipelines, config)
            filled = await fill(servers, settings.kafka, names.transformed, values)
            log.info("filled %s with %d rows at %.0f records/s", names.transformed,
                     len(values), filled)
            with child("receiver", bench_script("bare.py", "receiver", "--port",
                                                str(port))) as proc:
                await proc.wait_for_output("listening on")
                async with aiohttp.ClientSession() as http, \
                        topic_counter(servers, settings, names.retry) as parked, \
                        topic_counter(servers, settings, names.dlq) as dead:
                    receiver = Receiver(http, base, proc)
                    await bare_side(receiver, url, requests, args, "warm-up")
                    ratios = []
                    for round_ in range(1, args.rounds + 1):
                        before = await bare_side(receiver, url, requests, args, "before")
                        await settle()
                        await receiver.reset()
                        # each round a new consumer group: it reads the whole backlog again
                        env = child_env(servers, prefix, **extra,
                                        DASHPIPE_KAFKA_GROUP_PREFIX=f"{prefix}-r{round_}")
                        with child("deliver", dashpipe_command("run", "deliver", "--log-level",
                                                               args.log_level), env) as deliver:
                            ours = await measure(receiver, deliver, args.records,
                                                 args.max_seconds,
                                                 args.profile if round_ == 1 else None,
                                                 args.profile_seconds)
                            retry_records, dead_letters = await parked(), await dead()
                        log.info("ours: %.0f rows/s", ours.rate)
                        after = await bare_side(receiver, url, requests, args, "after",
                                                args.profile.with_suffix(".bare.txt")
                                                if args.profile and round_ == 1 else None)
                        if dead_letters:
                            raise RuntimeError(f"the deliver role wrote {dead_letters} dead "
                                               "letters")
                        ratios.append(report(args, ours, before, after, retry_records, filled,
                                             round_))
    if len(ratios) > 1:
        print(f"deliver: median ratio {statistics.median(ratios):.3f} over {len(ratios)} "
              "rounds (each: bare, ours, bare; goal >= 0.8)", flush=True)


def report(args: argparse.Namespace, ours: Sample, before: Sample, after: Sample,
           retry_records: int, filled: float, round_: int) -> float:
    duplicates = ours.requests - ours.distinct
    base_rate = (before.rate + after.rate) / 2
    ratio = ours.rate / base_rate
    partial = "" if ours.complete else f" (INCOMPLETE: {ours.requests:,} of {args.records:,} " \
        f"rows within --max-seconds {args.max_seconds:g})"
    print(describe("deliver: ours", ours) + f"{partial}; {duplicates} duplicate requests, "
          f"{retry_records:,} records parked in the retry topic", flush=True)
    print(describe("deliver: bare before", before), flush=True)
    print(describe("deliver: bare after", after), flush=True)
    print(f"deliver: ours {ours.rate:,.0f} rows/s, bare aiohttp client {base_rate:,.0f} rows/s "
          f"(mean of before/after), ratio {ratio:.3f} (goal >= 0.8), concurrency "
          f"{args.concurrency}, {args.records:,} rows", flush=True)
    record("deliver", unit="rows/s", ours=round(ours.rate), baseline=round(base_rate),
           records=args.records, concurrency=args.concurrency, seconds=round(ours.seconds, 3),
           baseline_rounds=[round(before.rate), round(after.rate)],
           ours_cpu_s_per_1k=round(ours.cpu_s_per_1k, 4),
           ours_cpu_share=round(ours.cpu_s / ours.window_s, 2),
           baseline_cpu_s_per_1k=round((before.cpu_s_per_1k + after.cpu_s_per_1k) / 2, 4),
           receiver_share_ours=round(ours.receiver_share, 2),
           receiver_share_baseline=round(max(before.receiver_share, after.receiver_share), 2),
           complete=ours.complete, delivered=min(ours.requests, args.records),
           duplicates=duplicates, parked=retry_records, queue_rows=args.queue_rows,
           fill_rate=round(filled), round=round_, quick=args.quick)
    return ratio


def main(argv: list[str] | None = None) -> None:
    setup_logging()
    args = parse_args(argv)
    try:
        asyncio.run(run(args))
    except (RuntimeError, DashpipeError, KafkaError, aiohttp.ClientError) as exc:
        print(f"bench_deliver: error: {type(exc).__name__}: {exc}", file=sys.stderr)
        raise SystemExit(1) from None


if __name__ == "__main__":
    main()
