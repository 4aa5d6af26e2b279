"""The sink receiver: the webhook sink of the chaos pipeline posts here. Every request is
verified with the `standardwebhooks` reference library (a bad signature is a 401, counted);
deliveries are counted per `webhook-id` and mapped to the id of the webhook the row came from
(`fields.id` of the transformed record)."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

import orjson
from aiohttp import web
from standardwebhooks.webhooks import Webhook, WebhookVerificationError


@dataclass
class SinkReceiver:
    secret: str
    deliveries: Counter[str] = field(default_factory=Counter)  # webhook-id -> deliveries
    repeated_at: list[float] = field(default_factory=list)  # when each extra delivery came
    source_of: dict[str, str] = field(default_factory=dict)  # webhook-id -> the sender's id
    first_at: dict[str, float] = field(default_factory=dict)  # sender's id -> first delivery
    rejected: int = 0
    last_error: str = ""

    def __post_init__(self) -> None:
        self._hook = Webhook(self.secret)

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        try:
            self._hook.verify(body, dict(request.headers), json_parse=False)
        except WebhookVerificationError as exc:
            self.rejected += 1
            self.last_error = str(exc)
            return web.json_response({"error": "bad signature"}, status=401)
        msg_id = request.headers["webhook-id"]
        self.deliveries[msg_id] += 1
        if self.deliveries[msg_id] > 1:
            self.repeated_at.append(time.time())
        if msg_id not in self.source_of:
            doc = orjson.loads(body)
            rows = doc if isinstance(doc, list) else [doc]
            fields = rows[0].get("fields") or {}
            source = str(fields.get("id") or rows[0].get("ingest_id") or msg_id)
            self.source_of[msg_id] = source
            self.first_at.setdefault(source, time.time())
        return web.Response(status=204)

    def delivered_ids(self) -> set[str]:
        return set(self.first_at)

    def extra_deliveries(self) -> int:
        """Deliveries beyond the first of each `webhook-id`."""
        return sum(n - 1 for n in self.deliveries.values())

    def ids_under_several_webhook_ids(self) -> dict[str, list[str]]:
        """Sender ids that arrived under more than one `webhook-id` (a row stored twice
        upstream: its repeats are not recognisable as the same delivery)."""
        by_source: dict[str, list[str]] = {}
        for msg_id, source in self.source_of.items():
            by_source.setdefault(source, []).append(msg_id)
        return {s: ids for s, ids in by_source.items() if len(ids) > 1}

    def total(self) -> int:
        return sum(self.deliveries.values())


@asynccontextmanager
async def serve(sink: SinkReceiver) -> AsyncIterator[str]:
    app = web.Application(client_max_size=2 * 1024 * 1024)
    app.router.add_post("/hooks", sink.handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    try:
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        yield f"http://127.0.0.1:{runner.addresses[0][1]}/hooks"
    finally:
        await runner.cleanup()
