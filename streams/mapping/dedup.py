"""Repeats on the log: a raw record whose dedup id (header `dashpipe-dedup-id`: a sender's
`webhook-id`, a parent row's lineage) was seen before for the same pipeline in the same raw
partition, within the window, is not mapped again.

Why in the map role: each web process sees only the copies it received, but every copy of a
pipeline's records lands in one raw partition (key = pipeline id), read in one order by the one
map process that owns it. The decision is a function of the log alone: a record is a repeat
when an earlier record of its partition has the same key and a timestamp at most `window`
older. So a mapper that takes a partition over (a restart, a rebalance) decides exactly as the
previous owner did once it has read the window before the offset it starts from again
(`warm`): the raw topic is this state's changelog, and no other topic is written.

Timestamps are the web process's receive time (CreateTime). `skew` is how far the clocks of the
web processes may disagree: a first sighting is kept until the newest timestamp is `window +
skew` past it.
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from typing import Any

from aiokafka import TopicPartition

from dashpipe import kafka
from dashpipe.settings import KafkaSettings
from schemas.headers import Header, header, pipeline_id_header

log = logging.getLogger(__name__)

SKEW_MS = 60_000
MAX_IDS = 200_000  # per partition; past it the oldest first sighting is forgotten


class Window:
    """The first sightings of one raw partition: key -> timestamp (ms)."""

    def __init__(self, window_ms: int, skew_ms: int = SKEW_MS, max_ids: int = MAX_IDS) -> None:
        self.window_ms = window_ms
        self.keep_ms = window_ms + skew_ms
        self.max_ids = max_ids
        self.first: OrderedDict[str, int] = OrderedDict()
        self.newest = 0

    def repeat(self, key: str, ts: int) -> bool:
        """True when `key` was first seen at most `window` before `ts` (a repeat: skip it);
        else remember `ts` as its first sighting."""
        if ts > self.newest:
            self.newest = ts
            self._expire()
        seen = self.first.get(key)
        if seen is not None and ts - seen <= self.window_ms:
            return True
        self.first[key] = ts
        self.first.move_to_end(key)
        if len(self.first) > self.max_ids:
            self.first.popitem(last=False)
        return False

    def _expire(self) -> None:
        cutoff, first = self.newest - self.keep_ms, self.first
        while first:
            oldest = next(iter(first))
            if first[oldest] >= cutoff:
                return
            del first[oldest]


def dedup_key(headers: Any) -> str | None:
    """`<pipeline id> <dedup id>` of a raw record, or None when it carries no dedup id."""
    dedup_id = header(headers, Header.DEDUP_ID)
    if dedup_id is None:
        return None
    pid = pipeline_id_header(headers) or b""
    return f"{pid.decode()} {dedup_id}"


class Dedup:
    """One `Window` per raw partition this mapper owns, and how far each has read."""

    def __init__(self, window_seconds: float) -> None:
        self.window_ms = round(window_seconds * 1000)
        self.windows: dict[int, Window] = {}
        self.next: dict[int, int] = {}  # partition -> the offset after the last record fed

    def repeat(self, partition: int, record: Any) -> bool:
        """Whether `record` repeats a dedup id within the window; feeds it to the window."""
        self.next[partition] = record.offset + 1
        key = dedup_key(record.headers)
        if key is None:
            return False
        window = self.windows.get(partition)
        if window is None:
            window = self.windows[partition] = Window(self.window_ms)
        return window.repeat(key, record.timestamp)

    def continues(self, partition: int, offset: int) -> bool:
        """Whether this window is the state right before `offset`: it was fed the records up
        to there. Offsets it skipped are transaction markers or aborted records, which a
        read-committed consumer never sees; an offset before the window's end (a reset after a
        rebalance) or a partition it has not read (taken over) needs `warm`."""
        end = self.next.get(partition)
        return offset == 0 if end is None else offset >= end

    def keep(self, partitions: set[int]) -> None:
        """Forget the windows of every other partition."""
        for p in set(self.windows) | set(self.next):
            if p not in partitions:
                self.windows.pop(p, None)
                self.next.pop(p, None)

    async def warm(self, bootstrap: str, ks: KafkaSettings, tp: TopicPartition,
                   committed: int) -> int:
        """Read the window before offset `committed` of `tp` again into a fresh `Window`,
        deciding each record as it was decided then; returns the records read."""
        window = self.windows[tp.partition] = Window(self.window_ms)
        self.next[tp.partition] = committed
        if not committed:
            return 0
        reader = kafka.consumer(bootstrap, ks, group_id=None)
        read = 0
        async with kafka.started(reader):
            reader.assign([tp])
            reader.seek(tp, committed - 1)
            last = await reader.getmany(tp, timeout_ms=5000, max_records=1)
            records = last.get(tp, [])
            # the last record's time (or, when it is a transaction marker with nothing after
            # it, now's) bounds the window from above
            newest = records[0].timestamp if records else int(time.time() * 1000)
            since = newest - window.window_ms - SKEW_MS
            found = await reader.offsets_for_times({tp: max(0, since)})
            start = found[tp].offset if found.get(tp) is not None else committed
            reader.seek(tp, start)
            while start < committed and await reader.position(tp) < committed:
                batch = await reader.getmany(tp, timeout_ms=5000, max_records=5000)
                if not batch:
                    break
                for record in batch[tp]:
                    if record.offset >= committed:
                        break
                    read += 1
                    key = dedup_key(record.headers)
                    if key is not None:
                        window.repeat(key, record.timestamp)
        log.info("dedup window of %s[%d]: %d ids from %d records before offset %d", tp.topic,
                 tp.partition, len(window.first), read, committed)
        return read
