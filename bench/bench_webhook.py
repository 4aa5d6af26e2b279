"""Webhook ingest: requests/s of our receiver against a bare aiohttp handler, under `wrk`.

Ours: `dashpipe run web` in a subprocess on a free port, on a fresh topic prefix, with one
realtime pipeline (rate limit 1,000,000/min); each request is `POST /webhooks/bench` with a
~700-byte JSON body signed with `x-webhook-signature` (hex HMAC-SHA256), checked, written to the
Bronze topic and answered 202 once Kafka acknowledged it. Baseline: `bench/bare.py sink`, an
aiohttp app that reads the body and answers 202, nothing else. Both are loaded by the same
`wrk -t2 -c50` with the same Lua script (method, body, headers), for the same duration, after
a short warm-up. Any non-2xx answer of either side fails the run; afterwards the Bronze topic
must have gained at least as many records as wrk counted completed 2xx requests (it may gain a
few more: requests still in flight when wrk stopped).

Needs `wrk` (Debian/Ubuntu: `apt-get install -y wrk`); without it the script exits 2.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import secrets
import shutil
import statistics
import sys
import tempfile
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import aiohttp
import orjson
from bare import document
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
    topic_counter,
    wait_http,
)

from dashpipe.settings import load_settings
from dashpipe.signatures import ORIGINAL_HEADER, sign_original
from dashpipe.topics import TopicNames

log = logging.getLogger("bench.webhook")

PIPELINE = "bench"
SECRET = "bench-secret"
THREADS, CONNECTIONS = 2, 50
GOAL = 0.7  # of the bare handler (issue 17)
WRK_HINT = "bench: wrk is not installed; install it (Debian/Ubuntu: apt-get install -y wrk)"

LUA = """\
wrk.method = "POST"
wrk.body = [==[{body}]==]
wrk.headers["Content-Type"] = "application/json"
wrk.headers["{header}"] = "{signature}"

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'WRK_JSON {{"requests": %d, "duration_us": %d, "status_errors": %d, "connect": %d, ' ..
    '"read": %d, "write": %d, "timeout": %d, "p50_us": %d, "p99_us": %d}}\\n',
    summary.requests, summary.duration, e.status, e.connect, e.read, e.write, e.timeout,
    latency:percentile(50), latency:percentile(99)))
