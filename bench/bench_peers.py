"""dashpipe against the tools a user would pick instead, side by side in one run on this machine.

The peers live in their own virtual environment under the stack's cache folder
(`~/.cache/dashpipe/peers-venv`, pins in `bench/peerlib.py`), never in the project's; each runs
as its own subprocess with that environment's python and a small program in `bench/peers/`.
The persist and webhook sides are in `bench/peers_persist.py` and `bench/peers_web.py`.
Every side, ours included, gets a fresh topic prefix (the whole catalogue, so the same topic
shapes) and its own consumer group; the sides run one after another, never at once.

- mapper: `dashpipe run map` against a Bytewax dataflow (Kafka input -> flat_map -> Kafka
  output), a Quix Streams application (`sdf.apply(expand=True)` + `to_topic`) and a Faust agent
  as Faust's documentation writes one (`async for event in stream`, `await topic.send(...)`
  per row). The raw records are `bench_mapper.fill`'s (the same seed for every side: the same
  one-feature GeoJSON payloads, key and headers); ours maps them with the README's quake mapping
  (`bench_mapper.write_pipeline`), each peer with the same mapping hand-written in Python
  (`bench/peers/quake.py`: the same records, orjson). Figure: rows on the output topic per
  second from the first poll (every 50 ms) that sees any to the one that sees all of them, or
  to the end of `--cap` seconds (the Faust agent needs it); CPU of the subprocess over the same
  window (/proc/<pid>/stat), per row. Afterwards the first 500 records of each output partition
  are read back and compared by key with ours (fields, time, lineage, ingest id's record
  number): a peer whose rows differ is reported unavailable, not compared.
- persist: `dashpipe run persist` against Quix Streams' `PostgreSQLSink` (community sinks),
  both into `pipeline_data` made by dashpipe's migration in a scratch schema of the stack's
  database (so the same table shape: columns, primary key, partitions or hypertable), from the
  same transformed records (`bench_persist.transformed_values`); the sink with a checkpoint
  every 5,000 records (the role's batch), `ON CONFLICT DO NOTHING`, no metadata columns. Figure:
  rows from the first stored one until the side's group committed every offset (both commit
  only what is stored), per second; CPU per row; both tables must hold identical rows (md5).
- webhook: `dashpipe run web` against FastAPI + uvicorn + aiokafka (`bench/peers/web_fastapi.py`:
  the same HMAC check, 202 after `send_and_wait`), each loaded by `bench_webhook`'s wrk script
  (same body, signature, `wrk -t2 -c50`), alternating per round; each side's raw topic must
  gain at least the 2xx answers wrk counted. Figure: requests/s and the server's CPU µs per
  request; the median ratio over `--rounds`.

Printed: one `record()` line per ratio (ours / peer, appended to `bench/results.jsonl`) and one
summary line per side. A peer that cannot be installed or run is reported as
`peer X: unavailable (reason)` and the rest still run; the exit code is 0 unless our side
fails (1), or 2 when the broker, PostgreSQL or wrk is missing. It asserts no goal: the ratios
are for reading.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import shutil
import statistics
import sys
import time
from typing import Any

import orjson
from aiokafka.errors import KafkaError
from bench_mapper import fill, write_pipeline
from harness import (
    Child,
    bootstrap_servers,
    child,
    child_env,
    cpu_seconds,
    dashpipe_command,
    record,
    scratch_prefix,
    setup_logging,
    topic_counter,
)
from peerlib import (
    IDLE_LIMIT_S,
    LABEL,
    PEERS,
    POLL_S,
    START_LIMIT_S,
    Counter,
    PeerEnv,
    Rate,
    ensure,
    peer_child,
    peer_name,
    unavailable,
    why,
)

from dashpipe import kafka
from dashpipe.errors import DashpipeError
from dashpipe.settings import Settings, load_settings
from dashpipe.topics import TopicNames

log = logging.getLogger("bench.peers")

async def throughput(proc: Child, count: Counter, expected: int, cap: float) -> Rate:
    """From the first poll that sees output to the one that sees `expected` rows (or `cap`
    seconds later)."""
    deadline = time.monotonic() + START_LIMIT_S
    while (first := await count()) == 0:
        proc.check_alive()
        if time.monotonic() > deadline:
            raise RuntimeError(f"{proc.name}: no output within {START_LIMIT_S:.0f}s of "
                               f"starting:\n{proc.output()}")
        await asyncio.sleep(POLL_S)
    start, cpu = time.perf_counter(), cpu_seconds(proc.pid)
    seen, last_change = first, time.monotonic()
    while seen < expected and time.perf_counter() - start < cap:
        await asyncio.sleep(POLL_S)
        if (now := await count()) != seen:
            seen, last_change = now, time.monotonic()
        elif time.monotonic() - last_change > IDLE_LIMIT_S:
            raise RuntimeError(f"{proc.name}: {seen} of {expected} rows and none for "
                               f"{IDLE_LIMIT_S:.0f}s:\n{proc.output()}")
        proc.check_alive()
    elapsed, cpu_end = time.perf_counter() - start, cpu_seconds(proc.pid)
    if seen > expected:
        raise RuntimeError(f"{proc.name}: {seen} rows, more than the {expected} expected")
    return Rate(rows=seen - first, seconds=elapsed, cpu_s=cpu_end - cpu,
                capped=seen < expected)


# --- mapper ---------------------------------------------------------------------------------

MAP_PEERS: dict[str, list[str]] = {
    "bytewax": ["-m", "bytewax.run", str(PEERS / "map_bytewax.py") + ":flow"],
    "quixstreams": [str(PEERS / "map_quix.py")],
    "faust": [str(PEERS / "map_faust.py"), "worker", "-l", "warn"],
}


SAMPLE = 500  # records read back from the start of each output partition, to compare


async def sample(servers: str, settings: Settings, topic: str) -> dict[str, Any]:
    """The first records of each partition of `topic` by key, the ingest id cut to its
    record number (its run tag differs between fills): rows of two sides compare equal
    when they mapped the same raw record the same way."""
    consumer = kafka.consumer(servers, settings.kafka, group_id=None,
                              isolation_level="read_uncommitted")
    out: dict[str, Any] = {}
    async with kafka.started(consumer):
        tps = await kafka.partitions(consumer, topic)
        consumer.assign(tps)
        ends = await consumer.end_offsets(tps)
        left = {tp: min(ends[tp], SAMPLE) for tp in tps}
        await consumer.seek_to_beginning(*tps)
        deadline = time.monotonic() + 30.0
        while any(left.values()) and time.monotonic() < deadline:
            for tp, records in (await consumer.getmany(timeout_ms=500)).items():
                for r in records[:left[tp]]:
                    value = orjson.loads(r.value)
                    value["ingest_id"] = str(value.get("ingest_id")).rsplit("-", 1)[-1]
                    out[r.key.decode()] = value
                left[tp] = max(0, left[tp] - len(records))
    return out


def differs(ours: dict[str, Any], theirs: dict[str, Any]) -> str | None:
    """Why a peer's rows are not ours (None when every row both sampled is identical)."""
    common = ours.keys() & theirs.keys()
    if not common:
        return f"none of its first rows ({len(theirs)}) is among ours ({len(ours)})"
    for key in sorted(common):
        if ours[key] != theirs[key]:
            return f"its row {key} is {theirs[key]}, ours {ours[key]}"
    return None


