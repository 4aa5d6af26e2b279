"""The deliver queue: FIFO, workers woken per row, the consumer woken only at half empty."""

import asyncio

from agents.deliver.sinks.queue import SinkQueue


async def test_items_come_out_in_order_and_a_waiting_worker_gets_the_next_one() -> None:
    q: SinkQueue[int] = SinkQueue(10)
    waiting = asyncio.create_task(q.get())
    await asyncio.sleep(0)  # the worker is now waiting on an empty queue
    q.put_nowait(1)
    q.put_nowait(2)
    assert await asyncio.wait_for(waiting, 1) == 1
    assert await q.get() == 2 and len(q) == 0


async def test_a_full_queue_lets_the_producer_on_only_at_half() -> None:
    q: SinkQueue[int] = SinkQueue(4)
    for i in range(4):
        q.put_nowait(i)
    assert q.full()
    room = asyncio.create_task(q.room())
    await asyncio.sleep(0)  # the producer now waits on the full queue
    taken = []
    for _ in range(2):
        taken.append(await q.get())
        await asyncio.sleep(0)
        assert not room.done() or len(q) <= 2
    await asyncio.wait_for(room, 1)
    assert taken == [0, 1] and len(q) == 2  # woken once, at half, not per get


async def test_room_returns_at_once_when_not_full() -> None:
    q: SinkQueue[int] = SinkQueue(2)
    q.put_nowait(1)
    await asyncio.wait_for(q.room(), 1)


async def test_a_woken_then_cancelled_worker_passes_the_row_on() -> None:
    q: SinkQueue[int] = SinkQueue(10)
    first = asyncio.create_task(q.get())
    second = asyncio.create_task(q.get())
    await asyncio.sleep(0)
    q.put_nowait(7)  # wakes `first`...
    first.cancel()  # ...which is cancelled before it runs
    assert await asyncio.wait_for(second, 1) == 7


async def test_get_nowait_takes_in_order_and_wakes_the_producer_at_half() -> None:
    q: SinkQueue[int] = SinkQueue(4)
    assert q.get_nowait() is None
    for i in range(4):
        q.put_nowait(i)
    room = asyncio.create_task(q.room())
    await asyncio.sleep(0)
    assert q.get_nowait() == 0
    await asyncio.sleep(0)
    assert not room.done()  # 3 left: not yet half
    assert q.get_nowait() == 1
    await asyncio.wait_for(room, 1)
    assert [q.get_nowait(), q.get_nowait(), q.get_nowait()] == [2, 3, None]
