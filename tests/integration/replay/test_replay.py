"""Replay against the real broker and PostgreSQL: a mapping change replayed updates stored rows
in place, a dry run reports exact counts, an interrupted replay resumes, and the CLI."""

import os
import subprocess
import sys
from typing import Any

import asyncpg
import orjson
import pytest

from dashpipe.settings import ADMIN, Settings
from streams.replay import replay as replays
from tests.helpers import read_topic, topic_size, wait_until
from tests.integration.mapping.test_mapper import webhook_pipeline, write_raw

V1 = {"records": "items[*]", "fields": {"id": {"path": "id", "type": "string"},
                                        "t": {"path": "t", "type": "float"}}}
V2 = {"records": "items[*]", "fields": {"id": {"path": "id", "type": "string"},
                                        "t": {"path": "t", "type": "float",
                                              "transforms": [{"scale": 10}]}}}


def payloads(n: int) -> list[bytes]:
    return [orjson.dumps({"items": [{"id": f"{i}a", "t": i}, {"id": f"{i}b", "t": -i}]})
            for i in range(n)]


async def stored(db: asyncpg.Pool) -> list[asyncpg.Record]:
    if not await db.fetchval("SELECT to_regclass('pipeline_data') IS NOT NULL"):
        return []
    return list(await db.fetch("SELECT data, mapping_version FROM pipeline_data"))


async def test_replay_after_a_mapping_change_updates_rows_in_place(
        start_roles: Any, settings: Settings, db: asyncpg.Pool) -> None:
    rt = await start_roles("map", "persist")
    await rt.service.create({**webhook_pipeline("temps", V1), "persist_data": True}, ADMIN)
    await write_raw(settings, rt.names.raw, "temps", payloads(10))
    await wait_until(lambda: _count(db, 20), what="20 rows stored")
    p = await rt.service.patch("temps", {"data_mapping": V2}, ADMIN)
    summary = await replays.replay(rt, p, "0", None)
    assert (summary["records"], summary["rows"], summary["done"]) == (10, 20, True)

    async def updated() -> bool:
        rows = await stored(db)
        return len(rows) == 20 and all(r["mapping_version"] == 2 for r in rows)

    await wait_until(updated, what="every row at version 2")
    values = sorted(orjson.loads(r["data"])["t"] for r in await stored(db))
    assert values == sorted([i * 10.0 for i in range(10)] + [-i * 10.0 for i in range(10)])


async def _count(db: asyncpg.Pool, n: int) -> bool:
    return len(await stored(db)) == n


async def test_a_dry_run_reports_exact_counts_and_writes_nothing(start_roles: Any,
                                                                 settings: Settings) -> None:
    rt = await start_roles("map")
    await rt.service.create(webhook_pipeline("preview", V1), ADMIN)
    await write_raw(settings, rt.names.raw, "preview", payloads(10))
    await wait_until(lambda: _size(settings, rt.names.transformed, 20), what="20 rows")
    candidate = {**V2, "filter": {"field": "t", "op": ">=", "value": 0}}  # drops 9 rows (t < 0)
    before = await topic_size(settings, rt.names.transformed)
    from schemas.mapping import Mapping

    summary = await replays.replay(rt, rt.registry.pipelines["preview"], "0", None,
                                   Mapping.model_validate(candidate), dry_run=True)
    d = summary["diff"]
    # rows 0a and 0b: t = 0 and -0, unchanged by the scale; the other 9 "a" rows change; the
    # other 9 "b" rows are negative and filtered out
    assert (d["rows_before"], d["rows_after"], d["added"], d["removed"], d["changed"],
            d["unchanged"]) == (20, 11, 0, 9, 9, 2)
    assert d["changed_fields"] == {"t": 9}
    assert {(s["old"], s["new"]) for s in d["samples"]["t"]} <= {
        (float(i), i * 10.0) for i in range(1, 10)}
    assert await topic_size(settings, rt.names.transformed) == before  # nothing written


async def _size(settings: Settings, topic: str, n: int) -> bool:
    return await topic_size(settings, topic) >= n


async def test_an_interrupted_replay_resumes_from_its_checkpoint(start_roles: Any,
                                                                 settings: Settings) -> None:
    rt = await start_roles("map")
    await rt.service.create(webhook_pipeline("resume", V1), ADMIN)
    await write_raw(settings, rt.names.raw, "resume", payloads(10))
    await wait_until(lambda: _size(settings, rt.names.transformed, 20), what="20 rows")
    p = rt.registry.pipelines["resume"]
    _, lo, hi = await replays.bounds(rt, p, "0", None)
    assert hi - lo == 10
    # a replay that stopped after its first 6 records left this checkpoint behind
    key = replays.hashlib.sha256(f"{lo}:{hi}:{p.mapping_version}".encode()).hexdigest()[:12]
    point = replays._checkpoint(rt, p, key)
    point.parent.mkdir(parents=True, exist_ok=True)
    point.write_bytes(orjson.dumps({"next": lo + 6}))
    before = await topic_size(settings, rt.names.transformed)
    summary = await replays.replay(rt, p, "0", None)
    assert summary["records"] == 4 and not point.exists()
    assert await topic_size(settings, rt.names.transformed) == before + 8


