"""What a real `dashpipe run web` process writes, in both formats: with
`DASHPIPE_LOG_FORMAT=json` every line is one JSON object, Faust's and aiokafka's included; a
browser closing an SSE stream and a request header over aiohttp's 8190-byte limit are INFO
lines without a traceback (the client still gets its 400), and no secret is written."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import aiohttp
import pytest

from dashpipe import kafka
from dashpipe.settings import Settings
from dashpipe.topics import TopicNames
from schemas.headers import Header
from tests.helpers import wait_until
from tests.processes import Role, role_env

TOKEN = "logs-admin-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
PIPELINE = {"id": "watched", "team_id": "team-a", "name": "watched", "type": "realtime",
            "source_type": "webhook", "source_config": {"webhook_secret": "hook-secret"}}


async def _create_pipeline(url: str) -> None:
    async with aiohttp.ClientSession(url, headers=AUTH) as http:
        async with http.post("/api/pipelines", json=PIPELINE) as r:
            assert r.status == 201, await r.text()

        async def visible() -> bool:
            async with http.get("/api/pipelines/watched") as r:
                return r.status == 200

        await wait_until(visible, 30, "the pipeline in the web role's registry")


async def _open_and_close_events(url: str) -> None:
    """An SSE client that reads the `ready` event, then goes away (as a closed tab does)."""
    async with aiohttp.ClientSession(url, headers=AUTH) as http, \
            http.get("/api/pipelines/watched/events") as r:
        assert r.status == 200, await r.text()
        async for line in r.content:
            if line.startswith(b"event: ready"):
                return
    raise AssertionError("no ready event")


async def _oversized_header(port: int) -> int:
    """The status aiohttp answers a request whose header value is 9 KB (limit 8190 bytes)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 9000
                     + b"\r\n\r\n")
        await writer.drain()
        status_line = await asyncio.wait_for(reader.readline(), 10)
    finally:
        writer.close()
    return int(status_line.split()[1])


@pytest.mark.parametrize("fmt", ["json", "text"])
async def test_a_web_process_logs_client_faults_as_info_in_either_format(
        settings: Settings, tmp_path: Path, fmt: str) -> None:
    log = tmp_path / "web.log"
    role = Role(("web",), role_env(settings, DASHPIPE_LOG_FORMAT=fmt,
                                   DASHPIPE_ADMIN_TOKEN=TOKEN), log).start()
    transformed = TopicNames.from_prefix(settings.topics.prefix).transformed
    producer = kafka.producer(settings.kafka.bootstrap_servers, settings.kafka)
    try:
        await role.ready()
        await _create_pipeline(role.url)
        await _open_and_close_events(role.url)
        async with kafka.started(producer):
            async def noticed_gone() -> bool:
                # a row for the closed stream: writing it is how the server learns it is gone
                await producer.send_and_wait(transformed, b'{"n": 1}', key=b"watched",
                                             headers=[(Header.PIPELINE_ID, b"watched")])
                text = log.read_text()  # (once as a traceback of `unhandled error`)
                return "events of watched: the client went away" in text or \
                    "/api/pipelines/watched/events" in text

            await wait_until(noticed_gone, 30, "the SSE disconnect in the log")
        assert await _oversized_header(role.port) in (400, 431)
        await wait_until(lambda: "Error handling request from" in log.read_text(), 10,
                         "the oversized header in the log")
    finally:
        role.stop()
    assert role.proc is not None and role.proc.returncode == 0, log.read_text()[-3000:]
    text = log.read_text()
    assert "Traceback" not in text, text
    assert settings.database.url is not None
    for secret in (TOKEN, settings.database.url.get_secret_value(), "hook-secret"):
        assert secret not in text
    if fmt == "text":
        assert "[ERROR]" not in text and "[CRITICAL]" not in text, text
        assert "+---" not in text  # no Faust terminal tables
        return
    docs = [json.loads(line) for line in text.splitlines()]  # every line is one object
    assert all(set(d) >= {"time", "level", "logger", "message", "roles"} for d in docs)
    assert not [d for d in docs if d["level"] in ("ERROR", "CRITICAL")]
    loggers = {d["logger"] for d in docs}
    assert "faust.worker" in loggers and any(n.startswith("aiokafka.") for n in loggers)
    gone = next(d for d in docs if "the client went away" in d["message"])
    assert gone["role"] == "web" and gone["pipeline_id"] == "watched"
    assert any("malformed request (LineTooLong, answered 400)" in d["message"] for d in docs)
    assert not any("exc" in d for d in docs)
