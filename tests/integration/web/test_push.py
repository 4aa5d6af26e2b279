"""Live rows over SSE and WebSocket with resume, the recent cache, browser sessions, team
isolation, and the data API over stored rows; real broker, real PostgreSQL."""

from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import asyncpg
import orjson
import pytest
from pydantic import SecretStr

from agents.web import push
from dashpipe.settings import ADMIN, ApiSettings, Settings
from tests.helpers import wait_until
from tests.integration.mapping.test_mapper import webhook_pipeline, write_raw

TOKENS = ApiSettings(api_tokens={SecretStr("tok-a"): "team-a", SecretStr("tok-b"): "team-b"},
                     admin_token=SecretStr("adm"))
A = {"Authorization": "Bearer tok-a"}
B = {"Authorization": "Bearer tok-b"}


async def sse(http: aiohttp.ClientSession, url: str, headers: dict[str, str]
              ) -> AsyncIterator[tuple[str, str, str]]:
    """(event, id, data) of an SSE stream, as they arrive."""
    async with http.get(url, headers=headers) as resp:
        assert resp.status == 200, await resp.text()
        event, eid, data = "message", "", ""
        async for raw in resp.content:
            line = raw.decode().rstrip("\n")
            if not line:
                if data or event != "message":
                    yield event, eid, data
                event, eid, data = "message", "", ""
            elif line.startswith("event: "):
                event = line[7:]
            elif line.startswith("id: "):
                eid = line[4:]
            elif line.startswith("data: "):
                data = line[6:]


async def rows_of(stream: AsyncIterator[tuple[str, str, str]], n: int) -> list[tuple[str, Any]]:
    got: list[tuple[str, Any]] = []
    async for event, eid, data in stream:
        if event == "row":
            got.append((eid, orjson.loads(data)))
            if len(got) == n:
                break
    return got


async def until_ready(stream: AsyncIterator[tuple[str, str, str]]) -> str:
    async for event, eid, _ in stream:
        if event == "ready":
            return eid
    raise AssertionError("no ready event")


def numbers(*ns: int) -> list[bytes]:
    return [b'{"n": %d}' % n for n in ns]


@pytest.fixture
async def live(start_roles: Any) -> Any:
    rt = await start_roles("web", "map", api=TOKENS)
    await rt.service.create(webhook_pipeline("live", {"fields": {"n": {
        "path": "n", "type": "integer"}}}), ADMIN)
    await rt.service.create(webhook_pipeline("other", team="team-b"), ADMIN)
    return rt


async def test_sse_streams_rows_and_a_reconnect_gets_exactly_the_missed_ones(
        live: Any, settings: Settings) -> None:
    url = f"{live.web_url}/api/pipelines/live/events"
    async with aiohttp.ClientSession() as http:
        stream = sse(http, url, A)
        await until_ready(stream)
        await write_raw(settings, live.names.raw, "live", numbers(1, 2))
        first = await rows_of(stream, 2)
        await stream.aclose()  # the client goes away after two rows
        assert [r["fields"]["n"] for _, r in first] == [1, 2]
        assert first[0][1]["pipeline_id"] == "live" and "lineage" in first[0][1]
        await write_raw(settings, live.names.raw, "live", numbers(3, 4, 5))
        await write_raw(settings, live.names.raw, "other", numbers(99), team="team-b")
        await wait_until(lambda: len(live.roles["web"].hub.latest("live", 10)) == 5)
        resumed = sse(http, url, {**A, "Last-Event-ID": first[-1][0]})
        assert await until_ready(resumed) == first[-1][0]
        await write_raw(settings, live.names.raw, "live", numbers(6))
        again = await rows_of(resumed, 4)
        await resumed.aclose()
    assert [r["fields"]["n"] for _, r in again] == [3, 4, 5, 6]  # no gap, no duplicate
    ids = [eid for eid, _ in first + again]
    assert len(set(ids)) == len(ids)


