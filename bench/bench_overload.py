"""Webhooks at 10x the sustainable load: the web process's own overload behaviour.

One `dashpipe run web` in a subprocess (as `bench_webhook.py` runs it: a fresh topic prefix,
signed ~700-byte JSON bodies, `x-webhook-signature`), three realtime pipelines of rate limit
1,000,000/min, one per phase, so a pipeline's rate limit (429) is never what limits: this
measures the server's admission control (`DASHPIPE_WEB_WEBHOOKS_IN_FLIGHT`), not the limiter.

- 1x: `wrk -t2 -c50` (the webhook benchmark's load) for `--seconds`: the sustainable rate
  (every answer must be 2xx), its latency, the web process's peak RSS.
- 10x: `wrk -t2 -c500`, ten times the connections, for `--seconds`. wrk is a closed loop: each
  connection sends its next request as soon as it has an answer, 503 or not, and ignores
  `Retry-After` (the worst kind of sender). Counted: every status, 503/429 without
  `Retry-After`, socket errors; the goodput (2xx/s) against the 1x rate (goal >= 0.8); the
  offered rate (answers/s of any status); the peak RSS.
- recovery: the moment the 10x load stops, the 1x load again for `--recovery` seconds; the
  recovery time is from the end of the 10x load to the first probe request that starts 20 in
  a row answered 2xx within the 1x probe's p99.

A probe (one aiohttp connection, one request at a time, from this process) runs through every
phase: its latencies per status are the "fast 503" figures (wrk's own percentiles mix the
statuses). Bronze must be intact: every ingest id a 2xx answered (wrk's Lua collects them from
the bodies) is in the raw topic exactly once (`dashpipe-ingest-id`); the topic may hold more
(the probe's, and requests in flight when wrk stopped). Peak RSS is the kernel's VmHWM of the
web process, reset (`/proc/<pid>/clear_refs`) before each phase.

Needs `wrk` (Debian/Ubuntu: `apt-get install -y wrk`); without it the script exits 2.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import math
import secrets
import shutil
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import orjson
from bare import document
from bench_webhook import WRK_HINT, failures, probe
from harness import (
    bootstrap_servers,
    child,
    child_env,
    dashpipe_command,
    free_port,
    record,
    scratch_prefix,
    setup_logging,
    wait_http,
)

from dashpipe import kafka
from dashpipe.settings import Settings, load_settings
from dashpipe.signatures import ORIGINAL_HEADER, sign_original
from dashpipe.topics import TopicNames
from schemas.headers import Header

log = logging.getLogger("bench.overload")

SECRET = "bench-secret"
THREADS, CONNECTIONS, FACTOR = 2, 50, 10
PHASES = ("1x", "10x", "recovery")
STREAK = 20  # probe answers in a row at 1x latency that count as recovered

LUA = """\
wrk.method = "POST"
wrk.body = [==[@BODY@]==]
wrk.headers["Content-Type"] = "application/json"
wrk.headers["@HEADER@"] = "@SIGNATURE@"

local threads = {}

function setup(thread)
  table.insert(threads, thread)
end

function init(args)
  statuses = {}
  ids = {}
  bare = 0
end

