"""What the run left behind, read back: consumer-group lag (committed offsets against the ends
of the input topics), the stored rows in PostgreSQL (`pipeline_data`), and an index of the
Bronze and transformed topics (which raw and transformed records carry each id), so a missing
or duplicated id can be placed at the stage that lost or repeated it."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import asyncpg
import orjson
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import KafkaError

from dashpipe import kafka

log = logging.getLogger(__name__)

PREFIX = "dashpipe"  # the run's processes use the default topic and group prefixes
GROUPS = {"map": ("raw",), "persist": ("transformed",), "deliver": ("transformed",
                                                                     "deliver-retry")}


async def group_lag(bootstrap: str) -> dict[str, int]:
    """Role -> records its group has not committed yet (readable records only: a
    transaction marker at the end of a partition is not lag)."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=10_000)
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=None,
                                enable_auto_commit=False, isolation_level="read_committed")
    await admin.start()
    await consumer.start()
    try:
        out: dict[str, int] = {}
        for role, topics in GROUPS.items():
            tps = [tp for t in topics for tp in await _partitions(consumer, f"{PREFIX}.{t}")]
            committed = await admin.list_consumer_group_offsets(f"{PREFIX}-{role}",
                                                                partitions=tps)
            starts = await consumer.beginning_offsets(tps)
            ends = await consumer.end_offsets(tps)
            behind: dict[TopicPartition, int] = {}
            for tp in tps:
                meta = committed.get(tp)
                at = meta.offset if meta is not None and meta.offset >= 0 else starts[tp]
                if ends[tp] > at:
                    behind[tp] = at
            out[role] = await _readable(consumer, behind, ends) if behind else 0
        return out
    finally:
        await consumer.stop()
        await admin.close()


async def _partitions(consumer: AIOKafkaConsumer, topic: str) -> list[TopicPartition]:
    """Every partition of `topic`, from a fresh metadata request."""
    found = await kafka.partitions(consumer, topic)
    if not found:
        raise AssertionError(f"topic {topic} has no partitions")
    return found


async def _readable(consumer: AIOKafkaConsumer, behind: dict[TopicPartition, int],
                    ends: dict[TopicPartition, int]) -> int:
    """How many records between each committed offset and the end a reader gets."""
    consumer.assign(list(behind))
    for tp, at in behind.items():
        consumer.seek(tp, at)
    count = 0
    done: set[TopicPartition] = set()
    for _ in range(20):
        batch = await consumer.getmany(timeout_ms=500)
        for tp, records in batch.items():
            count += sum(1 for r in records if r.offset < ends[tp])
        for tp in behind:
            if await consumer.position(tp) >= ends[tp]:
                done.add(tp)
        if len(done) == len(behind):
            break
    consumer.unsubscribe()
    return count


@dataclass
class Rows:
    """The rows of one pipeline, by the sender's or the API's id."""

    count: dict[str, int] = field(default_factory=dict)
    first_stored: dict[str, float] = field(default_factory=dict)
    lineage: dict[str, list[str]] = field(default_factory=dict)  # id -> ["p:o:r", ...]

    def total(self) -> int:
        return sum(self.count.values())

    def extra(self) -> int:
        return sum(n - 1 for n in self.count.values())


ROWS_SQL = """
SELECT data->>'id' AS id, count(*) AS n, min(stored_at) AS first,
       array_agg(raw_partition || ':' || raw_offset || ':' || row_index) AS lineage
FROM pipeline_data WHERE pipeline_id = $1 GROUP BY 1
"""


async def rows(url: str, pipeline_id: str) -> Rows:
    conn = await asyncpg.connect(url, timeout=10)
    try:
        found = await conn.fetch(ROWS_SQL, pipeline_id, timeout=60)
    finally:
        await conn.close()
    out = Rows()
    for r in found:
        key = str(r["id"])
        first: datetime = r["first"]
        out.count[key] = int(r["n"])
        out.first_stored[key] = first.timestamp()
        out.lineage[key] = list(r["lineage"])
    return out


async def row_count(url: str, pipeline_ids: list[str]) -> int | str:
    """Rows of these pipelines, or why the database did not answer."""
    try:
        conn = await asyncpg.connect(url, timeout=10)
    except (OSError, asyncpg.PostgresError, TimeoutError) as exc:
        return f"no database ({type(exc).__name__})"
    try:
        value = await conn.fetchval("SELECT count(*) FROM pipeline_data WHERE pipeline_id = "
                                    "ANY($1::text[])", pipeline_ids, timeout=30)
        return int(value)
    except asyncpg.UndefinedTableError:
        return 0
    except (asyncpg.PostgresError, TimeoutError) as exc:
        return f"no answer ({type(exc).__name__})"
    finally:
        await conn.close()


@dataclass
class Bronze:
    """Where each id appears in the raw and transformed topics."""

    raw: dict[str, list[str]] = field(default_factory=dict)  # webhook id -> ["p@o", ...]
    transformed: dict[str, list[str]] = field(default_factory=dict)  # id -> lineages


async def read_topics(bootstrap: str, webhook_pipeline: str) -> Bronze:
    """Index every record of the raw and transformed topics (read committed)."""
    out = Bronze()
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=None,
                                enable_auto_commit=False, isolation_level="read_committed",
                                auto_offset_reset="earliest")
    await consumer.start()
    try:
        for topic in (f"{PREFIX}.raw", f"{PREFIX}.transformed"):
            tps = await _partitions(consumer, topic)
            consumer.assign(tps)
            await consumer.seek_to_beginning(*tps)
            ends = await consumer.end_offsets(tps)
            for _ in range(2000):
                if all([await consumer.position(tp) >= ends[tp] for tp in tps]):
                    break
                for tp, records in (await consumer.getmany(timeout_ms=1000)).items():
                    for record in records:
                        _index(out, topic.endswith(".raw"), webhook_pipeline, tp, record)
    except KafkaError as exc:
        log.warning("reading the topics back failed: %s", exc)
    finally:
        await consumer.stop()
    return out


def _index(out: Bronze, raw: bool, webhook_pipeline: str, tp: TopicPartition,
           record: Any) -> None:
    try:
        doc = orjson.loads(record.value or b"null")
    except orjson.JSONDecodeError:
        return
    if not isinstance(doc, dict):
        return
    if raw:
        if (record.key or b"").decode() == webhook_pipeline and "id" in doc:
            out.raw.setdefault(str(doc["id"]), []).append(f"{tp.partition}@{record.offset}")
        for item in doc.get("items") or []:  # a polled page
            if isinstance(item, dict) and "id" in item:
                out.raw.setdefault(str(item["id"]), []).append(
                    f"{tp.partition}@{record.offset}")
        return
    fields = doc.get("fields") or {}
    if isinstance(fields, dict) and "id" in fields:
        lineage = doc.get("lineage") or {}
        out.transformed.setdefault(str(fields["id"]), []).append(
            f"{lineage.get('raw_partition')}:{lineage.get('raw_offset')}:"
            f"{lineage.get('row_index')}")


async def wait_quiet(probe: Any, quiet: float, timeout: float) -> None:
    """Until `await probe()` returns the same value for `quiet` seconds (None never counts)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    last: Any = None
    since = loop.time()
    while loop.time() < deadline:
        value = await probe()
        if value is None or value != last:
            last, since = value, loop.time()
        elif loop.time() - since >= quiet:
            return
        await asyncio.sleep(1)
    raise TimeoutError(f"still changing after {timeout:.0f} s (last {last})")
