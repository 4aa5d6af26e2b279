"""The cap on webhooks in flight: past it a 503 with Retry-After and a JSON error that closes
the connection, without calling the handler; a slot frees when a request ends, however it
ends."""

from __future__ import annotations

import asyncio

import orjson
import pytest
from aiohttp import web

from agents.ingest.admission import MESSAGE, Admission
from dashpipe.metrics import Metrics


async def test_requests_past_the_limit_are_refused_until_one_ends() -> None:
    release, both_in = asyncio.Event(), asyncio.Event()
    calls: list[str] = []

    async def handler(request: object, pid: str) -> web.StreamResponse:
        calls.append(pid)
        if len(calls) == 2:
            both_in.set()
        await release.wait()
        return web.Response(status=202)

    metrics = Metrics()
    admission = Admission(limit=2, retry_after=3, metrics=metrics)
    guarded = admission.guard(handler)
    first = [asyncio.create_task(guarded(None, f"p{i}")) for i in range(2)]
    await both_in.wait()
    assert admission.in_flight == 2
    refused = await guarded(None, "p2")
    assert isinstance(refused, web.Response)
    assert refused.status == 503 and refused.headers["Retry-After"] == "3"
    assert refused.keep_alive is False  # closed after the answer: a hammering sender reconnects
    assert refused.body is not None
    assert orjson.loads(refused.body) == {"error": MESSAGE}  # type: ignore[arg-type]
    assert calls == ["p0", "p1"] and admission.refused == 1
    assert metrics.value("dashpipe_failed_total", stage="admission", code="503") == 1
    release.set()
    assert [r.status for r in await asyncio.gather(*first)] == [202, 202]
    assert admission.in_flight == 0
    assert (await guarded(None, "p3")).status == 202


async def test_a_failing_handler_gives_its_slot_back() -> None:
    async def broken(request: object) -> web.StreamResponse:
        raise RuntimeError("boom")

    admission = Admission(limit=1, retry_after=1)
    guarded = admission.guard(broken)
    for _ in range(3):
        with pytest.raises(RuntimeError):
            await guarded(None)
    assert admission.in_flight == 0 and admission.refused == 0
