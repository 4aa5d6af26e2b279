"""`dashpipe demo` (what `make run` starts): data moving through the log within seconds.

In one process: the sample earthquake API (`dashpipe.cli.sample_api`), two pipelines of team
`demo` applied to the log (`demo-quakes` polls the sample API every 5 s with an incremental
cursor and maps each quake to a typed row; `demo-webhook` receives signed webhooks, passed
through unmapped), every role, and a tail of Bronze and of the transformed topic that prints
each demo record and row as it lands. The webhook secret is generated once and then read back
from the registry, so a `curl` printed by an earlier run keeps working.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import shlex
import signal
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field, replace
from ipaddress import ip_network
from typing import Any

import orjson
from aiokafka import ConsumerRecord
from pydantic import SecretStr

from dashpipe import kafka
from dashpipe.cli import quakes, sample_api
from dashpipe.cli.roles import ROLES, run_roles
from dashpipe.cli.stack import state as stack_state
from dashpipe.errors import DashpipeError
from dashpipe.runtime import Runtime, open_runtime
from dashpipe.settings import Settings
from dashpipe.signatures import ORIGINAL_HEADER, new_secret, sign_original
from schemas.pipeline import WebhookSource

log = logging.getLogger(__name__)

TEAM = "demo"
QUAKES = "demo-quakes"
WEBHOOK = "demo-webhook"
WEBHOOK_BODY = b'{"event":"order.created","order_id":"A-1001","amount":42.5,"currency":"EUR"}'


@dataclass(frozen=True)
class DemoInfo:
    """What the demo applied, and how to send its webhook. It holds a signature of the fixed
    body (the original scheme, which never expires), never the secret itself."""

    api_url: str
    outcomes: dict[str, str]  # pipeline id -> created | updated | unchanged
    signature: str = field(repr=False)
    body: bytes = WEBHOOK_BODY

    def webhook_headers(self) -> dict[str, str]:
        return {"content-type": "application/json", ORIGINAL_HEADER: self.signature}

    def curl(self, web_url: str) -> str:
        """A ready-to-paste command that posts the signed body to `demo-webhook`."""
        argv = ["curl", "-i", "-X", "POST", f"{web_url}/webhooks/{WEBHOOK}"]
        for name, value in self.webhook_headers().items():
            argv += ["-H", f"{name}: {value}"]
        return shlex.join([*argv, "--data-raw", self.body.decode()])




def pipelines(api_url: str, webhook_secret: str) -> list[dict[str, Any]]:
    """The two demo definitions, as `dashpipe pipelines apply` takes them."""
    return [
        {"id": QUAKES, "team_id": TEAM, "name": "Sample earthquakes", "type": "polling",
         "source_type": "http_api", "interval_seconds": 5,
         "source_config": {"url": api_url, "params": {"limit": 100},
                           "cursor": {"path": "metadata.last_time", "param": "since"}},
         "data_mapping": quakes.MAPPING, "persist_data": True},
        {"id": WEBHOOK, "team_id": TEAM, "name": "Demo webhook", "type": "realtime",
         "source_type": "webhook", "source_config": {"webhook_secret": webhook_secret}},
    ]


def webhook_secret(rt: Runtime) -> str:
    """The secret `demo-webhook` already has (the registry holds it unmasked), else a new one."""
    existing = rt.registry.pipelines.get(WEBHOOK)
    if existing is not None and isinstance(existing.source_config, WebhookSource):
        return existing.source_config.secrets()[0]
    return new_secret()


async def setup_demo(rt: Runtime, api_url: str) -> DemoInfo:
    """Apply the demo pipelines (idempotent: a second run reports them unchanged)."""
    secret = webhook_secret(rt)
    outcomes = {}
    for definition in pipelines(api_url, secret):
        pipeline, outcome = await rt.service.apply(definition)
        outcomes[pipeline.id] = outcome
    return DemoInfo(api_url, outcomes, sign_original(secret, WEBHOOK_BODY))


def describe(record: ConsumerRecord) -> str:
    """One line for a Bronze record: where it landed and what it holds."""
    headers = {k: v.decode(errors="replace") for k, v in record.headers}
    key = record.key.decode(errors="replace") if record.key else "-"
    where = f"{key} p{record.partition}@{record.offset} {headers.get('dashpipe-source', '?')}"
    try:
        doc = orjson.loads(record.value or b"")
    except orjson.JSONDecodeError:
        return f"{where} {len(record.value or b'')} bytes"
    features = doc.get("features") if isinstance(doc, dict) else None
    if isinstance(features, list):
        if not features:
            return f"{where} no new quakes"
        props = features[-1].get("properties", {}) if isinstance(features[-1], dict) else {}
        count = f"{len(features)} quake{'s' if len(features) > 1 else ''}"
        return f"{where} {count}, newest M{props.get('mag')} {props.get('place')}"
    text = (record.value or b"").decode(errors="replace")
    return f"{where} {text[:100]}{'…' if len(text) > 100 else ''}"


async def tail(rt: Runtime, topic: str, line: Callable[[ConsumerRecord], str | None],
               out: Callable[[str], None], started: asyncio.Event | None = None) -> None:
    """Print `line(record)` for every record of `topic` written from now on (None: skip)."""
    consumer = kafka.consumer(rt.bootstrap, rt.settings.kafka, group_id=None)
    async with kafka.started(consumer):
        tps = await kafka.partitions(consumer, topic)
        consumer.assign(tps)
        for tp, end in (await consumer.end_offsets(tps)).items():
            consumer.seek(tp, end)
        if started is not None:
            started.set()
        while True:
            batch = await consumer.getmany(timeout_ms=1000)
            for records in batch.values():
                for record in records:
                    text = line(record)
                    if text is not None:
                        out(text)


def bronze_line(ids: set[str]) -> Callable[[ConsumerRecord], str | None]:
    def line(record: ConsumerRecord) -> str | None:
        key = record.key.decode(errors="replace") if record.key is not None else None
        return f"bronze  {describe(record)}" if key in ids else None
    return line


def silver_line(ids: set[str]) -> Callable[[ConsumerRecord], str | None]:
    def line(record: ConsumerRecord) -> str | None:
        row = orjson.loads(record.value or b"{}")
        if row.get("pipeline_id") not in ids:
            return None
        lineage = row.get("lineage", {})
        fields = orjson.dumps(row.get("fields")).decode()
        return (f"silver  {row['pipeline_id']} {row.get('time')} "
                f"(raw p{lineage.get('raw_partition')}@{lineage.get('raw_offset')}"
                f" row {lineage.get('row_index')}) {fields[:120]}")
    return line


def watch_command(settings: Settings, bootstrap: str, local_kafka: bool, topic: str) -> str:
    """Kafka's console consumer on Bronze, with keys and headers."""
    options = ["--bootstrap-server", bootstrap, "--topic", topic, "--from-beginning",
               "--property", "print.key=true", "--property", "print.headers=true"]
    if local_kafka:
        try:
            from dashpipe.cli.stack.kafka import libs_dir

            classpath = f"{libs_dir(settings.stack)}/*"
            return shlex.join(["java", "-cp", classpath,
                               "org.apache.kafka.tools.consumer.ConsoleConsumer", *options])
        except DashpipeError as exc:
            log.debug("no local Kafka jars: %s", exc)
    return shlex.join(["kafka-console-consumer.sh", *options])


