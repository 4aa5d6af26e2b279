"""The `map` role against the real broker: rows with lineage, dead letters that never stall a
partition, live mapping versions, derived pipelines, and a mapper killed mid-stream."""

import os
import signal
import subprocess
import sys
import time
from typing import Any

import orjson
import pytest
from aiohttp import web

from dashpipe import kafka
from dashpipe.cli import quakes
from dashpipe.pipelines import Invalid
from dashpipe.settings import ADMIN, PollSettings, Settings
from schemas.records import DeadLetter, RawMetadata, TransformedRecord, raw_headers
from tests.helpers import read_topic, wait_until
from tests.integration.conftest import FakeApi

FAST = PollSettings(retry_base_seconds=0.5, retry_cap_seconds=2, tick_seconds=0.05)
QUAKES = quakes.MAPPING
FEED = {"type": "FeatureCollection", "features": [
    {"id": "q1", "properties": {"mag": 2.5, "place": "5 km N of A", "time": 1764300000123},
     "geometry": {"coordinates": [-120.1, 35.2, 7.25]}},
    {"id": "q2", "properties": {"place": "no magnitude", "time": 1764300001000},
     "geometry": {"coordinates": [-120.2, 35.3, 1.0]}},
    {"id": "q3", "properties": {"mag": "4.1", "place": "9 km S of B", "time": 1764300002000},
     "geometry": {"coordinates": [-121.0, 36.0, 12.5]}},
]}


def webhook_pipeline(pid: str, mapping: dict[str, Any] | None = None,
                     team: str = "team-a") -> dict[str, Any]:
    return {"id": pid, "team_id": team, "name": pid, "type": "realtime",
            "source_type": "webhook", "source_config": {"webhook_secret": "s"},
            "data_mapping": mapping}


async def write_raw(settings: Settings, topic: str, pid: str, values: list[bytes],
                    team: str = "team-a") -> None:
    """Bronze records as the receiver writes them (same key and headers)."""
    producer = kafka.producer(settings.kafka.bootstrap_servers, settings.kafka)
    async with kafka.started(producer):
        for i, value in enumerate(values):
            now_ms = int(time.time() * 1000)
            await producer.send_and_wait(topic, value, key=pid.encode(), timestamp_ms=now_ms,
                                         headers=raw_headers(pid, team, "webhook", now_ms,
                                                             f"test-{i}"))


def rows(records: list[Any]) -> list[TransformedRecord]:
    return [TransformedRecord.model_validate_json(r.value) for r in records]


async def test_polled_feed_becomes_rows_with_lineage_and_a_dead_letter(
        start_roles: Any, api: FakeApi, settings: Settings) -> None:
    api.answer = lambda r: web.json_response(FEED)
    rt = await start_roles("web", "poll", "map", poll=FAST)
    await rt.service.create({"id": "quakes", "team_id": "team-a", "name": "quakes",
                             "type": "polling", "source_type": "http_api",
                             "interval_seconds": 3600, "source_config": {"url": api.url},
                             "data_mapping": QUAKES}, ADMIN)
    [raw] = await read_topic(settings, rt.names.raw, 1)
    got = sorted(rows(await read_topic(settings, rt.names.transformed, 2)),
                 key=lambda r: r.lineage.row_index)
    assert [(r.key, r.fields) for r in got] == [
        ("q1", {"quake_id": "q1", "mag": 2.5, "place": "5 km N of A", "depth_km": 7.25,
                "depth_m": 7250.0}),
        ("q3", {"quake_id": "q3", "mag": 4.1, "place": "9 km S of B", "depth_km": 12.5,
                "depth_m": 12500.0}),
    ]
    assert [r.time.isoformat() for r in got] == ["2025-11-28T03:20:00.123000+00:00",
                                                 "2025-11-28T03:20:02+00:00"]
    meta = RawMetadata.from_headers(raw.headers)
    for r, index in zip(got, (0, 2), strict=True):
        assert (r.lineage.raw_partition, r.lineage.raw_offset, r.lineage.row_index) == \
            (raw.partition, raw.offset, index)
        assert (r.pipeline_id, r.team_id, r.mapping_version, r.ingest_id) == \
            ("quakes", "team-a", 1, meta.ingest_id)

    [dead] = await read_topic(settings, rt.names.dlq, 1)
    letter = DeadLetter.model_validate_json(dead.value)
    assert letter.stage == "map" and letter.mapping_version == 1
    assert letter.reason == "field 'mag': required, but 'properties.mag' is missing"
    assert letter.lineage is not None and letter.lineage.row_index == 1
    assert letter.lineage.raw_offset == raw.offset and letter.record["id"] == "q2"

    view = await wait_until(lambda: (v := rt.service.view(rt.registry.pipelines["quakes"]))
                            ["dead_letters"] and v, what="the dead-letter count")
    assert view["dead_letters"] == {"map": 1} and view["mapping_version"] == 1
    assert 'dashpipe_dead_letters{pipeline_id="quakes",stage="map",team_id="team-a"} 1.0' \
        in rt.metrics.render()  # a gauge: recounted from the topic


