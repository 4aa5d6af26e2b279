"""`dashpipe demo` in-process against the test's topics: the sample API, a poll of it landing in
Bronze, the printed curl command accepted by the web role, and a clean stop."""

import asyncio
import shlex
from typing import Any

import aiohttp
import orjson

from dashpipe.cli import demo, sample_api
from dashpipe.cli.sample_api import QuakeFeed
from dashpipe.runtime import open_runtime
from dashpipe.settings import Settings
from schemas.records import RawMetadata
from tests.helpers import read_topic, wait_until


class Clock:
    def __init__(self) -> None:
        self.now = 1_767_225_600.0  # 2026-01-01

    def __call__(self) -> float:
        return self.now


def test_quakes_appear_over_time_and_the_cursor_misses_none() -> None:
    clock = Clock()
    feed = QuakeFeed(seed=7, every_seconds=3, backlog_seconds=30, clock=clock)
    feed.advance()
    first = feed.since(0, 1000)
    assert 10 <= len(first) <= 30
    quake = first[0]
    assert set(quake) >= {"id", "properties", "geometry"}
    assert {"mag", "place", "time"} <= set(quake["properties"])
    lon, lat, depth = quake["geometry"]["coordinates"]
    assert -180 <= lon <= 180 and -90 <= lat <= 90 and depth > 0
    times = [q["properties"]["time"] for q in first]
    assert times == sorted(set(times)) and times[-1] <= clock.now * 1000
    assert len({q["id"] for q in first}) == len(first)

    clock.now += 9
    feed.advance()
    new = feed.since(times[-1], 1000)
    assert 3 <= len(new) <= 9 and all(q["properties"]["time"] > times[-1] for q in new)
    assert feed.since(0, 1000) == first + new  # nothing rewritten, nothing lost


async def test_sample_api_answers_since_and_limit() -> None:
    async with sample_api.serve() as url, aiohttp.ClientSession() as http:
        async with http.get(url, params={"limit": "5"}) as r:
            page = await r.json()
        assert page["type"] == "FeatureCollection" and len(page["features"]) == 5
        last = page["metadata"]["last_time"]
        assert last == page["features"][-1]["properties"]["time"]
        async with http.get(url, params={"since": str(last)}) as r:
            rest = await r.json()
        assert all(f["properties"]["time"] > last for f in rest["features"])
        newest = rest["metadata"]["last_time"]
        async with http.get(url, params={"since": str(newest + 60_000)}) as r:
            none = await r.json()
        assert none["features"] == [] and none["metadata"]["last_time"] == newest + 60_000
        async with http.get(url, params={"since": "yesterday"}) as r:
            assert r.status == 400


def curl_request(command: str) -> tuple[str, dict[str, str], bytes]:
    """The URL, headers and body of the printed `curl` command, as a shell would pass them."""
    argv = shlex.split(command)
    assert argv[:4] == ["curl", "-i", "-X", "POST"]
    headers = dict(argv[i + 1].split(": ", 1) for i, a in enumerate(argv) if a == "-H")
    body = argv[argv.index("--data-raw") + 1].encode()
    return argv[4], headers, body


async def test_demo_polls_into_bronze_and_its_curl_is_accepted(start_roles: Any,
                                                                settings: Settings) -> None:
    async with sample_api.serve() as api_url:
        rt = await start_roles("web", "poll")
        info = await demo.setup_demo(rt, api_url)
        assert info.outcomes == {demo.QUAKES: "created", demo.WEBHOOK: "created"}

        async def polled() -> list[Any]:
            records = await read_topic(settings, rt.names.raw, 1, timeout=1)
            return [r for r in records if r.key == demo.QUAKES.encode()]

        [record, *_] = await wait_until(polled, timeout=30, what="a poll in Bronze")
        doc = orjson.loads(record.value)
        assert doc["type"] == "FeatureCollection" and doc["features"]
        meta = RawMetadata.from_headers(record.headers)
        assert (meta.source, meta.team_id, meta.http_status) == ("poll", "demo", 200)
        status = await wait_until(lambda: (s := rt.registry.status.get(demo.QUAKES)) and
                                  s.cursor and s, what="the stored cursor")
        assert status.cursor == doc["metadata"]["last_time"]

        assert rt.web_url is not None
        command = info.curl(rt.web_url)
        secret = rt.registry.pipelines[demo.WEBHOOK].source_config.webhook_secret
        assert secret.startswith("whsec_") and secret not in command
        url, headers, body = curl_request(command)
        assert url == f"{rt.web_url}/webhooks/{demo.WEBHOOK}"
        async with aiohttp.ClientSession() as http:
            for _ in range(2):  # the original scheme never expires: the same curl works again
                async with http.post(url, data=body, headers=headers) as r:
                    assert r.status == 202, await r.text()
        hooks = await wait_until(
            lambda: _with_key(read_topic(settings, rt.names.raw, 3, timeout=1), demo.WEBHOOK),
            what="the webhook in Bronze")
        assert hooks[0].value == demo.WEBHOOK_BODY

        # a second `dashpipe demo` (a new process, the same sample API) keeps the secret
        async with open_runtime(settings, settings.kafka.bootstrap_servers) as second:
            again = await demo.setup_demo(second, api_url)
        assert again.outcomes == {demo.QUAKES: "unchanged", demo.WEBHOOK: "unchanged"}
        assert again.curl(rt.web_url) == command


async def _with_key(records: Any, key: str) -> list[Any]:
    return [r for r in await records if r.key == key.encode()]


async def test_run_demo_prints_how_to_use_it_and_the_records_as_they_land(
        settings: Settings) -> None:
    lines: list[str] = []
    task = asyncio.create_task(demo.run_demo(settings, settings.kafka.bootstrap_servers,
                                             local_kafka=False, out=lines.append))
    try:
        await wait_until(lambda: task.done() or any(
            line.startswith(f"bronze  {demo.QUAKES} ") for line in lines),
            timeout=40, what="a Bronze line of demo-quakes")
        banner = await wait_until(lambda: task.done() or next(
            (line for line in lines if "admin token" in line), None), what="the banner")
        assert not task.done(), task.exception()
        assert "admin token  " in banner and "generated for this run" in banner
        assert "kafka-console-consumer.sh --bootstrap-server" in banner
        assert f"--topic {settings.topics.prefix}.raw --from-beginning" in banner
        assert "print.key=true" in banner and "print.headers=true" in banner
        command = next(line.strip() for line in banner.splitlines()
                       if line.strip().startswith("curl -i"))
        url, headers, body = curl_request(command)
        async with aiohttp.ClientSession() as http:
            async with http.post(url, data=body, headers=headers) as r:
                assert r.status == 202, await r.text()
            await wait_until(lambda: any(line.startswith(f"bronze  {demo.WEBHOOK} ")
                                         for line in lines), what="the webhook line")
        # every quake is mapped to a typed row (the sample feed has no bad ones)
        silver = await wait_until(lambda: [line for line in lines
                                           if line.startswith(f"silver  {demo.QUAKES} ")],
                                  timeout=30, what="a transformed demo-quakes row")
        assert '"quake_id":"dp' in silver[0] and '"mag":' in silver[0]
        await wait_until(lambda: any(line.startswith(f"silver  {demo.WEBHOOK} ")
                                     for line in lines), what="the webhook's row")
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    async with aiohttp.ClientSession() as http:  # stopped: the web role no longer answers
        try:
            async with http.get(url.split("/webhooks/")[0] + "/healthz") as r:
                raise AssertionError(f"web still answers {r.status}")
        except aiohttp.ClientConnectionError:
            pass
