"""Live rows (role `web`, `GET /api/pipelines/{id}/events`): latency, fan-out throughput against
a bare aiohttp SSE broadcast server, and memory per connected client.

Setup: a fresh topic prefix; `dashpipe run web` (admin token from `DASHPIPE_ADMIN_TOKEN`, a
free port) and `dashpipe run map` in two subprocesses on it; `bench/bare.py broadcast` in a
third. Two realtime pipelines are created through the API: `bench` (webhook secret, no mapping:
each payload is one row) for the latency, `fanout` for the fan-out (its rows are produced
straight onto the transformed topic, so only the web role is measured there).

(a) Latency: one SSE client on `bench`; signed webhooks (`x-webhook-signature`) are POSTed at
`--rate` (100) per second, each on its own schedule slot (a slow answer never delays the next
one), for `--warmup` then `--seconds` (20; --quick 5). Each payload holds its sequence number
and `time.time_ns()` taken just before its POST; the latency of a row is the client's
`time.time_ns()` when the SSE event carrying it has been read and parsed minus that stamp
(same process, same clock): webhook receiver -> raw topic -> map -> transformed topic -> the
web process's Kafka tail -> SSE. Only rows of the measured seconds count; every one of them
must arrive. Printed: p50 / p90 / p99 / max (goal p99 <= 50 ms), and the POSTs' own p50 / p99.

(b) Fan-out: the same client code connects `N` clients (100, then 900 more for 1,000) to each
server, at most 50 connecting at a time, and waits for every client's first event (`ready`:
ours sends it once the client is subscribed). A burst of `M` rows (1,000 for 100 clients, 500
for 1,000; `--levels`) is then published: ours by producing them to the transformed topic
(header `dashpipe-pipeline-id: fanout`, batch API, as the mapper does); bare by one POST of the
same row bytes, newline-separated, that the bare server puts on every client's queue (one
`asyncio.Queue` and one handler loop per client, writing `event: row\nid: <n>\ndata: <row>`;
ours writes the same event with its position as the id). Deliveries/s = N x M / (from just
before publishing until the last client has its M-th row). M stays at most
`agents.web.push.QUEUE_ROWS` (1,000): ours reads up to 2,000 rows per `getmany` and puts them all on
every subscriber's queue before any handler runs, so a larger burst overflows the queues and
disconnects every client (`event: overflow`), however fast; the run then fails saying so.
The clients count `event: row` markers in the raw stream (no per-event parsing), so they stay
cheap; they all run in this process (uvloop, as the servers), a separate process from both
servers; this process's CPU share and the machine's busy share over each burst are reported,
so a client or machine bottleneck shows. `--rounds` (3) bursts per level, alternately bare
first and ours first; medians. Goal ours / bare >= 0.7.

(c) Memory: VmRSS (/proc/<pid>/status) of the web process idle (after the latency phase, no
SSE client), with 100 and with 1,000 SSE clients connected (before their bursts), and after the
1,000-client bursts; the same for the bare server (idle: before any client). Printed: MB and KB
per client ((RSS with 1,000 - idle) / 1,000), recorded against the bare server's KB per client.

Recorded (`record()`, higher is better everywhere): `push-latency` as 1000 / p99 ms against
the goal's 1000 / 50 (no baseline is measured for it; ratio >= 1 meets the goal, the
milliseconds are in the figures), `push-fanout-<N>` in deliveries/s, and `push-rss` in clients
per MB (ours against the bare server).

`--profile FILE` runs `py-spy record -f raw` on the web process during the first burst of the
last level (and `--profile-bare FILE` on the bare server during its first one). Needs the
broker (`dashpipe up`); without it the script exits 2.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import math
import os
import resource
import secrets
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import orjson
from aiokafka.errors import KafkaError
from bench_webhook import PIPELINE, SECRET, create_pipeline
from harness import (
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
    wait_http,
)
from mode.loop import use as use_loop

from agents.web import push
from dashpipe import kafka
from dashpipe.batcher import Record, partition_for, send_records
from dashpipe.errors import DashpipeError
from dashpipe.settings import load_settings
from dashpipe.signatures import ORIGINAL_HEADER, sign_original
from dashpipe.topics import TopicNames
from schemas.records import SCHEMA_VERSION

log = logging.getLogger("bench.push")

FANOUT, TEAM_ID = "fanout", "bench"
ROW, READY, OVERFLOW = b"event: row\n", b"event: ready\n", b"event: overflow"
CONNECT_CONCURRENCY = 50  # below the servers' listen backlog (aiohttp: 128)
LATENCY_GOAL_MS, FANOUT_GOAL = 50.0, 0.7
BURST_TIMEOUT_S = 120.0
Publish = Callable[[list[bytes]], Awaitable[None]]


# --- SSE clients (the same code against both servers) ---------------------------------------

@dataclass(eq=False)
class Client:
    rows: int = 0  # `event: row` markers seen so far
    target: int = 1 << 62  # rows to reach in the current burst
    done_at: float | None = None
    ready: asyncio.Event = field(default_factory=asyncio.Event)


class Clients:
    """SSE clients of one server; `expect(m)` then `wait()`: until every client has m more
    rows. A client that fails (answer not 200, stream ended, `event: overflow`) fails the run."""

    def __init__(self, name: str, url: str, headers: dict[str, str]) -> None:
        self.name, self.url, self.headers = name, url, headers
        self.clients: list[Client] = []
        self.tasks: list[asyncio.Task[None]] = []
        self.pending = 0
        self.done = asyncio.Event()
        self.failure: str | None = None
        self.http: aiohttp.ClientSession | None = None
        self.slots = asyncio.Semaphore(CONNECT_CONCURRENCY)

    def __len__(self) -> int:
        return len(self.clients)

    async def grow_to(self, n: int, timeout: float = 120.0) -> None:
        """Connect clients until there are `n`, and wait for each one's `ready` event."""
        if self.http is None:
            self.http = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=0),
                timeout=aiohttp.ClientTimeout(total=None, sock_connect=30, sock_read=None))
        new = [Client() for _ in range(n - len(self.clients))]
        self.clients += new
        self.tasks += [asyncio.create_task(self._run(c)) for c in new]
        deadline = time.monotonic() + timeout
        for c in new:
            while not c.ready.is_set():
                self._check()
                if time.monotonic() > deadline:
                    ready = sum(x.ready.is_set() for x in self.clients)
                    raise RuntimeError(f"{self.name}: {ready} of {n} SSE clients ready after "
                                       f"{timeout:.0f}s")
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(c.ready.wait(), 0.5)

    def expect(self, rows: int) -> None:
        self.done.clear()
        self.pending = len(self.clients)
        for c in self.clients:
            c.done_at, c.target = None, c.rows + rows

    async def wait(self, timeout: float) -> float:
        """perf_counter() when the last client got its last row."""
        deadline = time.monotonic() + timeout
        while not self.done.is_set():
            self._check()
            if time.monotonic() > deadline:
                behind = [c.target - c.rows for c in self.clients if c.done_at is None]
                raise RuntimeError(f"{self.name}: {len(behind)} of {len(self.clients)} clients "
                                   f"still miss rows after {timeout:.0f}s (up to "
                                   f"{max(behind)} each)")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.done.wait(), 0.5)
        return max(c.done_at or 0.0 for c in self.clients)

    def _check(self) -> None:
        if self.failure is not None:
            raise RuntimeError(f"{self.name}: an SSE client failed: {self.failure}")

    async def _run(self, c: Client) -> None:
        assert self.http is not None
        resp: aiohttp.ClientResponse | None = None
        try:
            async with self.slots:
                resp = await self.http.get(self.url, headers=self.headers)
                if resp.status != 200:
                    raise RuntimeError(f"GET {self.url}: HTTP {resp.status} "
                                       f"{(await resp.text())[:300]}")
            last = b""  # the stream's last 16 bytes: markers split between chunks
            async for chunk in resp.content.iter_any():
                edge = last + chunk[:16]
                if not c.ready.is_set() and (READY in chunk or READY in edge):
                    c.ready.set()
                # a marker (11 bytes) across the boundary lies in the 10 bytes either side
                n = chunk.count(ROW) + (last[-10:] + chunk[:10]).count(ROW)
                if n:
                    c.rows += n
                    if c.done_at is None and c.rows >= c.target:
                        c.done_at = time.perf_counter()
                        self.pending -= 1
                        if self.pending == 0:
                            self.done.set()
                if OVERFLOW in chunk or OVERFLOW in edge:
                    raise RuntimeError(
                        "the server sent `event: overflow` and disconnected the client (ours: "
                        f"a burst of more than {push.QUEUE_ROWS} rows read in one getmany "
                        "overflows every subscriber's queue before any handler runs)")
                last = (last + chunk[-16:])[-16:]
            raise RuntimeError("the server ended the stream")
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            self.failure = self.failure or f"{type(exc).__name__}: {exc}"
        finally:
            if resp is not None:
                resp.close()

    async def close(self) -> None:
        for task in self.tasks:
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        if self.http is not None:
            await self.http.close()


