"""Pollers against a local HTTP API and the real broker: records, cursors, errors, ownership,
live changes and restarts."""

import time
from collections import Counter
from datetime import UTC, datetime
from typing import Any

from aiohttp import web

from dashpipe.settings import ADMIN, PollSettings, Settings
from schemas.records import RawMetadata
from tests.helpers import read_topic, topic_size, wait_until
from tests.integration.conftest import FakeApi

FAST = PollSettings(retry_base_seconds=0.5, retry_cap_seconds=2, tick_seconds=0.05)


def polling(pid: str, url: str, interval: int = 60, **source: Any) -> dict[str, Any]:
    return {"id": pid, "team_id": "team-a", "name": pid, "type": "polling",
            "source_type": "http_api", "interval_seconds": interval,
            "source_config": {"url": url, **source}}


async def test_poll_writes_each_page_to_bronze_with_metadata(start_roles: Any, api: FakeApi,
                                                             settings: Settings) -> None:
    api.answer = lambda r: web.Response(body=b'{"temp": 21.5,  "station": "%s"}'
                                        % r.query["s"].encode(), content_type="application/json")
    rt = await start_roles("poll", poll=FAST)
    await rt.service.create(polling("weather", f"{api.url}/obs?s=7&api_key=k-123",
                                    auth_type="bearer", token="upstream-token"), ADMIN)
    [record] = await read_topic(settings, rt.names.raw, 1)
    assert record.key == b"weather"
    assert record.value == b'{"temp": 21.5,  "station": "7"}'  # exactly as received
    meta = RawMetadata.from_headers(record.headers)
    assert (meta.source, meta.http_status, meta.team_id) == ("poll", 200, "team-a")
    assert meta.url is not None and "k-123" not in meta.url and meta.url.startswith(api.url)
    assert api.requests[0].headers["Authorization"] == "Bearer upstream-token"
    status = await wait_until(lambda: rt.registry.status.get("weather"))
    assert status.state == "active" and status.next_due_at is not None


async def test_pagination_and_cursor_across_polls(start_roles: Any, api: FakeApi,
                                                  settings: Settings) -> None:
    def answer(r: web.Request) -> web.Response:
        page = int(r.query.get("page", "1"))
        since = int(r.query.get("since", "0"))
        items = [{"id": since + page * 10 + i} for i in range(2)]
        return web.json_response({"items": items, "next": page + 1 if page < 3 else None,
                                  "last_id": items[-1]["id"]})

    api.answer = answer
    rt = await start_roles("poll", poll=FAST)
    await rt.service.create(polling(
        "paged", f"{api.url}/items", interval=1,
        pagination={"type": "cursor", "next_path": "next", "param": "page", "max_pages": 5},
        cursor={"path": "last_id", "param": "since", "initial": 0}), ADMIN)
    records = await read_topic(settings, rt.names.raw, 6, timeout=30)
    assert len(records) >= 6
    first_poll = [r.query.get("page") for r in api.requests[:3]]
    assert first_poll == [None, "2", "3"]
    assert [r.query.get("since") for r in api.requests[:3]] == ["0", "0", "0"]
    # the second poll starts from the cursor the first one ended with (30 + 1)
    assert api.requests[3].query.get("since") == "31"
    assert rt.registry.status["paged"].cursor in (31, 62)


async def test_failure_marks_error_then_recovers(start_roles: Any, api: FakeApi) -> None:
    healthy = False
    api.answer = lambda r: (web.json_response({"ok": 1}) if healthy
                            else web.Response(status=500, text="boom"))
    rt = await start_roles("poll", poll=FAST)
    await rt.service.create(polling("flaky", f"{api.url}/x", interval=60), ADMIN)
    status = await wait_until(lambda: (s := rt.registry.status.get("flaky")) and
                              s.state == "error" and s)
    assert status.error_message == "HTTP 500"
    assert rt.service.view(rt.registry.pipelines["flaky"])["status"] == "error"
    assert status.next_due_at is not None
    delay = (status.next_due_at - status.last_run_at).total_seconds()
    assert 0.4 <= delay <= 2.5  # retry base 0.5 s here (60 s by default)
    healthy = True
    await wait_until(lambda: rt.registry.status["flaky"].state == "active", timeout=15)
    assert rt.registry.status["flaky"].error_message is None
    assert rt.metrics.value("dashpipe_failed_total", pipeline_id="flaky", stage="poll") >= 1


