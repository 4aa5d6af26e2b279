"""How a process stops when a role fails (no network): the first failure named in one line,
secrets masked, the other roles stopped after `stopping` is set, and the API answering 503
with Retry-After while it stops, never 500."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import make_mocked_request
from aiokafka.errors import KafkaTimeoutError
from pydantic import SecretStr

from agents.web import api
from dashpipe.cli import roles
from dashpipe.cli.roles import RoleFailed, describe, run_roles
from dashpipe.runtime import ProcessService, Runtime
from dashpipe.settings import (
    ApiSettings,
    DatabaseSettings,
    KafkaSettings,
    Settings,
    StackSettings,
    TopicSettings,
    WebSettings,
)
from dashpipe.topics import TopicNames

URL = "postgresql://dashpipe:pa%24%24word@db.internal:5432/dashpipe"
TOKEN = "an-admin-token-of-some-length"
SETTINGS = Settings(kafka=KafkaSettings(), database=DatabaseSettings(url=SecretStr(URL)),
                    topics=TopicSettings(), stack=StackSettings(), web=WebSettings(),
                    api=ApiSettings(admin_token=SecretStr(TOKEN)))


def a_runtime() -> Runtime:
    """A runtime without clients: the roles here are stand-ins that touch none."""
    return Runtime(SETTINGS, "", TopicNames.from_prefix("t"), None, None,  # type: ignore[arg-type]
                   ProcessService(None, None), None, None)  # type: ignore[arg-type]


class Web:
    """A stand-in web role: runs until cancelled, recording what it saw as it stopped."""

    def __init__(self, rt: Runtime) -> None:
        self.rt = rt
        self.started = asyncio.Event()
        self.stopping_seen: bool | None = None

    async def main(self, rt: Runtime) -> None:
        self.started.set()
        try:
            await asyncio.Event().wait()
        finally:
            self.stopping_seen = rt.stopping.is_set()


def with_mains(monkeypatch: pytest.MonkeyPatch, **mains: Any) -> None:
    monkeypatch.setattr(roles, "ROLES", {name: roles.Role(main, (), committed=False)
                                         for name, main in mains.items()})


async def test_a_failing_role_stops_the_others_and_is_named_with_its_cause(
        monkeypatch: pytest.MonkeyPatch) -> None:
    rt = a_runtime()
    web = Web(rt)

    async def persist(rt: Runtime) -> None:
        await web.started.wait()  # fails later, while web runs
        raise OSError(f"could not connect to {URL}: password pa$$word refused\nretry later")

    with_mains(monkeypatch, web=web.main, persist=persist)
    with pytest.raises(RoleFailed) as failed:
        await run_roles(rt, ["web", "persist"])
    assert failed.value.role == "persist"
    assert str(failed.value) == ("role persist failed: OSError: could not connect to ***: "
                                 "password *** refused retry later")
    assert web.stopping_seen is True  # set before the web role began to stop


async def test_a_role_that_ends_on_its_own_stops_the_process(
        monkeypatch: pytest.MonkeyPatch) -> None:
    rt = a_runtime()
    web = Web(rt)

    async def poll(rt: Runtime) -> None:
        return None

    with_mains(monkeypatch, web=web.main, poll=poll)
    with pytest.raises(RoleFailed, match=r"^role poll failed: ended without being stopped$"):
        await run_roles(rt, ["web", "poll"])
    assert web.stopping_seen is True


async def test_cancelled_roles_stop_after_stopping_is_set(
        monkeypatch: pytest.MonkeyPatch) -> None:
    rt = a_runtime()
    web = Web(rt)
    with_mains(monkeypatch, web=web.main)
    task = asyncio.create_task(run_roles(rt, ["web"]))
    await web.started.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert web.stopping_seen is True
    assert rt.stopping.is_set()


def raised(outer: str, inner: str, link: str) -> BaseException:
    """`outer` raised while handling `inner`: implicitly, `from` it, or `from None`."""
    try:
        try:
            raise ConnectionError(inner)
        except ConnectionError as exc:
            if link == "context":
                raise RuntimeError(outer)  # noqa: B904 (the implicit chain is the case)
            raise RuntimeError(outer) from (exc if link == "cause" else None)
    except RuntimeError as exc:
        return exc
    raise AssertionError("not raised")


def test_the_cause_names_the_error_a_failed_cleanup_hides() -> None:
    shutdown = "terminating connection due to administrator command"
    assert describe(raised("cannot roll back", shutdown, "context"), SETTINGS) == (
        f"RuntimeError: cannot roll back (while handling ConnectionError: {shutdown})")
    assert describe(raised("migration failed", shutdown, "cause"), SETTINGS) == (
        f"RuntimeError: migration failed (caused by ConnectionError: {shutdown})")
    assert describe(raised("migration failed", shutdown, "none"), SETTINGS) == (
        "RuntimeError: migration failed")
    assert describe(TimeoutError(), SETTINGS) == "TimeoutError"


def api_app(stopping: asyncio.Event) -> web.Application:
    app = web.Application()
    app[api.API_SETTINGS] = SETTINGS.api
    app[api.STOPPING] = stopping
    return app


def request(app: web.Application, token: str | None = TOKEN) -> web.Request:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return make_mocked_request("POST", "/api/pipelines", headers=headers, app=app)


async def test_while_stopping_the_api_answers_503_with_retry_after() -> None:
    stopping = asyncio.Event()
    calls: list[str] = []

    async def handler(request: web.Request) -> web.StreamResponse:
        calls.append(request.path)
        return web.Response(status=201)

    guard = api.guarded(handler)
    app = api_app(stopping)
    assert (await guard(request(app))).status == 201
    stopping.set()
    answer = await guard(request(app))
    assert answer.status == 503
    assert answer.headers["Retry-After"] == str(api.STOPPING_RETRY_SECONDS)
    assert isinstance(answer, web.Response) and answer.body is not None
    assert b'"error":"dashpipe is stopping' in bytes(answer.body)  # type: ignore[arg-type]
    assert calls == ["/api/pipelines"]  # the handler is not called while stopping
    assert (await guard(request(app, token=None))).status == 401  # who asks is checked first


async def test_a_request_the_stop_breaks_is_a_503_not_a_500() -> None:
    stopping = asyncio.Event()

    async def handler(request: web.Request) -> web.StreamResponse:
        stopping.set()  # the process begins to stop while this request waits on Kafka
        raise RuntimeError("producer closed")

    answer = await api.guarded(handler)(request(api_app(stopping)))
    assert answer.status == 503
    assert answer.headers["Retry-After"] == str(api.STOPPING_RETRY_SECONDS)


async def test_kafka_not_acknowledging_is_a_503_and_a_bug_still_a_500() -> None:
    async def unacknowledged(request: web.Request) -> web.StreamResponse:
        raise KafkaTimeoutError()

    async def bug(request: web.Request) -> web.StreamResponse:
        raise KeyError("x")

    app = api_app(asyncio.Event())
    answer = await api.guarded(unacknowledged)(request(app))
    assert answer.status == 503 and answer.headers["Retry-After"] == "5"
    assert (await api.guarded(bug)(request(app))).status == 500
