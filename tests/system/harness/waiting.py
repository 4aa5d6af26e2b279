"""Waiting on conditions with deadlines (no sleep stands in for synchronisation)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable


class Timeout(AssertionError):
    """A condition did not hold before its deadline."""


async def until(check: Callable[[], Awaitable[bool]], timeout: float, what: str,
                every: float = 0.5) -> None:
    """Await `check()` every `every` seconds until it is true; `Timeout` after `timeout`."""
    deadline = time.monotonic() + timeout
    while True:
        if await check():
            return
        if time.monotonic() > deadline:
            raise Timeout(f"{what}: not reached within {timeout:.0f} s")
        await asyncio.sleep(every)
