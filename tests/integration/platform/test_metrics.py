"""`/metrics` and `/readyz` of real processes: a web process and a map + persist + deliver
process (no web role: its own metrics port), with webhooks flowing to storage and to a sink.
Both expositions pass `promtool check metrics`; the latency histograms, the consumer lag of
every grouped role and the process metrics are there; `/readyz` answers on both ports."""

from __future__ import annotations

from typing import Any

import aiohttp
import asyncpg
from prometheus_client.parser import text_string_to_metric_families

from dashpipe import __version__
from dashpipe.cli.stack.state import free_port
from dashpipe.settings import ADMIN, Settings, WebSettings
from dashpipe.signatures import sign_original
from tests.helpers import wait_until
from tests.integration.deliver.test_deliver import FAST, Receiver, hook, serve
from tests.integration.mapping.test_mapper import webhook_pipeline
from tests.unit.platform.test_metrics import promtool_check

N = 5


async def scrape(url: str) -> str:
    try:
        async with aiohttp.ClientSession() as http, http.get(url) as r:
            assert r.status == 200 and r.headers["Content-Type"].startswith("text/plain")
            return await r.text()
    except aiohttp.ClientConnectionError:
        return ""


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for f in text_string_to_metric_families(text) for s in f.samples}


def value(text: str, name: str, **labels: str) -> float:
    return samples(text).get((name, tuple(sorted(labels.items()))), 0.0)


async def test_every_role_exposes_checked_metrics_and_readiness(
        start_roles: Any, settings: Settings, db: asyncpg.Pool) -> None:
    receiver = Receiver()
    runner = await serve(receiver)
    try:
        port = free_port()
        web = await start_roles("web")
        work = await start_roles("map", "persist", "deliver", delivery=FAST,
                                 web=WebSettings(port=0, metrics_port=port))
        pipeline = {**webhook_pipeline("metered", {"fields": {"n": {"path": "n",
                                                                    "type": "integer"}}}),
                    "persist_data": True, "sinks": [hook(receiver.url)]}
        await web.service.create(pipeline, ADMIN)
        await wait_until(lambda: "metered" in work.registry.pipelines, what="both know it")
        async with aiohttp.ClientSession() as http:
            for n in range(N):
                body = b'{"n": %d}' % n
                async with http.post(f"{web.web_url}/webhooks/metered", data=body, headers={
                        "x-webhook-signature": sign_original("s", body),
                        "Content-Type": "application/json"}) as r:
                    assert r.status == 202, await r.text()
        await wait_until(lambda: len(receiver.seen) == N, what="the deliveries")
        ours = f"http://127.0.0.1:{port}"
        team = {"pipeline_id": "metered", "team_id": "team-a"}

        async def everything_counted() -> str:
            text = await scrape(f"{ours}/metrics")
            done = (value(text, "dashpipe_raw_to_stored_seconds_count", **team) == N and
                    value(text, "dashpipe_raw_to_delivered_seconds_count", sink="0", **team) == N)
            return text if done else ""

        work_text = await wait_until(everything_counted, 30, what="stored and delivered")
        web_text = await scrape(f"{web.web_url}/metrics")

        for text in (web_text, work_text):
            promtool_check(text)
            assert value(text, "process_cpu_seconds_total") > 0
        assert value(web_text, "dashpipe_info", version=__version__, roles="web") == 1
        assert value(work_text, "dashpipe_info", version=__version__,
                     roles="map,persist,deliver") == 1
        assert value(web_text, "dashpipe_received_total", **team) == N
        assert value(web_text, "dashpipe_webhook_ack_seconds_count", **team) == N
        assert value(work_text, "dashpipe_persisted_total", **team) == N
        assert value(work_text, "dashpipe_mapped_total", **team) == N
        assert value(work_text, "dashpipe_sink_attempt_seconds_count", sink="0",
                     outcome="delivered", **team) == N
        lag = {dict(labels)["role"] for (name, labels) in samples(work_text)
               if name == "dashpipe_consumer_lag"}
        assert lag == {"map", "persist", "deliver"}
        assert any(name == "dashpipe_consumer_lag" and dict(labels)["role"] == "web"
                   for name, labels in samples(web_text))

        async with aiohttp.ClientSession() as http:
            for url in (f"{ours}/readyz", f"{web.web_url}/readyz"):
                async with http.get(url) as r:
                    assert r.status == 200, await r.text()
            work.stopping.set()  # what a SIGTERM does first: drained by the load balancer
            async with http.get(f"{ours}/readyz") as r:
                assert r.status == 503 and r.headers["Retry-After"] == "5"
                assert (await r.json())["error"] == "dashpipe is stopping"
    finally:
        await runner.cleanup()
