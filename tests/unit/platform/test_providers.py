"""The providers' signature schemes, checked against the providers' own code where they publish
it (Stripe's and Slack's SDKs) and against their documented algorithms computed here with the
standard library (GitHub, Meta, Shopify; GitHub's own library signs in the integration tests)."""

from __future__ import annotations

import base64
import hashlib
import hmac
import time
from typing import Any, get_args

import orjson
import pytest
import stripe
from pydantic import ValidationError
from slack_sdk.signature import Clock, SignatureVerifier

from dashpipe.providers import (
    MAX_NAME,
    SCHEMES,
    identify,
    slack_challenge,
    verify_github,
    verify_meta,
    verify_shopify,
    verify_slack,
    verify_stripe,
)
from dashpipe.signatures import SignatureError, Verified, sign_original, sign_standard
from schemas.pipeline import MASK, Pipeline, WebhookScheme, WebhookSource, keep_masked

BODY = b'{"id": "evt_1", "type": "invoice.paid", "city": "Z\xc3\xbcrich"}'
NOW = 1_700_000_000.0
# Stripe's signing secrets look like this; `-` and `_` are not base64, so Standard Webhooks
# could not decode it: Stripe keys with the text as written
STRIPE_SECRET = "whsec_test-Secret_0123456789abcdefXYZ"


def hex_hmac(secret: str, message: bytes) -> str:
    return hmac.new(secret.encode(), message, hashlib.sha256).hexdigest()


def rejected(verifier: Any, secrets: list[str], headers: dict[str, str], body: bytes = BODY,
             now: float = NOW) -> str:
    """The 401 message, checked to name no secret and no signature the receiver computed."""
    with pytest.raises(SignatureError) as caught:
        verifier(secrets, headers, body, now=now, tolerance=300.0)
    message = str(caught.value)
    for secret in secrets:
        assert secret not in message
        for expected in (hex_hmac(secret, body),
                         base64.b64encode(hmac.digest(secret.encode(), body, "sha256")).decode()):
            assert expected not in message
    return message


def test_every_scheme_of_the_model_has_a_verifier() -> None:
    assert set(SCHEMES) == set(get_args(WebhookScheme))


# GitHub and Meta: X-Hub-Signature-256 = "sha256=" + hex HMAC-SHA256 of the body

def github_headers(secret: str, body: bytes = BODY, **extra: str) -> dict[str, str]:
    return {"X-Hub-Signature-256": "sha256=" + hex_hmac(secret, body),
            "X-GitHub-Delivery": "72d3162e-cc78-11e3-81ab-4c9367dc0958",
            "X-GitHub-Event": "push", **extra}


def test_github_passes_with_its_delivery_id_and_event() -> None:
    assert verify_github(["gh-secret"], github_headers("gh-secret"), BODY, now=NOW) == Verified(
        "github", "72d3162e-cc78-11e3-81ab-4c9367dc0958", "push")


def test_github_rotation_and_case_insensitive_names_and_hex() -> None:
    headers = {k.lower(): v.upper().replace("SHA256=", "sha256=")
               for k, v in github_headers("new").items()}
    assert verify_github(["old", "new"], headers, BODY, now=NOW).scheme == "github"


def test_github_rejections() -> None:
    good = github_headers("gh-secret")
    assert rejected(verify_github, ["other"], good) == "signature does not match"
    assert rejected(verify_github, ["gh-secret"], good, BODY + b" ") == "signature does not match"
    sha1 = {"X-Hub-Signature-256": "sha1=" + hex_hmac("gh-secret", BODY)}
    assert rejected(verify_github, ["gh-secret"], sha1) == "X-Hub-Signature-256 is not sha256=<hex>"
    bare = {"X-Hub-Signature-256": hex_hmac("gh-secret", BODY)}
    assert rejected(verify_github, ["gh-secret"], bare) == "X-Hub-Signature-256 is not sha256=<hex>"
    original = {"x-webhook-signature": sign_original("gh-secret", BODY)}
    assert rejected(verify_github, ["gh-secret"], original) == (
        "missing signature: send X-Hub-Signature-256")


def test_github_without_delivery_headers_has_no_id() -> None:
    headers = {"X-Hub-Signature-256": "sha256=" + hex_hmac("s", BODY)}
    assert verify_github(["s"], headers, BODY, now=NOW) == Verified("github", None, None)


