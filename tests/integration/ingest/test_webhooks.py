"""The webhook receiver against the real broker: every answer, in its order."""

import time
import uuid
from typing import Any

import aiohttp
import orjson
import pytest
from pydantic import SecretStr

from dashpipe.settings import ApiSettings, Settings, WebhookSettings
from dashpipe.signatures import new_secret, sign_original, sign_standard
from schemas.records import RawMetadata
from tests.helpers import read_topic, topic_size

SECRET = "orig-secret"
API = ApiSettings(api_tokens={SecretStr("tok-a"): "team-a"})
H = {"Authorization": "Bearer tok-a"}


@pytest.fixture
async def web(start_roles: Any) -> Any:
    rt = await start_roles("web", api=API, webhook=WebhookSettings(max_body_bytes=1024))
    async with aiohttp.ClientSession(rt.web_url) as session:
        yield session


async def make(web: Any, pid: str, **extra: Any) -> None:
    body = {"id": pid, "name": pid, "type": "realtime", "source_type": "webhook",
            "source_config": {"webhook_secret": SECRET}, **extra}
    async with web.post("/api/pipelines", json=body, headers=H) as r:
        assert r.status == 201, await r.text()


def signed(body: bytes, secret: str = SECRET) -> dict[str, str]:
    return {"x-webhook-signature": sign_original(secret, body),
            "Content-Type": "application/json"}


def standard(body: bytes, secret: str, msg_id: str | None = None,
             ts: int | None = None) -> dict[str, str]:
    msg_id = msg_id or f"msg_{uuid.uuid4().hex}"
    ts = ts or int(time.time())
    return {"webhook-id": msg_id, "webhook-timestamp": str(ts),
            "webhook-signature": sign_standard(secret, msg_id, ts, body),
            "Content-Type": "application/json"}


async def post(web: Any, pid: str, body: bytes, headers: dict[str, str]) -> tuple[int, Any, Any]:
    async with web.post(f"/webhooks/{pid}", data=body, headers=headers) as r:
        return r.status, await r.json(), r.headers


async def test_signed_webhook_is_202_after_it_is_in_bronze(web: Any, settings: Settings) -> None:
    await make(web, "orders")
    body = b'{"order": 1,   "total": 9.5}'
    status, answer, _ = await post(web, "orders", body, signed(body))
    assert (status, answer["status"], answer["pipeline_id"]) == (202, "received", "orders")
    [record] = await read_topic(settings, f"{settings.topics.prefix}.raw", 1)
    assert record.value == body and record.key == b"orders"
    meta = RawMetadata.from_headers(record.headers)
    assert (meta.pipeline_id, meta.team_id, meta.source) == ("orders", "team-a", "webhook")
    assert meta.ingest_id == answer["ingest_id"]


async def test_answers_in_order(web: Any, settings: Settings) -> None:
    await make(web, "hooks")
    body = b'{"ok": true}'
    assert (await post(web, "nope", body, signed(body)))[0] == 404
    big = b'{"x": "' + b"a" * 2000 + b'"}'
    status, answer, _ = await post(web, "hooks", big, {})  # too big beats unsigned
    assert status == 413 and "limit" in answer["error"]
    status, answer, _ = await post(web, "hooks", body, {})
    assert status == 401 and "missing signature" in answer["error"]
    status, answer, _ = await post(web, "hooks", body, signed(body, "wrong"))
    assert status == 401 and answer["error"] == "signature does not match"
    bad_json = b'{"ok": tru'
    status, answer, _ = await post(web, "hooks", bad_json, signed(bad_json))
    assert status == 400 and answer["error"].startswith("invalid JSON at line 1 column")
    async with web.post("/api/pipelines/hooks/pause", headers=H) as r:
        assert r.status == 200
    status, answer, _ = await post(web, "hooks", body, signed(body, "wrong"))
    assert status == 401  # the signature is checked before the state
    status, answer, _ = await post(web, "hooks", body, signed(body))
    assert status == 400 and "paused" in answer["error"]
    assert await topic_size(settings, f"{settings.topics.prefix}.raw") == 0


