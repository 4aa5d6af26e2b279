"""Kafka going away under a running web role: webhooks get 503 with Retry-After in bounded
time, never a 500, and nothing is acknowledged that was not written. Uses a broker of its own
(`dashpipe up` in a temporary state folder), so stopping it disturbs no other test."""

import asyncio
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from pydantic import SecretStr

from dashpipe import kafka, topics
from dashpipe.cli.roles import run_roles
from dashpipe.cli.stack import Endpoints
from dashpipe.runtime import open_runtime
from dashpipe.settings import ADMIN, KafkaSettings, WebhookSettings
from dashpipe.signatures import sign_original
from tests.conftest import make_settings

ENV_KEYS = ("DASHPIPE_KAFKA_BOOTSTRAP_SERVERS", "DASHPIPE_DATABASE_URL")


def dashpipe(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "dashpipe.cli", *args], env=env,
                          capture_output=True, text=True, timeout=240, check=False)


@pytest.fixture
def own_kafka(tmp_path: Path, services: Endpoints) -> Any:
    env = {k: v for k, v in os.environ.items() if k not in ENV_KEYS}
    env.update(DASHPIPE_STATE_DIR=str(tmp_path / "state"),
               DASHPIPE_DATABASE_URL=services.database_url.get_secret_value())
    up = dashpipe("up", env=env)
    assert up.returncode == 0, up.stderr
    exports = dashpipe("status", "--env", env=env).stdout.splitlines()
    bootstrap = exports[0].split("=", 1)[1]
    yield bootstrap, env
    dashpipe("down", "--purge", env=env)


async def test_webhook_answers_503_when_kafka_is_down(own_kafka: Any,
                                                      services: Endpoints) -> None:
    bootstrap, env = own_kafka
    ends = Endpoints(bootstrap, SecretStr(services.database_url.get_secret_value()), True, False)
    s = make_settings(ends, "down")
    s = type(s)(**{**s.__dict__, "kafka": KafkaSettings(bootstrap_servers=bootstrap,
                                                        request_timeout_ms=3000),
                   "webhook": WebhookSettings(ack_timeout_seconds=2)})
    async with kafka.started(kafka.admin(bootstrap, s.kafka)) as admin:
        await topics.create_all(admin, topics.catalogue(s.topics))
    async with open_runtime(s, bootstrap) as rt:
        task = asyncio.create_task(run_roles(rt, ["web"]))
        await asyncio.wait_for(rt.web_ready.wait(), 30)
        await rt.service.create({"id": "hook", "team_id": "t", "name": "hook",
                                 "type": "realtime", "source_type": "webhook",
                                 "source_config": {"webhook_secret": "sec"}}, ADMIN)
        body = b'{"n": 1}'
        headers = {"x-webhook-signature": sign_original("sec", body)}
        async with aiohttp.ClientSession(rt.web_url) as http:
            async with http.post("/webhooks/hook", data=body, headers=headers) as r:
                assert r.status == 202
            down = dashpipe("down", env=env)
            assert "kafka" in down.stdout
            started = time.monotonic()
            async with http.post("/webhooks/hook", data=body, headers=headers) as r:
                answer = await r.json()
                assert r.status == 503, answer
                assert int(r.headers["Retry-After"]) > 0
                assert "Kafka" in answer["error"]
            assert time.monotonic() - started < 10  # bounded: the ack timeout, not a hang
            async with http.get("/readyz") as r:
                assert r.status == 503
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
