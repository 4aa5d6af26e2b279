"""The persist side of `bench_peers.py`: `dashpipe run persist` against Quix Streams'
`PostgreSQLSink` (`bench/peers/persist_quix.py`), each into `pipeline_data` made by dashpipe's
migration in its own scratch schema, from the same transformed records on its own topic prefix.
"""

from __future__ import annotations

import argparse
import asyncio
import time
import uuid
from urllib.parse import unquote, urlsplit

from aiokafka.errors import KafkaError
from bench_persist import (
    BATCH_ROWS,
    connect,
    digest,
    months,
    register,
    scratch_schema,
    transformed_values,
)
from bench_persist import fill as fill_transformed
from harness import (
    Child,
    check_database,
    child,
    child_env,
    cpu_seconds,
    dashpipe_command,
    database_url,
    record,
    scratch_prefix,
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
    peer_child,
    peer_name,
    unavailable,
    why,
)

from agents.persist.persister import to_row
from dashpipe import db, kafka
from dashpipe.settings import Settings
from dashpipe.topics import TopicNames


async def persist(args: argparse.Namespace, settings: Settings, servers: str,
                  env: PeerEnv) -> None:
    url = database_url(settings)
    await check_database(url)
    values = transformed_values(args.records)
    tag = uuid.uuid4().hex[:8]
    ours, digest, hyper = await persist_side(args, settings, servers, url, f"bench_peers_{tag}_o",
                                             values, None)
    storage = "TimescaleDB hypertable" if hyper else "plain PostgreSQL partitions"
    parts = [f"dashpipe {ours.rate:,.0f} rows/s ({ours.cpu_us:.1f} CPU us per row)"]
    peer = "quixstreams-postgresql"
    if (reason := env.reason(peer)) is None:
        try:
            theirs, their_digest, _ = await persist_side(
                args, settings, servers, url, f"bench_peers_{tag}_q", values, env)
            if their_digest != digest:
                reason = f"stored other rows than ours (md5 {their_digest} against {digest})"
        except (RuntimeError, KafkaError, OSError) as exc:
            reason = why(exc)
    if reason is not None:
        unavailable(peer, reason)
        parts.append(f"{LABEL[peer]} unavailable")
    else:
        ratio = record(f"peers-persist-{peer}", unit="rows/s", ours=round(ours.rate),
                       baseline=round(theirs.rate), peer=peer_name(env, peer),
                       records=args.records, storage=storage,
                       ours_cpu_us_per_row=round(ours.cpu_us, 1),
                       peer_cpu_us_per_row=round(theirs.cpu_us, 1), quick=args.quick)
        parts.append(f"{peer_name(env, peer)} {theirs.rate:,.0f} rows/s ({theirs.cpu_us:.1f} "
                     f"CPU us per row), ratio {ratio:.2f}; identical rows (md5 {digest})")
    print(f"peers persist ({args.records:,} rows into {storage}): " + "; ".join(parts),
          flush=True)


def pg_env(url: str, schema: str) -> dict[str, str]:
    """The database URL as the parameters psycopg2's connect takes."""
    u = urlsplit(url)
    return {"PEER_PG_HOST": u.hostname or "127.0.0.1", "PEER_PG_PORT": str(u.port or 5432),
            "PEER_PG_DB": unquote(u.path.lstrip("/")), "PEER_PG_USER": unquote(u.username or ""),
            "PEER_PG_PASSWORD": unquote(u.password or ""), "PEER_PG_SCHEMA": schema}


async def persist_side(args: argparse.Namespace, settings: Settings, servers: str, url: str,
                       schema: str, values: list[tuple[bytes, bytes, int]],
                       env: PeerEnv | None) -> tuple[Rate, str, bool]:
    """Ours (`env` None) or the Quix sink: (rate, md5 of the stored rows, hypertable?)."""
    async with scratch_prefix(servers, settings, "peers-persist") as prefix, \
            scratch_schema(url, schema) as hyper, \
            kafka.started(kafka.admin(servers, settings.kafka)) as admin:
        names = TopicNames.from_prefix(prefix)
        conn = await connect(url, schema)
        try:
            if env is None:
                await register(settings, servers, prefix)
                group = f"{prefix}-persist"
                cmd = dashpipe_command("run", "persist", "--log-level", args.log_level)
                start = child("persist", cmd, child_env(
                    servers, prefix, DASHPIPE_DATABASE_URL=url,
                    DASHPIPE_DATABASE_SCHEMA_NAME=schema))
            else:
                if not hyper:  # the role makes a month's partition on its first row of it
                    await db.Partitions().ensure(conn, months([to_row(v) for _, v, _ in values]))
                group = f"{prefix}-app-quix"
                start = peer_child(env, "quix-persist", [str(PEERS / "persist_quix.py")], {
                    "PEER_BROKERS": servers, "PEER_IN": names.transformed, "PEER_GROUP": group,
                    "PEER_BATCH_ROWS": str(BATCH_ROWS), **pg_env(url, schema)})
            await fill_transformed(servers, settings, names.transformed, values)

            async def stored() -> int:
                return int(await conn.fetchval("SELECT count(*) FROM pipeline_data"))

            async def committed() -> int:
                offsets = await admin.list_consumer_group_offsets(group)
                return sum(max(meta.offset, 0) for tp, meta in offsets.items()
                           if tp.topic == names.transformed)

            with start as proc:
                rate = await stored_rate(proc, stored, committed, len(values))
        finally:
            await conn.close()
        side = await digest(url, schema, len(values), hyper)
    return rate, side.digest, hyper


async def stored_rate(proc: Child, stored: Counter, committed: Counter, expected: int) -> Rate:
    """From the first stored row until the group committed all `expected` offsets."""
    deadline = time.monotonic() + START_LIMIT_S
    while (first := await stored()) == 0:
        proc.check_alive()
        if time.monotonic() > deadline:
            raise RuntimeError(f"{proc.name}: no stored row within {START_LIMIT_S:.0f}s:\n"
                               f"{proc.output()}")
        await asyncio.sleep(0.02)
    start, cpu = time.perf_counter(), cpu_seconds(proc.pid)
    seen, last_change = 0, time.monotonic()
    while seen < expected:
        await asyncio.sleep(POLL_S)
        if (now := await committed()) != seen:
            seen, last_change = now, time.monotonic()
        elif time.monotonic() - last_change > IDLE_LIMIT_S:
            raise RuntimeError(f"{proc.name}: the group committed {seen} of {expected} offsets "
                               f"and none for {IDLE_LIMIT_S:.0f}s:\n{proc.output()}")
        proc.check_alive()
    elapsed, cpu_end = time.perf_counter() - start, cpu_seconds(proc.pid)
    return Rate(rows=expected - first, seconds=elapsed, cpu_s=cpu_end - cpu)