async def test_retry_after_is_honoured(start_roles: Any, api: FakeApi) -> None:
    api.answer = lambda r: web.Response(status=429, headers={"Retry-After": "30"})
    rt = await start_roles("poll", poll=FAST.model_copy(update={"retry_cap_seconds": 60}))
    await rt.service.create(polling("busy", f"{api.url}/x"), ADMIN)
    status = await wait_until(lambda: rt.registry.status.get("busy"))
    assert status.error_message == "HTTP 429"
    assert (status.next_due_at - status.last_run_at).total_seconds() >= 29


async def test_two_pollers_fetch_each_pipeline_once_per_interval(
        start_roles: Any, api: FakeApi, settings: Settings) -> None:
    first = await start_roles("poll", poll=FAST)
    second = await start_roles("poll", poll=FAST)
    pollers = [await wait_until(lambda rt=rt: rt.roles.get("poll")) for rt in (first, second)]
    await wait_until(lambda: all(p.owned for p in pollers) and
                     len(pollers[0].owned | pollers[1].owned) == 3, timeout=30,
                     what="the two pollers to share the partitions")
    ids = [f"p{i}" for i in range(12)]
    for pid in ids:
        await first.service.create(polling(pid, f"{api.url}/{pid}", interval=2), ADMIN)
    start = time.monotonic()
    await wait_until(lambda: all(api.hits(f"/{pid}") >= 2 for pid in ids), timeout=30)
    elapsed = time.monotonic() - start
    counts = Counter(r.path for r in api.requests)
    allowed = int(elapsed / 2) + 2  # one at creation, then one per interval (+1 for a rebalance)
    assert all(counts[f"/{pid}"] <= allowed for pid in ids), counts
    polled_by = {pid: [rt for rt in (first, second)
                       if rt.metrics.value("dashpipe_polled_total", pipeline_id=pid)]
                 for pid in ids}
    assert all(len(owners) >= 1 for owners in polled_by.values())
    assert any(polled_by[pid] == [first] for pid in ids)
    assert any(polled_by[pid] == [second] for pid in ids)


async def test_live_change_and_delete(start_roles: Any, api: FakeApi) -> None:
    rt = await start_roles("poll", poll=FAST)
    await rt.service.create(polling("live", f"{api.url}/old", interval=1), ADMIN)
    await wait_until(lambda: api.hits("/old") >= 1)
    await rt.service.patch("live", {"source_config": {"url": f"{api.url}/new"}}, ADMIN)
    await wait_until(lambda: api.hits("/new") >= 1, timeout=5)
    await rt.service.delete("live", ADMIN)
    gone = len(api.requests)
    await wait_until(lambda: "live" not in rt.registry.pipelines)
    later = await start_roles("poll", poll=FAST)  # its registry has read past the delete
    await wait_until(lambda: later.roles.get("poll"))
    assert len(api.requests) <= gone + 1  # at most the poll that was in flight


async def test_pause_stops_polls_and_resume_polls_at_once(start_roles: Any, api: FakeApi) -> None:
    rt = await start_roles("poll", poll=FAST)
    await rt.service.create(polling("hourly", f"{api.url}/h", interval=3600), ADMIN)
    await wait_until(lambda: rt.registry.status.get("hourly"))
    assert api.hits("/h") == 1
    await rt.service.set_status("hourly", ADMIN, "paused")
    await rt.service.set_status("hourly", ADMIN, "active")
    # due again only in an hour by the schedule: a poll now is the resume's doing
    await wait_until(lambda: api.hits("/h") == 2, timeout=5)


async def test_restart_neither_polls_early_nor_loses_the_cursor(
        start_roles: Any, api: FakeApi, settings: Settings) -> None:
    api.answer = lambda r: web.json_response({"last": int(r.query.get("since", "0")) + 5})
    rt = await start_roles("poll", poll=FAST)
    await rt.service.create(polling("steady", f"{api.url}/s", interval=3600,
                                    cursor={"path": "last", "param": "since", "initial": 0}),
                            ADMIN)
    await wait_until(lambda: (s := rt.registry.status.get("steady")) and s.cursor == 5)
    before = await topic_size(settings, rt.names.raw)
    # a second process starts (as after a restart): it reads the schedule and the cursor
    again = await start_roles("poll", poll=FAST)
    status = await wait_until(lambda: again.registry.status.get("steady"))
    assert status.cursor == 5 and status.next_due_at > datetime.now(UTC)
    assert len(api.requests) == 1
    # a shorter interval applies from the last run: due at once now
    await again.service.patch("steady", {"interval_seconds": 1}, ADMIN)
    await wait_until(lambda: len(api.requests) >= 2, timeout=10)
    assert api.requests[1].query["since"] == "5"
    await wait_until(lambda: topic_size(settings, rt.names.raw), timeout=10)
    assert await topic_size(settings, rt.names.raw) >= before + 1
