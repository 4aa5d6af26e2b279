"""A sample earthquake API for `dashpipe demo`: a GeoJSON FeatureCollection shaped like the
USGS feed, where a few new quakes appear every few seconds.

`GET /quakes?since=<epoch ms>` answers only the quakes after `since` (oldest first, at most
`limit`), and `metadata.last_time` is the newest time answered (or `since` when none is new):
the value a poller stores as its incremental cursor. Quakes are generated lazily from the
clock on each request, so no background task runs and no quake is ever missed by a cursor.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

from aiohttp import web

REGIONS = (  # (name, lat, lon, typical depth km)
    ("Ridgecrest, CA", 35.62, -117.67, 8.0),
    ("Anchorage, Alaska", 61.22, -149.90, 40.0),
    ("Hilo, Hawaii", 19.71, -155.08, 10.0),
    ("Tokyo, Japan", 35.68, 139.69, 35.0),
    ("Santiago, Chile", -33.45, -70.66, 60.0),
    ("Reykjavik, Iceland", 64.15, -21.94, 5.0),
    ("Wellington, New Zealand", -41.29, 174.78, 25.0),
    ("Istanbul, Turkey", 41.01, 28.98, 12.0),
)
BEARINGS = ("N", "NNE", "NE", "ENE", "E", "ESE", "SE", "SSE",
            "S", "SSW", "SW", "WSW", "W", "WNW", "NW", "NNW")


class QuakeFeed:
    """Quakes in time order, at most `keep`. Every `every_seconds` (on the clock), 1 to 3 new
    quakes; the first request finds `backlog_seconds` of them."""

    def __init__(self, seed: int | None = None, every_seconds: float = 3.0,
                 backlog_seconds: float = 120.0, keep: int = 10_000,
                 clock: Callable[[], float] = time.time) -> None:
        self.rng = random.Random(seed)
        self.every_ms = int(every_seconds * 1000)
        self.clock = clock
        self.keep = keep
        self.quakes: list[dict[str, Any]] = []
        self._generated_to = int((clock() - backlog_seconds) * 1000)  # epoch ms

    def advance(self) -> int:
        """Generate the quakes due up to now; returns the current time (epoch ms)."""
        now_ms = int(self.clock() * 1000)
        while self._generated_to + self.every_ms <= now_ms:
            start = self._generated_to
            self._generated_to += self.every_ms
            times = sorted(self.rng.sample(range(start + 1, self._generated_to + 1),
                                           self.rng.randint(1, 3)))  # distinct: no ties
            self.quakes += [self._quake(t) for t in times]
        del self.quakes[:-self.keep]
        return now_ms

    def since(self, since_ms: int, limit: int) -> list[dict[str, Any]]:
        return [q for q in self.quakes if q["properties"]["time"] > since_ms][:limit]

    def _quake(self, at_ms: int) -> dict[str, Any]:
        rng = self.rng
        name, lat, lon, depth = rng.choice(REGIONS)
        distance = rng.randint(2, 60)
        bearing = rng.choice(BEARINGS)
        angle = BEARINGS.index(bearing) * math.pi / 8
        lat += distance / 111.0 * math.cos(angle)
        lon += distance / (111.0 * max(0.2, math.cos(math.radians(lat)))) * math.sin(angle)
        mag = round(min(8.5, 1.5 + rng.expovariate(0.9 * math.log(10))), 1)  # Gutenberg-Richter
        quake_id = f"dp{at_ms % 10**10:010d}{rng.randint(0, 99):02d}"
        return {
            "type": "Feature",
            "id": quake_id,
            "properties": {
                "mag": mag, "magType": "ml" if mag < 4 else "mw",
                "place": f"{distance} km {bearing} of {name}",
                "time": at_ms, "updated": at_ms,
                "status": "automatic", "tsunami": 0, "type": "earthquake",
                "felt": None if mag < 3 else rng.randint(0, int(mag ** 3)),
                "title": f"M {mag:.1f} - {distance} km {bearing} of {name}",
            },
            "geometry": {"type": "Point", "coordinates": [
                round(lon, 4), round(lat, 4), round(max(0.1, rng.gauss(depth, depth / 3)), 2)]},
        }


def make_app(feed: QuakeFeed) -> web.Application:
    async def quakes(request: web.Request) -> web.Response:
        try:
            since = int(request.query.get("since", "0"))
            limit = min(1000, max(1, int(request.query.get("limit", "100"))))
        except ValueError:
            return web.json_response({"error": "since and limit must be integers"}, status=400)
        now_ms = feed.advance()
        features = feed.since(since, limit)
        last = features[-1]["properties"]["time"] if features else since
        return web.json_response({
            "type": "FeatureCollection",
            "metadata": {"generated": now_ms, "title": "dashpipe sample earthquakes",
                         "count": len(features), "last_time": last},
            "features": features,
        })

    async def index(request: web.Request) -> web.Response:
        return web.json_response({"endpoints": {"/quakes": "?since=<epoch ms>&limit=<n>"}})

    app = web.Application()
    app.router.add_get("/", index)
    app.router.add_get("/quakes", quakes)
    return app


@asynccontextmanager
async def serve(feed: QuakeFeed | None = None, host: str = "127.0.0.1",
                port: int = 0) -> AsyncIterator[str]:
    """Serve the sample API (port 0: a free one); yields its `/quakes` URL."""
    runner = web.AppRunner(make_app(feed or QuakeFeed()), access_log=None)
    await runner.setup()
    try:
        site = web.TCPSite(runner, host, port)
        await site.start()
        bound = runner.addresses[0][1]
        yield f"http://{host}:{bound}/quakes"
    finally:
        await runner.cleanup()
