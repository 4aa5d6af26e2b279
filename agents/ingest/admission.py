"""Admission control for the webhook receiver: a cap on requests in flight.

A webhook is answered only after Kafka acknowledged its record, so every request the web
process takes holds its body and a task until then. Past the cap, a request is refused before
its body is read, with a fast 503 and `Retry-After`: an overloaded process stays as fast as it
is at its sustainable rate for the requests it takes, its memory stays bounded, and senders
(which retry on 503) come back later instead of queueing here. The refusal closes the
connection: a sender that ignores `Retry-After` and asks again at once would otherwise spend
the process's CPU on refusals (measured: bench/bench_overload.py), while a reconnect costs it
a round trip first. The count is per process, as the load is: each web process sheds what it
cannot take.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import ParamSpec

from aiohttp import web

from dashpipe.http import error
from dashpipe.metrics import Metrics, labels_key

P = ParamSpec("P")
MESSAGE = "this web process is at its limit of webhooks in flight; retry later"


class Admission:
    """At most `limit` guarded requests at once; the others get 503 with `Retry-After`."""

    def __init__(self, limit: int, retry_after: int, metrics: Metrics | None = None) -> None:
        self.limit = limit
        self.retry_after = str(retry_after)
        self.in_flight = 0
        self.refused = 0
        self.metrics = metrics
        self._label = labels_key(stage="admission", code="503")  # no pipeline: not read yet

    def guard(self, handler: Callable[P, Awaitable[web.StreamResponse]]
              ) -> Callable[P, Awaitable[web.StreamResponse]]:
        """`handler`, counted while it runs, refused while `limit` others run."""

        async def guarded(*args: P.args, **kwargs: P.kwargs) -> web.StreamResponse:
            if self.in_flight >= self.limit:
                return self.refuse()
            self.in_flight += 1
            try:
                return await handler(*args, **kwargs)
            finally:
                self.in_flight -= 1

        return guarded

    def refuse(self) -> web.Response:
        self.refused += 1
        if self.metrics is not None:
            self.metrics.add("dashpipe_failed_total", self._label)
        answer = error(503, MESSAGE, {"Retry-After": self.retry_after})
        answer.force_close()  # a sender that ignores Retry-After pays a reconnect, not us
        return answer
