"""A round-robin loopback HTTP proxy in front of the web processes, as a load balancer with
passive health checks: a backend that refuses the connection or times out is skipped for a
few seconds; a refused connection (nothing was sent) is tried on the next backend at once.
Each answer names the backend that gave it (`x-chaos-backend`), so a lost or duplicated
webhook can be traced to the process that acknowledged it."""

from __future__ import annotations

import itertools
import time
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

import aiohttp
from aiohttp import web

HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "te", "trailer", "upgrade",
              "proxy-authorization", "proxy-authenticate", "host", "content-length"}
BACKEND_HEADER = "x-chaos-backend"


@dataclass
class Backend:
    name: str
    url: str
    down_until: float = 0.0


@dataclass
class Proxy:
    backends: list[Backend]
    timeout: float = 15.0  # a web process answers within twice its 5 s ack timeout
    eject_seconds: float = 5.0
    answers: Counter[tuple[str, int]] = field(default_factory=Counter)  # (backend, status)
    # (10 s bucket of the epoch, backend, status) -> answers, for the run's record
    buckets: Counter[tuple[int, str, int]] = field(default_factory=Counter)
    _turn: itertools.count[int] = field(default_factory=itertools.count)
    _session: aiohttp.ClientSession | None = None

    def _order(self) -> list[Backend]:
        """The backends from the next in turn; healthy ones first."""
        start = next(self._turn) % len(self.backends)
        ring = self.backends[start:] + self.backends[:start]
        now = time.monotonic()
        return sorted(ring, key=lambda b: b.down_until > now)

    def _count(self, backend: str, status: int) -> None:
        self.answers[(backend, status)] += 1
        self.buckets[(int(time.time()) // 10 * 10, backend, status)] += 1

    async def handle(self, request: web.Request) -> web.StreamResponse:
        assert self._session is not None
        body = await request.read()
        headers = {k: v for k, v in request.headers.items() if k.lower() not in HOP_BY_HOP}
        for backend in self._order():
            try:
                async with self._session.request(
                        request.method, backend.url + request.path_qs, headers=headers,
                        data=body, allow_redirects=False,
                        timeout=aiohttp.ClientTimeout(total=self.timeout, sock_connect=2)
                ) as resp:
                    payload = await resp.read()
                    out = {k: v for k, v in resp.headers.items() if k.lower() not in HOP_BY_HOP}
                    out[BACKEND_HEADER] = backend.name
                    self._count(backend.name, resp.status)
                    return web.Response(status=resp.status, body=payload, headers=out)
            except aiohttp.ClientConnectorError:
                backend.down_until = time.monotonic() + self.eject_seconds
                continue  # nothing reached it: the next backend may take the request
            except (aiohttp.ClientError, TimeoutError) as exc:
                # the request may have reached it: answer, and let the client decide
                backend.down_until = time.monotonic() + self.eject_seconds
                status = 504 if isinstance(exc, TimeoutError) else 502
                self._count(backend.name, status)
                return web.Response(status=status, text=f"proxy: {type(exc).__name__}",
                                    headers={BACKEND_HEADER: backend.name})
        self._count("-", 502)
        return web.Response(status=502, text="proxy: no backend answers")

    @asynccontextmanager
    async def serve(self) -> AsyncIterator[str]:
        """Serve on a free loopback port; yields the proxy's base URL."""
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=200), auto_decompress=False)
        app = web.Application(client_max_size=2 * 1024 * 1024)
        app.router.add_route("*", "/{tail:.*}", self.handle)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        try:
            site = web.TCPSite(runner, "127.0.0.1", 0)
            await site.start()
            yield f"http://127.0.0.1:{runner.addresses[0][1]}"
        finally:
            await runner.cleanup()
            await self._session.close()
