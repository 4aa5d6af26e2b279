"""Helpers shared by the benchmarks: the broker, scratch topics, Kafka's Java tools, results.

Every benchmark compares our path with a Kafka tool measured in the same run, on the same
machine, against the same broker: only the ratio between the two is meant to be compared
across runs.
"""

from __future__ import annotations

import asyncio
import logging
import os
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
from aiokafka.admin import NewTopic

from dashpipe import kafka
from dashpipe.errors import ConfigError, StackError
from dashpipe.settings import Settings
from dashpipe.stack import endpoints, wait_for_kafka
from dashpipe.stack.kafka import JAVA_HINT, classpath, need
from dashpipe.topics import TopicNames, catalogue

log = logging.getLogger("bench")

BENCH_DIR = Path(__file__).resolve().parent
JVM_OPTIONS = ["-Xmx256m", "-XX:+UseG1GC", "-Djava.awt.headless=true"]


def setup_logging() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s",
                        datefmt="%H:%M:%S")
    logging.getLogger("aiokafka").setLevel(logging.WARNING)


async def bootstrap_servers(settings: Settings) -> str:
    """The broker to measure against; exits 2 with a one-line hint when it is not up."""
    try:
        servers = endpoints(settings).bootstrap_servers
        await wait_for_kafka(servers, timeout=5.0)
    except (ConfigError, StackError) as exc:
        reason = str(exc).splitlines()[0]
        hint = "" if "dashpipe up" in reason else "; run `dashpipe up` first"
        print(f"bench: Kafka is not reachable: {reason}{hint}", file=sys.stderr)
        raise SystemExit(2) from None
    return servers


def unique(kind: str) -> str:
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S")
    return f"bench-{kind}-{stamp}-{uuid.uuid4().hex[:6]}"


@asynccontextmanager
async def scratch_topic(servers: str, settings: Settings, kind: str) -> AsyncIterator[str]:
    """A fresh topic shaped like the Bronze topic (partitions, config); deleted afterwards."""
    raw = TopicNames.from_prefix(settings.topics.prefix).raw
    spec = next(s for s in catalogue(settings.topics) if s.name == raw)
    name = f"{settings.topics.prefix}.{unique(kind)}"
    async with kafka.started(kafka.admin(servers, settings.kafka)) as admin:
        resp = await admin.create_topics([NewTopic(name, spec.partitions,
                                                   spec.replication_factor,
                                                   topic_configs=spec.config)])
        for err in resp.to_object()["topic_errors"]:
            if err["error_code"] != 0:
                raise RuntimeError(f"creating topic {name}: {err['error_message']}")
        await _wait_for_leaders(admin, name)
        log.info("created topic %s (%d partitions, like %s)", name, spec.partitions, raw)
        try:
            yield name
        finally:
            await admin.delete_topics([name])
            log.info("deleted topic %s", name)


async def _wait_for_leaders(admin: Any, topic: str, timeout: float = 15.0) -> None:
    """Wait until every partition of a new topic has a leader, so no send meets a retry."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        meta = (await admin.describe_topics([topic]))[0]
        parts = meta["partitions"]
        if meta["error_code"] == 0 and parts and all(
                p["error_code"] == 0 and p["leader"] >= 0 for p in parts):
            return
        await asyncio.sleep(0.1)
    raise RuntimeError(f"topic {topic} has partitions without a leader after {timeout:.0f}s")


async def java_tool(settings: Settings, main_class: str, *args: str,
                    timeout: float = 900.0) -> str:
    """Run a Kafka tool class on the broker's jars; returns its stdout, raises on failure."""
    java = need("java", JAVA_HINT)
    cmd = [java, *JVM_OPTIONS, "-cp", classpath(settings.stack), main_class, *args]
    log.info("running %s %s", main_class.rsplit(".", 1)[-1], " ".join(args))
    proc = await asyncio.create_subprocess_exec(
        *cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        out, err = await asyncio.wait_for(proc.communicate(), timeout)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise RuntimeError(f"{main_class} did not finish within {timeout:.0f}s") from None
    if proc.returncode != 0:
        tail = (out + err).decode(errors="replace")[-2000:]
        raise RuntimeError(f"{main_class} exited with {proc.returncode}:\n{tail}")
    return out.decode(errors="replace")


def _commit() -> str | None:
    done = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=BENCH_DIR,
                          capture_output=True, text=True, check=False)
    return done.stdout.strip() or None


def record(name: str, **figures: Any) -> float:
    """Print one human line and append one JSON line; `ours`/`baseline` are records/s.

    Returns the ratio ours / baseline.
    """
    ratio = float(figures["ours"]) / float(figures["baseline"])
    extras = " ".join(f"{k}={v}" for k, v in figures.items() if k not in ("ours", "baseline"))
    print(f"{name}: ours {figures['ours']:,.0f} rec/s, baseline {figures['baseline']:,.0f} "
          f"rec/s, ratio {ratio:.3f}  ({extras})", flush=True)
    line = {"ts": datetime.now(UTC).isoformat(timespec="seconds"), "bench": name,
            "commit": _commit(), "cores": os.cpu_count(), "figures": figures,
            "ratio": round(ratio, 4)}
    path = Path(os.environ.get("DASHPIPE_BENCH_RESULTS") or BENCH_DIR / "results.jsonl")
    with path.open("ab") as out:
        out.write(orjson.dumps(line) + b"\n")
    return ratio
