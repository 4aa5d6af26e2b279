"""Roles as real processes: `dashpipe run <roles>` subprocesses on a test's topics and
database, as the Procfile runs them, to show what holds with N processes of a role."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp

from dashpipe.cli.stack.state import free_port
from dashpipe.settings import Settings
from tests.helpers import wait_until


def role_env(settings: Settings, **extra: str) -> dict[str, str]:
    """The environment that points `dashpipe run` at the test's services and names."""
    env = {**os.environ,
           "DASHPIPE_KAFKA_BOOTSTRAP_SERVERS": settings.kafka.bootstrap_servers,
           "DASHPIPE_KAFKA_GROUP_PREFIX": settings.kafka.group_prefix,
           "DASHPIPE_TOPIC_PREFIX": settings.topics.prefix,
           "DASHPIPE_DATABASE_SCHEMA_NAME": settings.database.schema_name,
           "DASHPIPE_EGRESS_ALLOW": '["127.0.0.0/8"]',
           "DASHPIPE_WEB_HOST": "127.0.0.1"}
    if settings.database.url is not None:
        env["DASHPIPE_DATABASE_URL"] = settings.database.url.get_secret_value()
    env.update(extra)
    return env


@dataclass
class Role:
    """One `dashpipe run <roles>` process; `url` is its web or metrics address."""

    roles: tuple[str, ...]
    env: dict[str, str]
    log: Path
    port: int = field(default_factory=free_port)
    proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> Role:
        port_var = "DASHPIPE_WEB_PORT" if "web" in self.roles else "DASHPIPE_WEB_METRICS_PORT"
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "dashpipe.cli", "run", *self.roles],
                env={**self.env, port_var: str(self.port)}, stdout=out,
                stderr=subprocess.STDOUT)
        return self

    async def ready(self, timeout: float = 60.0) -> None:
        """Until `/readyz` (web) or `/healthz` answers 200; fails if the process exited."""
        path = "/readyz" if "web" in self.roles else "/healthz"

        async def answers() -> bool:
            assert self.proc is not None and self.proc.poll() is None, self.log.read_text()
            try:
                async with aiohttp.ClientSession() as s, s.get(self.url + path) as r:
                    return r.status == 200
            except aiohttp.ClientError:
                return False

        await wait_until(answers, timeout, f"{' '.join(self.roles)} on {self.port} ready")

    def kill(self, sig: int = signal.SIGKILL) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(sig)
            if sig in (signal.SIGKILL, signal.SIGTERM):
                self.proc.wait(30)

    def stop(self) -> None:
        self.kill(signal.SIGTERM)
