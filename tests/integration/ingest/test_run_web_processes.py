"""`dashpipe run web --processes 2` as an operator runs it, on port 0: the parent picks one
port that both children listen on (SO_REUSEPORT), and over fresh connections the kernel
spreads the webhooks over both; a pipeline's rate limit holds across them, a `webhook-id`
that reached both is mapped once, SIGTERM stops everything with exit 0, and a child killed
with SIGKILL makes the parent stop the other and fail."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from dashpipe.cli.stack.state import free_port, port_free
from dashpipe.settings import Settings
from dashpipe.signatures import new_secret
from tests.helpers import wait_until
from tests.integration.ingest.test_web_processes import ADMIN_H, TOKEN, _realtime, _standard
from tests.processes import role_env

ALLOWANCE = 60  # per minute
SEND_SECONDS = 10.0
OFFERED_PER_SECOND = 20


@dataclass
class Parent:
    """`dashpipe run web --processes N`; child i serves /metrics on `metrics + i`."""

    proc: subprocess.Popen[bytes]
    log: Path
    metrics: int
    n: int

    def text(self) -> str:
        return self.log.read_text(errors="replace")

    def metrics_url(self, i: int) -> str:
        return f"http://127.0.0.1:{self.metrics + i}"

    @property
    def url(self) -> str:
        found = re.search(rf"web on http://127\.0\.0\.1:(\d+): {self.n} processes", self.text())
        assert found, self.text()
        return f"http://127.0.0.1:{found[1]}"

    def pids(self) -> list[int]:
        """The children's pids, as the parent logged them (none before it started them)."""
        found = re.search(r"web processes started: (.*)", self.text())
        return [int(pid) for pid in re.findall(r"#\d+ pid (\d+)", found[1])] if found else []

    async def ready(self, timeout: float = 90.0) -> None:
        """Until every child's /readyz (on its metrics port) answers 200."""
        async def answers() -> bool:
            assert self.proc.poll() is None, self.text()
            try:
                async with aiohttp.ClientSession() as s:
                    for i in range(self.n):
                        async with s.get(self.metrics_url(i) + "/readyz") as r:
                            if r.status != 200:
                                return False
                return True
            except aiohttp.ClientError:
                return False

        await wait_until(answers, timeout, f"{self.n} web processes ready")

    async def ended(self, timeout: float) -> int:
        await wait_until(lambda: self.proc.poll() is not None, timeout, "the parent exited")
        return self.proc.returncode


def _metrics_base(n: int) -> int:
    """A free port followed by n - 1 free ones."""
    for _ in range(100):
        base = free_port()
        if all(port_free(base + i) for i in range(1, n)):
            return base
    raise AssertionError("no run of free ports")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def _spawn(n: int, env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    with log.open("ab") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "dashpipe.cli", "run", "web", "--processes", str(n)],
            env=env, stdout=out, stderr=subprocess.STDOUT)


@pytest.fixture
async def processes(settings: Settings, tmp_path: Path) -> AsyncIterator[Any]:
    started: list[Parent] = []

    async def start(n: int) -> Parent:
        base = _metrics_base(n)
        env = role_env(settings, DASHPIPE_ADMIN_TOKEN=TOKEN, DASHPIPE_WEB_PORT="0",
                       DASHPIPE_WEB_METRICS_PORT=str(base))
        log = tmp_path / f"web-processes-{len(started)}.log"
        parent = Parent(_spawn(n, env, log), log, base, n)
        started.append(parent)
        await parent.ready()
        return parent

    yield start
    for parent in started:
        if parent.proc.poll() is None:
            parent.proc.terminate()
            try:
                parent.proc.wait(60)
            except subprocess.TimeoutExpired:
                parent.proc.kill()
        for pid in parent.pids():
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)


def _fresh() -> aiohttp.ClientSession:
    """A new connection per request: the kernel picks a child for each."""
    return aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True))


async def _create(parent: Parent, body: dict[str, Any]) -> None:
    async with _fresh() as s, \
            s.post(parent.url + "/api/pipelines", json=body, headers=ADMIN_H) as r:
        assert r.status == 201, await r.text()


async def _known_by_all(parent: Parent, pid: str) -> None:
    """20 answers in a row over fresh connections know the pipeline: were a child still
    without it, all 20 reaching the other would have a chance of 2^-20."""
    async def twenty() -> bool:
        async with _fresh() as s:
            for _ in range(20):
                async with s.get(f"{parent.url}/api/pipelines/{pid}", headers=ADMIN_H) as r:
                    if r.status != 200:
                        return False
        return True

    await wait_until(twenty, 30, f"both children know {pid}")