async def test_bad_payloads_are_dead_letters_and_the_partition_flows_on(
        start_roles: Any, settings: Settings) -> None:
    rt = await start_roles("map")
    await rt.service.create(webhook_pipeline("hooks", {"fields": {"v": {
        "path": "v", "type": "integer", "required": True}}}), ADMIN)
    await write_raw(settings, rt.names.raw, "hooks",
                    [b'{"v": 1}', b"not json {", b'{"v": "x"}', b"[1, 2", b'{"v": 4}'])
    got = rows(await read_topic(settings, rt.names.transformed, 2))
    assert sorted(r.fields["v"] for r in got) == [1, 4]
    letters = [DeadLetter.model_validate_json(r.value)
               for r in await read_topic(settings, rt.names.dlq, 3)]
    reasons = sorted(letter.reason for letter in letters)
    assert reasons[0] == "field 'v': expected an integer at 'v', got string \"x\""
    assert reasons[1].startswith("payload is not valid JSON")
    assert reasons[2].startswith("payload is not valid JSON")
    assert sorted(str(letter.record) for letter in letters if "JSON" in letter.reason) == \
        ["[1, 2", "not json {"]


async def test_a_new_mapping_version_applies_live(start_roles: Any, settings: Settings) -> None:
    rt = await start_roles("map")
    await rt.service.create(webhook_pipeline("live", {"fields": {"t": "temp"}}), ADMIN)
    await write_raw(settings, rt.names.raw, "live", [b'{"temp": 20.5}'])
    [first] = rows(await read_topic(settings, rt.names.transformed, 1))
    assert (first.fields, first.mapping_version) == ({"t": 20.5}, 1)
    p = await rt.service.patch("live", {"data_mapping": {"fields": {"t": {
        "path": "temp", "type": "integer", "transforms": [{"round": 0}]}}}}, ADMIN)
    assert p.mapping_version == 2
    unchanged = await rt.service.patch("live", {"name": "renamed"}, ADMIN)
    assert unchanged.mapping_version == 2  # only a mapping change bumps it
    await write_raw(settings, rt.names.raw, "live", [b'{"temp": 21.7}'])
    got = rows(await read_topic(settings, rt.names.transformed, 2))
    assert [(r.fields, r.mapping_version) for r in got][1] == ({"t": 22}, 2)


async def test_no_mapping_passes_the_payload_through(start_roles: Any,
                                                     settings: Settings) -> None:
    rt = await start_roles("map")
    await rt.service.create(webhook_pipeline("plain"), ADMIN)
    await write_raw(settings, rt.names.raw, "plain", [b'{"a": {"b": [1, 2]}}', b"[3]"])
    got = rows(await read_topic(settings, rt.names.transformed, 2))
    assert [(r.fields, r.mapping_version, r.key) for r in got] == [
        ({"a": {"b": [1, 2]}}, 0, None), ({"value": [3]}, 0, None)]
    assert all(r.lineage.row_index == 0 for r in got)


