"""A role that cannot start stops its process clearly: a real `dashpipe run web persist`
subprocess whose persist role fails, once before the web role listens (the database port is
closed) and once while it serves (persist's migration is cut off by the database). Each time:
one line naming the role and the cause, exit code 1, and no API request answered 500 (while
the process stops the API answers 503 with Retry-After, or the port is closed)."""

from __future__ import annotations

import asyncio
import itertools
import os
import re
import socket
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
from pydantic import SecretStr

from dashpipe.settings import ADMIN, ApiSettings, Settings
from dashpipe.signatures import sign_original
from tests.helpers import wait_until

TOKEN = "startup-admin-token"
PASSWORD = "not-in-any-log"  # a password in the URL, to show it never reaches the output
EXIT_DEADLINE = 60.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start(settings: Settings, database_url: str, port: int, log: Path) -> subprocess.Popen[str]:
    """`dashpipe run web persist` on the test's topics, its output (stdout and stderr) in
    `log`."""
    env = {**os.environ, "DASHPIPE_KAFKA_BOOTSTRAP_SERVERS": settings.kafka.bootstrap_servers,
           "DASHPIPE_KAFKA_GROUP_PREFIX": settings.kafka.group_prefix,
           "DASHPIPE_TOPIC_PREFIX": settings.topics.prefix,
           "DASHPIPE_DATABASE_URL": database_url,
           "DASHPIPE_DATABASE_SCHEMA_NAME": settings.database.schema_name,
           "DASHPIPE_WEB_HOST": "127.0.0.1", "DASHPIPE_WEB_PORT": str(port),
           "DASHPIPE_ADMIN_TOKEN": TOKEN}
    with log.open("w") as out:
        return subprocess.Popen([sys.executable, "-m", "dashpipe.cli", "run", "web", "persist"],
                                env=env, stdout=out, stderr=subprocess.STDOUT, text=True)


@dataclass
class Answers:
    """What `POST /api/pipelines` got, polled until the process exits."""

    statuses: Counter[int | str] = field(default_factory=Counter)
    wrong: list[str] = field(default_factory=list)  # any 5xx but a 503 with Retry-After

    @property
    def created(self) -> int:
        return self.statuses[201]


async def poll_api(port: int, process: subprocess.Popen[str], answers: Answers) -> None:
    """POST until the process exits (or the deadline passes: `exited` then fails the test)."""
    ids = itertools.count()
    deadline = time.monotonic() + EXIT_DEADLINE
    timeout = aiohttp.ClientTimeout(total=10)
    async with aiohttp.ClientSession(f"http://127.0.0.1:{port}", timeout=timeout) as http:
        while process.poll() is None and time.monotonic() < deadline:
            body = {"id": f"p{next(ids)}", "team_id": "team-a", "name": "startup",
                    "type": "realtime", "source_type": "webhook",
                    "source_config": {"webhook_secret": "s"}}
            try:
                async with http.post("/api/pipelines", json=body,
                                     headers={"Authorization": f"Bearer {TOKEN}"}) as r:
                    text = await r.text()
                    answers.statuses[r.status] += 1
                    if r.status >= 500 and not (r.status == 503 and "Retry-After" in r.headers
                                                and "stopping" in text):
                        answers.wrong.append(f"{r.status} {text}")
            except (aiohttp.ClientConnectionError, TimeoutError) as exc:
                answers.statuses[type(exc).__name__] += 1
            await asyncio.sleep(0.02)  # pacing, not synchronisation: the loop ends on exit


async def exited(process: subprocess.Popen[str]) -> int:
    """The exit code, waited for (bounded) without blocking the event loop."""
    return await asyncio.wait_for(asyncio.to_thread(process.wait), EXIT_DEADLINE)


def failure_lines(output: str) -> list[str]:
    return [line for line in output.splitlines() if "role persist" in line
            and "ready" not in line]


def assert_stopped_clearly(code: int, output: str, answers: Answers, cause: str) -> None:
    lines = failure_lines(output)
    assert code == 1, output
    assert len(lines) == 1, output
    assert re.search(r"\[ERROR\] role persist failed: \w+", lines[0]), lines[0]
    assert cause in lines[0], lines[0]
    assert "Traceback" not in output, output
    assert PASSWORD not in output
    assert not answers.wrong, answers.wrong


