"""The webhook receiver: `POST /webhooks/{pipeline_id}` into Bronze, and the providers'
subscription handshakes.

Checks, in this order: unknown pipeline 404; body over the limit 413 (unread); pipeline not
realtime 400; bad or missing signature (by the source's `scheme`) 401; a signed Slack
`url_verification` 200 with its challenge (not written); pipeline not active 400; invalid JSON
400 naming the position; a delivery id (Standard Webhooks `webhook-id`, a provider's delivery
or event id) this process saw within the dedup window 202 `duplicate` (not written again; a copy
another web process received is written, and the map role skips it: see
`streams.mapping.dedup`); over this process's share of the rate limit 429 with Retry-After
(charged only here, after a valid signature; shares: `dashpipe.members`);
Kafka not acking in time 503 with Retry-After; else 202, answered after Kafka acknowledged.

`GET /webhooks/{pipeline_id}?hub.mode=subscribe&hub.verify_token=...&hub.challenge=...` is
Meta's subscription check: the challenge as text when the token is the source's
`verify_token`, else 403; nothing is written.
"""

from __future__ import annotations

import hmac
import itertools
import logging
import math
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

from aiohttp import web
from aiokafka.errors import KafkaError

from agents.ingest.dedup import SeenIds
from agents.ingest.ratelimit import RateLimiter
from dashpipe import jsonio
from dashpipe.batcher import BatchSender
from dashpipe.http import error, json_response
from dashpipe.members import Members
from dashpipe.metrics import Labels, Metrics, labels_key
from dashpipe.providers import BODY_SCHEMES, SCHEMES, identify, slack_challenge
from dashpipe.registry import Registry
from dashpipe.settings import WebhookSettings
from dashpipe.signatures import SignatureError
from schemas.pipeline import WebhookSource
from schemas.records import raw_headers

log = logging.getLogger(__name__)