async def map_peer(args: argparse.Namespace, settings: Settings, servers: str, env: PeerEnv,
                   peer: str) -> tuple[Rate, dict[str, Any]]:
    async with scratch_prefix(servers, settings, f"peers-{peer}") as prefix:
        names = TopicNames.from_prefix(prefix)
        await fill(servers, settings.kafka, names.raw, args.records)
        async with topic_counter(servers, settings, names.transformed) as count:
            # `<prefix>-app-...`: scratch_prefix also deletes the topics Faust makes for it
            extra = {"PEER_BROKERS": servers, "PEER_IN": names.raw,
                     "PEER_OUT": names.transformed, "PEER_GROUP": f"{prefix}-app-{peer}"}
            with peer_child(env, peer, MAP_PEERS[peer], extra) as proc:
                rate = await throughput(proc, count, args.records, args.cap)
        return rate, await sample(servers, settings, names.transformed)


async def mapper(args: argparse.Namespace, settings: Settings, servers: str,
                 env: PeerEnv) -> None:
    async with scratch_prefix(servers, settings, "peers-map") as prefix:
        names = TopicNames.from_prefix(prefix)
        await write_pipeline(servers, settings, names.pipelines)
        await fill(servers, settings.kafka, names.raw, args.records)
        async with topic_counter(servers, settings, names.transformed) as count:
            with child("map", dashpipe_command("run", "map", "--log-level", args.log_level),
                       child_env(servers, prefix)) as proc:
                ours = await throughput(proc, count, args.records, float("inf"))
        ours_rows = await sample(servers, settings, names.transformed)
    parts = [f"dashpipe {ours.rate:,.0f} rows/s ({ours.cpu_us:.0f} CPU us per row)"]
    for peer in MAP_PEERS:
        if (reason := env.reason(peer)) is None:
            try:
                theirs, their_rows = await map_peer(args, settings, servers, env, peer)
                compared = ours_rows.keys() & their_rows.keys()
                if (wrong := differs(ours_rows, their_rows)) is not None:
                    reason = f"mapped differently: {wrong}"
            except (RuntimeError, KafkaError, OSError) as exc:
                reason = why(exc)
        if reason is not None:
            unavailable(peer, reason)
            parts.append(f"{LABEL[peer]} unavailable")
            continue
        ratio = record(f"peers-mapper-{peer}", unit="rows/s", ours=round(ours.rate),
                       baseline=round(theirs.rate), peer=peer_name(env, peer),
                       records=args.records, ours_rows=ours.rows, peer_rows=theirs.rows,
                       peer_capped=theirs.capped, ours_cpu_us_per_row=round(ours.cpu_us, 1),
                       peer_cpu_us_per_row=round(theirs.cpu_us, 1),
                       rows_compared=len(compared), quick=args.quick)
        capped = f", {theirs.rows:,} rows in the {args.cap:.0f} s cap" if theirs.capped else ""
        parts.append(f"{peer_name(env, peer)} {theirs.rate:,.0f} rows/s ({theirs.cpu_us:.0f} "
                     f"CPU us per row{capped}, {len(compared):,} sampled rows identical to "
                     f"ours), ratio {ratio:.2f}")
    print(f"peers mapper ({args.records:,} records, one process each): " + "; ".join(parts),
          flush=True)


