"""The data API's pool under 100 hammering readers, and what they cost the persist role.

Two sides per round, each on a fresh topic prefix and scratch schema (bench_persist's: the same
transformed records, pipeline, fill and `stored_at` clock): `dashpipe run web` (pool
`DASHPIPE_DATABASE_POOL_MAX_SIZE` 10, the data API's deadlines at their defaults) and
`dashpipe run persist` as two processes, as the Procfile runs them; persist drains the
transformed topic into PostgreSQL.

- baseline: nobody reads; persist's rows/s by the `stored_at` clock.
- ours: 100 readers in this process, each a loop of `GET /api/pipelines/{id}/data` over one day
  of the rows at 5-minute buckets (every tenth read `GET .../recent`, from memory), no pause,
  no back-off on 503, from before persist starts until it has committed every record.

Printed: persist's rows/s on both sides and the ratio (with readers / without; the cost of the
readers for the writer on one database), the readers' status mix, reads/s and latency
percentiles per status. Any status but 200 and 503, a 503 without `Retry-After`, or a read
that outlives its client deadline (acquire + statement deadlines + 10 s) fails the run.
`--rounds` (2; --quick 1): both sides per round, the order alternating; the median kept.

Needs the broker and PostgreSQL (`dashpipe up`); without them the script exits 2.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import math
import secrets
import statistics
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import aiohttp
from bench_persist import (
    PIPELINE_ID,
    checkpoint,
    connect,
    digest,
    fill,
    register,
    scratch_schema,
    transformed_values,
    watch,
)
from harness import (
    bootstrap_servers,
    check_database,
    child,
    child_env,
    dashpipe_command,
    database_url,
    free_port,
    record,
    scratch_prefix,
    setup_logging,
    wait_http,
)

from dashpipe import kafka
from dashpipe.settings import DatabaseSettings, Settings, load_settings
from dashpipe.topics import TopicNames

log = logging.getLogger("bench.pool")

READERS, POOL = 100, 10
DS = DatabaseSettings(url=None)
DEADLINE_S = DS.api_acquire_timeout_seconds + DS.api_statement_timeout_seconds + 10


@dataclass
class Reads:
    answers: list[tuple[str, int, float]] = field(default_factory=list)  # path, status, s
    bad: list[str] = field(default_factory=list)
    seconds: float = 0.0


async def readers(base: str, token: str, query: str, stop: asyncio.Event) -> Reads:
    out = Reads()
    data = f"{base}/api/pipelines/{PIPELINE_ID}/data?{query}"
    recent = f"{base}/api/pipelines/{PIPELINE_ID}/recent?limit=50"
    auth = {"Authorization": f"Bearer {token}"}
    timeout = aiohttp.ClientTimeout(total=DEADLINE_S)

    async def reader(http: aiohttp.ClientSession, n: int) -> None:
        i = n
        while not stop.is_set():
            i += 1
            path, url = ("recent", recent) if i % 10 == 0 else ("data", data)
            start = time.perf_counter()
            try:
                async with http.get(url, headers=auth, timeout=timeout) as r:
                    body = await r.read()
                    status = r.status
                    if status == 503 and not r.headers.get("Retry-After"):
                        out.bad.append(f"503 without Retry-After: {body[:200]!r}")
                    elif status not in (200, 503):
                        out.bad.append(f"{path} {status}: {body[:200]!r}")
            except TimeoutError:
                out.bad.append(f"{path}: no answer within {DEADLINE_S:g} s")
                status = 0
            out.answers.append((path, status, time.perf_counter() - start))

    started = time.perf_counter()
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=READERS)) as http:
        await asyncio.gather(*(reader(http, n) for n in range(READERS)))
    out.seconds = time.perf_counter() - started
    return out


async def side(args: argparse.Namespace, settings: Settings, servers: str, url: str,
               schema: str, values: list[tuple[bytes, bytes, int]], query: str,
               with_readers: bool) -> tuple[float, Reads | None]:
    """One persist run: its rows/s by the stored_at clock (and the readers' answers)."""
    token = secrets.token_hex(16)
    async with scratch_prefix(servers, settings, "pool") as prefix, \
            scratch_schema(url, schema) as hyper, \
            kafka.started(kafka.admin(servers, settings.kafka)) as admin:
        names = TopicNames.from_prefix(prefix)
        await register(settings, servers, prefix)
        await fill(servers, settings, names.transformed, values)
        env = child_env(servers, prefix, DASHPIPE_DATABASE_URL=url,
                        DASHPIPE_DATABASE_SCHEMA_NAME=schema,
                        DASHPIPE_DATABASE_POOL_MAX_SIZE=str(POOL))
        port = free_port()
        base = f"http://127.0.0.1:{port}"
        stop, reading = asyncio.Event(), None
        with child("web", dashpipe_command("run", "web"), {
                **env, "DASHPIPE_WEB_PORT": str(port), "DASHPIPE_ADMIN_TOKEN": token}) as web:
            await wait_http(f"{base}/healthz", web)
            await checkpoint(url)
            if with_readers:
                reading = asyncio.create_task(readers(base, token, query, stop))
            conn = await connect(url, schema)
            try:
                async def stored() -> int:
                    return int(await conn.fetchval("SELECT count(*) FROM pipeline_data"))

                async def committed() -> int:
                    offsets = await admin.list_consumer_group_offsets(f"{prefix}-persist")
                    return sum(max(meta.offset, 0) for tp, meta in offsets.items()
                               if tp.topic == names.transformed)

                with child("persist", dashpipe_command("run", "persist"), env) as persist:
                    await watch(persist, stored, committed, len(values), None, 0)
            finally:
                stop.set()
                reads = await reading if reading is not None else None
                await conn.close()
            web.check_alive()
        result = await digest(url, schema, len(values), hyper)
    return result.rate, reads


def percentile(values: list[float], p: float) -> float:
    if not values:
        return math.nan
    ordered = sorted(values)
    return ordered[min(len(ordered), max(1, math.ceil(p / 100 * len(ordered)))) - 1]


def window(values: list[tuple[bytes, bytes, int]]) -> str:
    """One day of the rows from the first, at 5-minute buckets."""
    first = datetime.fromtimestamp(min(ts for _, _, ts in values) / 1000, UTC)
    start = first.replace(minute=0, second=0, microsecond=0)
    end = start + timedelta(days=1)
    return f"from={start:%Y-%m-%dT%H:%M:%SZ}&to={end:%Y-%m-%dT%H:%M:%SZ}&bucket=5m"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--records", type=int, default=300_000)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--quick", action="store_true", help="smoke run (40k records, 1 round)")
    args = parser.parse_args(argv)
    if args.quick:
        args.records, args.rounds = min(args.records, 40_000), 1
    return args


