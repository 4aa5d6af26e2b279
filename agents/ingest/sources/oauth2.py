"""OAuth2 client credentials (RFC 6749 section 4.4) for poll sources.

A poll process keeps one token per client (token URL, client id, secret, scope, audience) and
shares it between every pipeline and every concurrent poll that uses that client: one request
to the token endpoint while the others wait on its lock. A token is used until `EARLY` before
it expires (a tenth of its lifetime for short ones), and fetched again at once when the API
answers 401 (`token(refresh=...)`). Several poll processes each keep their own: a token is
not shared state that must agree.

The token endpoint's failures are `TokenError`s whose message is the pipeline's status
(`token endpoint answered 401 invalid_client: ...`); no message holds the client secret.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote_plus

import aiohttp

from dashpipe import jsonio
from dashpipe.errors import DashpipeError

EARLY = 60.0  # seconds before expiry a token is replaced
DEFAULT_LIFETIME = 3600.0  # when the endpoint gives no expires_in
MAX_TEXT = 200


class TokenError(DashpipeError):
    """The token endpoint did not give a token; the message is safe to show."""

    retriable = True


@dataclass
class _Held:
    token: str = ""
    expires_at: float = 0.0  # on the clock of `Tokens`
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)


class Tokens:
    """The tokens of one poll process, by client."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._held: dict[tuple[str, ...], _Held] = {}
        self._clock = clock

    async def token(self, config: Any, session: aiohttp.ClientSession, *,
                    refresh: str | None = None) -> str:
        """A valid access token for `config`'s client; `refresh` is a token the API refused:
        unless another poll replaced it meanwhile, a new one is fetched."""
        key = _key(config)
        held = self._held.setdefault(key, _Held())
        async with held.lock:
            stale = refresh is not None and held.token == refresh
            if held.token and not stale and self._clock() < held.expires_at:
                return held.token
            token, lifetime = await _fetch(config, session)
            held.token = token
            held.expires_at = self._clock() + lifetime - min(EARLY, lifetime / 10)
            return token


    def current(self, config: Any) -> str | None:
        """The token held for `config`'s client (to keep it out of error messages)."""
        held = self._held.get(_key(config))
        return held.token if held is not None and held.token else None


def _key(config: Any) -> tuple[str, ...]:
    secret = hashlib.sha256(str(config.client_secret).encode()).hexdigest()
    return (str(config.token_url), str(config.client_id), secret, config.scope or "",
            config.audience or "", config.client_auth)


async def _fetch(config: Any, session: aiohttp.ClientSession) -> tuple[str, float]:
    form = {"grant_type": "client_credentials"}
    if config.scope:
        form["scope"] = config.scope
    if config.audience:
        form["audience"] = config.audience
    headers = {"Accept": "application/json"}
    if config.client_auth == "basic":  # RFC 6749 2.3.1: each part form-urlencoded first
        pair = f"{quote_plus(config.client_id)}:{quote_plus(config.client_secret)}"
        headers["Authorization"] = "Basic " + base64.b64encode(pair.encode()).decode("ascii")
    else:
        form |= {"client_id": config.client_id, "client_secret": config.client_secret}
    timeout = aiohttp.ClientTimeout(total=config.timeout_seconds)
    try:
        async with session.post(config.token_url, data=form, headers=headers,
                                timeout=timeout) as resp:
            status, body = resp.status, await resp.read()
    except TimeoutError:
        raise TokenError(f"token endpoint: timeout after {timeout.total:g}s") from None
    except aiohttp.ClientError as exc:
        raise TokenError(f"token endpoint: connection failed ({type(exc).__name__})") from None
    try:
        answer = jsonio.loads(body)
    except jsonio.InvalidJson:
        answer = None
    if not 200 <= status < 300:
        raise TokenError(f"token endpoint answered {status}{_reason(answer)}")
    token = answer.get("access_token") if isinstance(answer, dict) else None
    if not isinstance(token, str) or not token:
        raise TokenError(f"token endpoint answered {status} without an access_token")
    lifetime = answer.get("expires_in", DEFAULT_LIFETIME)
    if isinstance(lifetime, str) and lifetime.isdigit():
        lifetime = int(lifetime)
    if not isinstance(lifetime, int | float) or isinstance(lifetime, bool) or lifetime <= 0:
        lifetime = DEFAULT_LIFETIME
    return token, float(lifetime)


def _reason(answer: Any) -> str:
    """` <error>: <error_description>` of an RFC 6749 5.2 error answer, shortened."""
    if not isinstance(answer, dict) or not isinstance(answer.get("error"), str):
        return ""
    text = f" {answer['error']}"
    description = answer.get("error_description")
    if isinstance(description, str) and description:
        text += f": {description}"
    return text if len(text) <= MAX_TEXT else text[:MAX_TEXT] + "..."
