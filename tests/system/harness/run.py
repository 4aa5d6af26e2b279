"""One chaos run, start to verdict: its own stack, two processes of every role behind a
round-robin proxy, the two pipelines, the load and the nemesis for `minutes`, then quiesce
(load and nemesis stopped, everything back up, every consumer group caught up, rows and
deliveries no longer changing) and the checks against PostgreSQL and the sink receiver."""

from __future__ import annotations

import asyncio
import base64
import logging
import os
import random
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import aiohttp
import orjson

from tests.system.harness import api, observe, sink
from tests.system.harness.api import ItemFeed
from tests.system.harness.machine import CpuSampler
from tests.system.harness.nemesis import Nemesis
from tests.system.harness.proxy import Backend, Proxy
from tests.system.harness.report import Verdict, verdict
from tests.system.harness.roles import ROLES, Fleet
from tests.system.harness.sender import Sender
from tests.system.harness.stack import Stack, clean_env
from tests.system.harness.waiting import until

log = logging.getLogger(__name__)

TEAM, TEAM_TOKEN, ADMIN_TOKEN = "chaos", "chaos-team-token", "chaos-admin-token"
WEBHOOKS, ITEMS = "chaos-webhooks", "chaos-items"


@dataclass(frozen=True)
class Options:
    minutes: float = 3.0
    seed: int = 0
    faults: bool = True
    rate: float = 20.0  # webhooks per second
    items_per_second: float = 5.0
    workdir: Path | None = None  # default: a new temporary folder


def secret() -> str:
    return "whsec_" + base64.b64encode(os.urandom(24)).decode()


def pipelines(api_url: str, sink_url: str, webhook_secret: str, sink_secret: str
              ) -> list[dict[str, Any]]:
    return [
        {"id": WEBHOOKS, "team_id": TEAM, "name": "Chaos webhooks", "type": "realtime",
         "source_type": "webhook", "source_config": {"webhook_secret": webhook_secret},
         "persist_data": True, "rate_limit_per_minute": 1_000_000,
         "sinks": [{"sink_type": "webhook", "sink_config": {
             "url": sink_url, "secret": sink_secret, "signing": "standard",
             "timeout_seconds": 10, "concurrency": 8}}]},
        {"id": ITEMS, "team_id": TEAM, "name": "Chaos items", "type": "polling",
         "interval_seconds": 1, "source_type": "http_api",
         "source_config": {"url": api_url, "params": {"limit": 200}, "timeout_seconds": 10,
                           "cursor": {"path": "last_seq", "param": "after", "initial": 0}},
         "data_mapping": {"records": "items[*]",
                          "time": {"path": "created_ms", "format": "epoch_ms"},
                          "fields": {"id": {"path": "id", "type": "string", "required": True},
                                     "seq": {"path": "seq", "type": "integer"},
                                     "value": {"path": "value", "type": "integer"}}},
         "persist_data": True},
    ]


def role_env(stack: Stack) -> dict[str, str]:
    return clean_env(
        DASHPIPE_STATE_DIR=str(stack.state_dir),
        DASHPIPE_KAFKA_BOOTSTRAP_SERVERS=stack.bootstrap,
        DASHPIPE_DATABASE_URL=stack.database_url,
        DASHPIPE_API_TOKENS=orjson.dumps({TEAM_TOKEN: TEAM}).decode(),
        DASHPIPE_ADMIN_TOKEN=ADMIN_TOKEN,
        DASHPIPE_SESSION_SECRET="chaos-session-secret-shared-by-every-web-process",
        DASHPIPE_EGRESS_ALLOW='["127.0.0.0/8"]',
        # a failed delivery comes back within seconds, not after the production schedule
        DASHPIPE_DELIVERY_RETRY_SCHEDULE="[1, 2, 5, 10, 30, 60, 60]",
        DASHPIPE_WEB_HOST="127.0.0.1")


async def apply(proxy_url: str, fleet: Fleet, definitions: list[dict[str, Any]]) -> None:
    """Create the pipelines with the team token, then wait until every web process serves
    them (read with the admin token)."""
    team = {"Authorization": f"Bearer {TEAM_TOKEN}"}
    admin = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    async with aiohttp.ClientSession() as session:
        for d in definitions:
            async with session.post(f"{proxy_url}/api/pipelines", json=d, headers=team) as r:
                if r.status not in (200, 201):
                    raise AssertionError(f"creating {d['id']}: {r.status} {await r.text()}")

        async def everywhere() -> bool:
            for web in fleet.of("web"):
                for d in definitions:
                    async with session.get(f"{web.url}/api/pipelines/{d['id']}",
                                           headers=admin) as r:
                        if r.status != 200:
                            return False
            return True

        await until(everywhere, 60, "both pipelines on every web process")