function response(status, headers, body)
  statuses[status] = (statuses[status] or 0) + 1
  if status >= 200 and status < 300 then
    ids[#ids + 1] = string.match(body, '"ingest_id":"(%x+)"') or "?"
  elseif (status == 429 or status == 503) and headers["Retry-After"] == nil then
    bare = bare + 1
  end
end

function done(summary, latency, requests)
  local out = io.open("@IDS@", "w")
  local counts, no_retry = {}, 0
  for _, t in ipairs(threads) do
    for _, id in ipairs(t:get("ids")) do out:write(id, "\\n") end
    for s, n in pairs(t:get("statuses")) do counts[s] = (counts[s] or 0) + n end
    no_retry = no_retry + t:get("bare")
  end
  out:close()
  local parts = {}
  for s, n in pairs(counts) do parts[#parts + 1] = string.format('"%d": %d', s, n) end
  local e = summary.errors
  io.write(string.format(
    'WRK_JSON {"requests": %d, "duration_us": %d, "socket_errors": %d, "p50_us": %d, ' ..
    '"p99_us": %d, "max_us": %d, "no_retry_after": %d, "statuses": {%s}}\\n',
    summary.requests, summary.duration, e.connect + e.read + e.write + e.timeout,
    latency:percentile(50), latency:percentile(99), latency.max, no_retry,
    table.concat(parts, ", ")))
end
"""


@dataclass
class Phase:
    name: str
    connections: int
    seconds: float = 0.0
    statuses: Counter[int] = field(default_factory=Counter)
    socket_errors: int = 0
    no_retry_after: int = 0
    p50_ms: float = 0.0
    p99_ms: float = 0.0
    max_ms: float = 0.0
    peak_rss_mb: float = 0.0
    ids: list[str] = field(default_factory=list)
    ended: float = 0.0  # time.monotonic() when wrk finished

    @property
    def ok(self) -> int:
        return sum(n for s, n in self.statuses.items() if 200 <= s < 300)

    @property
    def goodput(self) -> float:
        return self.ok / self.seconds

    @property
    def offered(self) -> float:
        return sum(self.statuses.values()) / self.seconds


class Probe:
    """One request at a time: (sent at, status, latency s) of each."""

    def __init__(self, body: bytes, headers: dict[str, str]) -> None:
        self.body, self.headers = body, headers
        self.samples: list[tuple[float, int, float]] = []
        self.url = ""
        self.stop = asyncio.Event()

    async def run(self) -> None:
        timeout = aiohttp.ClientTimeout(total=15)
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=1),
                                         timeout=timeout) as http:
            while not self.stop.is_set():
                sent = time.monotonic()
                try:
                    async with http.post(self.url, data=self.body, headers=self.headers) as r:
                        await r.read()
                        status = r.status
                except (aiohttp.ClientError, TimeoutError):
                    status = 0
                self.samples.append((sent, status, time.monotonic() - sent))

    def between(self, start: float, end: float) -> list[tuple[float, int, float]]:
        return [s for s in self.samples if start <= s[0] < end]


def percentile(values: list[float], p: float) -> float:
    """Nearest rank; nan for no values."""
    if not values:
        return math.nan
    ordered = sorted(values)
    return ordered[min(len(ordered), max(1, math.ceil(p / 100 * len(ordered)))) - 1]


def reset_peak(pid: int) -> bool:
    """Reset the kernel's peak RSS of `pid` (VmHWM); False when not allowed."""
    try:
        Path(f"/proc/{pid}/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return math.nan


async def wrk(phase: Phase, url: str, script: Path, seconds: int, pid: int) -> Phase:
    reset_peak(pid)
    cmd = ["wrk", f"-t{THREADS}", f"-c{phase.connections}", f"-d{seconds}s", "--timeout",
           "10s", "-s", str(script), url]
    proc = await asyncio.create_subprocess_exec(*cmd, stdout=asyncio.subprocess.PIPE,
                                                stderr=asyncio.subprocess.STDOUT)
    try:
        out, _ = await asyncio.wait_for(proc.communicate(), seconds + 60)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    phase.ended = time.monotonic()
    phase.peak_rss_mb = peak_rss_mb(pid)
    text = out.decode(errors="replace")
    found = [line for line in text.splitlines() if line.startswith("WRK_JSON ")]
    if proc.returncode != 0 or not found:
        raise RuntimeError(f"wrk exited with {proc.returncode}:\n{text[-2000:]}")
    s = orjson.loads(found[-1].removeprefix("WRK_JSON "))
    phase.seconds = s["duration_us"] / 1e6
    phase.statuses = Counter({int(k): v for k, v in s["statuses"].items()})
    phase.socket_errors, phase.no_retry_after = s["socket_errors"], s["no_retry_after"]
    phase.p50_ms, phase.p99_ms = s["p50_us"] / 1000, s["p99_us"] / 1000
    phase.max_ms = s["max_us"] / 1000
    return phase


async def create_pipelines(base: str, token: str) -> None:
    async with aiohttp.ClientSession() as http:
        for name in PHASES:
            body = {"id": f"bench-{name}", "team_id": "bench", "name": name,
                    "type": "realtime", "source_type": "webhook",
                    "source_config": {"webhook_secret": SECRET},
                    "rate_limit_per_minute": 1_000_000}
            async with http.post(f"{base}/api/pipelines", json=body,
                                 headers={"Authorization": f"Bearer {token}"}) as resp:
                if resp.status not in (200, 201):
                    raise RuntimeError(f"creating pipeline {name}: HTTP {resp.status} "
                                       f"{(await resp.text())[:500]}")


async def bronze_counts(servers: str, settings: Settings, topic: str, wanted: set[str]
                        ) -> tuple[Counter[str], int]:
    """How often each wanted ingest id is in `topic`, and how many records it holds."""
    consumer = kafka.consumer(servers, settings.kafka, group_id=None,
                              isolation_level="read_uncommitted")
    seen: Counter[str] = Counter()
    total = 0
    async with kafka.started(consumer):
        tps = await kafka.partitions(consumer, topic)
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        ends = await consumer.end_offsets(tps)
        deadline = time.monotonic() + 300
        while [tp for tp in tps if await consumer.position(tp) < ends[tp]]:
            if time.monotonic() > deadline:
                raise RuntimeError(f"{topic} not read to its end within 300 s")
            for records in (await consumer.getmany(timeout_ms=500,
                                                   max_records=50_000)).values():
                total += len(records)
                for r in records:
                    for name, value in r.headers:
                        if name == Header.INGEST_ID:
                            ingest_id = value.decode()
                            if ingest_id in wanted:
                                seen[ingest_id] += 1
                            break
    return seen, total


def recovery_seconds(probe: Probe, after: float, until: float, limit_s: float) -> float | None:
    """From `after` to the first probe request that starts STREAK in a row answered 2xx within
    `limit_s`; None when that never happened before `until`."""
    samples = probe.between(after, until)
    for i in range(len(samples) - STREAK + 1):
        if all(200 <= st < 300 and lat <= limit_s for _, st, lat in samples[i:i + STREAK]):
            return max(0.0, samples[i][0] - after)
    return None


def latency_line(samples: list[tuple[float, int, float]]) -> str:
    by: dict[int, list[float]] = {}
    for _, status, lat in samples:
        by.setdefault(status, []).append(lat * 1000)
    return ", ".join(f"{st}: n={len(v)} p50 {percentile(v, 50):.1f} ms p99 "
                     f"{percentile(v, 99):.1f} ms" for st, v in sorted(by.items())) or "none"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--seconds", type=int, default=15, help="wrk run of the 1x and 10x "
                        "phases")
    parser.add_argument("--recovery", type=int, default=10, help="the 1x load after the 10x")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--size", type=int, default=700, help="JSON body bytes")
    parser.add_argument("--in-flight", type=int, default=None, help="the web process's "
                        "DASHPIPE_WEB_WEBHOOKS_IN_FLIGHT (default: its default); a large value "
                        "measures the process without admission control")
    parser.add_argument("--quick", action="store_true", help="smoke run: 5 s phases")
    args = parser.parse_args(argv)
    if args.quick:
        args.seconds, args.recovery, args.warmup = min(args.seconds, 5), 5, 1
    return args


async def run(args: argparse.Namespace) -> None:
    settings = load_settings()
    servers = await bootstrap_servers(settings)
    body = document(1, args.size)
    signature = sign_original(SECRET, body)
    headers = {"Content-Type": "application/json", ORIGINAL_HEADER: signature}
    token = secrets.token_hex(16)
    with tempfile.TemporaryDirectory(prefix="bench-overload-") as tmp:
        async with scratch_prefix(servers, settings, "overload") as prefix:
            port = free_port()
            base = f"http://127.0.0.1:{port}"
            env = child_env(servers, prefix, DASHPIPE_WEB_PORT=str(port),
                            DASHPIPE_ADMIN_TOKEN=token)
            if args.in_flight is not None:
                env["DASHPIPE_WEB_WEBHOOKS_IN_FLIGHT"] = str(args.in_flight)
            with child("web", dashpipe_command("run", "web"), env) as web:
                await wait_http(f"{base}/healthz", web)
                await create_pipelines(base, token)
                phases = {name: Phase(name, CONNECTIONS * (FACTOR if name == "10x" else 1))
                          for name in PHASES}
                scripts = {}
                for name in (*PHASES, "warmup"):
                    scripts[name] = Path(tmp) / f"{name}.lua"
                    scripts[name].write_text(
                        LUA.replace("@BODY@", body.decode()).replace("@HEADER@", ORIGINAL_HEADER)
                        .replace("@SIGNATURE@", signature)
                        .replace("@IDS@", str(Path(tmp) / f"{name}.ids")))
                for name in PHASES:
                    await probe(f"{base}/webhooks/bench-{name}", body, headers)
                spy = Probe(body, headers)
                await wrk(Phase("warmup", CONNECTIONS), f"{base}/webhooks/bench-1x",
                          scripts["warmup"], args.warmup, web.pid)
                probing = asyncio.create_task(spy.run())
                started: dict[str, float] = {}
                try:
                    for name in PHASES:
                        spy.url = f"{base}/webhooks/bench-{name}"
                        started[name] = time.monotonic()
                        seconds = args.recovery if name == "recovery" else args.seconds
                        await wrk(phases[name], spy.url, scripts[name], seconds, web.pid)
                        web.check_alive()
                finally:
                    spy.stop.set()
                    await probing
                for name in PHASES:
                    with contextlib.suppress(FileNotFoundError):
                        phases[name].ids = (Path(tmp) / f"{name}.ids").read_text().split()
                rejections = await failures(base)
            report(args, phases, spy, started, rejections)
            accepted = [i for p in phases.values() for i in p.ids]
            seen, total = await bronze_counts(servers, settings,
                                              TopicNames.from_prefix(prefix).raw,
                                              set(accepted))
    missing = [i for i in accepted if seen[i] == 0]
    twice = [i for i, n in seen.items() if n > 1]
    print(f"overload: Bronze: {len(accepted):,} 2xx ingest ids, {len(missing)} missing, "
          f"{len(twice)} more than once, {len(set(accepted)) - len(accepted)} repeated ids "
          f"in answers; the raw topic holds {total:,} records", flush=True)
    if missing or twice or len(set(accepted)) != len(accepted) or "?" in accepted:
        raise RuntimeError("Bronze is not intact: an acknowledged webhook is missing or "
                           "written twice")


def report(args: argparse.Namespace, phases: dict[str, Phase], spy: Probe,
           started: dict[str, float], rejections: str) -> None:
    one, ten, rec = phases["1x"], phases["10x"], phases["recovery"]
    for p in phases.values():
        print(f"overload {p.name}: -c{p.connections} {p.seconds:.1f}s: statuses "
              f"{dict(sorted(p.statuses.items()))}, 2xx {p.goodput:,.0f}/s, answers "
              f"{p.offered:,.0f}/s, wrk p50 {p.p50_ms:.1f} ms p99 {p.p99_ms:.1f} ms max "
              f"{p.max_ms:.0f} ms, socket errors {p.socket_errors}, 503/429 without "
              f"Retry-After {p.no_retry_after}, peak RSS {p.peak_rss_mb:.1f} MB; probe "
              f"{latency_line(spy.between(started[p.name], p.ended))}", flush=True)
    base_probe = [lat for _, st, lat in spy.between(started["1x"], one.ended)
                  if 200 <= st < 300]
    limit = percentile(base_probe, 99)
    recovered = recovery_seconds(spy, ten.ended, rec.ended, limit)
    bad = {s: n for s, n in ten.statuses.items() if not (200 <= s < 300 or s in (429, 503))}
    took = f"not within {args.recovery} s" if recovered is None else f"{recovered:.2f} s"
    print(f"overload: recovery {took} (to {STREAK} probe answers in a row 2xx within the 1x "
          f"probe p99 {limit * 1000:.1f} ms)", flush=True)
    record("overload", unit="req/s", ours=round(ten.goodput), baseline=round(one.goodput),
           offered_10x=round(ten.offered), statuses_1x=_keyed(one.statuses),
           statuses_10x=_keyed(ten.statuses), statuses_recovery=_keyed(rec.statuses),
           no_retry_after_10x=ten.no_retry_after, socket_errors_10x=ten.socket_errors,
           p50_ms_1x=one.p50_ms, p99_ms_1x=one.p99_ms, p50_ms_10x=ten.p50_ms,
           p99_ms_10x=ten.p99_ms, peak_rss_mb_1x=round(one.peak_rss_mb, 1),
           peak_rss_mb_10x=round(ten.peak_rss_mb, 1),
           recovery_s=None if recovered is None else round(recovered, 2),
           connections_1x=one.connections, connections_10x=ten.connections,
           in_flight=args.in_flight,
           seconds=args.seconds, quick=args.quick)
    print("overload: goal: 10x goodput >= 0.8 of the 1x rate, only 2xx/429/503 with "
          "Retry-After at 10x", flush=True)
    if one.statuses.keys() - {202} or bad or ten.no_retry_after:
        raise RuntimeError(f"unexpected answers: 1x {dict(one.statuses)}, 10x {bad}, "
                           f"{ten.no_retry_after} without Retry-After\n{rejections}")


def _keyed(statuses: Counter[int]) -> dict[str, int]:
    return {str(s): n for s, n in sorted(statuses.items())}


def main(argv: list[str] | None = None) -> None:
    setup_logging()
    args = parse_args(argv)
    if shutil.which("wrk") is None:
        print(WRK_HINT, file=sys.stderr)
        raise SystemExit(2)
    asyncio.run(run(args))


if __name__ == "__main__":
    main()
