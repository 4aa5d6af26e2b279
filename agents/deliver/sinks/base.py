"""The sink contract: an adapter turns rows into one HTTP request; `start` makes it, and
`answered` / `not_answered` classify what came of it (the deliver worker calls the three in a
row, in its own coroutine: see `agents.deliver.deliverer`). Adapters differ only in the request they
build.

Outcomes: 2xx within the timeout -> delivered; 408, 429, 5xx, timeouts and connection
failures -> retry (honouring `Retry-After`); 410 -> gone (the sink is disabled); any other
status, or a destination the egress policy refuses -> dead at once.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import lru_cache
from typing import Any, Literal, Protocol

import aiohttp

from dashpipe import egress
from dashpipe.http import retry_after

Outcome = Literal["delivered", "retry", "dead", "gone"]
RETRY_STATUSES = frozenset({408, 429})


@dataclass(slots=True)  # built per delivery: cheaper than a frozen one
class SinkRequest:
    method: str
    url: str
    headers: dict[str, str]
    body: bytes


class Build(Protocol):
    """(config, rows, message id, unix time of the attempt[, the one row's JSON]) -> request"""

    def __call__(self, config: Any, rows: list[dict[str, Any]], msg_id: str, now: int,
                 body: bytes | None = None) -> SinkRequest: ...


@dataclass(slots=True)  # built per delivery: cheaper than a frozen one
class Attempt:
    outcome: Outcome
    started: float  # unix seconds
    status: int | None
    error: str | None
    seconds: float
    retry_after: float | None = None

    @property
    def at(self) -> datetime:  # made only for a failed attempt's record
        return datetime.fromtimestamp(self.started, UTC)

    def record(self) -> dict[str, Any]:
        return {"at": self.at.isoformat(), "status": self.status, "error": self.error,
                "seconds": round(self.seconds, 3)}


def classify(status: int) -> Outcome:
    if 200 <= status < 300:
        return "delivered"
    if status == 410:
        return "gone"
    if status in RETRY_STATUSES or status >= 500:
        return "retry"
    return "dead"


@lru_cache(maxsize=64)
def _timeout(seconds: float) -> aiohttp.ClientTimeout:
    return aiohttp.ClientTimeout(total=seconds)


def start(http: aiohttp.ClientSession, request: SinkRequest, timeout: float
          ) -> Awaitable[aiohttp.ClientResponse]:
    """The request, to be awaited (not entered: one coroutine level less on every wake-up),
    then released."""
    return http.request(request.method, request.url, data=request.body,
                        headers=request.headers, allow_redirects=False,
                        timeout=_timeout(timeout))


def answered(resp: aiohttp.ClientResponse, head: bytes, started: float, clock: float
             ) -> Attempt:
    """The attempt an answer makes (`head`: the first bytes of its body)."""
    status = resp.status
    outcome = classify(status)
    if outcome == "delivered":
        return Attempt(outcome, started, status, None, time.perf_counter() - clock)
    text = head.decode(errors="replace")
    wait = retry_after(resp.headers.get("Retry-After")) if outcome == "retry" else None
    return Attempt(outcome, started, status, f"HTTP {status} {text[:200]}".strip(),
                   time.perf_counter() - clock, wait)


def not_answered(exc: BaseException, timeout: float, started: float, clock: float) -> Attempt:
    """The attempt a timeout or a connection failure makes."""
    seconds = time.perf_counter() - clock
    if isinstance(exc, TimeoutError):
        return Attempt("retry", started, None, f"no answer within {timeout:g}s", seconds)
    refused = egress.explain(exc)
    if refused is not None:
        return Attempt("dead", started, None, refused, seconds)
    return Attempt("retry", started, None, f"connection failed: {type(exc).__name__}", seconds)
