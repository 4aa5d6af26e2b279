"""The webhook receiver against the real broker: every answer, in its order, and each
provider's scheme signed by the provider's own code."""

import base64
import hashlib
import hmac
import os
import time
import uuid
from typing import Any

import aiohttp
import orjson
import pytest
import stripe
from pydantic import SecretStr
from slack_sdk.signature import SignatureVerifier

from dashpipe.settings import ApiSettings, Settings, WebhookSettings
from dashpipe.signatures import new_secret, sign_original, sign_standard
from schemas.headers import Header, header
from schemas.records import RawMetadata
from tests import octokit
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
    assert 'dashpipe_received_total{pipeline_id="counted",team_id="team-a"} 1.0' in text
    assert 'dashpipe_failed_total{code="401",pipeline_id="counted",stage="webhook",' \
        'team_id="team-a"} 1.0' in text
    assert 'dashpipe_webhook_ack_seconds_count{pipeline_id="counted",team_id="team-a"} 1.0' \
        in text  # the accepted one only


# providers' schemes

async def make_provider(web: Any, pid: str, scheme: str, secret: str | list[str],
                        **config: Any) -> None:
    await make(web, pid, source_config={"webhook_secret": secret, "scheme": scheme, **config})


def bronze_ids(records: list[Any]) -> list[tuple[str | None, str | None, str | None]]:
    """(ingest id, dedup id, event) of each Bronze record."""
    return [(header(r.headers, Header.INGEST_ID), header(r.headers, Header.DEDUP_ID),
             header(r.headers, Header.EVENT)) for r in records]


@pytest.fixture(scope="session")
def octokit_signer() -> Any:
    """GitHub's signer (`tests/octokit.py`); skipped only where Node or npm is absent (and
    then a failure in CI, which installs them)."""
    reason = octokit.missing_tools()
    if reason is not None:
        message = f"GitHub's signer @octokit/webhooks-methods needs Node: {reason}"
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail(message, pytrace=False)
        pytest.skip(message)
    octokit.install()
    return octokit.sign


async def test_github_deliveries_signed_by_octokit(web: Any, settings: Settings,
                                                   octokit_signer: Any) -> None:
    await make_provider(web, "gh", "github", ["gh-old", "gh-new"])
    body = '{"ref": "refs/heads/main", "pusher": {"name": "Zoë"}}'.encode()
    by_new, by_old, by_other = octokit_signer(
        [("gh-new", body), ("gh-old", body), ("gh-other", body)])
    delivery = str(uuid.uuid4())

    def sent(signature: str, delivery_id: str) -> dict[str, str]:
        return {"X-Hub-Signature-256": signature, "X-GitHub-Delivery": delivery_id,
                "X-GitHub-Event": "push", "Content-Type": "application/json"}

    status, answer, _ = await post(web, "gh", body, sent(by_new, delivery))
    assert (status, answer["status"], answer["ingest_id"]) == (202, "received", delivery)
    status, answer, _ = await post(web, "gh", body, sent(by_new, delivery))  # GitHub redelivers
    assert (status, answer["status"]) == (202, "duplicate")
    assert (await post(web, "gh", body, sent(by_old, "d-rotated")))[0] == 202
    status, answer, _ = await post(web, "gh", body, sent(by_other, "d-3"))
    assert (status, answer["error"]) == (401, "signature does not match")
    status, answer, _ = await post(web, "gh", body + b" ", sent(by_new, "d-4"))
    assert status == 401
    status, answer, _ = await post(web, "gh", body, signed(body, "gh-new"))  # not GitHub's way
    assert (status, answer["error"]) == (401, "missing signature: send X-Hub-Signature-256")
    records = await read_topic(settings, f"{settings.topics.prefix}.raw", 2)
    assert [r.value for r in records] == [body, body]
    assert sorted(bronze_ids(records)) == sorted([(delivery, delivery, "push"),
                                                  ("d-rotated", "d-rotated", "push")])