async def test_persist_that_cannot_reach_its_database_stops_the_process(
        settings: Settings, tmp_path: Path) -> None:
    closed = free_port()  # nothing listens there
    port = free_port()
    url = f"postgresql://dashpipe:{PASSWORD}@127.0.0.1:{closed}/dashpipe"
    started = time.monotonic()
    process = start(settings, url, port, tmp_path / "out.log")
    answers = Answers()
    try:
        await poll_api(port, process, answers)
        code = await exited(process)
    finally:
        process.kill()
    output = (tmp_path / "out.log").read_text()
    assert time.monotonic() - started < EXIT_DEADLINE
    assert_stopped_clearly(code, output, answers, "ConnectionRefusedError: [Errno 111]")


async def test_persist_failing_while_web_serves_stops_the_process_without_a_500(
        settings: Settings, db: asyncpg.Pool, tmp_path: Path) -> None:
    """persist's migration waits on a table this test is creating in the test's schema; once
    the API has answered 201, the test ends persist's database session (as a restart of
    PostgreSQL or an administrator does). The web role is serving when persist fails."""
    port = free_port()
    assert settings.database.url is not None
    url = settings.database.url.get_secret_value()
    async with db.acquire() as blocker:
        gate = blocker.transaction()
        await gate.start()
        await blocker.execute("CREATE TABLE pipeline_data (blocker integer)")
        xid = await blocker.fetchval("SELECT pg_current_xact_id()::text")
        process = start(settings, url, port, tmp_path / "out.log")
        answers = Answers()
        polling = asyncio.create_task(poll_api(port, process, answers))
        try:
            await wait_until(lambda: answers.created or process.poll() is not None, 60,
                             "the API to create a pipeline")
            assert process.poll() is None, (tmp_path / "out.log").read_text()
            waiter = await wait_until(lambda: blocker.fetchval(
                "SELECT pid FROM pg_locks WHERE locktype = 'transactionid' AND NOT granted "
                "AND transactionid::text = $1", xid), 30, "persist's migration to wait")
            await blocker.execute("SELECT pg_terminate_backend($1)", waiter)
            code = await exited(process)
            await asyncio.wait_for(polling, 15)
        finally:
            process.kill()
            polling.cancel()
            await gate.rollback()
    output = (tmp_path / "out.log").read_text()
    assert answers.created > 0, (answers.statuses, output)
    # asyncpg: ConnectionDoesNotExistError (AdminShutdownError from the server), then the
    # migration's transaction failing to roll back on the closed connection: the line names both
    assert_stopped_clearly(code, output, answers,
                           "terminating connection due to administrator command")


ROUTES = [("GET", "/api/pipelines"), ("POST", "/api/pipelines"), ("GET", "/api/pipelines/live"),
          ("PUT", "/api/pipelines/live"), ("PATCH", "/api/pipelines/live"),
          ("DELETE", "/api/pipelines/live"), ("POST", "/api/pipelines/live/pause"),
          ("POST", "/api/pipelines/live/resume"), ("POST", "/api/session"),
          ("GET", "/api/pipelines/live/events"), ("GET", "/api/pipelines/live/ws"),
          ("GET", "/api/pipelines/live/recent"), ("GET", "/api/pipelines/live/data"),
          ("POST", "/api/pipelines/live/replay"), ("GET", "/api/pipelines/live/replay")]


async def test_every_api_route_answers_503_with_retry_after_while_the_process_stops(
        start_roles: Any) -> None:
    """The web role as `dashpipe run` wires it, its runtime stopping: the management, data
    and replay routes answer 503; a webhook is still answered by Kafka's acknowledgement
    (the producer closes only after the web role has stopped)."""
    rt = await start_roles("web", api=ApiSettings(admin_token=SecretStr(TOKEN)))
    await rt.service.create({"id": "live", "team_id": "team-a", "name": "live",
                             "type": "realtime", "source_type": "webhook",
                             "source_config": {"webhook_secret": "s"}}, ADMIN)
    rt.stopping.set()
    auth = {"Authorization": f"Bearer {TOKEN}"}
    async with aiohttp.ClientSession(rt.web_url) as http:
        for method, path in ROUTES:
            async with http.request(method, path, json={}, headers=auth) as r:
                answer = await r.json()
                assert r.status == 503, (method, path, answer)
                assert r.headers["Retry-After"] == "5", (method, path)
                assert answer["error"].startswith("dashpipe is stopping"), (method, path)
        body = b'{"n": 1}'
        async with http.post("/webhooks/live", data=body,
                             headers={"x-webhook-signature": sign_original("s", body)}) as r:
            assert r.status == 202, await r.text()
    assert "live" in rt.registry.pipelines  # nothing was deleted while stopping