def test_meta_signs_as_github_and_names_the_body_object() -> None:
    body = b'{"object": "whatsapp_business_account", "entry": []}'
    verified = verify_meta(["app-secret"], github_headers("app-secret", body), body, now=NOW)
    assert verified == Verified("meta", None, None)  # GitHub's delivery headers are not Meta's
    assert identify(verified, orjson.loads(body)) == Verified(
        "meta", None, "whatsapp_business_account")
    assert rejected(verify_meta, ["other"], github_headers("app-secret", body), body) == (
        "signature does not match")


# Stripe: its own library is the oracle

def stripe_accepts(header: str, body: bytes, secret: str) -> bool:
    try:
        stripe.WebhookSignature.verify_header(body, header, secret, tolerance=300)
    except stripe.SignatureVerificationError:
        return False
    return True


def ours_accepts(header: str, body: bytes, secrets: list[str]) -> bool:
    try:
        verify_stripe(secrets, {"Stripe-Signature": header}, body, now=time.time())
    except SignatureError:
        return False
    return True


def stripe_header(secret: str, body: bytes = BODY, at: int | None = None) -> str:
    header: str = stripe.WebhookSignature.generate_signature_header(
        body.decode(), secret, timestamp=at if at is not None else int(time.time()))
    return header


def test_stripe_agrees_with_stripes_library() -> None:
    now = int(time.time())
    other = "whsec_another-secret"
    good = stripe_header(STRIPE_SECRET, at=now)
    signature = good.partition(",v1=")[2]
    wrong = stripe_header(other, at=now).partition(",v1=")[2]
    cases = {
        "good": (good, BODY, True),
        "tampered body": (good, BODY.replace(b"invoice", b"invoicf"), False),
        "tampered timestamp": (good.replace(f"t={now}", f"t={now - 1}"), BODY, False),
        "rotated: the second v1 matches": (f"t={now},v1={wrong},v1={signature}", BODY, True),
        "v0 only": (f"t={now},v0={signature}", BODY, False),
        "a v0 beside": (f"t={now},v0={wrong},v1={signature}", BODY, True),
        "stale": (stripe_header(STRIPE_SECRET, at=now - 301), BODY, False),
        "old but within tolerance": (stripe_header(STRIPE_SECRET, at=now - 250), BODY, True),
        "wrong secret": (stripe_header(other, at=now), BODY, False),
        "no timestamp": (f"v1={signature}", BODY, False),
        "not hex": (f"t={now},v1=zz{signature[2:]}", BODY, False),
    }
    for name, (header, body, expected) in cases.items():
        assert stripe_accepts(header, body, STRIPE_SECRET) is expected, name
        assert ours_accepts(header, body, [STRIPE_SECRET]) is expected, name


def test_stripe_secret_is_the_key_as_written() -> None:
    """Stripe keys with the whole `whsec_...` text; decoding it as Standard Webhooks does
    would not verify Stripe's signature."""
    header = stripe_header("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw")  # valid base64 too
    assert ours_accepts(header, BODY, ["whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"])


def test_stripe_rotation_of_our_secrets() -> None:
    header = stripe_header(STRIPE_SECRET)
    assert ours_accepts(header, BODY, ["whsec_old-one", STRIPE_SECRET])


def test_stripe_rejections_say_why() -> None:
    header = stripe_header(STRIPE_SECRET, at=int(NOW) - 301)
    assert rejected(verify_stripe, [STRIPE_SECRET], {"Stripe-Signature": header}) == (
        "timestamp outside the 5 minute tolerance (too old)")
    future = stripe_header(STRIPE_SECRET, at=int(NOW) + 301)  # Stripe's library lets it pass
    assert rejected(verify_stripe, [STRIPE_SECRET], {"Stripe-Signature": future}) == (
        "timestamp outside the 5 minute tolerance (too new)")
    signed = stripe_header(STRIPE_SECRET, at=int(NOW))
    assert rejected(verify_stripe, ["whsec_other"], {"Stripe-Signature": signed}) == (
        "signature does not match")
    assert rejected(verify_stripe, [STRIPE_SECRET], {"Stripe-Signature": "t=x,v1=ab"}) == (
        "Stripe-Signature t is not an integer (unix seconds)")
    assert rejected(verify_stripe, [STRIPE_SECRET], {"Stripe-Signature": f"t={int(NOW)}"}) == (
        "Stripe-Signature has no v1=<hex> signature")
    assert rejected(verify_stripe, [STRIPE_SECRET], {}) == (
        "missing signature: send Stripe-Signature")


def test_stripe_id_and_event_come_from_the_body() -> None:
    verified = verify_stripe([STRIPE_SECRET], {"Stripe-Signature": stripe_header(STRIPE_SECRET)},
                             BODY, now=time.time())
    assert verified == Verified("stripe", None, None)
    assert identify(verified, orjson.loads(BODY)) == Verified("stripe", "evt_1", "invoice.paid")


