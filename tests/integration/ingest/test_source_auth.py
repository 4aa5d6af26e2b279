"""OAuth2 client credentials, an API key in the query and providers' rate-limit headers, against
local fakes over loopback (no Kafka, no database), and once through the real poller."""

from __future__ import annotations

import asyncio
import base64
import math
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs

import aiohttp
import orjson
import pytest
from aiohttp import web

from agents.ingest.sources import SOURCES, SourceError
from agents.ingest.sources import base as sources_base
from agents.ingest.sources.base import FetchResult
from agents.ingest.sources.hosts import Hosts
from agents.ingest.sources.oauth2 import Tokens
from dashpipe.settings import ADMIN, PollSettings
from schemas.pipeline import HttpApiSource
from tests.helpers import serving, wait_until

SECRET = "cs-S3CRET/value+1"  # '/' and '+' are form-encoded inside Basic credentials
KEY = "key-S3CRET-value"


@dataclass
class Fake:
    """A token endpoint and an API that accepts only the tokens it issued and not revoked."""

    base: str = ""
    token_requests: list[dict[str, Any]] = field(default_factory=list)
    api_requests: list[web.Request] = field(default_factory=list)
    issued: int = 0
    expires_in: Any = 3600
    revoked: set[str] = field(default_factory=set)
    token_answer: Callable[[], web.Response] | None = None
    gate: asyncio.Event | None = None  # holds token answers until set

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/token", self.token)
        app.router.add_get("/data", self.data)
        return app

    async def token(self, request: web.Request) -> web.Response:
        form = {k: v[0] for k, v in parse_qs(await request.text()).items()}
        self.token_requests.append({"form": form,
                                    "authorization": request.headers.get("Authorization")})
        if self.gate is not None:
            await self.gate.wait()
        if self.token_answer is not None:
            return self.token_answer()
        self.issued += 1
        return web.json_response({"access_token": f"at-{self.issued}", "token_type": "Bearer",
                                  "expires_in": self.expires_in})

    async def data(self, request: web.Request) -> web.Response:
        self.api_requests.append(request)
        token = request.headers.get("Authorization", "").removeprefix("Bearer ")
        if not token.startswith("at-") or token in self.revoked:
            return web.json_response({"message": "Bad credentials"}, status=401)
        return web.json_response({"items": [1, 2], "token": token, "query": dict(request.query)})


@pytest.fixture
async def fake() -> AsyncIterator[Fake]:
    state = Fake()
    async with serving(state.app()) as state.base:
        yield state


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    """A fresh token cache for the test, on a clock the test moves."""
    at = Clock()
    monkeypatch.setattr(sources_base, "TOKENS", Tokens(clock=at))
    return at


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as s:
        yield s


def oauth(fake: Fake, **extra: Any) -> dict[str, Any]:
    return {"url": f"{fake.base}/data", "auth_type": "oauth2_client_credentials",
            "token_url": f"{fake.base}/token", "client_id": "dash board",
            "client_secret": SECRET, **extra}


def token_of(page: Any) -> str:
    return str(orjson.loads(page.body)["token"])


async def poll(config: dict[str, Any], session: aiohttp.ClientSession) -> FetchResult:
    return await SOURCES["http_api"].fetch(HttpApiSource(**config), None, session)


async def test_a_token_is_fetched_once_and_used_until_shortly_before_it_expires(
        fake: Fake, clock: Clock, session: aiohttp.ClientSession) -> None:
    config = oauth(fake, scope="read:metrics", audience="https://api.example.com")
    for _ in range(3):
        result = await poll(config, session)
        assert token_of(result.pages[0]) == "at-1"
    [asked] = fake.token_requests
    assert asked["form"] == {"grant_type": "client_credentials", "scope": "read:metrics",
                             "audience": "https://api.example.com"}
    pair = base64.b64decode(asked["authorization"].removeprefix("Basic ")).decode()
    assert pair == "dash+board:cs-S3CRET%2Fvalue%2B1"  # RFC 6749 2.3.1: form-encoded parts
    clock.now += 3600 - 61  # more than a minute left: still the same token
    await poll(config, session)
    assert len(fake.token_requests) == 1
    clock.now += 2  # less than a minute left: replaced before the API could refuse it
    result = await poll(config, session)
    assert token_of(result.pages[0]) == "at-2" and len(fake.token_requests) == 2
    assert all(r.headers["Authorization"].startswith("Bearer at-") for r in fake.api_requests)


