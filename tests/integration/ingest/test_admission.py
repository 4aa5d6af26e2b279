"""The web process's cap on webhooks in flight, against the real broker: a burst past it gets
202s and quick 503s with `Retry-After` (nothing else); every 202's record is in Bronze once,
and no refused request wrote anything. Both webhook paths (before the router, and through it)
share the cap."""

from __future__ import annotations

import asyncio
from collections import Counter
from typing import Any

import aiohttp
import orjson

from agents.ingest.admission import MESSAGE
from dashpipe.settings import ADMIN, Settings, WebSettings
from schemas.records import RawMetadata
from tests.helpers import read_topic, topic_size, wait_until
from tests.integration.ingest.test_webhooks import SECRET, signed

LIMIT = 2
BURST = 200


async def test_a_burst_past_the_cap_is_202_or_a_quick_503_and_bronze_holds_the_202s(
        start_roles: Any, settings: Settings) -> None:
    rt = await start_roles("web", web=WebSettings(port=0, webhooks_in_flight=LIMIT))
    await rt.service.create({"id": "burst", "team_id": "team-a", "name": "burst",
                             "type": "realtime", "source_type": "webhook",
                             "source_config": {"webhook_secret": SECRET},
                             "rate_limit_per_minute": 1_000_000}, ADMIN)
    answers: list[tuple[int, str | None, Any]] = []

    async def post(http: aiohttp.ClientSession, n: int, path: str) -> None:
        body = orjson.dumps({"n": n})
        async with http.post(path, data=body, headers=signed(body)) as r:
            answers.append((r.status, r.headers.get("Retry-After"), await r.json()))

    async with aiohttp.ClientSession(
            rt.web_url, connector=aiohttp.TCPConnector(limit=BURST),
            timeout=aiohttp.ClientTimeout(total=30)) as http:
        async def burst() -> bool:
            start = len(answers)
            # the query string sends half of them through the router: the same cap
            await asyncio.gather(*(post(http, start + i, "/webhooks/burst" + "?r=1" * (i % 2))
                                   for i in range(BURST)))
            return any(status == 503 for status, _, _ in answers[start:])

        await wait_until(burst, timeout=60, what="a burst that meets the cap")
    statuses = Counter(status for status, _, _ in answers)
    assert set(statuses) == {202, 503}, statuses
    for status, retry_after, body in answers:
        if status == 503:
            assert retry_after == "1" and body == {"error": MESSAGE}
    accepted = {body["ingest_id"] for status, _, body in answers if status == 202}
    assert len(accepted) == statuses[202]
    raw = f"{settings.topics.prefix}.raw"
    await wait_until(lambda: _at_least(settings, raw, len(accepted)), what="the 202s in Bronze")
    records = await read_topic(settings, raw, len(accepted))
    ingest_ids = Counter(RawMetadata.from_headers(r.headers).ingest_id for r in records)
    assert set(ingest_ids) == accepted and set(ingest_ids.values()) == {1}
    assert await topic_size(settings, raw) == len(accepted)  # the refused wrote nothing
    assert rt.metrics.value("dashpipe_failed_total", stage="admission",
                            code="503") == statuses[503]


async def _at_least(settings: Settings, topic: str, n: int) -> bool:
    return await topic_size(settings, topic) >= n
