"""Who runs a role, and how busy each process is: every process of the role publishes a
heartbeat on the members topic (compacted, key `<role>/<member id>`) every `interval` seconds
with its load per key, and reads everyone's. A member is live while its last heartbeat arrived
here less than `LIVE_INTERVALS` intervals ago (local receive time: clocks need not agree). A
clean stop writes a tombstone; a killed process drops out when its heartbeats stop.

What it is for: state that must hold across N processes without a round trip per request. The
web role's rate limits are the user: each process admits its `share` of a pipeline's allowance,
shares in proportion to the requests each process sees for the pipeline (plus a floor, so a
process that sees none yet still admits a few), so the allowance holds across processes
whatever the load balancer does, and a sender pinned to one process by keep-alive still gets
the whole allowance within a few heartbeats.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import orjson
from aiokafka import TopicPartition

from dashpipe import kafka
from dashpipe.settings import KafkaSettings

log = logging.getLogger(__name__)

LIVE_INTERVALS = 3
SMOOTHING = 0.3  # weight of the latest interval in a member's published load
# Every member's weight for a key is its load plus SPREAD of the members' mean load plus
# IDLE_LOAD: the shares still sum to one, and a member that sees no requests for a key yet
# (the load balancer just moved a sender to it) admits a few until its own load shows.
SPREAD = 0.25
IDLE_LOAD = 0.05  # requests/s


@dataclass
class Member:
    seen: float  # time.monotonic() when its heartbeat arrived
    load: dict[str, float]  # requests per second, smoothed, per key


@dataclass
class Members:
    producer: Any
    bootstrap: str
    kafka_settings: KafkaSettings
    topic: str
    role: str
    interval: float = 1.0
    id: str = field(default_factory=lambda: uuid.uuid4().hex[:12])
    members: dict[str, Member] = field(default_factory=dict)  # member id -> last heartbeat
    ready: asyncio.Event = field(default_factory=asyncio.Event)
    _counts: Counter[str] = field(default_factory=Counter)  # this interval's requests
    _load: dict[str, float] = field(default_factory=dict)  # what this process publishes
    _shares: dict[str, float] = field(default_factory=dict)
    _default: float = 1.0  # the share of a key nobody reported load for

    def count(self, key: str) -> None:
        self._counts[key] += 1

    def share(self, key: str) -> float:
        """This process's part (0, 1] of `key`'s allowance, as of the last heartbeat."""
        return self._shares.get(key, self._default)

    def live(self) -> list[str]:
        cutoff = time.monotonic() - LIVE_INTERVALS * self.interval
        return sorted(m for m, seen in self.members.items() if seen.seen >= cutoff)

    async def run(self) -> None:
        """Heartbeat and read until cancelled; `ready` once this process has read its own
        first heartbeat (so it knows every member that was live before it)."""
        reader = kafka.consumer(self.bootstrap, self.kafka_settings, group_id=None,
                                auto_offset_reset="latest")
        tp = TopicPartition(self.topic, 0)
        async with kafka.started(reader):
            reader.assign([tp])
            # heartbeats older than a few intervals do not matter: start shortly before now
            since = int((time.time() - 2 * LIVE_INTERVALS * self.interval) * 1000)
            found = await reader.offsets_for_times({tp: since})
            if found.get(tp) is not None:
                reader.seek(tp, found[tp].offset)
            else:
                await reader.seek_to_end(tp)
            beat = asyncio.create_task(self._beat(), name="heartbeats")
            try:
                await self._read(reader)
            finally:
                beat.cancel()
                await asyncio.gather(beat, return_exceptions=True)
                with contextlib.suppress(Exception):  # going down: a late one times out
                    await asyncio.wait_for(self.producer.send_and_wait(
                        self.topic, None, key=self._key()), 2)

    def _key(self) -> bytes:
        return f"{self.role}/{self.id}".encode()

    async def _beat(self) -> None:
        while True:
            for key in set(self._load) | set(self._counts):
                rate = self._counts.get(key, 0) / self.interval
                smoothed = SMOOTHING * rate + (1 - SMOOTHING) * self._load.get(key, rate)
                if smoothed < 0.01:
                    self._load.pop(key, None)
                else:
                    self._load[key] = round(smoothed, 3)
            self._counts.clear()
            value = orjson.dumps({"role": self.role, "member": self.id, "load": self._load,
                                  "at": time.time()})
            try:
                await asyncio.wait_for(self.producer.send_and_wait(
                    self.topic, value, key=self._key()), self.interval * LIVE_INTERVALS)
            except Exception as exc:  # Kafka away: the others count this one out meanwhile
                log.warning("heartbeat of %s %s not written: %s", self.role, self.id,
                            type(exc).__name__)
            await asyncio.sleep(self.interval)

    async def _read(self, reader: Any) -> None:
        prefix = f"{self.role}/".encode()
        while True:
            batch = await reader.getmany(timeout_ms=int(self.interval * 1000))
            now = time.monotonic()
            for records in batch.values():
                for record in records:
                    if not record.key or not record.key.startswith(prefix):
                        continue
                    member = record.key[len(prefix):].decode()
                    if record.value is None:
                        self.members.pop(member, None)
                        continue
                    load = orjson.loads(record.value).get("load") or {}
                    self.members[member] = Member(now, load)
                    if member == self.id:
                        self.ready.set()
            self._recompute()

    def _recompute(self) -> None:
        mine = Member(time.monotonic(), dict(self._load))  # what the others read of this one
        live = [self.members[m] for m in self.live() if m != self.id] + [mine]
        self._default = 1.0 / len(live)
        keys = {k for m in live for k in m.load}
        shares = {}
        for k in keys:
            total = sum(m.load.get(k, 0.0) for m in live)
            floor = SPREAD * total / len(live) + IDLE_LOAD
            shares[k] = (mine.load.get(k, 0.0) + floor) / (total + floor * len(live))
        self._shares = shares
