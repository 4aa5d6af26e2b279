from __future__ import annotations

import base64
import hmac
import time
from datetime import UTC, datetime

import pytest
from hypothesis import given
from hypothesis import strategies as st
from standardwebhooks.webhooks import Webhook

from dashpipe.errors import ConfigError
from dashpipe.signatures import (
    SignatureError,
    Verified,
    hmac_sha256,
    new_secret,
    sign_original,
    sign_standard,
    verify,
)

BODY = b'{"temperature": 21.5, "city": "Z\xc3\xbcrich"}'
NOW = 1_700_000_000.0
PLAIN = "s3cr3t-plain-text"
WHSEC = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"


def standard_headers(secret: str, *, webhook_id: str = "msg_1", ts: int = int(NOW),
                     body: bytes = BODY) -> dict[str, str]:
    return {"webhook-id": webhook_id, "webhook-timestamp": str(ts),
            "webhook-signature": sign_standard(secret, webhook_id, ts, body)}


def rejected(secrets: list[str], headers: dict[str, str], body: bytes = BODY,
             **kwargs: float) -> str:
    with pytest.raises(SignatureError) as caught:
        verify(secrets, headers, body, now=kwargs.pop("now", NOW), **kwargs)
    message = str(caught.value)
    for secret in secrets:
        assert secret not in message
        assert secret.removeprefix("whsec_") not in message
    for value in headers.values():
        if "," in value or len(value) == 64:  # a signature: never echoed
            assert value not in message
    return message


# original scheme

def test_original_passes() -> None:
    headers = {"X-Webhook-Signature": sign_original(PLAIN, BODY)}
    assert verify([PLAIN], headers, BODY, now=NOW) == Verified("original", None)


def test_original_signature_is_lowercase_hex_hmac_sha256() -> None:
    # RFC 4231 test case 2
    assert sign_original("Jefe", b"what do ya want for nothing?") == (
        "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843")


def test_original_wrong_secret_and_tampered_body() -> None:
    headers = {"x-webhook-signature": sign_original(PLAIN, BODY)}
    assert rejected(["another"], headers) == "signature does not match"
    assert rejected([PLAIN], headers, BODY + b" ") == "signature does not match"
    assert rejected([PLAIN], {"x-webhook-signature": "zz\u00e9"}) == "signature does not match"


def test_original_rotation_any_secret() -> None:
    headers = {"x-webhook-signature": sign_original("new", BODY)}
    assert verify(["old", "new"], headers, BODY, now=NOW).scheme == "original"


def test_missing_signature() -> None:
    assert rejected([PLAIN], {"content-type": "application/json"}) == (
        "missing signature: send x-webhook-signature or "
        "webhook-id/webhook-timestamp/webhook-signature")


# Standard Webhooks

@pytest.mark.parametrize("secret", [PLAIN, WHSEC])
def test_standard_passes(secret: str) -> None:
    result = verify([secret], standard_headers(secret), BODY, now=NOW)
    assert result == Verified("standard", "msg_1")


def test_standard_header_names_are_case_insensitive() -> None:
    headers = {k.title(): v for k, v in standard_headers(WHSEC).items()}
    assert verify([WHSEC], headers, BODY, now=NOW).webhook_id == "msg_1"


def test_standard_takes_precedence_over_original() -> None:
    headers = {**standard_headers(WHSEC), "x-webhook-signature": "garbage"}
    assert verify([WHSEC], headers, BODY, now=NOW).scheme == "standard"


def test_whsec_key_is_the_decoded_bytes_other_keys_are_utf8() -> None:
    key = base64.b64decode(WHSEC.removeprefix("whsec_"))
    raw = key.decode("latin-1")  # a different secret text whose UTF-8 bytes differ from key
    assert sign_standard(WHSEC, "a", 1, b"x") != sign_standard(raw, "a", 1, b"x")
    assert sign_standard("whsec_" + base64.b64encode(b"abc").decode(), "a", 1, b"x") == (
        sign_standard("abc", "a", 1, b"x"))


def test_unpadded_whsec_secret_is_accepted() -> None:
    padded = "whsec_" + base64.b64encode(b"0123456789").decode()
    assert padded.endswith("=")
    assert sign_standard(padded.rstrip("="), "a", 1, b"x") == sign_standard(padded, "a", 1, b"x")


def test_standard_wrong_secret_tampered_body_and_id() -> None:
    headers = standard_headers(WHSEC)
    assert rejected([new_secret()], headers) == "signature does not match"
    assert rejected([WHSEC], headers, BODY.replace(b"21.5", b"99.9")) == (
        "signature does not match")
    assert rejected([WHSEC], {**headers, "webhook-id": "msg_2"}) == "signature does not match"


def test_standard_rotation_two_secrets() -> None:
    old, new = new_secret(), new_secret()
    assert verify([old, new], standard_headers(new), BODY, now=NOW).scheme == "standard"
    assert verify([old, new], standard_headers(old), BODY, now=NOW).scheme == "standard"


def test_standard_rotation_two_entries_only_the_second_matches() -> None:
    headers = standard_headers(WHSEC)
    stale = sign_standard(new_secret(), "msg_1", int(NOW), BODY)
    headers["webhook-signature"] = f"{stale} {headers['webhook-signature']}"
    assert verify([WHSEC], headers, BODY, now=NOW).webhook_id == "msg_1"


