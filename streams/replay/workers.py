"""Written replays on several cores: chunks mapped side by side, written in order.

A replay is CPU-bound Python (decoding, mapping, JSON out, partitioning), so one process uses
one core. With `workers` > 1 the range is cut into chunks of `CHUNK` records;
each worker process (`python -m streams.replay.workers`) reads and maps one chunk at a time with
its own consumer and producer, holds the rows, and writes them only when told to: chunk k is
written once chunk k-1 was acknowledged. So the transformed topic receives the rows in the order
one process would write them (for a key, the rows of later raw records after those of earlier
ones, which persist's last-write-wins relies on), and the checkpoint advances chunk by chunk, in
order, exactly as for one process.

Protocol, JSON lines. Parent -> worker: the job (base64 pickle: settings, bootstrap servers,
pipeline, raw partition, partition counts), then `{"map": k, "lo": .., "hi": ..}` and
`{"write": k}`; end of input ends the worker. Worker -> parent: `{"ready": true}`,
`{"mapped": k, "records": .., "rows": .., "dead": ..}`, `{"written": k}`; any failure ends the
worker with a message on stderr and a non-zero exit, which fails the replay (the checkpoint
keeps what was written).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import pickle
import sys
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import orjson
from aiokafka import TopicPartition

from dashpipe import kafka
from dashpipe.batcher import send_records
from dashpipe.metrics import Metrics
from dashpipe.topics import TopicNames
from schemas.pipeline import Pipeline
from streams.mapping.dedup import Dedup
from streams.mapping.mapper import Mapper, Out
from streams.replay.status import Progress, ReplayError, ReplayStatus

if TYPE_CHECKING:
    from dashpipe.runtime import Runtime

CHUNK = 10_000  # raw records per chunk (default): ~5 MB of rows held by a worker at most


@dataclass
class _Worker:
    proc: asyncio.subprocess.Process
    reader: asyncio.Task[None] | None = None

    def send(self, message: dict[str, Any] | bytes) -> None:
        assert self.proc.stdin is not None
        line = message if isinstance(message, bytes) else orjson.dumps(message) + b"\n"
        self.proc.stdin.write(line)


class Workers:
    """The worker processes of one replay: spawned first (a worker's start-up is ~0.2 s of
    CPU, spent while the parent finds the range), given the job once the range is known."""

    def __init__(self) -> None:
        self.pool: list[_Worker] = []
        self.events: asyncio.Queue[tuple[_Worker, dict[str, Any] | None]] = asyncio.Queue()

    async def spawn(self, n: int) -> None:
        for _ in range(n):
            proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "streams.replay.workers", stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE)
            w = _Worker(proc)
            w.reader = asyncio.create_task(_read(w, self.events))
            self.pool.append(w)

    async def run(self, rt: Runtime, p: Pipeline, tp: TopicPartition, status: ReplayStatus,
                  end: int, partitions: dict[str, int], chunk: int, save: Callable[[int], None],
                  progress: Progress | None) -> None:
        """Replay [status.position, end); `save(position)` after each chunk is acknowledged,
        in order. Raises `ReplayError` when a worker fails."""

        chunks = [(lo, min(lo + chunk, end)) for lo in range(status.position, end, chunk)]
        job = base64.b64encode(pickle.dumps(
            (rt.settings, rt.bootstrap, p, tp.partition, partitions))) + b"\n"
        for w in self.pool:
            w.send(job)
        given = written = 0
        ready: dict[int, tuple[_Worker, dict[str, Any]]] = {}
        writing = False
        while written < len(chunks):
            w, msg = await self.events.get()
            if msg is None:
                code = await w.proc.wait()
                raise ReplayError(f"a replay worker exited with status {code} (its error is "
                                  "above); rerun the same command to resume")
            if "written" in msg:
                status.position = chunks[msg["written"]][1]
                save(status.position)
                written, writing = written + 1, False
                if progress is not None:
                    progress(status)
            if ("ready" in msg or "written" in msg) and given < len(chunks):
                lo, hi = chunks[given]
                w.send({"map": given, "lo": lo, "hi": hi})
                given += 1
            if "mapped" in msg:
                ready[msg["mapped"]] = (w, msg)
            if not writing and written in ready:
                w, done = ready.pop(written)
                status.records += done["records"]
                status.rows += done["rows"]
                status.dead += done["dead"]
                w.send({"write": written})
                writing = True

    async def close(self) -> None:
        """End every worker: end of input, then a kill after 10 s."""
        for w in self.pool:
            if w.proc.stdin is not None:
                w.proc.stdin.close()
        for w in self.pool:
            try:
                await asyncio.wait_for(w.proc.wait(), 10)
            except TimeoutError:
                w.proc.kill()
                await w.proc.wait()
            if w.reader is not None:
                w.reader.cancel()


async def _read(w: _Worker, events: asyncio.Queue[tuple[_Worker, dict[str, Any] | None]]
                ) -> None:
    assert w.proc.stdout is not None
    while line := await w.proc.stdout.readline():
        await events.put((w, orjson.loads(line)))
    await events.put((w, None))


@dataclass
class _Fixed:
    """A worker's registry: the one pipeline it maps, as the parent saw it (no registry read
    from the log, no HTTP client: a worker imports and starts in ~half the time)."""

    pipelines: dict[str, Pipeline]

    def on_change(self, listener: Any) -> None:
        pass  # a replay maps with the definition it started with


@dataclass
class _Context:
    registry: _Fixed
    names: TopicNames
    metrics: Metrics = field(default_factory=Metrics)


async def _work() -> None:
    loop = asyncio.get_running_loop()
    stdin = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(stdin), sys.stdin)
    job = await stdin.readline()
    if not job:
        return  # the replay needed no workers after all
    settings, bootstrap, p, partition, partitions = pickle.loads(base64.b64decode(job))
    names = TopicNames.from_prefix(settings.topics.prefix)
    tp = TopicPartition(names.raw, partition)
    mapper = Mapper(_Context(_Fixed({p.id: p}), names), partitions, feed_children=False)
    spec = p.data_mapping
    mapper.pin(p, spec, p.mapping_version if spec is not None else 0)
    producer = kafka.producer(bootstrap, settings.kafka)
    consumer = kafka.consumer(bootstrap, settings.kafka, group_id=None)
    async with kafka.started(producer), kafka.started(consumer):
        consumer.assign([tp])
        held: dict[int, Out] = {}
        _say({"ready": True})
        while line := await stdin.readline():
            msg = orjson.loads(line)
            if "map" in msg:
                # the live mapper skipped a sender's repeats: so does the chunk
                mapper.dedup = Dedup(settings.webhook.dedup_seconds)
                await mapper.dedup.warm(bootstrap, settings.kafka, tp, msg["lo"])
                out, records = await _map_chunk(consumer, mapper, tp, p, msg["lo"], msg["hi"])
                held[msg["map"]] = out
                rows = sum(len(v) for (t, _), v in out.items() if t == names.transformed)
                dead = sum(len(v) for (t, _), v in out.items() if t == names.dlq)
                _say({"mapped": msg["map"], "records": records, "rows": rows, "dead": dead})
            else:
                out = held.pop(msg["write"])
                if out:
                    await send_records(producer, out)
                _say({"written": msg["write"]})


async def _map_chunk(consumer: Any, mapper: Mapper, tp: TopicPartition, p: Pipeline, lo: int,
                     hi: int) -> tuple[Out, int]:
    out: Out = defaultdict(list)
    key, records, position = p.id.encode(), 0, lo
    consumer.seek(tp, lo)
    while position < hi:
        batch = await consumer.getmany(tp, timeout_ms=1000, max_records=2000)
        for record in batch.get(tp, []):
            if record.offset >= hi:
                break
            position = record.offset + 1
            if record.key == key:
                records += 1
                mapper.map_record(tp.partition, record, out)
        # past transaction markers too (a poll's), which no record shows
        position = max(position, min(hi, await consumer.position(tp)))
        mapper.flush_counts()
    return out, records


def _say(message: dict[str, Any]) -> None:
    sys.stdout.buffer.write(orjson.dumps(message) + b"\n")
    sys.stdout.buffer.flush()


def main() -> None:
    try:
        asyncio.run(_work())
    except Exception as exc:  # the parent reports the exit; the reason goes to stderr
        print(f"replay worker: {type(exc).__name__}: {exc}", file=sys.stderr)
        raise SystemExit(1) from None


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        main()