# Shopify: base64 of HMAC-SHA256 of the raw body keyed with the app's secret (Shopify's docs)

def shopify_headers(secret: str, body: bytes = BODY) -> dict[str, str]:
    digest = hmac.new(secret.encode("utf-8"), body, hashlib.sha256).digest()
    return {"X-Shopify-Hmac-Sha256": base64.b64encode(digest).decode("ascii"),
            "X-Shopify-Webhook-Id": "b54557e4-bdd9-4b37-8a5f-bf7d70bcd043",
            "X-Shopify-Topic": "orders/create"}


def test_shopify_passes_with_its_webhook_id_and_topic() -> None:
    assert verify_shopify(["shpss_1"], shopify_headers("shpss_1"), BODY, now=NOW) == Verified(
        "shopify", "b54557e4-bdd9-4b37-8a5f-bf7d70bcd043", "orders/create")
    assert verify_shopify(["old", "new"], shopify_headers("new"), BODY, now=NOW).scheme == (
        "shopify")


def test_shopify_rejections() -> None:
    good = shopify_headers("shpss_1")
    assert rejected(verify_shopify, ["other"], good) == "signature does not match"
    assert rejected(verify_shopify, ["shpss_1"], good, BODY[:-1]) == "signature does not match"
    hexed = {"X-Shopify-Hmac-Sha256": hex_hmac("shpss_1", BODY)}  # hex is not Shopify's form
    assert rejected(verify_shopify, ["shpss_1"], hexed) == "signature does not match"
    assert rejected(verify_shopify, ["shpss_1"], {"X-Shopify-Hmac-Sha256": "*"}) == (
        "X-Shopify-Hmac-Sha256 is not base64")
    assert rejected(verify_shopify, ["shpss_1"], {}) == (
        "missing signature: send X-Shopify-Hmac-Sha256")


# Slack: its SDK signs, and its verifier agrees with ours

SLACK_SECRET = "8f742231b10e8888abcd99yyyzzz85a5"
SLACK_BODY = (b'{"token": "x", "team_id": "T1", "event": {"type": "app_mention", "text": "hi"},'
              b' "type": "event_callback", "event_id": "Ev08MFMKH6", "event_time": 1}')


def slack_headers(secret: str, at: int, body: bytes = SLACK_BODY) -> dict[str, str]:
    signature = SignatureVerifier(secret).generate_signature(timestamp=str(at), body=body)
    assert signature is not None
    return {"X-Slack-Signature": signature, "X-Slack-Request-Timestamp": str(at)}


class FixedClock(Clock):
    def now(self) -> float:
        return NOW


@pytest.mark.parametrize(("case", "offset", "body", "accepted"), [
    ("good", 0, SLACK_BODY, True),
    ("within tolerance", -300, SLACK_BODY, True),
    ("stale", -301, SLACK_BODY, False),
    ("from the future", 301, SLACK_BODY, False),
    ("tampered", 0, SLACK_BODY.replace(b"hi", b"ho"), False),
])
def test_slack_agrees_with_slacks_sdk(case: str, offset: int, body: bytes,
                                      accepted: bool) -> None:
    headers = slack_headers(SLACK_SECRET, int(NOW) + offset)
    sdk = SignatureVerifier(SLACK_SECRET, clock=FixedClock())
    assert sdk.is_valid_request(body, headers) is accepted
    try:
        verified = verify_slack([SLACK_SECRET], headers, body, now=NOW, tolerance=300.0)
    except SignatureError:
        assert not accepted, case
    else:
        assert accepted and verified == Verified("slack", None, None), case


def test_slack_rejections_say_why() -> None:
    headers = slack_headers(SLACK_SECRET, int(NOW) - 301)
    assert rejected(verify_slack, [SLACK_SECRET], headers, SLACK_BODY) == (
        "timestamp outside the 5 minute tolerance (too old)")
    headers = slack_headers(SLACK_SECRET, int(NOW))
    assert rejected(verify_slack, ["another"], headers, SLACK_BODY) == "signature does not match"
    v1 = {**headers, "X-Slack-Signature": headers["X-Slack-Signature"].replace("v0=", "v1=")}
    assert rejected(verify_slack, [SLACK_SECRET], v1, SLACK_BODY) == (
        "X-Slack-Signature is not v0=<hex>")
    no_stamp = {"X-Slack-Signature": headers["X-Slack-Signature"]}
    assert rejected(verify_slack, [SLACK_SECRET], no_stamp, SLACK_BODY) == (
        "missing header: X-Slack-Request-Timestamp")