async def test_a_resume_older_than_the_cache_reads_kafka(
        live: Any, settings: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(push, "RECENT_ROWS", 2)  # a cache of two rows per pipeline
    live.roles["web"].hub.recent.clear()
    url = f"{live.web_url}/api/pipelines/live/events"
    async with aiohttp.ClientSession() as http:
        stream = sse(http, url, A)
        await until_ready(stream)
        await write_raw(settings, live.names.raw, "live", numbers(1))
        [(last_id, _)] = await rows_of(stream, 1)
        await stream.aclose()
        await write_raw(settings, live.names.raw, "live", numbers(2, 3, 4, 5))
        await wait_until(lambda: [r for *_, r in live.roles["web"].hub.latest("live", 5)]
                         and len(live.roles["web"].hub.recent["live"].rows) == 2)
        resumed = sse(http, url, {**A, "Last-Event-ID": last_id})
        await until_ready(resumed)
        got = await rows_of(resumed, 4)
        await resumed.aclose()
    assert [r["fields"]["n"] for _, r in got] == [2, 3, 4, 5]


async def test_websocket_streams_rows_and_resumes(live: Any, settings: Settings) -> None:
    url = f"{live.web_url}/api/pipelines/live/ws"
    async with aiohttp.ClientSession() as http:
        async with http.ws_connect(url, headers=A) as ws:
            hello = orjson.loads((await ws.receive()).data)
            assert hello["event"] == "ready"
            await write_raw(settings, live.names.raw, "live", numbers(1, 2))
            first = [orjson.loads((await ws.receive(timeout=20)).data) for _ in range(2)]
        assert [m["fields"]["n"] for m in first] == [1, 2]
        await write_raw(settings, live.names.raw, "live", numbers(3))
        async with http.ws_connect(f"{url}?resume={first[0]['id']}", headers=A) as ws:
            await ws.receive()  # ready
            resumed = [orjson.loads((await ws.receive(timeout=20)).data) for _ in range(2)]
    assert [m["fields"]["n"] for m in resumed] == [2, 3]


async def test_recent_rows_and_their_ids_continue_the_stream(live: Any,
                                                             settings: Settings) -> None:
    await write_raw(settings, live.names.raw, "live", numbers(1, 2, 3))
    hub = live.roles["web"].hub
    await wait_until(lambda: len(hub.latest("live", 10)) == 3)
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{live.web_url}/api/pipelines/live/recent?limit=2",
                            headers=A) as r:
            recent = (await r.json())["rows"]
        assert [row["fields"]["n"] for row in recent] == [2, 3]
        async with http.get(f"{live.web_url}/api/pipelines/live/recent?limit=0",
                            headers=A) as r:
            assert r.status == 400
        stream = sse(http, f"{live.web_url}/api/pipelines/live/events",
                     {**A, "Last-Event-ID": recent[0]["id"]})
        await until_ready(stream)
        [(_, row)] = await rows_of(stream, 1)
        await stream.aclose()
    assert row["fields"]["n"] == 3


async def test_teams_see_only_their_streams_and_browsers_use_a_session(live: Any) -> None:
    base = f"{live.web_url}/api/pipelines"
    async with aiohttp.ClientSession() as http:
        for path in ("live/events", "live/recent", "live/data", "live/ws"):
            async with http.get(f"{base}/{path}", headers=B) as r:
                assert r.status == 404, path  # another team's pipeline does not exist
            async with http.get(f"{base}/{path}") as r:
                assert r.status == 401, path
        async with http.get(f"{base}/live/events", headers={**A, "Last-Event-ID": "x.y"}) as r:
            assert r.status == 400 and "position" in (await r.json())["error"]
    jar = aiohttp.CookieJar(unsafe=True)  # 127.0.0.1
    async with aiohttp.ClientSession(cookie_jar=jar) as browser:
        async with browser.post(f"{live.web_url}/api/session", headers=A) as r:
            assert r.status == 204
            cookie = r.cookies["dashpipe_session"]
            assert cookie["httponly"] and cookie["samesite"] == "Strict"
            assert "tok-a" not in cookie.value
        async with browser.get(f"{base}/live/recent") as r:  # the cookie alone
            assert r.status == 200
        async with browser.get(base) as r:
            assert [p["id"] for p in (await r.json())["pipelines"]] == ["live"]
        async with browser.post(f"{base}/live/pause") as r:  # sessions only read
            assert r.status == 401
        jar.clear()
        tampered = cookie.value[:-1] + ("0" if cookie.value[-1] != "0" else "1")
        jar.update_cookies({"dashpipe_session": tampered})
        async with browser.get(f"{base}/live/recent") as r:
            assert r.status == 401  # tampered
        async with browser.delete(f"{live.web_url}/api/session") as r:
            assert r.status == 204