async def _metric(url: str, family: str, pid: str) -> float:
    async with aiohttp.ClientSession() as s, s.get(url + "/metrics") as r:
        text = await r.text()
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith(family + "{") and f'pipeline_id="{pid}"' in line)


async def _offer(parent: Parent, secret: str, pid: str) -> Counter[int]:
    """Signed webhooks at OFFERED_PER_SECOND for SEND_SECONDS, each on a new connection; the
    answers by status."""
    answers: Counter[int] = Counter()
    async with _fresh() as s:
        start = time.monotonic()
        for i in range(int(SEND_SECONDS * OFFERED_PER_SECOND)):
            await asyncio.sleep(max(0.0, start + i / OFFERED_PER_SECOND - time.monotonic()))
            body = b'{"n": %d}' % i
            async with s.post(f"{parent.url}/webhooks/{pid}", data=body,
                              headers=_standard(secret, body, f"msg_{uuid.uuid4().hex}")) as r:
                answers[r.status] += 1
    return answers


async def _received_by_two(parent: Parent, secret: str, pid: str) -> Counter[str]:
    """One webhook (one `webhook-id`, one body) sent again over fresh connections until two
    children answered `received`: the child that has it answers its repeats `duplicate`."""
    body, msg_id = b'{"n": 7}', f"msg_{uuid.uuid4().hex}"
    headers = _standard(secret, body, msg_id)
    answers: Counter[str] = Counter()

    async def again() -> bool:
        async with _fresh() as s, \
                s.post(f"{parent.url}/webhooks/{pid}", data=body, headers=headers) as r:
            answers[(await r.json()).get("status") or str(r.status)] += 1
        return answers["received"] >= 2

    await wait_until(again, 60, "the webhook received by both children")
    return answers


async def test_two_processes_share_one_port_its_rate_limit_and_dedup_and_stop_on_sigterm(
        processes: Any, start_roles: Any, settings: Settings) -> None:
    parent: Parent = await processes(2)
    rt = await start_roles("map")
    secret = new_secret()
    await _create(parent, _realtime("limited", secret, rate_limit_per_minute=ALLOWANCE))
    await _create(parent, _realtime("orders", secret, rate_limit_per_minute=10_000))
    for pid in ("limited", "orders"):
        await _known_by_all(parent, pid)

    answers = await _offer(parent, secret, "limited")
    accepted = answers[202]
    print(f"rate limit {ALLOWANCE}/min over 2 processes: {dict(answers)} in {SEND_SECONDS} s")
    assert set(answers) <= {202, 429}, answers
    # the documented bound: the processes together admit the allowance plus one burst in any
    # minute (two unshared limiters would admit a burst each plus twice the rate: 140 here)
    assert accepted <= 2 * ALLOWANCE, answers
    # and the allowance is used, not starved: each process spends its share of the burst only
    # on the connections the kernel hands it, and shares follow that split a few heartbeats
    # late (1 s each; later still on a loaded machine), so part of a share can go unused in
    # 10 s (a CI run admitted 43 of 60)
    assert accepted >= 0.5 * ALLOWANCE, answers
    per_child = [await _metric(parent.metrics_url(i), "dashpipe_received_total", "limited")
                 for i in range(2)]
    assert all(n > 0 for n in per_child) and sum(per_child) == accepted, per_child

    # the same webhook-id reached both children: two Bronze records, one mapped row
    repeats = await _received_by_two(parent, secret, "orders")
    assert set(repeats) <= {"received", "duplicate"}, repeats
    await wait_until(lambda: rt.metrics.value("dashpipe_map_repeats_total",
                                              pipeline_id="orders") == 1, 60,
                     "the map role skipped the second copy")
    assert rt.metrics.value("dashpipe_mapped_total", pipeline_id="orders") == 1

    children = parent.pids()
    assert len(children) == 2 and all(_alive(pid) for pid in children)
    parent.proc.send_signal(signal.SIGTERM)
    assert await parent.ended(60) == 0, parent.text()
    assert not any(_alive(pid) for pid in children)
    assert "did not stop" not in parent.text()


async def test_a_child_killed_stops_the_other_and_fails_the_parent(processes: Any) -> None:
    parent: Parent = await processes(2)
    first, second = parent.pids()
    os.kill(second, signal.SIGKILL)
    assert await parent.ended(60) == 1, parent.text()
    assert not _alive(first)
    assert f"web process #1 (pid {second}) ended (signal SIGKILL): stopping the others" \
        in parent.text()
