"""A GCRA rate limiter keyed by string (one key per pipeline).

The generic cell rate algorithm keeps one number per key, its theoretical arrival time (TAT): the
time at which the key would be idle again if requests kept arriving at exactly the allowed rate.
With `per_minute` requests allowed, each request costs an emission interval of
`60 / per_minute` seconds, and a request is allowed while the TAT is less than a minute ahead of
now. From idle that lets `per_minute` requests through in an instant (the burst), then one every
emission interval; over a long run the rate is exactly `per_minute` per 60 seconds.

Not thread-safe: one limiter per event loop.
"""

from __future__ import annotations

import time
from collections.abc import Callable

WINDOW = 60.0
_WINDOW_NS = 60_000_000_000
# the arithmetic is in integer nanoseconds so that a burst never accumulates rounding error; this
# slack only absorbs the rounding of the float clock itself
_SLACK_NS = 1_000


class RateLimiter:
    def __init__(
        self, clock: Callable[[], float] = time.monotonic, *, sweep_interval: float = WINDOW,
    ) -> None:
        self._clock = clock
        self._tat: dict[str, int] = {}  # theoretical arrival time per key, nanoseconds
        self._sweep_interval_ns = round(sweep_interval * 1e9)
        self._next_sweep = self._now() + self._sweep_interval_ns

    def take(self, key: str, per_minute: float) -> float:
        """0.0 if a request for `key` is allowed now (and charge it); else the seconds to wait.

        A refused request is not charged, so a client that waits the returned time gets through.
        `per_minute` may be fractional (a process's share of an allowance); below one a minute,
        the burst is one request.
        """
        if per_minute <= 0:
            raise ValueError("per_minute must be positive")
        now = self._now()
        if now >= self._next_sweep:
            self._sweep(now)
        interval = round(_WINDOW_NS / per_minute)
        tat = max(self._tat.get(key, now), now)
        wait = tat - now - max(_WINDOW_NS - interval, 0)
        if wait > _SLACK_NS:
            return wait / 1e9
        self._tat[key] = tat + interval
        return 0.0

    def __len__(self) -> int:
        """How many keys the limiter remembers."""
        return len(self._tat)

    def _now(self) -> int:
        if self._clock is time.monotonic:
            return time.monotonic_ns()
        return round(self._clock() * 1e9)

    def _sweep(self, now: int) -> None:
        """Forget keys whose TAT has passed: they are idle, and a missing key means just that."""
        self._tat = {key: tat for key, tat in self._tat.items() if tat > now}
        self._next_sweep = now + self._sweep_interval_ns
