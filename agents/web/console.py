"""What the console shows an operator of one pipeline besides its rows (role `web`): its
unresolved dead letters and their redrive, and how far each role's consumer group is behind on
the partitions that carry the pipeline. Team-scoped through `api.guarded` like every route; a
redrive is a change, so a browser session (reads only) cannot start one.

- `GET /api/pipelines/{id}/dead-letters?stage=&limit=`: the unresolved dead letters, oldest
  first (`streams.deadletters.ledger`, as `dashpipe dlq list --json` shows them).
- `POST /api/pipelines/{id}/dead-letters/redrive` `{"stage"?, "positions"?}`: redrive them with
  what the pipeline is now (`streams.deadletters.redrive`, as `dashpipe dlq redrive`).
- `GET /api/pipelines/{id}/lag`: per consumer group of this deployment (`<group prefix>-<role>`),
  committed offset, end and lag on the pipeline's partitions of the topics the group commits on.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web
from aiokafka import TopicPartition

from agents.web import api
from dashpipe import http, kafka, lag
from dashpipe.batcher import partition_for
from dashpipe.errors import DashpipeError
from dashpipe.runtime import Runtime
from dashpipe.topics import TopicNames
from schemas.pipeline import Pipeline
from streams.deadletters.ledger import ledger_of, parse_position, position_text
from streams.deadletters.redrive import redrive

log = logging.getLogger(__name__)

STAGES = ("map", "persist", "deliver")
MAX_LISTED = 1000
DEFAULT_LISTED = 100
MAX_POSITIONS = 1000


def pipeline_partitions(p: Pipeline, names: TopicNames, topic: str, partitions: int
                        ) -> list[int]:
    """The partitions of `topic` that carry pipeline `p`'s records, as the roles key them:
    raw records by pipeline id; transformed rows by the mapping's key field (then they spread
    over every partition) or else the pipeline id; retries by `<pipeline>:<sink index>`.
    Any other topic carries none of them."""
    if topic == names.raw:
        return [partition_for(p.id.encode(), partitions)]
    if topic == names.transformed:
        if p.data_mapping is not None and p.data_mapping.key is not None:
            return list(range(partitions))
        return [partition_for(p.id.encode(), partitions)]
    if topic == names.retry:
        return sorted({partition_for(f"{p.id}:{i}".encode(), partitions)
                       for i in range(len(p.sinks))})
    return []


@dataclass
class Console:
    rt: Runtime
    redriving: set[str] = field(default_factory=set)  # pipelines with a redrive running here

    def routes(self) -> list[api.Route]:
        return [("GET", "/pipelines/{id}/dead-letters", self.dead_letters),
                ("POST", "/pipelines/{id}/dead-letters/redrive", self.redrive),
                ("GET", "/pipelines/{id}/lag", self.lag)]

    def _pipeline(self, request: web.Request) -> Pipeline:
        return self.rt.service.get(request.match_info["id"], request[api.TEAM])

    async def dead_letters(self, request: web.Request) -> web.Response:
        p = self._pipeline(request)
        stage = request.query.get("stage") or None
        if stage is not None and stage not in STAGES:
            return http.error(400, f"stage: {stage[:20]!r} is not one of {', '.join(STAGES)}")
        text = request.query.get("limit", str(DEFAULT_LISTED))
        if not text.isdigit() or not 1 <= int(text) <= MAX_LISTED:
            return http.error(400, f"limit: a whole number from 1 to {MAX_LISTED}")
        entries = (await ledger_of(self.rt, p.id)).unresolved(stage)
        return http.json_response({
            "pipeline_id": p.id, "total": len(entries),
            "by_stage": dict(Counter(e.stage for e in entries)),
            "dead_letters": [e.summary() for e in entries[:int(text)]]})

    async def redrive(self, request: web.Request) -> web.Response:
        p = self._pipeline(request)
        body: Any = await api.read_json(request) if await request.read() else {}
        if not isinstance(body, dict):
            return http.error(400, "the body is a JSON object: {\"stage\"?, \"positions\"?}")
        unknown = sorted(set(body) - {"stage", "positions"})
        if unknown:
            return http.error(400, f"{unknown[0][:40]}: not a field (stage, positions)")
        stage = body.get("stage")
        if stage is not None and stage not in STAGES:
            return http.error(400, f"stage: one of {', '.join(STAGES)}")
        only = None
        raw = body.get("positions")
        if raw is not None:
            if not isinstance(raw, list) or not 1 <= len(raw) <= MAX_POSITIONS or \
                    not all(isinstance(x, str) and re.fullmatch(r"\d{1,9}:\d{1,19}", x)
                            for x in raw):
                return http.error(400, f"positions: 1 to {MAX_POSITIONS} dead-letter "
                                       "positions PARTITION:OFFSET (e.g. \"2:17\")")
            try:
                only = [parse_position(x) for x in raw]
            except DashpipeError as exc:
                return http.error(400, f"positions: {exc}")
        if p.id in self.redriving:
            return http.error(409, f"a redrive of {p.id!r} is running")
        self.redriving.add(p.id)
        try:
            report = await redrive(self.rt, p.id, stage, only)
        finally:
            self.redriving.discard(p.id)
        log.info("redrive of %s through the API: %d dead letter(s), %d still fail(s)", p.id,
                 len(report.outcomes), len(report.still_failing))
        return http.json_response({
            "pipeline_id": p.id, "total": len(report.outcomes),
            "redriven": sum(1 for o in report.outcomes if o.resolved),
            "still_failing": len(report.still_failing),
            "marker": None if report.marker is None else position_text(report.marker),
            "outcomes": [{"position": position_text(o.entry.position), "stage": o.entry.stage,
                          "resolved": o.resolved, "still_fails": o.still_fails,
                          "outcome": o.description()} for o in report.outcomes]})

    async def lag(self, request: web.Request) -> web.Response:
        p = self._pipeline(request)
        rt = self.rt
        prefix = f"{rt.settings.kafka.group_prefix}-"
        try:
            async with kafka.started(kafka.admin(rt.bootstrap, rt.settings.kafka)) as admin, \
                    kafka.started(kafka.consumer(rt.bootstrap, rt.settings.kafka,
                                                 group_id=None)) as consumer:
                groups = sorted(g for g, *_ in await admin.list_consumer_groups()
                                if isinstance(g, str) and g.startswith(prefix))
                found = await asyncio.gather(*(self._group(admin, consumer, p, g)
                                               for g in groups))
        except DashpipeError as exc:  # a group the broker cannot describe yet (loading)
            return http.error(503, f"consumer groups unavailable: {exc}", {"Retry-After": "5"})
        return http.json_response({"pipeline_id": p.id,
                                   "groups": [g for g in found if g is not None]})

    async def _group(self, admin: Any, consumer: Any, p: Pipeline, group: str
                     ) -> dict[str, Any] | None:
        names = self.rt.names
        topics = sorted(await lag.committed_topics(admin, group))
        counts = await kafka.partition_counts(consumer, *topics) if topics else {}
        tps = [TopicPartition(t, i) for t in topics
               for i in pipeline_partitions(p, names, t, counts.get(t, 0))]
        if not tps:
            return None  # it reads none of this pipeline's topics (or nothing committed yet)
        state = await lag.describe_group(admin, group)
        rows = await lag.offsets(admin, consumer, group, tps)
        return {"role": group.removeprefix(f"{self.rt.settings.kafka.group_prefix}-"),
                "group": group, "state": state.state, "members": state.members,
                "lag": sum(r.lag for r in rows), "partitions": [r.as_dict() for r in rows]}