async def test_client_credentials_in_the_body(fake: Fake, clock: Clock,
                                              session: aiohttp.ClientSession) -> None:
    await poll(oauth(fake, client_auth="body"), session)
    [asked] = fake.token_requests
    assert asked["authorization"] is None
    assert asked["form"] == {"grant_type": "client_credentials", "client_id": "dash board",
                             "client_secret": SECRET}


async def test_concurrent_polls_share_one_token_request(fake: Fake, clock: Clock,
                                                        session: aiohttp.ClientSession) -> None:
    fake.gate = asyncio.Event()
    polls = [asyncio.create_task(poll(oauth(fake), session)) for _ in range(5)]
    await wait_until(lambda: fake.token_requests, what="the first token request")
    fake.gate.set()
    results = await asyncio.gather(*polls)
    assert len(fake.token_requests) == 1
    assert all(token_of(r.pages[0]) == "at-1" for r in results)


async def test_a_401_fetches_a_new_token_once(fake: Fake, clock: Clock,
                                              session: aiohttp.ClientSession) -> None:
    await poll(oauth(fake), session)
    fake.revoked.add("at-1")  # revoked before its expiry
    result = await poll(oauth(fake), session)
    assert token_of(result.pages[0]) == "at-2"
    assert [r.headers["Authorization"] for r in fake.api_requests] == \
        ["Bearer at-1", "Bearer at-1", "Bearer at-2"]
    fake.revoked.update({"at-2", "at-3"})  # the API refuses every token: once, then fail
    with pytest.raises(SourceError) as info:
        await poll(oauth(fake), session)
    assert str(info.value) == "HTTP 401"
    assert len(fake.token_requests) == 3 and len(fake.api_requests) == 5


@pytest.mark.parametrize(("answer", "message"), [
    (lambda: web.json_response({"error": "invalid_client", "error_description":
                                f"client secret {SECRET} is wrong"}, status=401),
     "token endpoint answered 401 invalid_client: client secret *** is wrong"),
    (lambda: web.Response(text="<html>oops</html>", status=502),
     "token endpoint answered 502"),
    (lambda: web.json_response({"token_type": "Bearer"}),
     "token endpoint answered 200 without an access_token"),
])
async def test_token_endpoint_errors_are_the_poll_error_without_the_secret(
        fake: Fake, clock: Clock, session: aiohttp.ClientSession,
        answer: Callable[[], web.Response], message: str) -> None:
    fake.token_answer = answer
    with pytest.raises(SourceError) as info:
        await poll(oauth(fake), session)
    assert str(info.value) == message and SECRET not in str(info.value)
    assert fake.api_requests == []


async def test_a_token_endpoint_error_is_the_pipelines_status(
        start_roles: Any, fake: Fake, clock: Clock) -> None:
    fake.token_answer = lambda: web.json_response({"error": "invalid_scope"}, status=400)
    rt = await start_roles("poll", poll=PollSettings(retry_base_seconds=0.5,
                                                     retry_cap_seconds=2, tick_seconds=0.05))
    await rt.service.create({"id": "oauth-poll", "team_id": "team-a", "name": "o",
                             "type": "polling", "source_type": "http_api",
                             "interval_seconds": 60, "source_config": oauth(fake)}, ADMIN)
    status = await wait_until(lambda: rt.registry.status.get("oauth-poll"))
    assert status.state == "error"
    assert status.error_message == "token endpoint answered 400 invalid_scope"
    view = rt.service.view(rt.registry.pipelines["oauth-poll"])
    assert view["source_config"]["client_secret"] == "***" and SECRET not in str(view)


async def test_an_api_key_in_the_query_goes_on_every_request_and_never_in_a_header(
        session: aiohttp.ClientSession) -> None:
    seen: list[web.Request] = []

    async def page(request: web.Request) -> web.Response:
        seen.append(request)
        n = int(request.match_info["n"])
        return web.json_response({"next": f"/p/{n + 1}?x=1" if n < 3 else None})

    app = web.Application()
    app.router.add_get("/p/{n}", page)
    async with serving(app) as url:
        await poll({"url": f"{url}/p/1", "params": {"units": "metric"}, "auth_type": "api_key",
                    "api_key_in": "query", "api_key_param": "appid", "api_key": KEY,
                    "pagination": {"type": "link", "next_path": "next"}}, session)
    assert [dict(r.query) for r in seen] == [{"units": "metric", "appid": KEY},
                                             {"x": "1", "appid": KEY}, {"x": "1", "appid": KEY}]
    assert not any(KEY in str(dict(r.headers)) for r in seen)