async def test_a_derived_pipeline_receives_its_parents_rows(start_roles: Any,
                                                            settings: Settings) -> None:
    rt = await start_roles("map")
    await rt.service.create(webhook_pipeline("parent", {"records": "items[*]", "fields": {
        "mag": {"path": "m", "type": "float"}}}), ADMIN)
    await rt.service.create({"id": "child", "team_id": "team-a", "name": "big ones",
                             "type": "derived", "source_type": "pipeline",
                             "source_config": {"pipeline_id": "parent"},
                             "data_mapping": {"fields": {"mag10": {
                                 "path": "fields.mag", "type": "float",
                                 "transforms": [{"scale": 10}]}},
                                 "filter": {"field": "mag10", "op": ">", "value": 20}}},
                            ADMIN)
    await write_raw(settings, rt.names.raw, "parent",
                    [b'{"items": [{"m": 1.5}, {"m": 3.0}, {"m": 2.5}]}'])
    got = rows(await read_topic(settings, rt.names.transformed, 5))
    child = sorted(r.fields["mag10"] for r in got if r.pipeline_id == "child")
    assert child == [25.0, 30.0]
    bronze = [r for r in await read_topic(settings, rt.names.raw, 4)
              if RawMetadata.from_headers(r.headers).pipeline_id == "child"]
    assert len(bronze) == 3  # every parent row, in Bronze: it replays too
    meta = RawMetadata.from_headers(bronze[0].headers)
    assert meta.source == "pipeline" and meta.ingest_id.startswith("parent:")
    assert orjson.loads(bronze[0].value)["pipeline_id"] == "parent"


async def test_cycles_and_other_teams_sources_are_rejected(start_roles: Any) -> None:
    rt = await start_roles("map")
    await rt.service.create(webhook_pipeline("root"), ADMIN)
    await rt.service.create(webhook_pipeline("theirs", team="team-b"), ADMIN)

    def derived(pid: str, source: str) -> dict[str, Any]:
        return {"id": pid, "team_id": "team-a", "name": pid, "type": "derived",
                "source_type": "pipeline", "source_config": {"pipeline_id": source}}

    await rt.service.create(derived("a", "root"), ADMIN)
    await rt.service.create(derived("b", "a"), ADMIN)
    with pytest.raises(Invalid) as cycle:
        await rt.service.patch("a", {"source_config": {"pipeline_id": "b"}}, ADMIN)
    assert cycle.value.errors == [{"loc": "source_config.pipeline_id",
                                   "msg": "pipelines may not feed themselves: a -> b -> a"}]
    with pytest.raises(Invalid) as self_loop:
        await rt.service.create(derived("c", "c"), ADMIN)
    assert "c -> c" in self_loop.value.errors[0]["msg"]
    with pytest.raises(Invalid) as other_team:
        await rt.service.create(derived("d", "theirs"), "team-a")
    assert other_team.value.errors[0]["msg"] == "pipeline 'theirs' not found"


