"""Webhook signatures as providers send them, and the table of every scheme a webhook source
can name (`WebhookSource.scheme`).

- `github`: `X-Hub-Signature-256: sha256=<hex HMAC-SHA256 of the body>`; delivery id
  `X-GitHub-Delivery`, event `X-GitHub-Event`. `meta` is the same signature (Meta's app secret
  signs with it) without a delivery id; its event is the body's `object`.
- `stripe`: `Stripe-Signature: t=<unix seconds>,v1=<hex>[,v1=<hex>...]`, each `v1` a hex
  HMAC-SHA256 of `{t}.{body}`; any `v1` may match (Stripe sends several while a secret rolls).
  The `whsec_...` signing secret is the key as written (its UTF-8 bytes), not base64-decoded as
  Standard Webhooks does. Delivery id and event: the body's `id` and `type`.
- `shopify`: `X-Shopify-Hmac-Sha256: <base64 HMAC-SHA256 of the body>`, keyed with the app's
  client secret; delivery id `X-Shopify-Webhook-Id`, event `X-Shopify-Topic`.
- `slack`: `X-Slack-Signature: v0=<hex HMAC-SHA256 of v0:{timestamp}:{body}>` with
  `X-Slack-Request-Timestamp`; delivery id the body's `event_id`, event its `event.type`, else
  its `type`.

Timestamps (Stripe, Slack) must be within the tolerance of now, either way. Every secret of the
list is tried (rotation); comparisons are constant-time; error messages never hold a secret or
an expected signature. Ids and event names taken from a body are kept when they are strings of
at most `MAX_NAME` characters.
"""

from __future__ import annotations

import base64
import binascii
import hmac
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol

from dashpipe.signatures import (
    DEFAULT_TOLERANCE,
    SignatureError,
    Verified,
    case_insensitive,
    hmac_sha256,
    require_secrets,
    unix_seconds,
    utf8_key,
    verify,
    verify_original,
    verify_standard,
)

HUB_SIGNATURE = "x-hub-signature-256"
GITHUB_DELIVERY = "x-github-delivery"
GITHUB_EVENT = "x-github-event"
STRIPE_SIGNATURE = "stripe-signature"
SHOPIFY_HMAC = "x-shopify-hmac-sha256"
SHOPIFY_ID = "x-shopify-webhook-id"
SHOPIFY_TOPIC = "x-shopify-topic"
SLACK_SIGNATURE = "x-slack-signature"
SLACK_TIMESTAMP = "x-slack-request-timestamp"
MAX_NAME = 256  # longest id or event name kept (a header of every Bronze record)


class Verifier(Protocol):
    def __call__(self, secrets: Sequence[str], headers: Mapping[str, str], body: bytes, *,
                 now: float, tolerance: float = DEFAULT_TOLERANCE) -> Verified: ...


def verify_github(secrets: Sequence[str], headers: Mapping[str, str], body: bytes, *,
                  now: float, tolerance: float = DEFAULT_TOLERANCE) -> Verified:
    """GitHub's `X-Hub-Signature-256`; no timestamp, so `now` and `tolerance` are unused."""
    lowered = case_insensitive(headers)
    _hub_signature(secrets, lowered, body)
    return Verified("github", _header(lowered, GITHUB_DELIVERY), _header(lowered, GITHUB_EVENT))


def verify_meta(secrets: Sequence[str], headers: Mapping[str, str], body: bytes, *,
                now: float, tolerance: float = DEFAULT_TOLERANCE) -> Verified:
    """Meta's (Facebook, Instagram, WhatsApp) `X-Hub-Signature-256`, as GitHub's."""
    _hub_signature(secrets, case_insensitive(headers), body)
    return _META


def verify_stripe(secrets: Sequence[str], headers: Mapping[str, str], body: bytes, *,
                  now: float, tolerance: float = DEFAULT_TOLERANCE) -> Verified:
    """Stripe's `Stripe-Signature`; id and event come from the body (`identify`)."""
    require_secrets(secrets)
    header = case_insensitive(headers).get(STRIPE_SIGNATURE)
    if header is None:
        raise SignatureError("missing signature: send Stripe-Signature")
    stamp, presented = None, []
    for item in header.split(","):  # as Stripe's libraries read it: no spaces
        key, _, value = item.partition("=")
        if key == "t" and stamp is None:
            stamp = value
        elif key == "v1" and (digest := _unhex(value)) is not None:
            presented.append(digest)
    if stamp is None:
        raise SignatureError("Stripe-Signature has no t=<timestamp>")
    signed_at = unix_seconds("Stripe-Signature t", stamp, now, tolerance)
    if not presented:
        raise SignatureError("Stripe-Signature has no v1=<hex> signature")
    if _signed(secrets, presented, b"%d." % signed_at, body):  # Stripe signs t as an integer
        return _STRIPE
    raise SignatureError("signature does not match")


