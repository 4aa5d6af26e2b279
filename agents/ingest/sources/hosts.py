"""A request budget per API host, shared by every pipeline (of every team) a poll process polls.

Providers say how many requests are left before they answer 429: `X-RateLimit-Remaining` with
`X-RateLimit-Reset` (GitHub, Twitter/X, many others: the reset is unix seconds there, seconds
to wait elsewhere; a value above `EPOCH_AFTER` is taken as a time), the IETF draft's
`RateLimit-Remaining`/`RateLimit-Reset` (seconds to wait), and its later structured
`RateLimit: "policy";r=<remaining>;t=<seconds>` (the tightest policy applies). Requests in
flight count against what is left, so concurrent polls do not overrun it; when nothing is left
the next requests wait for the reset, and in a new window one request goes first to learn its
allowance. A 429/503's `Retry-After` blocks the host the same way. A wait longer than the
caller's cap is not slept: the poll fails with when to come back, and the poller's backoff
takes it from there.

Each poll process keeps its own budget: N poll processes can still spend a host's allowance
N times as fast as one; the provider's 429 with `Retry-After` then blocks each process.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass, field

EPOCH_AFTER = 1e9  # a reset above this is a unix time, not a delay (2001-09-09 in seconds)
MAX_BLOCK = 24 * 3600.0  # a reset further away than a day is a misreading
PROBE_WAIT = 0.05  # how often the others look while the first request of a window is out
_ITEM_PARAMS = re.compile(r";\s*([a-z]+)\s*=\s*([0-9.]+)")


@dataclass
class _Host:
    blocked_until: float = 0.0  # a Retry-After: nothing before this (time.time())
    remaining: float | None = None  # left in the current window, as last told, less sent since
    reset_at: float = 0.0  # when the window's allowance is back (time.time())
    limited: bool = False  # the host has sent rate-limit headers
    in_flight: int = 0
    answered: asyncio.Event = field(default_factory=asyncio.Event)


class Hosts:
    """The budgets of one poll process, by host (scheme, name and port)."""

    def __init__(self) -> None:
        self._hosts: dict[str, _Host] = {}

    async def acquire(self, host: str, cap: float) -> None:
        """Wait until a request to `host` may go, then count it as sent; `HostBusy` when that
        is more than `cap` seconds away. Each `acquire` needs its `release`."""
        h = self._hosts.setdefault(host, _Host())
        while True:
            now = time.time()
            wait = self._wait(h, now)
            if wait == 0:
                break
            if wait > cap:
                raise HostBusy(wait)
            h.answered.clear()
            with contextlib.suppress(TimeoutError):  # an answer may bring news earlier
                await asyncio.wait_for(h.answered.wait(), timeout=wait)
        h.in_flight += 1
        if h.remaining is not None:
            h.remaining -= 1

    def release(self, host: str, status: int, headers: Mapping[str, str],
                retry_after: float | None) -> None:
        """Take in an answer: its rate-limit headers, and a 429's or 503's Retry-After."""
        h = self._hosts.setdefault(host, _Host())
        h.in_flight = max(0, h.in_flight - 1)
        now = time.time()
        told = budget(headers, now)
        if told is not None:
            remaining, reset = told
            h.limited = True
            h.remaining = remaining - h.in_flight  # those still out were not counted in it
            h.reset_at = now + min(max(reset, 0.0), MAX_BLOCK)
        if retry_after is not None and status in (429, 503):
            h.blocked_until = max(h.blocked_until, now + min(retry_after, MAX_BLOCK))
        h.answered.set()

    def forget(self, host: str) -> None:
        """A request that got no answer (a timeout, a refused connection)."""
        h = self._hosts.get(host)
        if h is not None:
            h.in_flight = max(0, h.in_flight - 1)
            h.answered.set()

    def _wait(self, h: _Host, now: float) -> float:
        if h.blocked_until > now:
            return h.blocked_until - now
        if h.remaining is not None and h.reset_at <= now:
            h.remaining = None  # a new window: its allowance is unknown until an answer
        if h.remaining is not None and h.remaining <= 0:
            return h.reset_at - now
        if h.remaining is None and h.limited and h.in_flight > 0:
            return PROBE_WAIT  # one request first learns the new window's allowance
        return 0.0


class HostBusy(Exception):
    """The host's budget has no request left for `wait` seconds."""

    def __init__(self, wait: float) -> None:
        super().__init__(f"no request left for {math.ceil(wait)}s")
        self.wait = wait


def budget(headers: Mapping[str, str], now: float) -> tuple[float, float] | None:
    """(requests left, seconds until the window resets) when the headers tell, else None."""
    for remaining_name, reset_name in (("X-RateLimit-Remaining", "X-RateLimit-Reset"),
                                       ("RateLimit-Remaining", "RateLimit-Reset")):
        remaining = _number(headers.get(remaining_name))
        if remaining is not None:
            reset = _number(headers.get(reset_name))
            return (remaining, _delay(reset, now)) if reset is not None else None
    structured = headers.get("RateLimit")
    if structured:  # one item per policy: the tightest applies
        told = []
        for item in structured.split(","):
            params = dict(_ITEM_PARAMS.findall(item))
            remaining, reset = _number(params.get("r")), _number(params.get("t"))
            if remaining is not None and reset is not None:
                told.append((remaining, reset))
        if told:
            return min(told)
    return None


def _delay(reset: float, now: float) -> float:
    if reset > EPOCH_AFTER * 1000:  # unix milliseconds
        reset /= 1000
    return reset - now if reset > EPOCH_AFTER else reset


def _number(value: str | None) -> float | None:
    if value is None:
        return None
    try:
        number = float(value.strip().split(",")[0])
    except ValueError:
        return None
    return number if math.isfinite(number) else None