async def test_a_replay_on_worker_processes_writes_every_row_in_raw_order(
        start_roles: Any, settings: Settings) -> None:
    rt = await start_roles()  # no map role: only the replay writes transformed records
    keyed = {**V1, "key": "id"}  # rows spread over the transformed partitions by key
    p = await rt.service.create(webhook_pipeline("parallel", keyed), ADMIN)
    await write_raw(settings, rt.names.raw, "parallel", payloads(25))
    progress: list[int] = []
    summary = await replays.replay(rt, p, "0", None, workers=2, chunk=4,
                                   progress=lambda s: progress.append(s.position))
    assert (summary["records"], summary["rows"], summary["dead_letters"], summary["done"]) \
        == (25, 50, 0, True)
    assert progress == sorted(progress) and len(progress) >= 7  # chunk by chunk, in order
    records = await read_topic(settings, rt.names.transformed, 50)
    lineages: dict[int, list[tuple[int, int]]] = {}
    for r in records:
        lin = orjson.loads(r.value)["lineage"]
        lineages.setdefault(r.partition, []).append((lin["raw_offset"], lin["row_index"]))
    assert sum(len(v) for v in lineages.values()) == 50
    assert len({x for v in lineages.values() for x in v}) == 50
    for found in lineages.values():  # per partition, in the order one process writes them
        assert found == sorted(found)


async def test_more_workers_than_needed_and_bad_worker_counts(start_roles: Any,
                                                              settings: Settings) -> None:
    rt = await start_roles()
    p = await rt.service.create(webhook_pipeline("small", V1), ADMIN)
    await write_raw(settings, rt.names.raw, "small", payloads(3))
    summary = await replays.replay(rt, p, "0", None, workers=4)  # one chunk: no worker used
    assert (summary["records"], summary["rows"]) == (3, 6)
    with pytest.raises(replays.ReplayError, match="at least 1"):
        await replays.replay(rt, p, "0", None, workers=0)


async def test_bad_bounds_are_refused_with_the_reason(start_roles: Any) -> None:
    rt = await start_roles()
    await rt.service.create(webhook_pipeline("bounds", V1), ADMIN)
    p = rt.registry.pipelines["bounds"]
    with pytest.raises(replays.ReplayError, match="neither an offset nor an RFC 3339 time"):
        await replays.replay(rt, p, "yesterday", None)


def test_the_cli_prints_a_dry_run_diff(settings: Settings, tmp_path: Any) -> None:
    import asyncio

    from dashpipe.runtime import open_runtime

    async def setup() -> None:
        async with open_runtime(settings, settings.kafka.bootstrap_servers) as rt:
            await rt.service.create(webhook_pipeline("cli", V1), ADMIN)

    asyncio.run(setup())
    asyncio.run(write_raw(settings, f"{settings.topics.prefix}.raw", "cli", payloads(3)))
    mapping = tmp_path / "v2.yaml"
    mapping.write_text(orjson.dumps(V2).decode())
    env = {**os.environ, "DASHPIPE_KAFKA_BOOTSTRAP_SERVERS": settings.kafka.bootstrap_servers,
           "DASHPIPE_TOPIC_PREFIX": settings.topics.prefix,
           "DASHPIPE_DATABASE_URL": settings.database.url.get_secret_value()
           if settings.database.url else "", "DASHPIPE_STATE_DIR": str(tmp_path / "state")}
    done = subprocess.run([sys.executable, "-m", "dashpipe.cli", "replay", "--pipeline", "cli",
                           "--from", "0", "--mapping", str(mapping), "--dry-run"], env=env,
                          capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    summary = orjson.loads(done.stdout)
    assert summary["records"] == 3 and summary["diff"]["rows_after"] == 6
    assert "replay cli p" in done.stderr  # the progress line


async def test_the_api_previews_and_runs_replays_for_the_owning_team(
        start_roles: Any, settings: Settings) -> None:
    import aiohttp
    from pydantic import SecretStr

    from dashpipe.settings import ApiSettings

    tokens = ApiSettings(api_tokens={SecretStr("tok-a"): "team-a",
                                     SecretStr("tok-b"): "team-b"})
    rt = await start_roles("web", "map", api=tokens)
    await rt.service.create(webhook_pipeline("api", V1), ADMIN)
    await write_raw(settings, rt.names.raw, "api", payloads(4))
    await wait_until(lambda: _size(settings, rt.names.transformed, 8), what="8 rows")
    url = f"{rt.web_url}/api/pipelines/api/replay"
    a, b = {"Authorization": "Bearer tok-a"}, {"Authorization": "Bearer tok-b"}
    async with aiohttp.ClientSession() as http:
        async with http.post(url, json={"from": "0", "dry_run": True, "mapping": V2},
                             headers=a) as r:
            assert r.status == 200, await r.text()
            assert (await r.json())["diff"]["changed_fields"] == {"t": 6}
        async with http.post(url, json={"from": "0"}, headers=b) as r:
            assert r.status == 404  # another team's pipeline
        async with http.post(url, json={"from": "soon"}, headers=a) as r:
            assert r.status == 400 and "RFC 3339" in (await r.json())["error"]
        for workers in (0, 9, "2", True):
            async with http.post(url, json={"from": "0", "workers": workers}, headers=a) as r:
                assert r.status == 400
                assert (await r.json())["error"] == "workers: an integer from 1 to 8"
        # found by schemathesis: `"to": {}` started a replay to the end, `"dry_run": "no"`
        # was a dry run
        for bad in ({"to": {}}, {"to": True}, {"dry_run": "no"}, {"from": True}):
            async with http.post(url, json={"from": "0", **bad}, headers=a) as r:
                assert r.status == 400, bad
        before = await topic_size(settings, rt.names.transformed)
        async with http.post(url, json={"from": "0", "mapping": V2}, headers=a) as r:
            assert r.status == 202 and (await r.json())["mapping_version"] == 2

        async def finished() -> Any:
            async with http.get(url, headers=a) as r:
                body = await r.json()
                return r.status == 200 and not body.get("running") and body

        done = await wait_until(finished, what="the replay to finish")
    assert done["done"] and done["rows"] == 8
    assert await topic_size(settings, rt.names.transformed) >= before + 8