end
"""


@dataclass(frozen=True)
class Load:
    requests: int  # completed responses, any status
    seconds: float
    status_errors: int  # non-2xx/3xx answers
    socket_errors: int
    p50_ms: float
    p99_ms: float
    server_cpu_s: float = 0.0  # CPU time of the server process during the run
    machine_busy: float = 0.0  # share of all cores busy during the run (wrk, server, Kafka)

    @property
    def cpu_us_per_request(self) -> float:
        return self.server_cpu_s / max(self.requests, 1) * 1e6

    @property
    def rate(self) -> float:
        return self.requests / self.seconds

    @property
    def ok(self) -> int:
        return self.requests - self.status_errors


def servers_cpu(pids: list[int]) -> float:
    """CPU seconds of the server processes and of every process they started (`dashpipe run
    web --processes N` is a parent and N children)."""
    return sum(cpu_seconds(pid) for pid in with_descendants(pids))


def with_descendants(pids: list[int]) -> list[int]:
    parents: dict[int, int] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            text = stat.read_text()
        except OSError:
            continue  # gone meanwhile
        parents[int(stat.parent.name)] = int(text[text.rindex(")") + 2:].split()[1])
    found, todo = [], list(pids)
    while todo:
        pid = todo.pop()
        found.append(pid)
        todo.extend(child for child, parent in parents.items() if parent == pid)
    return found


async def measured(url: str, script: Path, seconds: int, server_pids: list[int]) -> Load:
    """A wrk run, with the servers' CPU time and the machine's busy share over it."""
    cpu, (busy, total) = servers_cpu(server_pids), machine_busy()
    load = await wrk(url, script, seconds)
    busy2, total2 = machine_busy()
    return replace(load, server_cpu_s=servers_cpu(server_pids) - cpu,
                   machine_busy=(busy2 - busy) / max(total2 - total, 1.0))


async def wrk(url: str, script: Path, seconds: int) -> Load:
    cmd = ["wrk", f"-t{THREADS}", f"-c{CONNECTIONS}", f"-d{seconds}s", "--timeout", "10s",
           "-s", str(script), url]
    proc = await asyncio.create_subprocess_exec(*cmd, stdout=asyncio.subprocess.PIPE,
                                                stderr=asyncio.subprocess.STDOUT)
    try:
        out, _ = await asyncio.wait_for(proc.communicate(), seconds + 60)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    text = out.decode(errors="replace")
    found = [line for line in text.splitlines() if line.startswith("WRK_JSON ")]
    if proc.returncode != 0 or not found:
        raise RuntimeError(f"wrk exited with {proc.returncode}:\n{text[-2000:]}")
    s: dict[str, int] = orjson.loads(found[-1].removeprefix("WRK_JSON "))
    return Load(requests=s["requests"], seconds=s["duration_us"] / 1e6,
                status_errors=s["status_errors"],
                socket_errors=s["connect"] + s["read"] + s["write"] + s["timeout"],
                p50_ms=s["p50_us"] / 1000, p99_ms=s["p99_us"] / 1000)


def check(side: str, load: Load) -> None:
    """Fail loudly when a side answered errors or lost connections."""
    if load.requests == 0:
        raise RuntimeError(f"{side}: wrk completed no request")
    if load.status_errors:
        raise RuntimeError(f"{side}: {load.status_errors} of {load.requests} answers were not "
                           "2xx (429 rate limit? 401 signature? 503 Kafka?)")
    if load.socket_errors > load.requests // 1000:
        raise RuntimeError(f"{side}: {load.socket_errors} socket errors for {load.requests} "
                           "requests")


async def create_pipeline(base: str, token: str) -> None:
    body = {"id": PIPELINE, "team_id": "bench", "name": "bench", "type": "realtime",
            "source_type": "webhook", "source_config": {"webhook_secret": SECRET},
            "rate_limit_per_minute": 1_000_000}
    async with aiohttp.ClientSession() as http, http.post(
            f"{base}/api/pipelines", json=body,
            headers={"Authorization": f"Bearer {token}"}) as resp:
        if resp.status != 201 and resp.status != 200:
            raise RuntimeError(f"creating the pipeline: HTTP {resp.status} "
                               f"{(await resp.text())[:500]}")


async def probe(url: str, body: bytes, headers: dict[str, str]) -> None:
    """One request by hand, so a refusal is reported with its answer before any load."""
    async with aiohttp.ClientSession() as http, http.post(url, data=body,
                                                          headers=headers) as resp:
        if resp.status != 202:
            raise RuntimeError(f"POST {url}: HTTP {resp.status} {(await resp.text())[:500]}")


async def failures(base: str) -> str:
    """Our rejection counters from /metrics, to say why a run failed."""
    try:
        async with aiohttp.ClientSession() as http, http.get(f"{base}/metrics") as resp:
            text = await resp.text()
    except aiohttp.ClientError as exc:
        return f"(metrics unavailable: {exc})"
    return "\n".join(line for line in text.splitlines() if "failed_total" in line) or "(none)"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--seconds", type=int, default=20, help="measured wrk run per side")
    parser.add_argument("--warmup", type=int, default=3, help="wrk warm-up per side")
    parser.add_argument("--rounds", type=int, default=3, help="bare then ours, this many times")
    parser.add_argument("--size", type=int, default=700, help="JSON body bytes")
    parser.add_argument("--log-level", default="info", choices=["debug", "info", "warn", "error"],
                        help="of the measured role (info: as the Procfile runs it)")
    parser.add_argument("--processes", type=int, default=1,
                        help="ours: `dashpipe run web --processes N`; the baseline: N bare "
                        "handlers on one port (SO_REUSEPORT)")
    parser.add_argument("--quick", action="store_true", help="smoke run: one round of 5 s")
    parser.add_argument("--profile", type=Path, default=None,
                        help="py-spy raw profiles of our web process (FILE) and of the bare "
                        "handler (FILE with suffix .bare.txt), first round")
    args = parser.parse_args(argv)
    if args.processes < 1:
        parser.error("--processes must be at least 1")
    if args.profile and args.processes > 1:
        parser.error("--profile profiles one process: use it with --processes 1")
    if args.quick:
        args.seconds, args.warmup, args.rounds = min(args.seconds, 5), 1, 1
    return args


async def run(args: argparse.Namespace) -> None:
    settings = load_settings()
    servers = await bootstrap_servers(settings)
    body = document(1, args.size)
    signature = sign_original(SECRET, body)
    headers = {"Content-Type": "application/json", ORIGINAL_HEADER: signature}
    token = secrets.token_hex(16)
    ratios: list[float] = []
    with tempfile.TemporaryDirectory(prefix="bench-webhook-") as tmp:
        script = Path(tmp) / "post.lua"
        script.write_text(LUA.format(body=body.decode(), header=ORIGINAL_HEADER,
                                     signature=signature))
        async with scratch_prefix(servers, settings, "webhook") as prefix:
            raw = TopicNames.from_prefix(prefix).raw
            ours_port, bare_port = free_port(), free_port()
            ours_base = f"http://127.0.0.1:{ours_port}"
            env = child_env(servers, prefix, DASHPIPE_WEB_PORT=str(ours_port),
                            DASHPIPE_ADMIN_TOKEN=token)
            many = ["--processes", str(args.processes)] if args.processes > 1 else []
            bare_cmd = bench_script("bare.py", "sink", "--port", str(bare_port),
                                    *(["--reuse-port"] if args.processes > 1 else []))
            with child("web", dashpipe_command("run", "web", "--log-level", args.log_level,
                                               *many), env) as web, \
                    contextlib.ExitStack() as stack:
                bares = [stack.enter_context(child(f"bare-sink-{n}", bare_cmd))
                         for n in range(args.processes)]
                await wait_http(f"{ours_base}/healthz", web)
                for bare in bares:
                    await bare.wait_for_output("listening on")
                await create_pipeline(ours_base, token)
                ours_url = f"{ours_base}/webhooks/{PIPELINE}"
                bare_url = f"http://127.0.0.1:{bare_port}/webhooks/{PIPELINE}"
                await probe(ours_url, body, headers)
                await probe(bare_url, body, headers)
                async with topic_counter(servers, settings, raw) as count:
                    for round_ in range(1, args.rounds + 1):
                        ratios.append(await one_round(
                            args, script, (bare_url, [b.pid for b in bares]),
                            (ours_url, [web.pid]), ours_base, count, round_, len(body)))
                        web.check_alive()
    if len(ratios) > 1:
        print(f"webhook: median ratio {statistics.median(ratios):.3f} over {len(ratios)} "
              f"rounds, {args.processes} process(es) a side (goal >= {GOAL})")


async def one_round(args: argparse.Namespace, script: Path, bare_side: tuple[str, list[int]],
                    ours_side: tuple[str, list[int]], ours_base: str, count: Any, round_: int,
                    size: int) -> float:
    (bare_url, bare_pids), (ours_url, ours_pids) = bare_side, ours_side
    await wrk(bare_url, script, args.warmup)
    bare_profile = args.profile.with_suffix(".bare.txt") if args.profile else None
    with profiler(bare_pids[0], bare_profile if round_ == 1 else None, args.seconds - 1,
                  "bare handler"):
        base = await measured(bare_url, script, args.seconds, bare_pids)
    check("bare", base)
    await wrk(ours_url, script, args.warmup)
    await asyncio.sleep(1.0)  # warm-up requests still in flight land before the count
    before = await count()
    with profiler(ours_pids[0], args.profile if round_ == 1 else None, args.seconds - 1,
                  "web process"):
        ours = await measured(ours_url, script, args.seconds, ours_pids)
    await asyncio.sleep(1.0)
    written = await count() - before
    try:
        check("ours", ours)
    except RuntimeError as exc:
        raise RuntimeError(f"{exc}\nour rejections:\n{await failures(ours_base)}") from None
    if written < ours.ok:
        raise RuntimeError(f"ours: wrk counted {ours.ok} 2xx answers but the Bronze topic "
                           f"gained only {written} records")
    ratio = record("webhook", unit="req/s", ours=round(ours.rate), baseline=round(base.rate),
                   wrk_2xx=ours.ok, topic_records=written, seconds=args.seconds,
                   connections=CONNECTIONS, threads=THREADS, body_bytes=size,
                   ours_p50_ms=round(ours.p50_ms, 2), ours_p99_ms=round(ours.p99_ms, 2),
                   baseline_p50_ms=round(base.p50_ms, 2), baseline_p99_ms=round(base.p99_ms, 2),
                   ours_cpu_us_per_req=round(ours.cpu_us_per_request),
                   baseline_cpu_us_per_req=round(base.cpu_us_per_request),
                   ours_machine_busy=round(ours.machine_busy, 2),
                   baseline_machine_busy=round(base.machine_busy, 2),
                   ours_socket_errors=ours.socket_errors, processes=args.processes,
                   round=round_, quick=args.quick)
    print(f"webhook: 202s counted by wrk {ours.ok:,}, records the raw topic gained {written:,} "
          f"(+{written - ours.ok} in flight at the end); goal ratio >= {GOAL}", flush=True)
    return ratio


def main(argv: list[str] | None = None) -> None:
    setup_logging()
    args = parse_args(argv)
    if shutil.which("wrk") is None:
        print(WRK_HINT, file=sys.stderr)
        raise SystemExit(2)
    asyncio.run(run(args))


if __name__ == "__main__":
    main()
