"""How many dead letters each pipeline has, per stage: counted from the dead-letter topic itself
(from its beginning, then tailing it), so every web process shows the same figures whichever
process wrote them. Reads only keys and headers (`dashpipe-stage`), never the values."""

from __future__ import annotations

import asyncio
import logging

from dashpipe import kafka
from dashpipe.metrics import Metrics
from dashpipe.settings import KafkaSettings

log = logging.getLogger(__name__)
METRIC = "dashpipe_dead_letters_total"


class DeadLetterCounts:
    def __init__(self, bootstrap: str, ks: KafkaSettings, topic: str, metrics: Metrics) -> None:
        self.bootstrap, self.ks, self.topic, self.metrics = bootstrap, ks, topic, metrics
        self.counts: dict[str, dict[str, int]] = {}

    def of(self, pipeline_id: str) -> dict[str, int]:
        return dict(self.counts.get(pipeline_id, {}))

    async def run(self) -> None:
        """Count forever; after a Kafka error, start again from the beginning."""
        while True:
            self.counts = {}
            self.metrics.reset(METRIC)
            try:
                await self._read()
            except Exception as exc:  # a counter must never take the web role down
                log.warning("dead-letter counts: %s; reading again in 5s", type(exc).__name__)
                await asyncio.sleep(5)

    async def _read(self) -> None:
        consumer = kafka.consumer(self.bootstrap, self.ks, group_id=None)
        async with kafka.started(consumer):
            tps = await kafka.partitions(consumer, self.topic)
            consumer.assign(tps)
            await consumer.seek_to_beginning(*tps)
            while True:
                batch = await consumer.getmany(timeout_ms=1000, max_records=5000)
                for records in batch.values():
                    for record in records:
                        self._count(record.key, record.headers)

    def _count(self, key: bytes | None, headers: list[tuple[str, bytes]]) -> None:
        stage = next((v.decode() for k, v in headers if k == "dashpipe-stage"), "unknown")
        pid = key.decode(errors="replace") if key else "(none)"
        per_stage = self.counts.setdefault(pid, {})
        per_stage[stage] = per_stage.get(stage, 0) + 1
        self.metrics.inc(METRIC, pipeline_id=pid, stage=stage)
