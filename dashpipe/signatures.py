"""Webhook signature verification: the original scheme and Standard Webhooks, and the
primitives the providers' schemes share (`dashpipe.providers`).

Original: `x-webhook-signature` is the lowercase hex HMAC-SHA256 of the raw body, keyed with the
secret's UTF-8 bytes.

Standard Webhooks (https://www.standardwebhooks.com): `webhook-id`, `webhook-timestamp` (unix
seconds) and `webhook-signature`, a space-separated list of `v1,<base64 HMAC-SHA256>` entries over
`{id}.{timestamp}.{body}`. A `whsec_<base64>` secret is keyed with its decoded bytes, any other
secret with its UTF-8 bytes. Any entry matching any secret passes, so a sender and a receiver can
rotate keys independently.

Pure functions: the caller passes the secrets, the headers, the raw body and the current time.
Every `SignatureError` message is safe to return to the client: it never holds a secret or the
expected signature. Every verifier (`verify`, `verify_original`, `verify_standard` and the
providers') takes the same arguments and answers a `Verified`.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import math
from collections.abc import Mapping, Sequence
from functools import lru_cache
from secrets import token_bytes
from typing import NamedTuple

from multidict import CIMultiDict, CIMultiDictProxy

from dashpipe.errors import ConfigError, DashpipeError

ORIGINAL_HEADER = "x-webhook-signature"
ID_HEADER = "webhook-id"
TIMESTAMP_HEADER = "webhook-timestamp"
SIGNATURE_HEADER = "webhook-signature"
SECRET_PREFIX = "whsec_"
DEFAULT_TOLERANCE = 300.0


_CASE_INSENSITIVE = (CIMultiDictProxy, CIMultiDict)


class SignatureError(DashpipeError):
    """The request is not signed by a configured secret; the message is safe to show a client."""


class Verified(NamedTuple):  # a tuple: built on every webhook, cheaper than a dataclass
    scheme: str  # the scheme that verified it: original, standard, github, stripe, ...
    webhook_id: str | None  # the sender's id of the delivery (for deduplication), if it gives one
    event: str | None = None  # the sender's event name (X-GitHub-Event, a Stripe type, ...)


_ORIGINAL = Verified("original", None)  # immutable: the original scheme's every answer


def verify(
    secrets: Sequence[str],
    headers: Mapping[str, str],
    body: bytes,
    *,
    now: float,
    tolerance: float = DEFAULT_TOLERANCE,
) -> Verified:
    """Check the request's signature against every secret; raise `SignatureError` if none signs it.

    `headers` may be case-sensitive (a dict) or not (aiohttp's `CIMultiDictProxy`). `now` is unix
    seconds; a Standard Webhooks timestamp more than `tolerance` seconds away from it is refused.
    A malformed configured secret (`whsec_` followed by something not base64) is a `ConfigError`.
    This is the scheme `auto`: Standard Webhooks when `webhook-signature` is sent, else the
    original scheme.
    """
    require_secrets(secrets)
    lowered = case_insensitive(headers)
    if SIGNATURE_HEADER in lowered:
        return _verify_standard(secrets, lowered, body, now, tolerance)
    if ORIGINAL_HEADER in lowered:
        return _verify_original(secrets, lowered[ORIGINAL_HEADER], body)
    raise SignatureError(
        "missing signature: send x-webhook-signature or "
        "webhook-id/webhook-timestamp/webhook-signature")


def verify_original(
    secrets: Sequence[str],
    headers: Mapping[str, str],
    body: bytes,
    *,
    now: float,
    tolerance: float = DEFAULT_TOLERANCE,
) -> Verified:
    """The original scheme only (`x-webhook-signature`); `now` and `tolerance` are unused."""
    require_secrets(secrets)
    given = case_insensitive(headers).get(ORIGINAL_HEADER)
    if given is None:
        raise SignatureError("missing signature: send x-webhook-signature")
    return _verify_original(secrets, given, body)


def verify_standard(
    secrets: Sequence[str],
    headers: Mapping[str, str],
    body: bytes,
    *,
    now: float,
    tolerance: float = DEFAULT_TOLERANCE,
) -> Verified:
    """Standard Webhooks only (`webhook-id`, `webhook-timestamp`, `webhook-signature`)."""
    require_secrets(secrets)
    lowered = case_insensitive(headers)
    if SIGNATURE_HEADER not in lowered:
        raise SignatureError(
            "missing signature: send webhook-id/webhook-timestamp/webhook-signature")
    return _verify_standard(secrets, lowered, body, now, tolerance)


def require_secrets(secrets: Sequence[str]) -> None:
    if not secrets:
        raise ConfigError("no webhook secret configured")


def case_insensitive(headers: Mapping[str, str]) -> Mapping[str, str]:
    """`headers` to look up by lower-case name: aiohttp's are case-insensitive already, so only
    a plain mapping is copied."""
    if type(headers) in _CASE_INSENSITIVE:
        return headers
    return {k.lower(): v for k, v in headers.items()}


def unix_seconds(name: str, value: str, now: float, tolerance: float) -> int:
    """The integer unix timestamp `value` of header `name`, checked to be within `tolerance`
    seconds of `now` either way; else `SignatureError` saying which way it is off."""
    if not (value.isascii() and value.isdigit()):
        raise SignatureError(f"{name} is not an integer (unix seconds)")
    # very long digit strings are far outside any tolerance; int() would refuse over 4300 digits
    stamp = int(value) if len(value) <= 20 else math.inf
    age = now - stamp
    if abs(age) > tolerance:
        direction = "too old" if age > 0 else "too new"
        raise SignatureError(
            f"timestamp outside the {_describe(tolerance)} tolerance ({direction})")
    return int(stamp)


def sign_original(secret: str, body: bytes) -> str:
    """The `x-webhook-signature` value for `body`: lowercase hex HMAC-SHA256."""
    return hmac_sha256(utf8_key(secret), body).hex()


def sign_standard(secret: str, webhook_id: str, timestamp: int, body: bytes) -> str:
    """One `webhook-signature` entry, `v1,<base64>`, for `body` sent as `webhook_id` at `timestamp`.

    `timestamp` is unix seconds.
    """
    digest = _standard_digest(_standard_key(secret), webhook_id, str(timestamp), body)
    return "v1," + binascii.b2a_base64(digest, newline=False).decode("ascii")


def new_secret() -> str:
    """A fresh Standard Webhooks secret: `whsec_` and the base64 of 24 random bytes."""
    return SECRET_PREFIX + base64.b64encode(token_bytes(24)).decode("ascii")


def _verify_original(secrets: Sequence[str], given: str, body: bytes) -> Verified:
    presented = given.strip().lower()
    if presented.isascii():  # compare_digest takes str only when both are ASCII
        for secret in secrets:
            if hmac.compare_digest(sign_original(secret, body), presented):
                return _ORIGINAL
    raise SignatureError("signature does not match")


@lru_cache(maxsize=1024)
def utf8_key(secret: str) -> bytes:
    """The HMAC key of a secret used as written: its UTF-8 bytes (cached per secret)."""
    return secret.encode()


def _verify_standard(
    secrets: Sequence[str], headers: Mapping[str, str], body: bytes, now: float, tolerance: float,
) -> Verified:
    webhook_id = headers.get(ID_HEADER, "").strip()
    timestamp = headers.get(TIMESTAMP_HEADER, "").strip()
    missing = [name for name, value in ((ID_HEADER, webhook_id), (TIMESTAMP_HEADER, timestamp))
               if not value]
    if missing:
        raise SignatureError(f"missing header: {', '.join(missing)}")
    unix_seconds(TIMESTAMP_HEADER, timestamp, now, tolerance)
    presented = _presented_v1(headers[SIGNATURE_HEADER])
    if not presented:
        raise SignatureError("webhook-signature has no v1,<base64> entry")
    for secret in secrets:
        expected = _standard_digest(_standard_key(secret), webhook_id, timestamp, body)
        # no short-circuit on the entries: each comparison is constant time and all are made
        if any([hmac.compare_digest(expected, candidate) for candidate in presented]):
            return Verified(scheme="standard", webhook_id=webhook_id)
    raise SignatureError("signature does not match")


def _presented_v1(header: str) -> list[bytes]:
    """The decoded `v1` signatures of a `webhook-signature` header; other versions are ignored."""
    found = []
    for entry in header.split():
        version, _, encoded = entry.partition(",")
        if version != "v1":
            continue
        try:
            found.append(base64.b64decode(encoded, validate=True))
        except (binascii.Error, ValueError):
            continue  # a malformed entry cannot match; another entry may
    return found


@lru_cache(maxsize=256)
def _standard_key(secret: str) -> bytes:
    if not secret.startswith(SECRET_PREFIX):
        return secret.encode()
    encoded = secret[len(SECRET_PREFIX):]
    try:
        key = base64.b64decode(encoded + "=" * (-len(encoded) % 4), validate=True)
    except (binascii.Error, ValueError):
        raise ConfigError("a webhook secret starting with whsec_ is not valid base64") from None
    if not key:
        raise ConfigError("a webhook secret starting with whsec_ is empty")
    return key


def _standard_digest(key: bytes, webhook_id: str, timestamp: str, body: bytes) -> bytes:
    return hmac_sha256(key, f"{webhook_id}.{timestamp}.".encode(), body)


def hmac_sha256(key: bytes, *parts: bytes) -> bytes:
    """HMAC-SHA256 (RFC 2104) of the concatenated `parts`, the key's padded inner and outer
    blocks hashed once per key: per message only the message is hashed, half the CPU of
    `hmac.digest` on a 700-byte body (which sets the key up on every call). Equal to
    `hmac.digest(key, b"".join(parts), "sha256")` (tested)."""
    inner, outer = _pads(key)
    h = inner.copy()
    for part in parts:
        h.update(part)
    o = outer.copy()
    o.update(h.digest())
    return o.digest()


_IPAD = bytes(x ^ 0x36 for x in range(256))
_OPAD = bytes(x ^ 0x5C for x in range(256))


@lru_cache(maxsize=1024)
def _pads(key: bytes) -> tuple[hashlib._Hash, hashlib._Hash]:
    if len(key) > 64:  # SHA-256's block size: longer keys are hashed first
        key = hashlib.sha256(key).digest()
    block = key.ljust(64, b"\0")
    return hashlib.sha256(block.translate(_IPAD)), hashlib.sha256(block.translate(_OPAD))


def _describe(seconds: float) -> str:
    if seconds >= 60 and seconds % 60 == 0:
        return f"{int(seconds // 60)} minute"
    return f"{seconds:g} second"
