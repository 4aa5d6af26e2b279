"""Shared integration fixtures: a local HTTP API whose answers a test sets."""

from collections.abc import AsyncIterator, Callable

import pytest
from aiohttp import web


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