async def session_check(proxy_url: str) -> str:
    """A browser session made on one web process is honoured by the others."""
    jar = aiohttp.CookieJar(unsafe=True)  # cookies for 127.0.0.1
    async with aiohttp.ClientSession(cookie_jar=jar) as session:
        async with session.post(f"{proxy_url}/api/session",
                                headers={"Authorization": f"Bearer {TEAM_TOKEN}"}) as r:
            if r.status not in (200, 201, 204):
                return f"POST /api/session answered {r.status}"
        answers = []
        for _ in range(4):  # round robin: both web processes twice
            async with session.get(f"{proxy_url}/api/pipelines") as r:
                answers.append(r.status)
    return "ok" if set(answers) == {200} else f"cookie reads answered {answers}"


async def progress(out: Callable[[str], None], started: float, sender: Sender,
                   sink_rx: sink.SinkReceiver, nemesis: Nemesis, stack: Stack,
                   fleet: Fleet) -> None:
    def groups() -> dict[str, list[int]]:
        pids = {r: [p.pid for p in fleet.procs if p.role == r and p.pid] for r in ROLES}
        return {"harness": [os.getpid()], "web": pids.pop("web"),
                "other roles": [pid for group in pids.values() for pid in group],
                "kafka": [pid for n in range(1, stack.brokers + 1)
                          if (pid := stack.broker_pid(n))]}

    cpu = CpuSampler(groups)
    while True:
        await asyncio.sleep(30)
        rows = await observe.row_count(stack.database_url, [WEBHOOKS, ITEMS])
        out(f"chaos: t+{time.time() - started:.0f}s acked {len(sender.acked_ids())}, rows "
            f"{rows}, delivered ids {len(sink_rx.delivered_ids())}, pending posts "
            f"{sender.pending()}, faults {len(nemesis.faults)}; {cpu.sample()}")


def record(path: Path, sender: Sender, sink_rx: sink.SinkReceiver, feed: ItemFeed,
           nemesis: Nemesis, proxy: Proxy) -> None:
    """Everything the harness saw, for a post-mortem (`run.json` beside the logs)."""
    doc = {
        "posts": [{"id": p.msg_id, "repeat": p.repeat, "started": p.started,
                   "acked_at": p.acked_at, "outcome": p.outcome,
                   "attempts": [asdict(a) for a in p.attempts]}
                  for p in [*sender.posts.values(), *sender.repeats]],
        "faults": [asdict(f) for f in nemesis.faults],
        "polls": [asdict(r) for r in feed.requests],
        "deliveries": dict(sink_rx.deliveries), "delivered_for": sink_rx.source_of,
        "first_delivery": sink_rx.first_at, "extra_delivery_times": sink_rx.repeated_at,
        "proxy": [[t, b, s, n] for (t, b, s), n in sorted(proxy.buckets.items())],
    }
    path.write_bytes(orjson.dumps(doc))


async def quiesce(out: Callable[[str], None], stack: Stack, fleet: Fleet, feed: ItemFeed,
                  sink_rx: sink.SinkReceiver, timeout: float = 600.0) -> str:
    """Everything back, every group caught up, rows and deliveries no longer changing.
    Returns "" when that was reached, else what was still wrong at the deadline."""
    started = time.monotonic()
    await stack.up()
    await fleet.ready(timeout=180)
    feed.freeze()
    await until(lambda: _true(feed.served_max >= feed.generated), 180,
                "the poller has fetched every item")
    seen: dict[str, Any] = {}

    async def settled() -> tuple[int, int] | None:
        lag: dict[str, Any]
        try:
            lag = dict(await asyncio.wait_for(observe.group_lag(stack.bootstrap), 60))
        except TimeoutError:
            lag = {"lag": "no answer from Kafka within 60 s"}
        rows = await observe.row_count(stack.database_url, [WEBHOOKS, ITEMS])
        seen.update(lag=lag, rows=rows, deliveries=sink_rx.total())
        if time.monotonic() - seen.get("said", 0.0) > 30:
            seen["said"] = time.monotonic()
            out(f"chaos: quiescing: lag {lag}, rows {rows}, deliveries {sink_rx.total()}")
        if any(lag.values()) or not isinstance(rows, int):
            return None
        return rows, sink_rx.total()

    try:
        await observe.wait_quiet(settled, quiet=10, timeout=timeout)
    except TimeoutError:
        seen.pop("said", None)
        return f"not quiesced within {timeout:.0f} s: {seen}"
    out(f"chaos: quiesced in {time.monotonic() - started:.0f} s")
    return ""


