"""Helpers shared by the benchmarks: the broker, scratch topics, Kafka's Java tools, results.

Every benchmark compares our path with a Kafka tool measured in the same run, on the same
machine, against the same broker: only the ratio between the two is meant to be compared
across runs.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import orjson
from aiokafka.admin import NewTopic

from dashpipe import kafka
from dashpipe.cli.stack import endpoints, wait_for_kafka
from dashpipe.cli.stack.kafka import JAVA_HINT, classpath, need
from dashpipe.errors import ConfigError, StackError
from dashpipe.settings import Settings, TopicSettings
from dashpipe.topics import TopicNames, catalogue, create_all

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


def record(name: str, *, unit: str = "rec/s", **figures: Any) -> float:
    """Print one human line and append one JSON line; `ours`/`baseline` are in `unit`
    (records/s unless said otherwise; higher is better).

    Returns the ratio ours / baseline.
    """
    ratio = float(figures["ours"]) / float(figures["baseline"])
    extras = " ".join(f"{k}={v}" for k, v in figures.items() if k not in ("ours", "baseline"))
    print(f"{name}: ours {_figure(figures['ours'])} {unit}, baseline "
          f"{_figure(figures['baseline'])} {unit}, ratio {ratio:.3f}  ({extras})", flush=True)
    if unit != "rec/s":
        figures = {**figures, "unit": unit}
    line = {"ts": datetime.now(UTC).isoformat(timespec="seconds"), "bench": name,
            "commit": _commit(), "cores": os.cpu_count(), "figures": figures,
            "ratio": round(ratio, 4)}
    path = Path(os.environ.get("DASHPIPE_BENCH_RESULTS") or BENCH_DIR / "results.jsonl")
    with path.open("ab") as out:
        out.write(orjson.dumps(line) + b"\n")
    return ratio


def _figure(value: Any) -> str:
    """Thousands separated; three significant digits below 100 (latencies, queries/s)."""
    v = float(value)
    return f"{v:,.0f}" if abs(v) >= 100 else f"{v:.3g}"


# --- PostgreSQL: the stack's server, both storages ------------------------------------------

def database_url(settings: Settings) -> str:
    """DASHPIPE_DATABASE_URL, else the local stack's; exits 2 with a hint when neither."""
    try:
        return endpoints(settings).database_url.get_secret_value()
    except ConfigError as exc:
        print(f"bench: PostgreSQL is not configured: {exc}", file=sys.stderr)
        raise SystemExit(2) from None


async def check_database(url: str) -> None:
    """Exits 2 with a one-line hint when PostgreSQL does not answer."""
    try:
        conn = await asyncpg.connect(url, timeout=5)
    except (OSError, TimeoutError, asyncpg.PostgresError) as exc:
        print(f"bench: PostgreSQL is not reachable ({type(exc).__name__}: {exc}); run "
              "`dashpipe up` first", file=sys.stderr)
        raise SystemExit(2) from None
    await conn.close()


async def compression_policy_ran(pool: asyncpg.Pool, schema: str, wait: float = 30.0) -> None:
    """Wait for the first run of a new hypertable's compression policy: TimescaleDB's scheduler
    starts it a few seconds after the policy is added (the next an hour or more later). On an
    empty table it has nothing to do; under a measurement writing rows older than its
    `compress_after` it would compress the very chunks being written."""
    start = time.monotonic()
    while time.monotonic() - start < wait:
        runs = await pool.fetchval(
            "SELECT s.total_runs FROM timescaledb_information.jobs j JOIN "
            "timescaledb_information.job_stats s USING (job_id) WHERE j.proc_name = "
            "'policy_compression' AND j.hypertable_schema = $1", schema)
        if runs:
            log.info("compression policy's first run done after %.1f s", time.monotonic() - start)
            return
        await asyncio.sleep(0.2)
    log.warning("the compression policy of %s has not run within %.0f s; it may run while "
                "measured", schema, wait)


# TimescaleDB's jobs of a schema: its hypertables' policies and its continuous aggregates'
# (which the view lists under the aggregate's own schema)
_JOBS = ("SELECT j.job_id, e.extnamespace::regnamespace::text FROM "
         "timescaledb_information.jobs j, pg_extension e "
         "WHERE e.extname = 'timescaledb' AND j.hypertable_schema = $1")


