"""SSRF: outgoing requests of the runtime (polls; sinks use the same session) never reach an
internal address unless allow-listed. A loopback listener counts the connections it accepts."""

import asyncio
from collections.abc import AsyncIterator
from dataclasses import replace
from ipaddress import ip_network
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from dashpipe import egress
from dashpipe.settings import ADMIN, EgressSettings, PollSettings, Settings
from tests.helpers import wait_until

FAST = PollSettings(retry_base_seconds=0.5, retry_cap_seconds=2, tick_seconds=0.05)


class Listener:
    """A loopback HTTP server that counts every TCP connection it accepts."""

    def __init__(self) -> None:
        self.connections = 0
        self.port = 0


@pytest.fixture
async def listener() -> AsyncIterator[Listener]:
    counting = Listener()
    async def answer(request: web.BaseRequest) -> web.Response:
        return web.json_response({"ok": True})

    handler = web.Server(answer)

    def factory() -> Any:
        counting.connections += 1
        return handler()

    server = await asyncio.get_running_loop().create_server(factory, "127.0.0.1", 0)
    counting.port = server.sockets[0].getsockname()[1]
    yield counting
    server.close()
    await server.wait_closed()


URLS = ["http://127.0.0.1:{port}/", "http://localhost:{port}/", "http://0.0.0.0:{port}/",
        "http://[::ffff:127.0.0.1]:{port}/",
        "http://169.254.169.254/latest/meta-data/", "http://10.0.0.1/", "http://100.64.0.1/"]


async def test_the_matrix_is_refused_and_nothing_reaches_the_listener(listener: Listener
                                                                      ) -> None:
    timeout = aiohttp.ClientTimeout(total=5)
    async with aiohttp.ClientSession(connector=egress.connector([]), timeout=timeout) as http:
        for template in URLS:
            url = template.format(port=listener.port)
            with pytest.raises(aiohttp.ClientConnectorError) as caught:
                async with http.get(url):
                    pass
            reason = egress.explain(caught.value)
            assert reason is not None and "refused by the egress policy" in reason, url
    assert listener.connections == 0
    allowed = egress.connector([ip_network("127.0.0.0/8")])
    async with aiohttp.ClientSession(connector=allowed) as http, \
            http.get(f"http://127.0.0.1:{listener.port}/") as r:
        assert r.status == 200
    assert listener.connections == 1  # the count is real: an allowed request is seen


async def test_a_redirect_to_an_internal_address_is_refused(listener: Listener) -> None:
    app = web.Application()  # stands in for a public host (127.0.0.2 is allow-listed)

    async def redirect(request: web.Request) -> web.Response:
        raise web.HTTPFound(f"http://127.0.0.1:{listener.port}/secret")

    app.router.add_get("/", redirect)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.2", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        allow = [ip_network("127.0.0.2/32")]
        async with aiohttp.ClientSession(connector=egress.connector(allow)) as http:
            with pytest.raises(aiohttp.ClientConnectorError) as caught:
                async with http.get(f"http://127.0.0.2:{port}/"):
                    pass
        assert "127.0.0.1 is a loopback address" in (egress.explain(caught.value) or "")
    finally:
        await runner.cleanup()
    assert listener.connections == 0


async def test_a_poll_of_an_internal_address_marks_the_pipeline_error(
        start_roles: Any, settings: Settings, listener: Listener) -> None:
    closed = replace(settings, egress=EgressSettings(allow=[]), poll=FAST)
    rt = await start_roles("poll", **{"egress": closed.egress, "poll": FAST})
    await rt.service.create({"id": "inside", "team_id": "t", "name": "inside",
                             "type": "polling", "source_type": "http_api",
                             "interval_seconds": 60,
                             "source_config": {"url": f"http://localhost:{listener.port}/"}},
                            ADMIN)
    status = await wait_until(lambda: (s := rt.registry.status.get("inside")) and
                              s.state == "error" and s, what="the error status")
    assert "refused by the egress policy: 127.0.0.1 is a loopback address" in \
        status.error_message
    assert listener.connections == 0