def test_slack_rotation() -> None:
    headers = slack_headers(SLACK_SECRET, int(NOW))
    assert verify_slack(["old", SLACK_SECRET], headers, SLACK_BODY, now=NOW).scheme == "slack"


def test_slack_id_and_event_come_from_the_body() -> None:
    verified = Verified("slack", None)
    assert identify(verified, orjson.loads(SLACK_BODY)) == Verified(
        "slack", "Ev08MFMKH6", "app_mention")
    assert identify(verified, {"type": "app_rate_limited"}) == Verified(
        "slack", None, "app_rate_limited")


def test_slack_url_verification_challenge() -> None:
    assert slack_challenge({"type": "url_verification", "challenge": "3eZbrw1a"}) == "3eZbrw1a"
    assert slack_challenge(orjson.loads(SLACK_BODY)) is None
    assert slack_challenge([1, 2]) is None
    with pytest.raises(ValueError, match="without a challenge"):
        slack_challenge({"type": "url_verification", "challenge": 5})


# ids and event names from bodies

def test_identify_keeps_only_short_strings() -> None:
    stripe_verified = Verified("stripe", None)
    assert identify(stripe_verified, {"id": 12, "type": ["x"]}) == stripe_verified
    assert identify(stripe_verified, {"id": "e" * (MAX_NAME + 1), "type": ""}) == (
        stripe_verified)
    assert identify(stripe_verified, [{"id": "evt_1"}]) == stripe_verified


def test_identify_leaves_header_schemes_alone() -> None:
    standard = Verified("standard", "msg_1")
    assert identify(standard, {"id": "other", "type": "x"}) is standard


# the source model

def source(**config: Any) -> WebhookSource:
    return WebhookSource.model_validate(config)


def test_scheme_defaults_to_auto_and_is_one_of_the_list() -> None:
    assert source(webhook_secret="s").scheme == "auto"
    with pytest.raises(ValidationError, match="scheme"):
        source(webhook_secret="s", scheme="paypal")


@pytest.mark.parametrize("scheme", ["auto", "standard"])
def test_whsec_must_be_base64_where_the_scheme_decodes_it(scheme: str) -> None:
    with pytest.raises(ValidationError, match="must be base64 after the prefix"):
        source(webhook_secret=STRIPE_SECRET, scheme=scheme)
    with pytest.raises(ValidationError, match="must be base64 after the prefix"):
        source(webhook_secret="whsec_", scheme=scheme)  # decodes to no key at all


@pytest.mark.parametrize("scheme", ["original", "github", "meta", "stripe", "shopify", "slack"])
def test_whsec_is_any_text_where_the_scheme_keys_with_it_as_written(scheme: str) -> None:
    assert source(webhook_secret=[STRIPE_SECRET], scheme=scheme).secrets() == [STRIPE_SECRET]


def test_the_verify_token_is_write_only() -> None:
    pipeline = Pipeline.model_validate({
        "id": "meta", "team_id": "t", "name": "n", "type": "realtime", "source_type": "webhook",
        "source_config": {"webhook_secret": "app-secret", "scheme": "meta",
                          "verify_token": "my-verify-token"}})
    view = pipeline.public()
    assert view["source_config"] == {"webhook_secret": MASK, "scheme": "meta",
                                     "verify_token": MASK}
    assert "my-verify-token" not in orjson.dumps(view).decode()
    stored = pipeline.model_dump(mode="json")
    kept = keep_masked(view, stored)
    assert kept["source_config"]["verify_token"] == "my-verify-token"
    with pytest.raises(ValidationError):
        source(webhook_secret="s", verify_token="")


def test_auto_and_standard_keep_verifying_standard_webhooks() -> None:
    secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
    headers = {"webhook-id": "msg_1", "webhook-timestamp": str(int(NOW)),
               "webhook-signature": sign_standard(secret, "msg_1", int(NOW), BODY)}
    for scheme in ("auto", "standard"):
        assert SCHEMES[scheme]([secret], headers, BODY, now=NOW) == Verified("standard", "msg_1")
    original = {"x-webhook-signature": sign_original("plain-secret", BODY)}
    assert SCHEMES["original"](["plain-secret"], original, BODY, now=NOW) == Verified(
        "original", None)
    assert rejected(SCHEMES["standard"], ["plain-secret"], original) == (
        "missing signature: send webhook-id/webhook-timestamp/webhook-signature")
    assert rejected(SCHEMES["original"], [secret], headers) == (
        "missing signature: send x-webhook-signature")