# --- processes ------------------------------------------------------------------------------

def rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for pid {pid}")


def raise_open_files(needed: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft >= needed:
        return
    if hard != resource.RLIM_INFINITY and hard < needed:
        raise RuntimeError(f"the open-file limit is {soft} (hard {hard}); {needed} are needed "
                           "(ulimit -n)")
    resource.setrlimit(resource.RLIMIT_NOFILE, (needed, hard))
    log.info("raised the open-file limit from %d to %d (the servers inherit it)", soft, needed)


# --- (a) latency ----------------------------------------------------------------------------

def percentile(values: list[float], p: float) -> float:
    """Nearest rank."""
    ordered = sorted(values)
    return ordered[min(len(ordered), max(1, math.ceil(p / 100 * len(ordered)))) - 1]


@dataclass(frozen=True)
class Latency:
    rows: int
    p50_ms: float
    p90_ms: float
    p99_ms: float
    max_ms: float
    post_p50_ms: float
    post_p99_ms: float


async def listen(http: aiohttp.ClientSession, url: str, headers: dict[str, str],
                 arrived: dict[int, float], ready: asyncio.Event) -> None:
    """One SSE client, parsing every event: seq -> latency in ms."""
    async with http.get(url, headers=headers) as resp:
        if resp.status != 200:
            raise RuntimeError(f"GET {url}: HTTP {resp.status} {(await resp.text())[:300]}")
        event = data = b""
        async for line in resp.content:
            if line == b"\n":
                if event == b"row":
                    got = time.time_ns()
                    fields = orjson.loads(data)["fields"]
                    arrived[fields["seq"]] = (got - fields["sent_ns"]) / 1e6
                elif event == b"ready":
                    ready.set()
                elif event == b"overflow":
                    raise RuntimeError("the latency client got `event: overflow`")
                event = data = b""
            elif line.startswith(b"event: "):
                event = line[7:].rstrip(b"\n")
            elif line.startswith(b"data: "):
                data = line[6:].rstrip(b"\n")
    raise RuntimeError("the server ended the latency client's stream")


async def latency(base: str, token: str, rate: float, warmup: float, seconds: float) -> Latency:
    url = f"{base}/webhooks/{PIPELINE}"
    arrived: dict[int, float] = {}
    post_ms: list[float] = []
    refused: list[str] = []
    ready = asyncio.Event()
    timeout = aiohttp.ClientTimeout(total=None, sock_read=None)
    async with aiohttp.ClientSession(timeout=timeout) as http:
        listener = asyncio.create_task(listen(
            http, f"{base}/api/pipelines/{PIPELINE}/events",
            {"Authorization": f"Bearer {token}"}, arrived, ready))

        async def post(seq: int) -> None:
            sent = time.time_ns()
            body = orjson.dumps({"seq": seq, "sent_ns": sent, "region": "eu-west",
                                 "status": "ok", "metrics": {"latency_ms": 12.5,
                                                             "requests": 1042, "errors": 3}})
            headers = {"Content-Type": "application/json",
                       ORIGINAL_HEADER: sign_original(SECRET, body)}
            async with http.post(url, data=body, headers=headers) as resp:
                await resp.read()
                if resp.status != 202:
                    refused.append(f"HTTP {resp.status}")
            post_ms.append((time.time_ns() - sent) / 1e6)

        async def until(what: Callable[[], bool], timeout: float, message: str) -> None:
            deadline = time.monotonic() + timeout
            while not what():
                if listener.done():
                    listener.result()  # raises the listener's error
                    raise RuntimeError("the latency client stopped")
                if refused:
                    raise RuntimeError(f"a webhook POST was refused: {refused[0]}")
                if time.monotonic() > deadline:
                    raise RuntimeError(message)
                await asyncio.sleep(0.05)

        try:
            await until(ready.is_set, 30, "the latency client got no `ready` event in 30s")
            # the first row waits for the map role's group join: not part of any figure
            probe = -1
            await post(probe)
            await until(lambda: probe in arrived, 60,
                        "no webhook row reached the SSE client within 60s (map role?)")
            warm, measured = round(warmup * rate), round(seconds * rate)
            posts: list[asyncio.Task[None]] = []
            start = time.perf_counter()
            for seq in range(warm + measured):
                delay = start + seq / rate - time.perf_counter()
                if delay > 0:
                    await asyncio.sleep(delay)
                posts.append(asyncio.create_task(post(seq)))
            await asyncio.gather(*posts)
            wanted = range(warm, warm + measured)
            await until(lambda: all(s in arrived for s in wanted), 30,
                        f"{sum(s not in arrived for s in wanted)} of {measured} rows never "
                        "reached the SSE client (30s after the last POST)")
        finally:
            listener.cancel()
            await asyncio.gather(listener, return_exceptions=True)
    values = [arrived[s] for s in wanted]
    posts_ms = post_ms[-measured:]
    return Latency(rows=measured, p50_ms=percentile(values, 50), p90_ms=percentile(values, 90),
                   p99_ms=percentile(values, 99), max_ms=max(values),
                   post_p50_ms=percentile(posts_ms, 50), post_p99_ms=percentile(posts_ms, 99))


# --- (b) fan-out ----------------------------------------------------------------------------

@dataclass(frozen=True)
class Burst:
    clients: int
    rows: int
    seconds: float
    server_cpu_s: float
    client_cpu_s: float  # this process (the clients, and ours' producer)
    machine_busy: float  # share of all cores busy (both servers, clients, Kafka, the rest)

    @property
    def rate(self) -> float:
        return self.clients * self.rows / self.seconds

    @property
    def server_us_per_delivery(self) -> float:
        return self.server_cpu_s / (self.clients * self.rows) * 1e6


def rows_for(burst: int, n: int) -> list[bytes]:
    """`n` rows shaped like transformed records (what ours reads from Kafka and sends)."""
    return [orjson.dumps({
        "pipeline_id": FANOUT, "team_id": TEAM_ID, "time": "2026-11-29T04:08:16.123Z",
        "key": f"b{burst}-{i}", "fields": {"n": i, "burst": burst, "value": i * 0.5,
                                           "label": f"row {i} of burst {burst}"},
        "lineage": {"raw_partition": 0, "raw_offset": i, "row_index": 0},
        "mapping_version": 0, "ingest_id": f"b{burst}-{i}",
        "schema_version": SCHEMA_VERSION}) for i in range(n)]


async def burst(clients: Clients, publish: Publish, rows: list[bytes], pid: int,
                profile: Path | None, profile_seconds: float) -> Burst:
    clients.expect(len(rows))
    me = os.getpid()
    with profiler(pid, profile, profile_seconds, clients.name):
        cpu, client_cpu, (busy, total) = cpu_seconds(pid), cpu_seconds(me), machine_busy()
        start = time.perf_counter()
        await publish(rows)
        end = await clients.wait(BURST_TIMEOUT_S)
        cpu_end, client_end, (busy2, total2) = cpu_seconds(pid), cpu_seconds(me), machine_busy()
    return Burst(clients=len(clients), rows=len(rows), seconds=end - start,
                 server_cpu_s=cpu_end - cpu, client_cpu_s=client_end - client_cpu,
                 machine_busy=(busy2 - busy) / max(total2 - total, 1.0))


def kafka_publisher(producer: Any, topic: str, partitions: int) -> Publish:
    headers = [("dashpipe-pipeline-id", FANOUT.encode()), ("dashpipe-team-id", TEAM_ID.encode())]

    async def publish(rows: list[bytes]) -> None:
        out: dict[tuple[str, int], list[Record]] = {}
        for row in rows:
            key = orjson.loads(row)["key"].encode()
            out.setdefault((topic, partition_for(key, partitions)), []).append(
                (key, row, headers, None))
        await send_records(producer, out)

    return publish


def http_publisher(http: aiohttp.ClientSession, url: str) -> Publish:
    async def publish(rows: list[bytes]) -> None:
        async with http.post(url, data=b"\n".join(rows)) as resp:
            if resp.status != 202:
                raise RuntimeError(f"POST {url}: HTTP {resp.status}")

    return publish


@dataclass
class Server:
    name: str
    pid: int
    clients: Clients
    publish: Publish
    profile: Path | None
    rss: dict[str, int] = field(default_factory=dict)  # moment -> KB
    bursts: dict[int, list[Burst]] = field(default_factory=dict)  # clients -> bursts


# --- main -----------------------------------------------------------------------------------

def parse_levels(text: str) -> list[tuple[int, int]]:
    """`100:2000,1000:500` -> [(100, 2000), (1000, 500)]: clients and rows per burst."""
    try:
        levels = [(int(c), int(r)) for c, r in (part.split(":") for part in text.split(","))]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected CLIENTS:ROWS,... got {text!r}") from None
    if any(c < 1 or r < 1 for c, r in levels) or [c for c, _ in levels] != sorted(
            {c for c, _ in levels}):
        raise argparse.ArgumentTypeError("client counts must be positive and increasing")
    return levels


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--seconds", type=float, default=20.0, help="measured latency run")
    parser.add_argument("--warmup", type=float, default=2.0, help="latency warm-up seconds")
    parser.add_argument("--rate", type=float, default=100.0, help="webhook rows per second")
    parser.add_argument("--levels", type=parse_levels, default=parse_levels("100:1000,1000:500"),
                        help="fan-out: CLIENTS:ROWS per burst, increasing client counts "
                             "(clients are added; the last level is the RSS figure)")
    parser.add_argument("--rounds", type=int, default=3, help="bursts per level and server")
    parser.add_argument("--log-level", default="info", choices=["debug", "info", "warn", "error"],
                        help="of the measured role (info: as the Procfile runs it)")
    parser.add_argument("--profile", type=Path, default=None,
                        help="py-spy raw output of the web process, first burst of the last "
                             "level")
    parser.add_argument("--profile-bare", type=Path, default=None,
                        help="the same for the bare server")
    parser.add_argument("--profile-seconds", type=float, default=5.0)
    parser.add_argument("--quick", action="store_true",
                        help="smoke run: 5 s of latency, one burst per level")
    args = parser.parse_args(argv)
    if args.quick:
        args.seconds, args.warmup, args.rounds = min(args.seconds, 5.0), 1.0, 1
    if args.rounds < 1 or args.rate <= 0 or args.seconds <= 0:
        parser.error("--rounds, --rate and --seconds must be positive")
    return args


async def create(base: str, token: str, body: dict[str, Any]) -> None:
    async with aiohttp.ClientSession() as http, http.post(
            f"{base}/api/pipelines", json=body,
            headers={"Authorization": f"Bearer {token}"}) as resp:
        if resp.status not in (200, 201):
            raise RuntimeError(f"creating pipeline {body['id']}: HTTP {resp.status} "
                               f"{(await resp.text())[:500]}")


async def run(args: argparse.Namespace) -> None:
    settings = load_settings()
    servers = await bootstrap_servers(settings)
    most = args.levels[-1][0]
    raise_open_files(2 * most + 1024)  # this process holds both servers' clients
    token = secrets.token_hex(16)
    async with scratch_prefix(servers, settings, "push") as prefix:
        names = TopicNames.from_prefix(prefix)
        port, bare_port = free_port(), free_port()
        base, bare_base = f"http://127.0.0.1:{port}", f"http://127.0.0.1:{bare_port}"
        env = child_env(servers, prefix, DASHPIPE_WEB_PORT=str(port),
                        DASHPIPE_ADMIN_TOKEN=token)
        level = ["--log-level", args.log_level]
        with child("web", dashpipe_command("run", "web", *level), env) as web, \
                child("map", dashpipe_command("run", "map", *level), env) as mapper, \
                child("bare-broadcast", bench_script("bare.py", "broadcast", "--port",
                                                     str(bare_port))) as bare:
            await wait_http(f"{base}/healthz", web)
            await bare.wait_for_output("listening on")
            await create_pipeline(base, token)
            await create(base, token, {"id": FANOUT, "team_id": TEAM_ID, "name": "fan-out",
                                       "type": "realtime", "source_type": "webhook",
                                       "source_config": {"webhook_secret": SECRET}})
            log.info("latency: %.0f webhooks/s for %.0fs (+%.0fs warm-up)", args.rate,
                     args.seconds, args.warmup)
            lat = await latency(base, token, args.rate, args.warmup, args.seconds)
            mapper.check_alive()
            print(f"push latency (webhook POST -> SSE row, {lat.rows:,} rows at "
                  f"{args.rate:.0f}/s): p50 {lat.p50_ms:.1f} ms, p90 {lat.p90_ms:.1f} ms, p99 "
                  f"{lat.p99_ms:.1f} ms, max {lat.max_ms:.1f} ms (goal p99 <= "
                  f"{LATENCY_GOAL_MS:.0f} ms); the POSTs' 202: p50 {lat.post_p50_ms:.1f} ms, "
                  f"p99 {lat.post_p99_ms:.1f} ms", flush=True)
            record("push-latency", unit="1/s (1000 / p99 ms)", ours=round(1000 / lat.p99_ms, 2),
                   baseline=1000 / LATENCY_GOAL_MS, baseline_is="the goal, p99 50 ms",
                   p50_ms=round(lat.p50_ms, 2), p90_ms=round(lat.p90_ms, 2),
                   p99_ms=round(lat.p99_ms, 2), max_ms=round(lat.max_ms, 2),
                   post_p50_ms=round(lat.post_p50_ms, 2), post_p99_ms=round(lat.post_p99_ms, 2),
                   rows=lat.rows, rate=args.rate, quick=args.quick)

            async with kafka.started(kafka.producer(servers, settings.kafka)) as producer, \
                    aiohttp.ClientSession() as http:
                parts = len(await kafka.partitions(producer, names.transformed))
                sides = [
                    Server("ours", web.pid,
                           Clients("ours", f"{base}/api/pipelines/{FANOUT}/events",
                                   {"Authorization": f"Bearer {token}"}),
                           kafka_publisher(producer, names.transformed, parts), args.profile),
                    Server("bare", bare.pid, Clients("bare", f"{bare_base}/events", {}),
                           http_publisher(http, f"{bare_base}/publish"), args.profile_bare)]
                try:
                    await fan_out(args, sides, web)
                finally:
                    for side in sides:
                        await side.clients.close()
    report(args, sides)


async def fan_out(args: argparse.Namespace, sides: list[Server], web: Any) -> None:
    await asyncio.sleep(1.0)
    for side in sides:
        side.rss["idle"] = rss_kb(side.pid)
    number = 0
    for i, (n, m) in enumerate(args.levels):
        last = i == len(args.levels) - 1
        for side in sides:
            await side.clients.grow_to(n)
        await asyncio.sleep(1.0)
        for side in sides:
            side.rss[f"{n} connected"] = rss_kb(side.pid)
        log.info("%d SSE clients connected to each server; RSS ours %d KB, bare %d KB", n,
                 sides[0].rss[f"{n} connected"], sides[1].rss[f"{n} connected"])
        for round_ in range(args.rounds):
            order = sides if round_ % 2 else sides[::-1]  # bare first in the first round
            for side in order:
                number += 1
                profile = side.profile if last and round_ == 0 else None
                b = await burst(side.clients, side.publish, rows_for(number, m), side.pid,
                                profile, args.profile_seconds)
                side.bursts.setdefault(n, []).append(b)
                log.info("%s: %d clients x %d rows in %.2fs: %.0f deliveries/s; server %.1f us "
                         "CPU per delivery, %.0f%% of a core; clients' process %.0f%% of a core; "
                         "machine %.0f%% busy", side.name, n, m, b.seconds, b.rate,
                         b.server_us_per_delivery, 100 * b.server_cpu_s / b.seconds,
                         100 * b.client_cpu_s / b.seconds, 100 * b.machine_busy)
                web.check_alive()
                await asyncio.sleep(0.5)
        if last:
            for side in sides:
                side.rss[f"{n} after bursts"] = rss_kb(side.pid)


def report(args: argparse.Namespace, sides: list[Server]) -> None:
    ours, bare = sides
    for n, m in args.levels:
        o = sorted(ours.bursts[n], key=lambda b: b.rate)[(args.rounds - 1) // 2]
        b = sorted(bare.bursts[n], key=lambda b: b.rate)[(args.rounds - 1) // 2]
        ratio = o.rate / b.rate
        print(f"push fan-out, {n:,} SSE clients x {m:,} rows (median of {args.rounds}): ours "
              f"{o.rate:,.0f} deliveries/s ({o.seconds:.2f}s; server {o.server_us_per_delivery:.1f}"
              f" us CPU per delivery, {o.server_cpu_s / o.seconds:.0%} of a core), bare broadcast "
              f"{b.rate:,.0f} deliveries/s ({b.seconds:.2f}s; {b.server_us_per_delivery:.1f} us, "
              f"{b.server_cpu_s / b.seconds:.0%}); ratio {ratio:.3f} (goal >= {FANOUT_GOAL}); "
              f"the clients' process used {o.client_cpu_s / o.seconds:.0%} / "
              f"{b.client_cpu_s / b.seconds:.0%} of a core, the machine was "
              f"{o.machine_busy:.0%} / {b.machine_busy:.0%} busy", flush=True)
        record(f"push-fanout-{n}", unit="deliveries/s", ours=round(o.rate),
               baseline=round(b.rate), clients=n, rows=m, seconds=round(o.seconds, 3),
               baseline_seconds=round(b.seconds, 3),
               ours_rounds=[round(x.rate) for x in ours.bursts[n]],
               baseline_rounds=[round(x.rate) for x in bare.bursts[n]],
               ours_server_us_per_delivery=round(o.server_us_per_delivery, 2),
               baseline_server_us_per_delivery=round(b.server_us_per_delivery, 2),
               ours_server_cpu_share=round(o.server_cpu_s / o.seconds, 2),
               baseline_server_cpu_share=round(b.server_cpu_s / b.seconds, 2),
               ours_client_cpu_share=round(o.client_cpu_s / o.seconds, 2),
               baseline_client_cpu_share=round(b.client_cpu_s / b.seconds, 2),
               ours_machine_busy=round(o.machine_busy, 2),
               baseline_machine_busy=round(b.machine_busy, 2), quick=args.quick)
    most = args.levels[-1][0]
    per_client = {s.name: (s.rss[f"{most} connected"] - s.rss["idle"]) / most for s in sides}
    for s in sides:
        moments = ", ".join(f"{k} {v / 1024:.1f} MB" for k, v in s.rss.items())
        print(f"push RSS, {s.name}: {moments}; {per_client[s.name]:.1f} KB per connected "
              "client", flush=True)
    record("push-rss", unit="clients/MB", ours=round(1024 / max(per_client["ours"], 0.01), 2),
           baseline=round(1024 / max(per_client["bare"], 0.01), 2),
           ours_kb_per_client=round(per_client["ours"], 1),
           baseline_kb_per_client=round(per_client["bare"], 1),
           ours_rss_mb={k: round(v / 1024, 1) for k, v in ours.rss.items()},
           baseline_rss_mb={k: round(v / 1024, 1) for k, v in bare.rss.items()},
           clients=most, quick=args.quick)


def main(argv: list[str] | None = None) -> None:
    setup_logging()
    args = parse_args(argv)
    use_loop("uvloop")  # the clients run on the loop the servers use
    try:
        asyncio.run(run(args))
    except (RuntimeError, DashpipeError, KafkaError, OSError) as exc:
        print(f"bench_push: error: {type(exc).__name__}: {exc}", file=sys.stderr)
        raise SystemExit(1) from None


if __name__ == "__main__":
    main()