async def test_stripe_events_verified_as_stripes_library_signs_them(web: Any,
                                                                    settings: Settings) -> None:
    secret = "whsec_stripe-test_SECRET"  # not base64: fine for Stripe, refused for auto
    async with web.post("/api/pipelines", headers=H, json={
            "id": "bad", "name": "b", "type": "realtime", "source_type": "webhook",
            "source_config": {"webhook_secret": secret}}) as r:
        assert r.status == 422 and "must be base64" in await r.text()
    await make_provider(web, "pay", "stripe", ["whsec_old-one", secret])
    event = {"id": "evt_1NG8Du2eZvKYlo2CUI79vXWy", "object": "event",
             "type": "payment_intent.succeeded", "data": {"object": {"amount": 2000}}}
    body = orjson.dumps(event)

    def sent(signature: str) -> dict[str, str]:
        return {"Stripe-Signature": signature, "Content-Type": "application/json"}

    good = stripe.WebhookSignature.generate_signature_header(body.decode(), secret)
    status, answer, _ = await post(web, "pay", body, sent(good))
    assert (status, answer["ingest_id"]) == (202, event["id"])
    assert (await post(web, "pay", body, sent(good)))[1]["status"] == "duplicate"
    stale = stripe.WebhookSignature.generate_signature_header(
        body.decode(), secret, timestamp=int(time.time()) - 400)
    status, answer, _ = await post(web, "pay", body, sent(stale))
    assert status == 401 and "tolerance (too old)" in answer["error"]
    other = orjson.dumps({**event, "id": "evt_2", "type": "charge.refunded"})
    signature = stripe.WebhookSignature.generate_signature_header(other.decode(), secret)
    t, v1 = signature.split(",")
    rolled = f"{t},v1={'0' * 64},{v1}"  # Stripe sends one v1 per secret while one rolls
    assert (await post(web, "pay", other, sent(rolled)))[0] == 202
    assert (await post(web, "pay", other + b" ", sent(rolled)))[0] == 401
    records = await read_topic(settings, f"{settings.topics.prefix}.raw", 2)
    assert sorted(bronze_ids(records)) == [
        (event["id"], event["id"], "payment_intent.succeeded"),
        ("evt_2", "evt_2", "charge.refunded")]


async def test_shopify_webhooks_by_shopifys_documented_hmac(web: Any, settings: Settings) -> None:
    secret = "shpss_0123456789abcdef"
    await make_provider(web, "shop", "shopify", secret)
    body = b'{"id": 820982911946154508, "email": "jon@example.com", "total_price": "9.50"}'
    digest = hmac.new(secret.encode("utf-8"), body, hashlib.sha256).digest()
    headers = {"X-Shopify-Hmac-Sha256": base64.b64encode(digest).decode(),
               "X-Shopify-Webhook-Id": "b54557e4-bdd9-4b37-8a5f-bf7d70bcd043",
               "X-Shopify-Topic": "orders/create", "Content-Type": "application/json"}
    assert (await post(web, "shop", body, headers))[0] == 202
    assert (await post(web, "shop", body, headers))[1]["status"] == "duplicate"
    assert (await post(web, "shop", body.replace(b"9.50", b"0.01"), headers))[0] == 401
    [record] = await read_topic(settings, f"{settings.topics.prefix}.raw", 1)
    assert bronze_ids([record]) == [("b54557e4-bdd9-4b37-8a5f-bf7d70bcd043",) * 2
                                    + ("orders/create",)]