def _map_process(settings: Settings) -> subprocess.Popen[bytes]:
    env = {**os.environ, "DASHPIPE_KAFKA_BOOTSTRAP_SERVERS": settings.kafka.bootstrap_servers,
           "DASHPIPE_KAFKA_GROUP_PREFIX": settings.kafka.group_prefix,
           "DASHPIPE_TOPIC_PREFIX": settings.topics.prefix}
    return subprocess.Popen([sys.executable, "-m", "dashpipe.cli", "run", "map"], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


async def test_two_mappers_one_killed_mid_stream_lose_nothing(start_roles: Any,
                                                              settings: Settings) -> None:
    rt = await start_roles()  # registry and topics only: the mappers run as processes
    for i in range(6):  # pipelines spread over the partitions
        await rt.service.create(webhook_pipeline(f"p{i}", {"fields": {"n": {
            "path": "n", "type": "integer", "required": True}}}), ADMIN)
    procs = [_map_process(settings), _map_process(settings)]
    try:
        await wait_until(lambda: _members(settings, f"{settings.kafka.group_prefix}-map", 2),
                         90, "both mappers in the group")
        total = 3000
        repeats: set[tuple[int, int]] = set()  # (partition, offset) of a sender's retries
        producer = kafka.producer(settings.kafka.bootstrap_servers, settings.kafka)
        async with kafka.started(producer):
            for n in range(total):
                pid = f"p{n % 6}"
                now_ms = int(time.time() * 1000)
                await producer.send(rt.names.raw, b'{"n": %d}' % n, key=pid.encode(),
                                    headers=raw_headers(pid, "team-a", "webhook", now_ms,
                                                        f"i{n}", dedup_id=f"m{n}"))
                if n % 7 == 6 and n >= 600:  # a sender's retry of a payload of the same
                    m = n - 600  # pipeline, long before: the window must hold it
                    sent = await producer.send(
                        rt.names.raw, b'{"n": %d}' % m, key=pid.encode(),
                        headers=raw_headers(pid, "team-a", "webhook", now_ms, f"i{m}",
                                            dedup_id=f"m{m}"))
                    repeats.add(await _where(sent))
                if n == total // 3:
                    await producer.flush()
                    await wait_until(lambda: _transformed_seen(settings, rt.names.transformed),
                                     60, "the mappers to start writing")
                    procs[0].send_signal(signal.SIGKILL)
            await producer.flush()
        assert procs[0].wait(10) == -signal.SIGKILL and procs[1].poll() is None
        raw = await read_topic(settings, rt.names.raw, total + len(repeats))
        got = await read_topic(settings, rt.names.transformed, total, timeout=90)
        lineages = {(r.lineage.raw_partition, r.lineage.raw_offset) for r in rows(got)}
        # every raw record mapped but the retries, also those the survivor took over (it
        # rebuilt the dedup window of the killed one's partitions from the log)
        assert lineages == {(r.partition, r.offset) for r in raw} - repeats
        mapped = {(row.lineage.raw_partition, row.lineage.raw_offset): row.fields["n"]
                  for row in rows(got)}
        assert sorted(mapped.values()) == list(range(total))  # each payload once
        by_lineage: dict[tuple[int, int], set[bytes]] = {}
        for record in got:
            lineage = orjson.loads(record.value)["lineage"]
            by_lineage.setdefault((lineage["raw_partition"], lineage["raw_offset"]),
                                  set()).add(record.value)
        assert all(len(values) == 1 for values in by_lineage.values())  # repeats identical
    finally:
        for proc in procs:
            proc.kill()
            proc.wait()


async def _where(sent: Any) -> tuple[int, int]:
    meta = await sent
    return meta.partition, meta.offset


async def _members(settings: Settings, group: str, count: int) -> bool:
    admin = kafka.admin(settings.kafka.bootstrap_servers, settings.kafka)
    async with kafka.started(admin):
        [described] = await admin.describe_consumer_groups([group])
    members = described.groups[0][5] if hasattr(described, "groups") else []
    return len(members) >= count


async def _transformed_seen(settings: Settings, topic: str) -> bool:
    from tests.helpers import topic_size
    return await topic_size(settings, topic) > 0



async def test_a_process_without_web_serves_its_own_metrics(start_roles: Any,
                                                            settings: Settings) -> None:
    import socket

    import aiohttp

    from dashpipe.settings import WebSettings

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    rt = await start_roles("map", web=WebSettings(port=0, metrics_port=port))
    await rt.service.create(webhook_pipeline("counted"), ADMIN)
    await write_raw(settings, rt.names.raw, "counted", [b'{"a": 1}'])

    async def scraped() -> str:
        try:
            async with aiohttp.ClientSession() as http, \
                    http.get(f"http://127.0.0.1:{port}/metrics") as r:
                text = await r.text()
        except aiohttp.ClientConnectionError:
            return ""
        return text if 'dashpipe_mapped_total{pipeline_id="counted",team_id="team-a"} 1.0' \
            in text else ""

    assert await wait_until(scraped, what="the map process's metrics")
