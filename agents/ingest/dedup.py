"""Recently seen webhook ids: a sender's redelivery is acknowledged but not ingested twice.

Entries expire `ttl` seconds after they were first seen. Expiry times grow with insertion order,
so the oldest entry is always at the front: expired entries are popped from there, in amortised
constant time per call (an `OrderedDict`, whose front pop stays O(1) where a plain dict's does
not). Past `max_size` the oldest entry is dropped even if it has not expired.

Not thread-safe: one instance per event loop.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable


class SeenIds:
    def __init__(
        self,
        ttl: float = 600.0,
        max_size: int = 100_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if ttl <= 0:
            raise ValueError("ttl must be positive")
        if max_size < 1:
            raise ValueError("max_size must be at least 1")
        self._ttl = ttl
        self._max_size = max_size
        self._clock = clock
        self._expires: OrderedDict[str, float] = OrderedDict()

    def first(self, key: str) -> bool:
        """True the first time `key` is seen within the ttl (and remember it); False if repeated."""
        now = self._clock()
        self._expire(now)
        if key in self._expires:
            return False
        self._expires[key] = now + self._ttl
        if len(self._expires) > self._max_size:
            self._expires.popitem(last=False)
        return True

    def forget(self, key: str) -> None:
        """Forget `key`, so its next delivery counts as a first (after a failed write to Kafka)."""
        self._expires.pop(key, None)

    def __len__(self) -> int:
        """How many keys are remembered (expired ones linger until the next `first`)."""
        return len(self._expires)

    def _expire(self, now: float) -> None:
        expires = self._expires
        while expires:
            oldest = next(iter(expires))
            if expires[oldest] > now:
                return
            del expires[oldest]