async def run(args: argparse.Namespace) -> None:
    settings = load_settings()
    servers = await bootstrap_servers(settings)
    url = database_url(settings)
    await check_database(url)
    log.info("making %d transformed records", args.records)
    values = transformed_values(args.records)
    query = window(values)
    tag = uuid.uuid4().hex[:8]
    rates: dict[bool, list[float]] = {False: [], True: []}
    reads: list[Reads] = []
    for round_ in range(args.rounds):
        order = [False, True] if round_ % 2 == 0 else [True, False]
        for with_readers in order:
            rate, got = await side(args, settings, servers, url,
                                   f"bench_pool_{tag}_{int(with_readers)}{round_}", values,
                                   query, with_readers)
            log.info("round %d, %s readers: persist %.0f rows/s", round_ + 1,
                     "with" if with_readers else "without", rate)
            rates[with_readers].append(rate)
            if got is not None:
                reads.append(got)
    answers = [a for r in reads for a in r.answers]
    bad = [b for r in reads for b in r.bad]
    mix = Counter(f"{path} {status}" for path, status, _ in answers)
    seconds = sum(r.seconds for r in reads)
    latency = {key: [lat * 1000 for path, status, lat in answers if f"{path} {status}" == key]
               for key in mix}
    lines = ", ".join(f"{key}: {n} (p50 {percentile(latency[key], 50):.0f} ms, p95 "
                      f"{percentile(latency[key], 95):.0f}, p99 {percentile(latency[key], 99):.0f}"
                      f", max {max(latency[key]):.0f})" for key, n in sorted(mix.items()))
    ours, base = statistics.median(rates[True]), statistics.median(rates[False])
    print(f"pool: persist {ours:,.0f} rows/s with {READERS} readers on a pool of {POOL}, "
          f"{base:,.0f} without; per round with {[round(r) for r in rates[True]]}, without "
          f"{[round(r) for r in rates[False]]}; readers {len(answers) / seconds:,.0f} answers/s: "
          f"{lines}", flush=True)
    record("pool", unit="rows/s", ours=round(ours), baseline=round(base),
           readers=READERS, pool=POOL, records=args.records, rounds=args.rounds,
           statuses={k: v for k, v in sorted(mix.items())},
           reads_per_s=round(len(answers) / seconds),
           data_200_p99_ms=round(percentile(latency.get("data 200", []), 99), 1),
           data_503_p99_ms=round(percentile(latency.get("data 503", []), 99), 1),
           quick=args.quick)
    if bad:
        raise RuntimeError(f"{len(bad)} bad answers, e.g. {bad[:3]}")


def main(argv: list[str] | None = None) -> None:
    setup_logging()
    asyncio.run(run(parse_args(argv)))


if __name__ == "__main__":
    main()
