"""Our clients and the topic catalogue against the real broker."""

import asyncio
import time
import uuid

import orjson
from aiokafka import TopicPartition

from dashpipe import kafka, topics
from dashpipe.settings import Settings
from dashpipe.topics import TopicNames
from schemas.records import RawMetadata, now


async def test_produce_then_consume_keeps_payload_and_headers(settings: Settings,
                                                             names: TopicNames) -> None:
    bootstrap = settings.kafka.bootstrap_servers
    payload = b'{"temp": 21.5,  "unit":"C"}'  # odd spacing: Bronze keeps bytes as received
    meta = RawMetadata(pipeline_id="p1", team_id="t1", source="webhook", received_at=now(),
                       ingest_id=uuid.uuid4().hex)
    async with kafka.started(kafka.producer(bootstrap, settings.kafka)) as producer:
        sent = await producer.send_and_wait(names.raw, payload, key=b"p1",
                                            headers=meta.to_headers())
    consumer = kafka.consumer(bootstrap, settings.kafka, names.raw,
                              group_id=f"{settings.kafka.group_prefix}-read")
    async with kafka.started(consumer):
        got = []
        deadline = time.monotonic() + 20
        while not got and time.monotonic() < deadline:
            batch = await consumer.getmany(timeout_ms=500)
            got = [m for msgs in batch.values() for m in msgs]
        assert len(got) == 1
        record = got[0]
        assert record.value == payload
        assert (record.partition, record.offset) == (sent.partition, sent.offset)
        assert RawMetadata.from_headers(record.headers) == meta
        await consumer.commit()
        tp = TopicPartition(names.raw, sent.partition)
        assert await consumer.committed(tp) == sent.offset + 1


async def test_same_key_same_partition(settings: Settings, names: TopicNames) -> None:
    bootstrap = settings.kafka.bootstrap_servers
    async with kafka.started(kafka.producer(bootstrap, settings.kafka)) as producer:
        futures = [await producer.send(names.raw, orjson.dumps({"i": i}), key=b"pipe-a")
                   for i in range(50)]
        sent = await asyncio.gather(*futures)
    assert len({m.partition for m in sent}) == 1
    offsets = [m.offset for m in sent]
    assert offsets == sorted(offsets) and len(set(offsets)) == 50


async def test_catalogue_is_created_with_its_config_and_idempotent(settings: Settings) -> None:
    bootstrap = settings.kafka.bootstrap_servers
    specs = topics.catalogue(settings.topics)
    async with kafka.started(kafka.admin(bootstrap, settings.kafka)) as admin:
        # the fixture created them: a second run changes nothing
        assert set((await topics.create_all(admin, specs)).values()) == {"exists"}
        rows = {r["topic"]: r for r in await topics.describe(admin, specs)}
        names = TopicNames.from_prefix(settings.topics.prefix)
        assert rows[names.raw]["partitions"] == settings.topics.partitions
        assert rows[names.raw]["config"]["retention.ms"] == "-1"
        assert rows[names.pipelines]["config"]["cleanup.policy"] == "compact"
        assert rows[names.pipelines]["partitions"] == settings.topics.control_partitions


async def _config_becomes(admin: object, topic: str, key: str, value: str) -> None:
    """Config changes reach `describe_configs` a moment after they were accepted."""
    deadline = time.monotonic() + 15
    while (await topics.describe_config(admin, topic))[key] != value:
        assert time.monotonic() < deadline, f"{topic} {key} never became {value}"
        await asyncio.sleep(0.1)


async def test_drifted_config_is_aligned(settings: Settings) -> None:
    from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType

    bootstrap = settings.kafka.bootstrap_servers
    specs = topics.catalogue(settings.topics)
    raw = specs[0].name
    async with kafka.started(kafka.admin(bootstrap, settings.kafka)) as admin:
        await admin.alter_configs([ConfigResource(ConfigResourceType.TOPIC, raw,
                                                  configs={"retention.ms": "1000"})])
        await _config_becomes(admin, raw, "retention.ms", "1000")
        outcome = await topics.create_all(admin, specs)
        assert outcome[raw] == "updated"
        await _config_becomes(admin, raw, "retention.ms", "-1")
