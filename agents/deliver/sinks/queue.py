"""The queue between the deliver consumer and one sink's workers.

`asyncio.Queue` wakes a blocked producer on every `get`: with a backlog the consumer sleeps on
a full queue and is woken once per delivered row, a task switch per row. This queue wakes it
once the queue has drained to half its size, so it then refills half a queue's worth without
waiting. Workers wait only when the queue is empty, one woken per row put, as with
`asyncio.Queue`.
"""

from __future__ import annotations

import asyncio
from collections import deque
from typing import Generic, TypeVar

T = TypeVar("T")


class SinkQueue(Generic[T]):
    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._items: deque[T] = deque()
        self._getters: deque[asyncio.Future[None]] = deque()
        self._room: asyncio.Future[None] | None = None

    def __len__(self) -> int:
        return len(self._items)

    def full(self) -> bool:
        return len(self._items) >= self.limit

    def put_nowait(self, item: T) -> None:
        self._items.append(item)
        self._wake()

    def _wake(self) -> None:
        while self._getters:
            getter = self._getters.popleft()
            if not getter.done():
                getter.set_result(None)
                return

    async def room(self) -> None:
        """Return at once while the queue is not full, else once it has drained to half."""
        while self.full():
            if self._room is None or self._room.done():
                self._room = asyncio.get_running_loop().create_future()
            await self._room

    def get_nowait(self) -> T | None:
        """The next item without a coroutine, or None when the queue is empty."""
        return self._take() if self._items else None

    async def get(self) -> T:
        while not self._items:
            getter = asyncio.get_running_loop().create_future()
            self._getters.append(getter)
            try:
                await getter
            except asyncio.CancelledError:
                if getter.done() and not getter.cancelled():
                    self._wake()  # woken, then cancelled: the wake-up goes to the next worker
                raise
        return self._take()

    def _take(self) -> T:
        item = self._items.popleft()
        room = self._room
        if room is not None and not room.done() and len(self._items) <= self.limit // 2:
            room.set_result(None)
        return item