async def drop_schema(url: str, schema: str) -> None:
    """A scratch schema and everything in it. Its TimescaleDB jobs are deleted first (a
    running one is stopped): a policy running while its hypertable is dropped fails the drop
    with "tuple concurrently deleted", so that is retried too."""
    conn = await asyncpg.connect(url)
    try:
        for attempt in range(5):
            try:
                if await conn.fetchval("SELECT 1 FROM pg_extension "
                                       "WHERE extname = 'timescaledb'"):
                    for job, ext in await conn.fetch(_JOBS, schema):
                        await conn.execute(f'SELECT "{ext}".delete_job($1)', job)
                await conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
                return
            except (asyncpg.InternalServerError, asyncpg.LockNotAvailableError,
                    asyncpg.DeadlockDetectedError) as exc:
                if attempt == 4:
                    raise
                log.info("dropping schema %s: %s; again", schema, exc)
                await asyncio.sleep(0.5 * (attempt + 1))
    finally:
        await conn.close()


# --- processes, ports and scratch topic sets (the benchmarks that run our roles) ------------

def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def dashpipe_command(*args: str) -> list[str]:
    """The `dashpipe` console script's entry point, run by this interpreter (no shim between,
    so the child's pid is the process doing the work)."""
    return [sys.executable, "-m", "dashpipe.cli", *args]


def bench_script(name: str, *args: str) -> list[str]:
    return [sys.executable, str(BENCH_DIR / name), *args]