def test_standard_ignores_other_versions_and_malformed_entries() -> None:
    headers = standard_headers(WHSEC)
    good = headers["webhook-signature"]
    headers["webhook-signature"] = f"v1a,abc v1,not*base64 v2,{good[3:]} {good}"
    assert verify([WHSEC], headers, BODY, now=NOW).scheme == "standard"
    headers["webhook-signature"] = f"v2,{good[3:]}"
    assert rejected([WHSEC], headers) == "webhook-signature has no v1,<base64> entry"


@pytest.mark.parametrize("offset", [-300, 300])
def test_tolerance_boundary_is_inclusive(offset: int) -> None:
    headers = standard_headers(WHSEC, ts=int(NOW) + offset)
    assert verify([WHSEC], headers, BODY, now=NOW).scheme == "standard"


@pytest.mark.parametrize(("offset", "direction"), [(-301, "too old"), (301, "too new")])
def test_tolerance_exceeded_either_side(offset: int, direction: str) -> None:
    headers = standard_headers(WHSEC, ts=int(NOW) + offset)
    assert rejected([WHSEC], headers) == (
        f"timestamp outside the 5 minute tolerance ({direction})")


def test_tolerance_is_a_parameter() -> None:
    headers = standard_headers(WHSEC, ts=int(NOW) - 45)
    assert verify([WHSEC], headers, BODY, now=NOW, tolerance=60).scheme == "standard"
    assert rejected([WHSEC], headers, tolerance=30) == (
        "timestamp outside the 30 second tolerance (too old)")


@pytest.mark.parametrize("stamp", ["1700000000.5", "abc", "-1700000000", "1e9", "\u0661\u0662"])
def test_timestamp_must_be_an_integer(stamp: str) -> None:
    headers = {**standard_headers(WHSEC), "webhook-timestamp": stamp}
    assert rejected([WHSEC], headers) == "webhook-timestamp is not an integer (unix seconds)"


def test_absurdly_long_timestamp_is_outside_tolerance() -> None:
    headers = {**standard_headers(WHSEC), "webhook-timestamp": "9" * 5000}
    assert rejected([WHSEC], headers).startswith("timestamp outside")


@pytest.mark.parametrize(("drop", "message"), [
    (("webhook-id",), "missing header: webhook-id"),
    (("webhook-timestamp",), "missing header: webhook-timestamp"),
    (("webhook-id", "webhook-timestamp"), "missing header: webhook-id, webhook-timestamp"),
])
def test_standard_missing_headers(drop: tuple[str, ...], message: str) -> None:
    headers = {k: v for k, v in standard_headers(WHSEC).items() if k not in drop}
    assert rejected([WHSEC], headers) == message


def test_misconfigured_secrets_are_config_errors_without_the_secret() -> None:
    with pytest.raises(ConfigError):
        verify([], standard_headers(WHSEC), BODY, now=NOW)
    bad = "whsec_not*base64!"
    with pytest.raises(ConfigError) as caught:
        verify([bad], standard_headers(WHSEC), BODY, now=NOW)
    assert "not*base64" not in str(caught.value)


def test_new_secret_shape() -> None:
    secret = new_secret()
    assert secret.startswith("whsec_")
    assert len(base64.b64decode(secret.removeprefix("whsec_"), validate=True)) == 24
    assert new_secret() != secret


# interoperability with the reference implementation (it checks against the real clock)

def test_our_signature_verifies_with_the_reference() -> None:
    secret, ts = new_secret(), int(time.time())
    headers = standard_headers(secret, webhook_id="msg_2fXk", ts=ts)
    Webhook(secret).verify(BODY, headers)  # raises on mismatch


def test_reference_signature_verifies_with_ours() -> None:
    secret, ts = new_secret(), int(time.time())
    stamp = datetime.fromtimestamp(ts, tz=UTC)
    signature = Webhook(secret).sign("msg_2fXk", stamp, BODY.decode())
    headers = {"webhook-id": "msg_2fXk", "webhook-timestamp": str(ts),
               "webhook-signature": signature}
    assert verify([secret], headers, BODY, now=time.time()) == Verified("standard", "msg_2fXk")


@given(st.binary(max_size=200), st.lists(st.binary(max_size=300), max_size=3))
def test_hmac_sha256_equals_the_standard_library(key: bytes, parts: list[bytes]) -> None:
    """Keys shorter than, equal to and longer than SHA-256's 64-byte block; the pads are
    cached per key, so repeated keys are covered too."""
    assert hmac_sha256(key, *parts) == hmac.digest(key, b"".join(parts), "sha256")
    assert hmac_sha256(key, *parts) == hmac.digest(key, b"".join(parts), "sha256")


@pytest.mark.parametrize("size", [63, 64, 65, 200])
def test_hmac_sha256_at_the_block_size(size: int) -> None:
    key = bytes(range(256))[:size]
    assert hmac_sha256(key, BODY) == hmac.digest(key, BODY, "sha256")


def test_a_non_ascii_original_signature_is_a_mismatch() -> None:
    with pytest.raises(SignatureError, match="does not match"):
        verify([PLAIN], {"x-webhook-signature": "é" * 64}, BODY, now=NOW)
