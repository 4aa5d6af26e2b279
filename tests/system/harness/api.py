"""The polled API: items with unique ids appear on the clock, and
`GET /items?after=<seq>&limit=<n>` answers the items after `after` (oldest first) with
`last_seq`, the newest seq answered (or `after` when none is new): the incremental cursor the
poller keeps (`cursor: {path: last_seq, param: after, initial: 0}`, the shape of
`dashpipe/cli/sample_api.py`). Items are generated lazily from the clock, so no background
task runs; `freeze()` stops new ones (the quiesce point). Every request is logged, so a
duplicated item can be traced to the polls that served it."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web


@dataclass(frozen=True)
class Served:
    at: float
    after: int
    first: int | None  # seq of the first and last item answered
    last: int | None
    peer: str


@dataclass
class ItemFeed:
    per_second: float = 5.0
    run: str = "run"
    started: float = field(default_factory=time.time)
    generated: int = 0  # items 1..generated exist
    frozen: bool = False
    served_max: int = 0  # the highest seq ever answered
    requests: list[Served] = field(default_factory=list)

    def advance(self) -> None:
        if not self.frozen:
            self.generated = max(self.generated,
                                 int((time.time() - self.started) * self.per_second))

    def freeze(self) -> int:
        """No new items from now on; returns how many exist."""
        self.advance()
        self.frozen = True
        return self.generated

    def item_id(self, seq: int) -> str:
        return f"{self.run}-item-{seq}"

    def item(self, seq: int) -> dict[str, Any]:
        created_ms = int((self.started + seq / self.per_second) * 1000)
        return {"id": self.item_id(seq), "seq": seq, "created_ms": created_ms,
                "value": seq % 97}

    def answer(self, after: int, limit: int, peer: str) -> dict[str, Any]:
        self.advance()
        seqs = range(max(0, after) + 1, min(self.generated, max(0, after) + limit) + 1)
        items = [self.item(s) for s in seqs]
        if items:
            self.served_max = max(self.served_max, seqs[-1])
        self.requests.append(Served(time.time(), after, seqs[0] if items else None,
                                    seqs[-1] if items else None, peer))
        return {"items": items, "last_seq": seqs[-1] if items else after,
                "count": len(items)}

    def served_ids(self) -> set[str]:
        """Every item some answer held (the union of the answered ranges)."""
        seqs: set[int] = set()
        for r in self.requests:
            if r.first is not None and r.last is not None:
                seqs.update(range(r.first, r.last + 1))
        return {self.item_id(s) for s in seqs}

    def repeats(self, seq: int) -> list[Served]:
        """The requests that answered item `seq`."""
        return [r for r in self.requests
                if r.first is not None and r.last is not None and r.first <= seq <= r.last]


def make_app(feed: ItemFeed) -> web.Application:
    async def items(request: web.Request) -> web.Response:
        try:
            after = int(request.query.get("after", "0"))
            limit = min(1000, max(1, int(request.query.get("limit", "200"))))
        except ValueError:
            return web.json_response({"error": "after and limit must be integers"}, status=400)
        peer = request.remote or "?"
        transport = request.transport
        if transport is not None:
            sock = transport.get_extra_info("peername")
            peer = f"{sock[0]}:{sock[1]}" if sock else peer
        return web.json_response(feed.answer(after, limit, peer))

    app = web.Application()
    app.router.add_get("/items", items)
    return app


@asynccontextmanager
async def serve(feed: ItemFeed) -> AsyncIterator[str]:
    """Serve the API on a free loopback port; yields its `/items` URL."""
    runner = web.AppRunner(make_app(feed), access_log=None)
    await runner.setup()
    try:
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        yield f"http://127.0.0.1:{runner.addresses[0][1]}/items"
    finally:
        await runner.cleanup()