async def test_slack_events_and_its_url_verification(web: Any, settings: Settings) -> None:
    secret = "8f742231b10e8888abcd99yyyzzz85a5"
    await make_provider(web, "slack", "slack", secret)
    signer = SignatureVerifier(secret)

    def sent(body: bytes, at: int | None = None, by: SignatureVerifier = signer
             ) -> dict[str, str]:
        stamp = str(at or int(time.time()))
        signature = by.generate_signature(timestamp=stamp, body=body)
        assert signature is not None
        return {"X-Slack-Signature": signature, "X-Slack-Request-Timestamp": stamp,
                "Content-Type": "application/json"}

    check = b'{"token": "Jhj5dZrVaK7ZwHHjRyZWjbDl", "challenge": "3eZbrw1aBm2rZgRN", ' \
            b'"type": "url_verification"}'
    status, answer, _ = await post(web, "slack", check, sent(check))
    assert (status, answer) == (200, {"challenge": "3eZbrw1aBm2rZgRN"})
    async with web.post("/api/pipelines/slack/pause", headers=H) as r:
        assert r.status == 200
    status, answer, _ = await post(web, "slack", check, sent(check))  # a paused one answers too
    assert (status, answer) == (200, {"challenge": "3eZbrw1aBm2rZgRN"})
    assert (await post(web, "slack", check, sent(check, by=SignatureVerifier("other"))))[0] == 401
    async with web.post("/api/pipelines/slack/resume", headers=H) as r:
        assert r.status == 200
    assert await topic_size(settings, f"{settings.topics.prefix}.raw") == 0

    body = (b'{"type": "event_callback", "event_id": "Ev08MFMKH6", "team_id": "T1", '
            b'"event": {"type": "app_mention", "text": "<@U1> hi"}}')
    status, answer, _ = await post(web, "slack", body, sent(body))
    assert (status, answer["ingest_id"]) == (202, "Ev08MFMKH6")
    retry = {**sent(body), "X-Slack-Retry-Num": "1", "X-Slack-Retry-Reason": "http_timeout"}
    assert (await post(web, "slack", body, retry))[1]["status"] == "duplicate"
    status, answer, _ = await post(web, "slack", body, sent(body, at=int(time.time()) - 301))
    assert status == 401 and "tolerance" in answer["error"]
    [record] = await read_topic(settings, f"{settings.topics.prefix}.raw", 1)
    assert record.value == body
    assert bronze_ids([record]) == [("Ev08MFMKH6", "Ev08MFMKH6", "app_mention")]


async def test_meta_subscription_check_and_signed_posts(web: Any, settings: Settings) -> None:
    await make_provider(web, "wa", "meta", "app-secret", verify_token="my-verify-token")
    await make_provider(web, "no-token", "meta", "app-secret")
    async with web.get("/api/pipelines/wa", headers=H) as r:
        view = await r.json()
    assert view["source_config"]["verify_token"] == "***"

    async def check(pid: str, **params: str) -> tuple[int, str, str]:
        query = {f"hub.{k}": v for k, v in params.items()}
        async with web.get(f"/webhooks/{pid}", params=query) as r:
            return r.status, r.content_type, await r.text()

    assert await check("wa", mode="subscribe", verify_token="my-verify-token",
                       challenge="1158201444") == (200, "text/plain", "1158201444")
    status, _, text = await check("wa", mode="subscribe", verify_token="wrong", challenge="1")
    assert (status, orjson.loads(text)["error"]) == (403, "hub.verify_token does not match")
    status, _, text = await check("no-token", mode="subscribe", verify_token="x", challenge="1")
    assert status == 403 and "no verify_token" in text
    status, _, text = await check("wa", mode="subscribe", challenge="1")
    assert (status, orjson.loads(text)["error"]) == (
        400, "missing query parameter: hub.verify_token")
    assert (await check("wa", mode="unsubscribe", verify_token="my-verify-token",
                        challenge="1"))[0] == 400
    assert (await check("nope", mode="subscribe", verify_token="t", challenge="1"))[0] == 404

    body = b'{"object": "whatsapp_business_account", "entry": [{"id": "1"}]}'
    signature = "sha256=" + hmac.new(b"app-secret", body, hashlib.sha256).hexdigest()
    headers = {"X-Hub-Signature-256": signature, "Content-Type": "application/json"}
    assert (await post(web, "wa", body, headers))[0] == 202
    assert (await post(web, "wa", body, {**headers, "X-Hub-Signature-256": "sha256=00"}))[0] == 401
    [record] = await read_topic(settings, f"{settings.topics.prefix}.raw", 1)
    (ingest_id, dedup_id, event), = bronze_ids([record])
    assert (dedup_id, event) == (None, "whatsapp_business_account") and ingest_id
    assert await topic_size(settings, f"{settings.topics.prefix}.raw") == 1  # GETs wrote nothing
