"""The webhook load: signed Standard Webhooks posts at a steady rate, each with a unique
`webhook-id`, plus a share of deliberate repeats (an acknowledged id again, same body). Each
post is retried with backoff until it is answered 2xx (a 202 `duplicate` is an
acknowledgement too); every attempt is recorded with the backend that answered it."""

from __future__ import annotations

import asyncio
import bisect
import logging
import random
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime

import aiohttp
import orjson
from standardwebhooks.webhooks import Webhook

from tests.system.harness.proxy import BACKEND_HEADER

log = logging.getLogger(__name__)


@dataclass
class Attempt:
    at: float
    status: int  # 0: no answer (the client timed out or could not connect)
    backend: str
    outcome: str  # received | duplicate | an error's text


@dataclass
class Post:
    msg_id: str
    body: bytes
    repeat: bool
    started: float
    acked_at: float | None = None
    outcome: str = ""  # received | duplicate, once acked
    attempts: list[Attempt] = field(default_factory=list)

    def received_by(self) -> list[str]:
        """The backends that answered this post `received` (more than one: written twice)."""
        return [a.backend for a in self.attempts if a.outcome == "received"]


@dataclass
class Sender:
    url: str  # the pipeline's webhook URL (behind the proxy)
    secret: str
    rng: random.Random
    run: str = "run"
    rate: float = 20.0
    repeat_share: float = 0.05
    # a deliberate repeat reuses an id first posted at most this long ago: the receiver's
    # contract is one row per webhook-id within DASHPIPE_WEBHOOK_DEDUP_SECONDS (600)
    repeat_within: float = 540.0
    timeout: float = 20.0  # longer than the proxy's, which is longer than a web ack's
    max_pending: int = 400
    posts: dict[str, Post] = field(default_factory=dict)  # first posts, by webhook-id
    repeats: list[Post] = field(default_factory=list)
    skipped: int = 0  # ticks without a post because too many were pending
    load_seconds: float = 0.0
    started_at: float = 0.0  # epoch s
    _acked: list[str] = field(default_factory=list)
    _acked_started: list[float] = field(default_factory=list)  # their first posts' times
    _tasks: set[asyncio.Task[None]] = field(default_factory=set)
    _stopping: bool = False

    def __post_init__(self) -> None:
        self._hook = Webhook(self.secret)

    def _recent(self) -> list[str]:
        """The acked ids first posted within `repeat_within` (acks come roughly in order)."""
        return self._acked[bisect.bisect_left(self._acked_started,
                                              time.time() - self.repeat_within):]

    def acked_ids(self) -> set[str]:
        return {i for i, p in self.posts.items() if p.acked_at is not None}

    def pending(self) -> int:
        return len(self._tasks)

    async def run_load(self) -> None:
        """Post at `rate` per second until `stop()`. A loop that fell behind (a busy machine)
        catches up in bursts of at most a second's worth, so the offered rate holds."""
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=500)) as session:
            start = time.monotonic()
            self.started_at = time.time()
            ticks = ids = 0
            while not self._stopping:
                due = int((time.monotonic() - start) * self.rate) + 1
                for _ in range(min(due - ticks, int(self.rate))):
                    ticks += 1
                    if len(self._tasks) >= self.max_pending:
                        self.skipped += 1
                        continue
                    post = self._next(ids)
                    ids += not post.repeat
                    task = asyncio.create_task(self._send(session, post))
                    self._tasks.add(task)
                    task.add_done_callback(self._tasks.discard)
                await asyncio.sleep(max(0.0, start + ticks / self.rate - time.monotonic()))
            self.load_seconds = time.monotonic() - start
            await self._drain()

    def offered(self) -> float:
        """New webhook ids posted per second over the load."""
        return len(self.posts) / self.load_seconds if self.load_seconds else self.rate

    def stop(self) -> None:
        self._stopping = True

    async def _drain(self, timeout: float = 180.0) -> None:
        """Wait for the posts in flight to be acknowledged (each retries until it is)."""
        if self._tasks:
            _, late = await asyncio.wait(set(self._tasks), timeout=timeout)
            for task in late:
                task.cancel()
            if late:
                log.warning("%d posts still unacknowledged after %.0f s", len(late), timeout)

    def _next(self, n: int) -> Post:
        recent = self._recent()
        if recent and self.rng.random() < self.repeat_share:
            original = self.posts[self.rng.choice(recent)]
            post = Post(original.msg_id, original.body, True, time.time())
            self.repeats.append(post)
            return post
        msg_id = f"msg_{self.run}_{n:07d}"
        body = orjson.dumps({"id": msg_id, "n": n, "sent_at_ms": int(time.time() * 1000),
                             "kind": "chaos", "amount": round(self.rng.uniform(1, 500), 2)})
        post = self.posts[msg_id] = Post(msg_id, body, False, time.time())
        return post

    def _headers(self, post: Post) -> dict[str, str]:
        now = datetime.now(UTC)
        return {"webhook-id": post.msg_id, "webhook-timestamp": str(int(now.timestamp())),
                "webhook-signature": self._hook.sign(post.msg_id, now, post.body.decode()),
                "Content-Type": "application/json"}

    async def _send(self, session: aiohttp.ClientSession, post: Post) -> None:
        delay = 0.2
        while True:
            attempt = await self._attempt(session, post)
            post.attempts.append(attempt)
            if 200 <= attempt.status < 300:
                post.acked_at = attempt.at
                post.outcome = attempt.outcome
                if not post.repeat:
                    self._acked.append(post.msg_id)
                    self._acked_started.append(post.started)
                return
            wait = delay * (0.5 + self.rng.random())
            if attempt.status in (429, 503) and attempt.outcome.startswith("retry-after "):
                wait = max(wait, float(attempt.outcome.split()[1]))
            await asyncio.sleep(wait)
            delay = min(delay * 2, 5.0)

    async def _attempt(self, session: aiohttp.ClientSession, post: Post) -> Attempt:
        try:
            async with session.post(self.url, data=post.body, headers=self._headers(post),
                                    timeout=aiohttp.ClientTimeout(total=self.timeout)) as resp:
                text = await resp.read()
                backend = resp.headers.get(BACKEND_HEADER, "?")
                if 200 <= resp.status < 300:
                    status = orjson.loads(text).get("status", "?")
                    return Attempt(time.time(), resp.status, backend, str(status))
                after = resp.headers.get("Retry-After")
                outcome = f"retry-after {after}" if after and after.isdigit() else \
                    text[:80].decode(errors="replace")
                return Attempt(time.time(), resp.status, backend, outcome)
        except (aiohttp.ClientError, TimeoutError, orjson.JSONDecodeError) as exc:
            return Attempt(time.time(), 0, "?", type(exc).__name__)