@dataclass
class Limited:
    """An API that allows `allowed` requests per `window` seconds (fixed windows), says what
    is left in its headers, and answers 429 beyond."""

    allowed: int
    window: float
    style: str
    started: float = 0.0
    used: int = 0
    times: list[float] = field(default_factory=list)
    refused: int = 0

    async def handle(self, request: web.Request) -> web.Response:
        now = time.time()
        if now - self.started >= self.window:
            self.started, self.used = now, 0
        left = self.window - (now - self.started)
        if self.used >= self.allowed:
            self.refused += 1
            return web.json_response({"message": "rate limited"}, status=429,
                                     headers={"Retry-After": str(int(left) + 1)})
        self.used += 1
        self.times.append(now)
        remaining = self.allowed - self.used
        if self.style == "github":  # unix seconds (rounded up, as GitHub's are whole)
            headers = {"X-RateLimit-Remaining": str(remaining),
                       "X-RateLimit-Reset": str(int(self.started + self.window) + 1)}
        elif self.style == "ietf":
            headers = {"RateLimit-Policy": f'"default";q={self.allowed};w={self.window:g}',
                       "RateLimit": f'"default";r={remaining};'
                                    f't={math.ceil(left * 100) / 100:.2f}'}
        else:
            headers = {"RateLimit-Remaining": str(remaining),
                       "RateLimit-Reset": f"{math.ceil(left * 100) / 100:.2f}"}
        n = int(request.query.get("cursor", "0"))
        return web.json_response({"items": [n], "next": str(n + 1) if n < 3 else None},
                                 headers=headers)


@pytest.mark.parametrize("style", ["github", "ietf", "draft"])
async def test_pipelines_sharing_a_host_slow_down_before_the_provider_says_429(
        session: aiohttp.ClientSession, monkeypatch: pytest.MonkeyPatch, style: str) -> None:
    monkeypatch.setattr(sources_base, "HOSTS", Hosts())
    limited = Limited(allowed=5, window=2.0 if style == "github" else 1.5, style=style)
    app = web.Application()
    app.router.add_get("/items", limited.handle)
    async with serving(app) as url:
        config = {"url": f"{url}/items", "timeout_seconds": 10,
                  "pagination": {"type": "cursor", "next_path": "next", "param": "cursor"}}
        # three pipelines (two teams' alike: the budget is the host's) of 4 pages each
        results = await asyncio.gather(*(poll(config, session) for _ in range(3)))
    assert [len(r.pages) for r in results] == [4, 4, 4]
    assert limited.refused == 0
    assert len(limited.times) == 12
    for t in limited.times:  # never more than allowed in any window the API counted
        assert sum(1 for u in limited.times if t <= u < t + limited.window) <= 5


async def test_a_429_blocks_the_host_for_every_pipeline_of_the_process(
        session: aiohttp.ClientSession, monkeypatch: pytest.MonkeyPatch) -> None:
    hosts = Hosts()
    monkeypatch.setattr(sources_base, "HOSTS", hosts)
    hits: list[str] = []

    async def busy(request: web.Request) -> web.Response:
        hits.append(request.path)
        return web.json_response({}, status=429, headers={"Retry-After": "120"})

    app = web.Application()
    app.router.add_get("/{name}", busy)
    async with serving(app) as url:
        with pytest.raises(SourceError) as first:
            await poll({"url": f"{url}/a"}, session)
        with pytest.raises(SourceError) as second:
            await poll({"url": f"{url}/b"}, session)  # another pipeline, same host
    assert str(first.value) == "HTTP 429" and first.value.retry_after == 120
    assert hits == ["/a"]  # the second never reached the host
    assert "rate limit: no request left for" in str(second.value)
    assert second.value.retry_after is not None and 115 < second.value.retry_after <= 120