def verify_shopify(secrets: Sequence[str], headers: Mapping[str, str], body: bytes, *,
                   now: float, tolerance: float = DEFAULT_TOLERANCE) -> Verified:
    """Shopify's `X-Shopify-Hmac-Sha256`; no timestamp, so `now` and `tolerance` are unused."""
    require_secrets(secrets)
    lowered = case_insensitive(headers)
    given = lowered.get(SHOPIFY_HMAC)
    if given is None:
        raise SignatureError("missing signature: send X-Shopify-Hmac-Sha256")
    try:
        presented = base64.b64decode(given.strip(), validate=True)
    except (binascii.Error, ValueError):
        raise SignatureError("X-Shopify-Hmac-Sha256 is not base64") from None
    if _signed(secrets, [presented], body):
        return Verified("shopify", _header(lowered, SHOPIFY_ID), _header(lowered, SHOPIFY_TOPIC))
    raise SignatureError("signature does not match")


def verify_slack(secrets: Sequence[str], headers: Mapping[str, str], body: bytes, *,
                 now: float, tolerance: float = DEFAULT_TOLERANCE) -> Verified:
    """Slack's `X-Slack-Signature` and `X-Slack-Request-Timestamp`; id and event come from
    the body (`identify`)."""
    require_secrets(secrets)
    lowered = case_insensitive(headers)
    given, stamp = lowered.get(SLACK_SIGNATURE), lowered.get(SLACK_TIMESTAMP)
    if given is None:
        raise SignatureError("missing signature: send X-Slack-Signature")
    if stamp is None:
        raise SignatureError("missing header: X-Slack-Request-Timestamp")
    unix_seconds("X-Slack-Request-Timestamp", stamp, now, tolerance)
    version, _, hexdigest = given.strip().partition("=")
    presented = _unhex(hexdigest) if version == "v0" else None
    if presented is None:
        raise SignatureError("X-Slack-Signature is not v0=<hex>")
    if _signed(secrets, [presented], b"v0:%s:" % stamp.encode(), body):  # the stamp as sent
        return _SLACK
    raise SignatureError("signature does not match")


# scheme -> verifier: the values of `WebhookSource.scheme` (a test keeps the two equal)
SCHEMES: dict[str, Verifier] = {
    "auto": verify,
    "original": verify_original,
    "standard": verify_standard,
    "github": verify_github,
    "meta": verify_meta,
    "stripe": verify_stripe,
    "shopify": verify_shopify,
    "slack": verify_slack,
}


def identify(verified: Verified, payload: Any) -> Verified:
    """`verified` with the delivery id and event name its scheme takes from the parsed body
    (Stripe, Slack, Meta); unchanged for the schemes that send them in headers."""
    take = _FROM_BODY.get(verified.scheme)
    if take is None:
        return verified
    webhook_id, event = take(payload) if isinstance(payload, dict) else (None, None)
    return verified._replace(webhook_id=webhook_id, event=event)


def slack_challenge(payload: Any) -> str | None:
    """The `challenge` of a Slack `url_verification` request (answered, never stored), or None
    for any other payload. A `url_verification` without a string challenge is a `ValueError`."""
    if not isinstance(payload, dict) or payload.get("type") != "url_verification":
        return None
    challenge = payload.get("challenge")
    if not isinstance(challenge, str):
        raise ValueError("url_verification without a challenge")
    return challenge


def _slack_names(payload: dict[str, Any]) -> tuple[str | None, str | None]:
    inner = payload.get("event")
    event = _name(inner.get("type")) if isinstance(inner, dict) else None
    return _name(payload.get("event_id")), event or _name(payload.get("type"))


_FROM_BODY: dict[str, Callable[[dict[str, Any]], tuple[str | None, str | None]]] = {
    "stripe": lambda payload: (_name(payload.get("id")), _name(payload.get("type"))),
    "slack": _slack_names,
    "meta": lambda payload: (None, _name(payload.get("object"))),
}
BODY_SCHEMES = frozenset(_FROM_BODY)  # the schemes whose id or event is in the body

_META = Verified("meta", None)
_STRIPE = Verified("stripe", None)
_SLACK = Verified("slack", None)


def _hub_signature(secrets: Sequence[str], headers: Mapping[str, str], body: bytes) -> None:
    require_secrets(secrets)
    given = headers.get(HUB_SIGNATURE)
    if given is None:
        raise SignatureError("missing signature: send X-Hub-Signature-256")
    algorithm, _, hexdigest = given.strip().partition("=")
    presented = _unhex(hexdigest) if algorithm == "sha256" else None
    if presented is None:
        raise SignatureError("X-Hub-Signature-256 is not sha256=<hex>")
    if not _signed(secrets, [presented], body):
        raise SignatureError("signature does not match")


def _signed(secrets: Sequence[str], presented: Sequence[bytes], *parts: bytes) -> bool:
    """Whether any secret's HMAC-SHA256 of `parts` (keyed as written) is a presented digest;
    every comparison is made, each constant-time, so where a match is does not show."""
    return any([hmac.compare_digest(hmac_sha256(utf8_key(secret), *parts), candidate)
                for secret in secrets for candidate in presented])


def _unhex(text: str) -> bytes | None:
    """The bytes of a hex SHA-256 digest (either case), or None if `text` is not one."""
    if len(text) != 64:
        return None
    try:
        return bytes.fromhex(text)
    except ValueError:
        return None


def _header(headers: Mapping[str, str], name: str) -> str | None:
    value = headers.get(name)
    return _name(value.strip()) if value is not None else None


def _name(value: Any) -> str | None:
    return value if isinstance(value, str) and 0 < len(value) <= MAX_NAME else None