async def _true(value: bool) -> bool:
    return value


async def run_chaos(opts: Options, out: Callable[[str], None] = print) -> Verdict:
    base = opts.workdir or Path(tempfile.mkdtemp(prefix="dashpipe-chaos-"))
    (base / "logs").mkdir(parents=True, exist_ok=True)
    stack = Stack(base / "state", log_path=base / "logs" / "stack.log")
    rng = random.Random(opts.seed)
    out(f"chaos: seed {opts.seed}, {opts.minutes:g} min of load, faults "
        f"{'on' if opts.faults else 'off'}, logs in {base / 'logs'}")
    t0 = time.monotonic()
    try:
        await stack.up(first=True)
        out(f"chaos: stack up in {time.monotonic() - t0:.0f} s ({stack.brokers} brokers)")
        feed = ItemFeed(per_second=opts.items_per_second, run=f"s{opts.seed}")
        sink_rx = sink.SinkReceiver(secret())
        async with api.serve(feed) as api_url, sink.serve(sink_rx) as sink_url:
            fleet = Fleet.make(role_env(stack), base / "logs")
            fleet.start()
            supervisor = asyncio.create_task(fleet.supervise())
            try:
                return await _run(opts, out, stack, fleet, feed, sink_rx, api_url, sink_url, rng)
            finally:
                supervisor.cancel()
                await asyncio.to_thread(fleet.stop)
    finally:
        stack.save_logs(base / "logs")
        try:
            await stack.down()
        except Exception as exc:  # the verdict matters more than a failed clean-up
            out(f"chaos: dashpipe down failed: {exc}")


async def _run(opts: Options, out: Callable[[str], None], stack: Stack, fleet: Fleet,
               feed: ItemFeed, sink_rx: sink.SinkReceiver, api_url: str, sink_url: str,
               rng: random.Random) -> Verdict:
    t0 = time.monotonic()
    await fleet.ready()
    out(f"chaos: {len(fleet.procs)} role processes ready in {time.monotonic() - t0:.0f} s")
    proxy = Proxy([Backend(p.name, p.url) for p in fleet.of("web")])
    async with proxy.serve() as proxy_url:
        hook_secret = secret()
        await apply(proxy_url, fleet, pipelines(api_url, sink_url, hook_secret, sink_rx.secret))
        sessions = await session_check(proxy_url)
        sender = Sender(f"{proxy_url}/webhooks/{WEBHOOKS}", hook_secret, rng,
                        run=f"s{opts.seed}", rate=opts.rate)
        nemesis = Nemesis(stack, fleet, random.Random(rng.random()), out=out)
        started = time.time()
        tasks = [asyncio.create_task(sender.run_load())]
        if opts.faults:
            tasks.append(asyncio.create_task(nemesis.run()))
        watcher = asyncio.create_task(progress(out, started, sender, sink_rx, nemesis, stack,
                                               fleet))
        try:
            done, _ = await asyncio.wait(tasks, timeout=opts.minutes * 60)
            for task in done:  # a task that ended early failed
                task.result()
            load_end = time.time()
            sender.stop()
            nemesis.stop()
            await asyncio.gather(*tasks)
        finally:
            watcher.cancel()
        out(f"chaos: load stopped after {load_end - started:.0f} s; "
            f"{sender.pending()} posts still pending")
        stuck = await quiesce(out, stack, fleet, feed, sink_rx)
        if stuck:
            out(f"chaos: {stuck}")
        rows = await observe.rows(stack.database_url, WEBHOOKS)
        polled = await observe.rows(stack.database_url, ITEMS)
        try:
            bronze = await asyncio.wait_for(observe.read_topics(stack.bootstrap, WEBHOOKS), 300)
        except TimeoutError:
            out("chaos: reading the topics back took over 300 s; the report goes without")
            bronze = None
        v = verdict(sender, rows, polled, sink_rx, feed, nemesis.faults, fleet.exits, bronze,
                    load_end)
        v.stuck = stuck
        record(stack.state_dir.parent / "logs" / "run.json", sender, sink_rx, feed, nemesis, proxy)
        v.lines.insert(0, f"browser session across web processes: {sessions}; proxy answers "
                          f"{dict(sorted(proxy.answers.items()))}")
        return v