@dataclass
class Receiver:
    registry: Registry
    sender: BatchSender
    settings: WebhookSettings
    metrics: Metrics
    seen: SeenIds
    limiter: RateLimiter = field(default_factory=RateLimiter)
    # the other web processes: this one admits its share of each allowance (None: all of it)
    members: Members | None = None
    # ingest ids: 16 random hex digits per process, then a counter (unique, and cheaper per
    # request than 16 fresh random bytes)
    ids: str = field(default_factory=lambda: os.urandom(8).hex())
    counter: Iterator[int] = field(default_factory=itertools.count)
    labels: dict[str, Labels] = field(default_factory=dict)  # metric labels per pipeline

    async def handle(self, request: web.Request) -> web.Response:
        return await self.receive(request, request.match_info["pipeline_id"])

    async def receive(self, request: web.Request, pid: str) -> web.Response:
        pipeline = self.registry.pipelines.get(pid)
        if pipeline is None:
            return error(404, f"pipeline {pid!r} not found")
        limit, length = self.settings.max_body_bytes, request.content_length
        if length is not None and length > limit:
            return self._reject(pid, 413, f"body over the {limit} byte limit")
        try:
            body = await request.read()  # stops past client_max_size (= the limit)
        except web.HTTPRequestEntityTooLarge:
            return self._reject(pid, 413, f"body over the {limit} byte limit")
        source = pipeline.source_config
        if not isinstance(source, WebhookSource):
            return self._reject(pid, 400, f"pipeline {pid!r} is not a realtime (webhook) "
                                          "pipeline")
        now = time.time()
        try:
            verified = SCHEMES[source.scheme](source.secrets(), request.headers, body, now=now,
                                              tolerance=self.settings.tolerance_seconds)
        except SignatureError as exc:
            return self._reject(pid, 401, str(exc))
        if verified.scheme == "slack" and b"url_verification" in body:
            handshake = self._slack_handshake(pid, body)
            if handshake is not None:
                return handshake
        if pipeline.status != "active":
            return self._reject(pid, 400, f"pipeline {pid!r} is {pipeline.status}")
        try:
            payload = jsonio.loads(body)
        except jsonio.InvalidJson as exc:
            return self._reject(pid, 400, str(exc))
        if verified.scheme in BODY_SCHEMES:  # Stripe, Slack, Meta: id and event in the body
            verified = identify(verified, payload)
        dedup_key = f"{pid}/{verified.webhook_id}" if verified.webhook_id else None
        if dedup_key and not self.seen.first(dedup_key):
            return json_response({"status": "duplicate", "pipeline_id": pid}, 202)
        allowance: float = pipeline.rate_limit_per_minute
        if self.members is not None:
            self.members.count(pid)
            allowance *= self.members.share(pid)
        wait = self.limiter.take(pid, allowance)
        if wait > 0:
            if dedup_key:
                self.seen.forget(dedup_key)
            # when the pipeline, not this process, admits again: a sender's retry may land
            # on another process, and this one's share grows with its load
            wait = min(wait, 60 / pipeline.rate_limit_per_minute)
            return self._reject(pid, 429, "rate limit exceeded",
                                {"Retry-After": str(max(1, math.ceil(wait)))})
        ingest_id = verified.webhook_id or f"{self.ids}{next(self.counter):016x}"
        received_ms = int(now * 1000)
        headers = raw_headers(pid, pipeline.team_id, "webhook", received_ms, ingest_id,
                              request.headers.get("Content-Type") or "application/json",
                              dedup_id=verified.webhook_id, event=verified.event)
        try:
            await self.sender.send(pid.encode(), body, headers, received_ms)
        except (TimeoutError, KafkaError) as exc:
            log.warning("webhook for %s not written: %s", pid, type(exc).__name__,
                        extra={"pipeline_id": pid})
            if dedup_key:
                self.seen.forget(dedup_key)
            return self._reject(pid, 503, "Kafka is unavailable, retry later",
                                {"Retry-After": "5"})
        key = self.labels.get(pid)
        if key is None:
            key = self.labels[pid] = labels_key(pipeline_id=pid)
        self.metrics.add("dashpipe_received_total", key)
        self.metrics.observe_key("dashpipe_webhook_ack_seconds", key, time.time() - now)
        return json_response({"status": "received", "pipeline_id": pid,
                              "ingest_id": ingest_id}, 202)

    def _slack_handshake(self, pid: str, body: bytes) -> web.Response | None:
        """The answer to a signed Slack `url_verification` (Slack checks a new Request URL
        with it; answered whatever the pipeline's status, never written), else None."""
        try:
            challenge = slack_challenge(jsonio.loads(body))
        except jsonio.InvalidJson:
            return None  # answered 400 where every payload's JSON is checked
        except ValueError as exc:
            return self._reject(pid, 400, str(exc))
        if challenge is None:
            return None
        return json_response({"challenge": challenge})

    async def handshake(self, request: web.Request) -> web.Response:
        """`GET /webhooks/{pipeline_id}`: Meta's subscription check. 200 with `hub.challenge`
        as text when `hub.verify_token` is the source's `verify_token`; 403 when it is not (or
        none is set), 400 for missing parameters, 404 for an unknown pipeline. Answered
        whatever the pipeline's status; nothing is written."""
        pid = request.match_info["pipeline_id"]
        pipeline = self.registry.pipelines.get(pid)
        if pipeline is None:
            return error(404, f"pipeline {pid!r} not found")
        source = pipeline.source_config
        if not isinstance(source, WebhookSource):
            return self._reject(pid, 400, f"pipeline {pid!r} is not a realtime (webhook) "
                                          "pipeline")
        query = request.query
        names = ("hub.mode", "hub.verify_token", "hub.challenge")
        missing = [name for name in names if not query.get(name)]
        if missing:
            return self._reject(pid, 400, f"missing query parameter: {', '.join(missing)}")
        if query["hub.mode"] != "subscribe":
            return self._reject(pid, 400, "hub.mode must be subscribe")
        if source.verify_token is None:
            return self._reject(pid, 403, f"pipeline {pid!r} has no verify_token")
        if not hmac.compare_digest(query["hub.verify_token"].encode(),
                                   source.verify_token.encode()):
            return self._reject(pid, 403, "hub.verify_token does not match")
        return web.Response(text=query["hub.challenge"], content_type="text/plain",
                            headers={"X-Content-Type-Options": "nosniff",
                                     "Cache-Control": "no-store"})

    def _reject(self, pid: str, status: int, message: str,
                headers: dict[str, str] | None = None) -> web.Response:
        self.metrics.inc("dashpipe_failed_total", pipeline_id=pid, stage="webhook",
                         code=str(status))
        return error(status, message, headers)