# --- main -----------------------------------------------------------------------------------

SIDES = ("mapper", "persist", "webhook")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--records", type=int, default=200_000, help="mapper and persist")
    parser.add_argument("--cap", type=float, default=60.0,
                        help="longest measured window of a mapper peer, seconds")
    parser.add_argument("--seconds", type=int, default=20, help="measured wrk run per side")
    parser.add_argument("--warmup", type=int, default=3, help="wrk warm-up per side")
    parser.add_argument("--rounds", type=int, default=3, help="webhook: rounds of both sides")
    parser.add_argument("--sides", default=",".join(SIDES),
                        help=f"comma-separated, of {', '.join(SIDES)}")
    parser.add_argument("--log-level", default="info", choices=["debug", "info", "warn", "error"],
                        help="of our measured roles (info: as the Procfile runs them)")
    parser.add_argument("--quick", action="store_true",
                        help="smoke run: 10k records, 10 s cap, one webhook round of 4 s")
    args = parser.parse_args(argv)
    if args.quick:
        args.records, args.cap = min(args.records, 10_000), min(args.cap, 10.0)
        args.seconds, args.warmup, args.rounds = min(args.seconds, 4), 1, 1
    args.sides = [s.strip() for s in args.sides.split(",") if s.strip()]
    if unknown := set(args.sides) - set(SIDES):
        parser.error(f"unknown sides: {', '.join(sorted(unknown))}")
    if args.records < 10_000:
        parser.error("--records must be at least 10,000 (the first batches are not measured)")
    return args


async def run(args: argparse.Namespace) -> None:
    from peers_persist import persist
    from peers_web import webhook

    settings = load_settings()
    servers = await bootstrap_servers(settings)
    started = time.perf_counter()
    env = await asyncio.to_thread(ensure, settings.stack.cache_dir)
    log.info("peers' environment %s ready in %.1f s: %s", env.python.parent.parent,
             time.perf_counter() - started,
             ", ".join(f"{k} {v}" for k, v in sorted(env.versions.items())) or "nothing")
    if "mapper" in args.sides:
        await mapper(args, settings, servers, env)
    if "persist" in args.sides:
        await persist(args, settings, servers, env)
    if "webhook" in args.sides:
        ratios = await webhook(args, settings, servers, env)
        if len(ratios) > 1:
            print(f"peers webhook: median ratio against FastAPI {statistics.median(ratios):.2f} "
                  f"over {len(ratios)} rounds", flush=True)


def main(argv: list[str] | None = None) -> None:
    setup_logging()
    args = parse_args(argv)
    if "webhook" in args.sides and shutil.which("wrk") is None:
        print("bench: wrk is not installed; install it (Debian/Ubuntu: apt-get install -y wrk)",
              file=sys.stderr)
        raise SystemExit(2)
    try:
        asyncio.run(run(args))
    except (RuntimeError, DashpipeError, KafkaError, OSError) as exc:
        print(f"bench_peers: error: {type(exc).__name__}: {exc}", file=sys.stderr)
        raise SystemExit(1) from None


if __name__ == "__main__":
    main()