async def test_the_data_api_buckets_the_stored_rows(start_roles: Any, settings: Settings,
                                                   db: asyncpg.Pool) -> None:
    rt = await start_roles("web", "map", "persist", api=TOKENS)
    mapping = {"records": "items[*]", "time": {"path": "t", "format": "rfc3339"},
               "fields": {"v": {"path": "v", "type": "float"},
                          "label": {"path": "label", "type": "string"}}}
    await rt.service.create({**webhook_pipeline("series", mapping), "persist_data": True},
                            ADMIN)
    await rt.service.create(webhook_pipeline("unstored", mapping), ADMIN)
    items = [{"t": "2026-11-01T10:00:10Z", "v": 1.0, "label": "a"},
             {"t": "2026-11-01T10:00:50Z", "v": 3.0, "label": "b"},
             {"t": "2026-11-01T10:01:30Z", "v": 10.0},
             {"t": "2026-11-01T10:03:00Z", "v": None, "label": "c"}]
    await write_raw(settings, rt.names.raw, "series", [orjson.dumps({"items": items})])
    await wait_until(lambda: _stored(db, 4), what="the rows stored")
    base = f"{rt.web_url}/api/pipelines/series/data?from=2026-11-01T10:00:00Z" \
           "&to=2026-11-01T10:05:00Z"  # the default bucket: 1m

    async def get(query: str) -> tuple[int, Any]:
        async with aiohttp.ClientSession() as http, http.get(base + query, headers=A) as r:
            return r.status, await r.json()

    status, avg = await get("")
    assert status == 200 and avg["fields"] == ["v"]  # default: the numeric fields
    assert [(p["time"], p["v"]) for p in avg["points"]] == [
        ("2026-11-01T10:00:00+00:00", 2.0), ("2026-11-01T10:01:00+00:00", 10.0),
        ("2026-11-01T10:03:00+00:00", None)]
    _, counted = await get("&agg=count&fields=v,label")
    assert [(p["v"], p["label"]) for p in counted["points"]] == [(2, 2), (1, 0), (0, 1)]
    _, last = await get("&agg=last&fields=label&bucket=5m")
    assert last["points"] == [{"time": "2026-11-01T10:00:00+00:00", "label": "c"}]
    _, peak = await get("&agg=max&bucket=1h")
    assert [p["v"] for p in peak["points"]] == [10.0]
    for query, word in (("&bucket=7", "bucket"), ("&agg=median", "agg"),
                        ("&fields=a;b", "fields")):
        status, body = await get(query)
        assert status == 400 and body["error"].startswith(word), (query, body)
    async with aiohttp.ClientSession() as http:
        for query, word in (("from=2026-11-01T00:00:00Z&to=2026-12-01T00:00:00Z&bucket=1s",
                             "bucket"), ("from=2026-11-02T00:00:00Z&to=2026-11-01T00:00:00Z",
                                         "from"), ("from=yesterday", "from")):
            async with http.get(f"{rt.web_url}/api/pipelines/series/data?{query}",
                                headers=A) as r:
                error = (await r.json())["error"]
                assert r.status == 400 and error.startswith(word), (query, error)
    async with aiohttp.ClientSession() as http, \
            http.get(f"{rt.web_url}/api/pipelines/unstored/data", headers=A) as r:
        assert r.status == 400 and "persist_data" in (await r.json())["error"]


async def _stored(db: asyncpg.Pool, n: int) -> bool:
    if not await db.fetchval("SELECT to_regclass('pipeline_data') IS NOT NULL"):
        return False
    return bool(await db.fetchval("SELECT count(*) FROM pipeline_data") >= n)
