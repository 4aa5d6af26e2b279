"""The topic catalogue: every topic dashpipe uses, its size and its config, in one place."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

from dashpipe.settings import TopicSettings

FOREVER = "-1"
WEEK_MS = str(7 * 24 * 3600 * 1000)


@dataclass(frozen=True)
class TopicSpec:
    name: str
    partitions: int
    replication_factor: int
    purpose: str
    config: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class TopicNames:
    raw: str
    transformed: str
    dlq: str
    pipelines: str
    status: str
    retry: str
    members: str

    @classmethod
    def from_prefix(cls, prefix: str) -> TopicNames:
        return cls(
            raw=f"{prefix}.raw",
            transformed=f"{prefix}.transformed",
            dlq=f"{prefix}.dlq",
            pipelines=f"{prefix}.pipelines",
            status=f"{prefix}.pipeline-status",
            retry=f"{prefix}.deliver-retry",
            members=f"{prefix}.members",
        )


def catalogue(ts: TopicSettings) -> list[TopicSpec]:
    names = TopicNames.from_prefix(ts.prefix)
    rf = ts.replication_factor
    # Records are appended with the time they were received (CreateTime set by our producers),
    # so offsets-for-times finds Bronze history by received time.
    kept = {"cleanup.policy": "delete", "retention.ms": FOREVER, "retention.bytes": FOREVER,
            "min.insync.replicas": str(min(2, rf))}
    compacted = {"cleanup.policy": "compact", "min.insync.replicas": str(min(2, rf)),
                 "min.compaction.lag.ms": "0", "segment.ms": str(3600 * 1000)}
    week = {"cleanup.policy": "delete", "retention.ms": WEEK_MS, "min.insync.replicas": "1"}
    # heartbeats: the latest per member, and a killed member's last one gone after a day
    members = {"cleanup.policy": "compact,delete", "retention.ms": str(24 * 3600 * 1000),
               "min.insync.replicas": "1", "min.compaction.lag.ms": "0",
               "segment.ms": str(3600 * 1000)}
    return [
        TopicSpec(names.raw, ts.partitions, rf, "Bronze: every payload as received, kept forever",
                  kept),
        TopicSpec(names.transformed, ts.partitions, rf,
                  "Silver: mapped rows with lineage, for persist, push and deliver", week),
        TopicSpec(names.dlq, ts.partitions, rf,
                  "dead letters of every stage, with reason and lineage", kept),
        TopicSpec(names.pipelines, ts.control_partitions, rf,
                  "pipeline definitions (key = pipeline id, tombstone = deleted)", compacted),
        TopicSpec(names.status, ts.control_partitions, rf,
                  "pipeline runtime status, poll cursor and schedule", compacted),
        TopicSpec(names.retry, ts.partitions, rf, "sink deliveries waiting for their next attempt",
                  week),
        TopicSpec(names.members, 1, rf, "heartbeats of the running processes per role, with "
                  "their load (the web role shares rate limits by it)", members),
    ]


async def create_all(admin: Any, specs: list[TopicSpec]) -> dict[str, str]:
    """Create the missing topics and align the configs of existing ones.

    Returns topic name -> what happened (`created`, `exists`, `updated`). Never lowers or
    raises a partition count: that would move keys between partitions.
    """
    from aiokafka.admin import NewTopic
    from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType

    existing = set(await admin.list_topics())
    outcome: dict[str, str] = {}
    missing = [s for s in specs if s.name not in existing]
    if missing:
        resp = await admin.create_topics([
            NewTopic(s.name, s.partitions, s.replication_factor, topic_configs=s.config)
            for s in missing
        ])
        for err in resp.to_object()["topic_errors"]:
            if err["error_code"] == 0:
                outcome[err["topic"]] = "created"
            elif err["error_code"] != 36:  # 36: it exists (created meanwhile, or metadata lag)
                raise RuntimeError(f"creating topic {err['topic']}: {err['error_message']}")
    for spec in specs:
        if spec.name in outcome:
            continue
        current = await describe_config(admin, spec.name)
        if all(current.get(k) == v for k, v in spec.config.items()):
            outcome[spec.name] = "exists"
            continue
        # alter_configs replaces the topic's dynamic config as a whole: we own these topics.
        await admin.alter_configs([ConfigResource(ConfigResourceType.TOPIC, spec.name,
                                                  configs=spec.config)])
        outcome[spec.name] = "updated"
    return outcome


async def describe_config(admin: Any, topic: str) -> dict[str, str]:
    from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType

    deadline = asyncio.get_running_loop().time() + 15
    while True:  # a topic created a moment ago may not be known to the config path yet
        responses = await admin.describe_configs(
            [ConfigResource(ConfigResourceType.TOPIC, topic)])
        resource = responses[0].to_object()["resources"][0]
        if resource["error_code"] == 0:
            return {e["config_names"]: e["config_value"] for e in resource["config_entries"]}
        if resource["error_code"] != 3 or asyncio.get_running_loop().time() > deadline:
            raise RuntimeError(f"describing topic {topic}: error {resource['error_code']} "
                               f"{resource.get('error_message') or ''}".strip())
        await asyncio.sleep(0.1)


async def describe(admin: Any, specs: list[TopicSpec]) -> list[dict[str, Any]]:
    """What the broker holds for each catalogue topic (missing ones say so)."""
    existing = set(await admin.list_topics())
    rows: list[dict[str, Any]] = []
    for spec in specs:
        if spec.name not in existing:
            rows.append({"topic": spec.name, "exists": False, "purpose": spec.purpose})
            continue
        meta = (await admin.describe_topics([spec.name]))[0]
        config = await describe_config(admin, spec.name)
        rows.append({
            "topic": spec.name,
            "exists": True,
            "partitions": len(meta["partitions"]),
            "replication_factor": len(meta["partitions"][0]["replicas"]),
            "config": {k: config.get(k) for k in spec.config},
            "purpose": spec.purpose,
        })
    return rows
