"""Shared integration fixtures: a local HTTP API whose answers a test sets, and the CLI."""

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest
from aiohttp import web

from dashpipe import cli
from dashpipe.settings import Settings

Run = Callable[..., Awaitable[tuple[int, str, str]]]


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "/integration/" in str(item.path):
            item.add_marker(pytest.mark.integration)


class FakeApi:
    """A local API whose answers a test sets; it records every request."""

    def __init__(self) -> None:
        self.requests: list[web.Request] = []
        self.answer: Callable[[web.Request], web.Response] = lambda r: web.json_response({})
        self.url = ""

    async def handle(self, request: web.Request) -> web.Response:
        self.requests.append(request)
        return self.answer(request)

    def hits(self, path: str) -> int:
        return sum(1 for r in self.requests if r.path == path)


@pytest.fixture
async def api() -> AsyncIterator[FakeApi]:
    fake = FakeApi()
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", fake.handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    fake.url = f"http://127.0.0.1:{site._server.sockets[0].getsockname()[1]}"  # type: ignore[union-attr]
    yield fake
    await runner.cleanup()


@pytest.fixture
def dashpipe_cli(settings: Settings, monkeypatch: pytest.MonkeyPatch,
                 capsys: pytest.CaptureFixture[str]) -> Run:
    """`await dashpipe_cli("pipelines", "list")` -> (exit code, stdout, stderr): the CLI against
    the test's services, in a thread so it owns its event loop as it does in a shell."""
    assert settings.database.url is not None
    env = {"KAFKA_BOOTSTRAP_SERVERS": settings.kafka.bootstrap_servers,
           "KAFKA_GROUP_PREFIX": settings.kafka.group_prefix,
           "TOPIC_PREFIX": settings.topics.prefix,
           "DATABASE_URL": settings.database.url.get_secret_value()}
    for name, value in env.items():
        monkeypatch.setenv(f"DASHPIPE_{name}", value)

    async def run(*argv: str) -> tuple[int, str, str]:
        capsys.readouterr()
        code = await asyncio.to_thread(cli.main, list(argv))
        out, err = capsys.readouterr()
        return code, out, err

    return run