class Child:
    """A subprocess in its own process group, its output in a temporary log file."""

    def __init__(self, name: str, proc: subprocess.Popen[bytes], log_path: Path) -> None:
        self.name, self.proc, self.log_path = name, proc, log_path

    @property
    def pid(self) -> int:
        return self.proc.pid

    def output(self, tail: int = 3000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-tail:]
        except OSError:
            return ""

    def check_alive(self) -> None:
        code = self.proc.poll()
        if code is not None:
            raise RuntimeError(f"{self.name} exited with {code}:\n{self.output()}")

    async def wait_for_output(self, text: str, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while text not in self.output(tail=1 << 20):
            self.check_alive()
            if time.monotonic() > deadline:
                raise RuntimeError(f"{self.name} did not print {text!r} within {timeout:.0f}s:"
                                   f"\n{self.output()}")
            await asyncio.sleep(0.1)

    def stop(self, grace: float = 5.0) -> None:
        """SIGTERM the child's process group, SIGKILL it after `grace` seconds."""
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(grace)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        with contextlib.suppress(ProcessLookupError):  # leftovers of the group, if any
            os.killpg(self.proc.pid, signal.SIGKILL)


@contextlib.contextmanager
def child(name: str, cmd: list[str], env: Mapping[str, str] | None = None) -> Iterator[Child]:
    """Start `cmd` (cwd: the project) and always stop it and its group on the way out."""
    fd, path = tempfile.mkstemp(prefix=f"bench-{name}-", suffix=".log")
    log_path = Path(path)
    try:
        proc = subprocess.Popen(cmd, cwd=BENCH_DIR.parent, env={**os.environ, **(env or {})},
                                stdin=subprocess.DEVNULL, stdout=fd, stderr=subprocess.STDOUT,
                                start_new_session=True)
    finally:
        os.close(fd)
    running = Child(name, proc, log_path)
    log.info("started %s (pid %d): %s", name, proc.pid, " ".join(cmd[1:]))
    try:
        yield running
    finally:
        running.stop()
        if os.environ.get("DASHPIPE_BENCH_KEEP_LOGS"):
            log.info("%s log kept: %s", name, log_path)
        else:
            log_path.unlink(missing_ok=True)


async def wait_http(url: str, proc: Child, timeout: float = 60.0) -> None:
    """Until `url` answers 2xx; fails early (with its output) when `proc` exits."""
    deadline = time.monotonic() + timeout
    async with aiohttp.ClientSession() as http:
        while True:
            proc.check_alive()
            with contextlib.suppress(aiohttp.ClientError, TimeoutError):
                async with http.get(url, timeout=aiohttp.ClientTimeout(total=2)) as resp:
                    if resp.status < 300:
                        return
            if time.monotonic() > deadline:
                raise RuntimeError(f"{url} did not answer within {timeout:.0f}s:\n"
                                   f"{proc.output()}")
            await asyncio.sleep(0.2)


def cpu_seconds(pid: int, children: bool = False) -> float:
    """utime + stime of a process (all its threads), from /proc/<pid>/stat; `children` adds
    those of its children it has waited for (cutime + cstime)."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rindex(")") + 2:].split()  # after "pid (comm) "
    ticks = sum(int(f) for f in fields[11:15 if children else 13])
    return ticks / os.sysconf("SC_CLK_TCK")


def child_env(servers: str, prefix: str, **extra: str) -> dict[str, str]:
    """The environment of a dashpipe role measured on its own prefix (topics and groups)."""
    return {"DASHPIPE_KAFKA_BOOTSTRAP_SERVERS": servers, "DASHPIPE_TOPIC_PREFIX": prefix,
            "DASHPIPE_KAFKA_GROUP_PREFIX": prefix,
            "DASHPIPE_EGRESS_ALLOW": '["127.0.0.0/8"]',  # the local APIs and receivers
            **extra}


@asynccontextmanager
async def scratch_prefix(servers: str, settings: Settings, kind: str) -> AsyncIterator[str]:
    """A fresh topic prefix with the whole catalogue created (as `dashpipe topics create`
    does); every topic of it deleted afterwards, with the topics faust's leader assignor
    creates for apps on the same group prefix (`<prefix>-app-<roles>-__assignor-__leader`)."""
    prefix = unique(kind)
    ts = TopicSettings(prefix=prefix, partitions=settings.topics.partitions,
                       control_partitions=settings.topics.control_partitions,
                       replication_factor=settings.topics.replication_factor)
    specs = catalogue(ts)
    async with kafka.started(kafka.admin(servers, settings.kafka)) as admin:
        try:
            await create_all(admin, specs)
            for spec in specs:
                await _wait_for_leaders(admin, spec.name)
            log.info("created the topics of prefix %s", prefix)
            yield prefix
        finally:
            existing = set(await admin.list_topics())
            ours = {s.name for s in specs}
            doomed = [t for t in existing if t in ours or t.startswith(f"{prefix}-app-")]
            if doomed:
                await admin.delete_topics(doomed)
            log.info("deleted the topics of prefix %s", prefix)


@asynccontextmanager
async def topic_counter(servers: str, settings: Settings,
                        topic: str) -> AsyncIterator[Callable[[], Awaitable[int]]]:
    """`await count()`: the records in `topic` now, the sum of its partitions' end offsets
    (one consumer kept open, so each call is one ListOffsets request)."""
    consumer = kafka.consumer(servers, settings.kafka, group_id=None,
                              isolation_level="read_uncommitted")
    async with kafka.started(consumer):
        tps = await kafka.partitions(consumer, topic)

        async def count() -> int:
            return sum((await consumer.end_offsets(tps)).values())

        yield count


def machine_busy() -> tuple[float, float]:
    """(busy, total) jiffies of all CPUs since boot, from /proc/stat; the busy share of an
    interval is the difference of two readings."""
    values = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = values[3] + (values[4] if len(values) > 4 else 0)
    return float(sum(values) - idle), float(sum(values))


def record_args(doc: str | None, argv: list[str] | None) -> argparse.Namespace:
    """The flags the Kafka client benchmarks share: records, size, rounds, quick."""
    parser = argparse.ArgumentParser(description=doc.splitlines()[0] if doc else None)
    parser.add_argument("--records", type=int, default=200_000)
    parser.add_argument("--size", type=int, default=700, help="payload bytes per record")
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--quick", action="store_true", help="small smoke run (20k records)")
    args = parser.parse_args(argv)
    if args.quick:
        args.records, args.rounds = min(args.records, 20_000), 1
    return args


@contextlib.contextmanager
def profiler(pid: int, out: Path | None, seconds: float, what: str = "process",
             idle: bool = False) -> Iterator[None]:
    """`py-spy record -f raw` on `pid` for `seconds` (nothing when `out` is None); `idle`
    also samples the time the process waits. Environment: `PYSPY_RATE` samples per second
    (200), `PYSPY_NATIVE=1` adds the C frames."""
    if out is None:
        yield
        return
    spy = shutil.which("py-spy")
    if spy is None:
        raise RuntimeError("--profile needs py-spy (pip install py-spy)")
    cmd = [spy, "record", "-p", str(pid), "-f", "raw", "-o", str(out), "-d",
           str(max(1, round(seconds))), "-r", os.environ.get("PYSPY_RATE", "200"),
           *(["--idle"] * idle),
           *(["--native"] if os.environ.get("PYSPY_NATIVE") else ["--nonblocking"])]
    proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)
    log.info("py-spy (pid %d) profiling the %s for %.0fs into %s", proc.pid, what, seconds, out)
    try:
        yield
    finally:
        try:
            _, err = proc.communicate(timeout=seconds + 30)
        except subprocess.TimeoutExpired:
            proc.kill()
            _, err = proc.communicate()
        if proc.returncode != 0:
            log.warning("py-spy exited with %s: %s", proc.returncode,
                        err.decode(errors="replace")[-500:])