def banner(rt: Runtime, info: DemoInfo, token: str | None, watch: str) -> str:
    """What to do next. `token` is printed only when this run generated it."""
    web = rt.web_url or ""
    bearer = f"Bearer {token}" if token else "Bearer $DASHPIPE_ADMIN_TOKEN"
    applied = ", ".join(f"{pid} {outcome}" for pid, outcome in info.outcomes.items())
    token_line = (f"{token}  (generated for this run; set DASHPIPE_ADMIN_TOKEN to choose one)"
                  if token else "the value of $DASHPIPE_ADMIN_TOKEN")
    list_cmd = f'curl -s -H "Authorization: {bearer}" {shlex.quote(web + "/api/pipelines")}'
    return "\n".join([
        "",
        "dashpipe demo is running (Ctrl-C stops)",
        f"  sample API   {info.api_url}  (new quakes every few seconds; ?since=<epoch ms>)",
        f"  pipelines    team {TEAM}: {applied}",
        f"  web          {web}  (the live page: open it, sign in with the admin token)",
        f"  admin token  {token_line}",
        "",
        "List the pipelines through the API (or: dashpipe pipelines list):",
        f"  {list_cmd}",
        f"Send a signed webhook to {WEBHOOK}:",
        f"  {info.curl(web)}",
        "Watch Bronze with Kafka's console consumer, from another shell:",
        f"  {watch}",
        "",
        "Bronze records of the demo pipelines as they land:",
    ])


