"""The console's API routes against the real broker, with roles `web` + `map` (+ `persist`
for the lag of its group): a pipeline's unresolved dead letters, their redrive (a bearer token
only: a browser session reads, never changes), consumer lag per role group, the page's assets
and its content security policy. Another team's token gets 404, as everywhere in the API."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import orjson
import pytest
from pydantic import SecretStr

from dashpipe.batcher import partition_for
from dashpipe.runtime import Runtime
from dashpipe.settings import ApiSettings
from dashpipe.signatures import sign_original
from tests.helpers import wait_until

TOKENS = {"tok-a": "team-a", "tok-b": "team-b"}
API = ApiSettings(api_tokens={SecretStr(k): v for k, v in TOKENS.items()})
A = {"Authorization": "Bearer tok-a"}
B = {"Authorization": "Bearer tok-b"}
SECRET = "console-secret"
STRICT = {"fields": {"n": {"path": "n", "type": "integer", "required": True}}}
FIXED = {"fields": {"n": {"path": None, "first_of": ["n", "m"]}}}


@pytest.fixture
async def web(start_roles: Any) -> AsyncIterator[tuple[Runtime, aiohttp.ClientSession]]:
    rt = await start_roles("web", "map", "persist", api=API)
    async with aiohttp.ClientSession(rt.web_url) as http:
        yield rt, http


async def create(http: aiohttp.ClientSession, pid: str, headers: dict[str, str] = A) -> None:
    body = {"id": pid, "name": pid, "type": "realtime", "source_type": "webhook",
            "source_config": {"webhook_secret": SECRET}, "data_mapping": STRICT}
    async with http.post("/api/pipelines", json=body, headers=headers) as r:
        assert r.status == 201, await r.text()


async def send(http: aiohttp.ClientSession, pid: str, payload: dict[str, Any]) -> None:
    body = orjson.dumps(payload)
    async with http.post(f"/webhooks/{pid}", data=body, headers={
            "x-webhook-signature": sign_original(SECRET, body),
            "Content-Type": "application/json"}) as r:
        assert r.status == 202, await r.text()


async def answer(http: aiohttp.ClientSession, method: str, path: str,
                 headers: dict[str, str] | None = None, **kw: Any) -> tuple[int, Any]:
    async with http.request(method, path, headers=headers, **kw) as r:
        return r.status, await r.json()


async def test_dead_letters_are_listed_and_redriven_by_their_team_only(
        web: tuple[Runtime, aiohttp.ClientSession]) -> None:
    rt, http = web
    await create(http, "orders")
    await create(http, "theirs", B)
    for payload in ({"n": 1}, {"m": 2}, {"m": 3}):
        await send(http, "orders", payload)
    path = "/api/pipelines/orders/dead-letters"
    await wait_until(lambda: rt.service.view(rt.registry.pipelines["orders"])["dead_letters"]
                     == {"map": 2}, what="two map dead letters")

    status, body = await answer(http, "GET", path, A)
    assert status == 200 and (body["total"], body["by_stage"]) == (2, {"map": 2})
    assert all(d["stage"] == "map" and "'n' is missing" in d["reason"]
               for d in body["dead_letters"])
    assert [d["lineage"]["row_index"] for d in body["dead_letters"]] == [0, 0]
    status, one = await answer(http, "GET", path + "?limit=1&stage=map", A)
    assert status == 200 and one["total"] == 2 and len(one["dead_letters"]) == 1
    for query, word in (("?limit=0", "limit"), ("?limit=x", "limit"), ("?stage=web", "stage")):
        status, err = await answer(http, "GET", path + query, A)
        assert status == 400 and err["error"].startswith(word), (query, err)
    assert (await answer(http, "GET", path, B))[0] == 404  # another team: not found
    assert (await answer(http, "GET", "/api/pipelines/theirs/dead-letters", A))[0] == 404
    assert (await answer(http, "GET", path))[0] == 401

    redrive = path + "/redrive"
    # a browser session reads the list, but cannot redrive
    jar = aiohttp.CookieJar(unsafe=True)  # the web role listens on an IP address
    async with aiohttp.ClientSession(rt.web_url, cookie_jar=jar) as browser:
        async with browser.post("/api/session", headers=A) as r:
            assert r.status == 204
        assert (await answer(browser, "GET", path))[0] == 200
        status, err = await answer(browser, "POST", redrive, json={})
        assert status == 401 and "bearer" in err["error"]
    assert (await answer(http, "POST", redrive, B, json={}))[0] == 404
    for body_, word in (([], "the body"), ({"stage": "web"}, "stage"), ({"what": 1}, "what"),
                        ({"positions": ["x"]}, "positions"), ({"positions": []}, "positions")):
        status, err = await answer(http, "POST", redrive, A, json=body_)
        assert status == 400 and err["error"].startswith(word), (body_, err)
    async with http.post(redrive, data=b"{nope", headers=A) as r:
        assert r.status == 400 and "invalid JSON" in (await r.json())["error"]
    status, err = await answer(http, "POST", redrive, A, json={"positions": ["0:999999"]})
    assert status == 404 and "0:999999" in err["error"]

    # fixed mapping: both rows map now; the list empties at once
    async with http.patch("/api/pipelines/orders", json={"data_mapping": FIXED},
                          headers=A) as r:
        assert r.status == 200
    first = body["dead_letters"][0]["position"]
    status, report = await answer(http, "POST", redrive, A, json={"positions": [first]})
    assert status == 200 and (report["total"], report["redriven"],
                              report["still_failing"]) == (1, 1, 0), report
    assert report["outcomes"][0]["outcome"].startswith("mapped: 1 row(s)")
    status, report = await answer(http, "POST", redrive, A)  # no body: all of them
    assert status == 200 and (report["total"], report["redriven"]) == (1, 1)
    assert report["marker"] is not None
    assert (await answer(http, "GET", path, A))[1]["total"] == 0
    status, report = await answer(http, "POST", redrive, A, json={})
    assert status == 200 and report["total"] == 0 and report["outcomes"] == []


async def test_lag_per_role_group_on_the_pipelines_partitions(
        web: tuple[Runtime, aiohttp.ClientSession]) -> None:
    rt, http = web
    await create(http, "meters")
    for n in range(5):
        await send(http, "meters", {"n": n})
    path = "/api/pipelines/meters/lag"

    async def groups() -> dict[str, Any]:
        status, body = await answer(http, "GET", path, A)
        assert status == 200, body
        return {g["role"]: g for g in body["groups"]}

    async def caught_up() -> dict[str, Any] | None:
        found = await groups()
        done = "map" in found and found["map"]["lag"] == 0 and \
            found["map"]["partitions"][0]["committed"] is not None
        return found if done else None

    found = await wait_until(caught_up, timeout=30, what="the map group's commit")
    raw_partition = partition_for(b"meters", rt.settings.topics.partitions)
    mapped = found["map"]
    assert mapped["group"] == rt.group("map") and mapped["members"] >= 1
    assert [(p["topic"], p["partition"]) for p in mapped["partitions"]] == [
        (rt.names.raw, raw_partition)]  # only the partition the pipeline's key maps to
    assert mapped["partitions"][0]["end"] >= 5
    assert set(found) <= {"map", "persist", "deliver"}
    for g in found.values():
        assert all(p["topic"] in (rt.names.raw, rt.names.transformed, rt.names.retry)
                   for p in g["partitions"])
    assert (await answer(http, "GET", path, B))[0] == 404
    assert (await answer(http, "GET", path))[0] == 401


async def test_the_page_and_its_assets(web: tuple[Runtime, aiohttp.ClientSession]) -> None:
    _, http = web
    async with http.get("/") as r:
        assert r.status == 200 and r.content_type == "text/html"
        policy = r.headers["Content-Security-Policy"]
        assert "script-src 'self'" in policy and "default-src 'none'" in policy
        page = await r.text()
    assert "<script>" not in page and "style=" not in page  # nothing inline for the CSP to allow
    for name, kind in (("vendor/uPlot.iife.min.js", "text/javascript"),
                       ("vendor/uPlot.min.css", "text/css"), ("console.js", "text/javascript"),
                       ("chart.js", "text/javascript"), ("panels.js", "text/javascript"),
                       ("util.js", "text/javascript"),
                       ("console.css", "text/css")):
        assert f"/static/{name}" in page
        async with http.get(f"/static/{name}") as r:
            assert r.status == 200 and r.content_type == kind, name
            assert r.headers["X-Content-Type-Options"] == "nosniff"
            assert len(await r.read()) > 500
    for path in ("/static/index.html", "/static/../dashboard.py", "/static/vendor/VENDORED.md",
                 "/static/%2e%2e/console.py"):
        async with http.get(path) as r:
            assert r.status == 404 and "error" in await r.json(), path