async def test_the_router_path_answers_like_the_fast_path(web: Any, settings: Settings) -> None:
    """`POST /webhooks/<id>` skips aiohttp's router unless the request needs it (an `Expect`
    header, a query string, an id no pipeline can have): every way gives the same answers."""
    await make(web, "paths")
    body = b'{"n": 1}'
    ways = [("/webhooks/paths", {}), ("/webhooks/paths?source=x", {}),
            ("/webhooks/paths", {"Expect": "100-continue"})]
    for path, extra in ways:
        async with web.post(path, data=body, headers={**signed(body), **extra}) as r:
            assert (r.status, (await r.json())["status"]) == (202, "received"), path
        async with web.post(path, data=body, headers={**signed(body, "wrong"), **extra}) as r:
            assert r.status == 401, path
    async with web.post("/webhooks/pa%74hs", data=body, headers=signed(body)) as r:
        assert r.status == 202  # percent-encoded: the router decodes it
    async with web.post("/webhooks/no.such", data=body, headers=signed(body)) as r:
        assert r.status == 404 and "not found" in (await r.json())["error"]
    assert await topic_size(settings, f"{settings.topics.prefix}.raw") == 4


async def test_not_a_realtime_pipeline_is_400(web: Any) -> None:
    body = {"id": "polled", "name": "p", "type": "polling", "source_type": "http_api",
            "interval_seconds": 60, "source_config": {"url": "http://127.0.0.1:9/"}}
    async with web.post("/api/pipelines", json=body, headers=H) as r:
        assert r.status == 201
    status, answer, _ = await post(web, "polled", b"{}", signed(b"{}"))
    assert status == 400 and "not a realtime" in answer["error"]


async def test_rate_limit_at_its_exact_boundary(web: Any, settings: Settings) -> None:
    await make(web, "limited", rate_limit_per_minute=5)
    codes = []
    for i in range(6):
        body = orjson.dumps({"i": i})
        codes.append((await post(web, "limited", body, signed(body)))[0])
    assert codes == [202] * 5 + [429]
    body = b"{}"
    status, _answer, headers = await post(web, "limited", body, signed(body))
    assert status == 429 and int(headers["Retry-After"]) >= 1
    # unsigned requests are refused before the limiter and never charge it
    assert (await post(web, "limited", body, {}))[0] == 401
    assert await topic_size(settings, f"{settings.topics.prefix}.raw") == 5


async def test_standard_webhooks_rotation_and_dedup(web: Any, settings: Settings) -> None:
    old, new = new_secret(), new_secret()
    await make(web, "std", source_config={"webhook_secret": [old, new]})
    body = b'{"event": "created"}'
    assert (await post(web, "std", body, standard(body, old)))[0] == 202
    headers = standard(body, new, msg_id="msg_repeat")
    assert (await post(web, "std", body, headers))[1]["status"] == "received"
    status, answer, _ = await post(web, "std", body, headers)
    assert (status, answer["status"]) == (202, "duplicate")
    stale = standard(body, new, ts=int(time.time()) - 600)
    status, answer, _ = await post(web, "std", body, stale)
    assert status == 401 and "tolerance" in answer["error"]
    records = await read_topic(settings, f"{settings.topics.prefix}.raw", 2)
    assert len(records) == 2
    assert {RawMetadata.from_headers(r.headers).ingest_id for r in records} >= {"msg_repeat"}


async def test_a_masked_secret_sent_back_keeps_the_secret(web: Any) -> None:
    await make(web, "keep")
    async with web.get("/api/pipelines/keep", headers=H) as r:
        view = await r.json()
    assert view["source_config"]["webhook_secret"] == "***"
    view["name"] = "renamed"
    async with web.put("/api/pipelines/keep", json=view, headers=H) as r:
        assert r.status == 200
    body = b"{}"
    assert (await post(web, "keep", body, signed(body)))[0] == 202


async def test_metrics_count_received_and_failed(web: Any) -> None:
    await make(web, "counted")
    body = b"{}"
    await post(web, "counted", body, signed(body))
    await post(web, "counted", body, signed(body, "bad"))
    async with web.get("/metrics") as r:
        text = await r.text()
    assert 'dashpipe_received_total{pipeline_id="counted"} 1' in text
    assert 'dashpipe_failed_total{code="401",pipeline_id="counted",stage="webhook"} 1' in text