def demo_settings(settings: Settings) -> tuple[Settings, str | None]:
    """The settings to run with, and the admin token when this run generated one. A busy web
    port falls back to a free one (the banner prints the address)."""
    generated = None
    api = settings.api
    if api.admin_token is None:
        generated = secrets.token_urlsafe(24)
        api = api.model_copy(update={"admin_token": SecretStr(generated)})
    web = settings.web
    if web.port and not stack_state.port_free(web.port):
        log.warning("port %d is busy: the web role listens on a free port instead", web.port)
        web = web.model_copy(update={"port": 0})
    # the sample API listens on loopback, which the egress policy refuses unless allowed
    loopback = ip_network("127.0.0.1/32")
    egress = settings.egress
    if loopback not in egress.allow:
        egress = egress.model_copy(update={"allow": [*egress.allow, loopback]})
    return replace(settings, api=api, web=web, egress=egress), generated


async def run_demo(settings: Settings, bootstrap: str, local_kafka: bool = True,
                   out: Callable[[str], None] = print) -> None:
    """Run the demo until Ctrl-C or SIGTERM (or until cancelled), writing to `out`."""

    settings, token = demo_settings(settings)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    try:
        async with sample_api.serve() as api_url, open_runtime(settings, bootstrap) as rt:
            info = await setup_demo(rt, api_url)
            tailing, tailing_silver = asyncio.Event(), asyncio.Event()
            ids = {QUAKES, WEBHOOK}
            tasks = [asyncio.create_task(tail(rt, rt.names.raw, bronze_line(ids), out, tailing)),
                     asyncio.create_task(tail(rt, rt.names.transformed, silver_line(ids), out,
                                              tailing_silver)),
                     asyncio.create_task(stop.wait())]
            try:
                if await _wait(_both(tailing, tailing_silver), tasks):
                    tasks.append(asyncio.create_task(run_roles(rt, list(ROLES))))
                    if await _wait(rt.web_ready.wait(), tasks):
                        watch = watch_command(settings, bootstrap, local_kafka, rt.names.raw)
                        out(banner(rt, info, token, watch))
                        await _wait(None, tasks)
            finally:
                for task in tasks:
                    task.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)
    finally:
        loop.remove_signal_handler(signal.SIGTERM)


async def _both(first: asyncio.Event, second: asyncio.Event) -> None:
    await first.wait()
    await second.wait()


async def _wait(condition: Coroutine[Any, Any, Any] | None,
                tasks: list[asyncio.Task[Any]]) -> bool:
    """Wait for `condition`: True once it is met; False when one of `tasks` ended first (the
    stop signal), raising that task's error if it failed (a role that could not start)."""
    waiter = asyncio.ensure_future(condition) if condition is not None else None
    try:
        done, _ = await asyncio.wait([*tasks, *([waiter] if waiter else [])],
                                     return_when=asyncio.FIRST_COMPLETED)
    finally:
        if waiter is not None:
            waiter.cancel()
    for task in done:
        if task is not waiter:
            task.result()
            return False
    return True
