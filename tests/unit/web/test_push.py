"""Positions, cursors and slow subscribers of the live-rows hub (pure logic)."""

import pytest

from agents.web import push


def test_positions_round_trip_and_bad_ones_are_refused() -> None:
    assert push.decode(push.encode((3, 0, 17)), 3) == (3, 0, 17)
    for text in ("1.2", "a.b.c", "1.-1.2", ""):
        with pytest.raises(push.BadPosition):
            push.decode(text, 3)


def test_a_cursor_moves_with_each_row_and_skips_rows_the_client_has() -> None:
    cursor = push.Cursor((5, 0))
    assert cursor.advance((0, 4, (5, 2), b"{}")) is None  # offset 4 < 5: already sent
    assert cursor.advance((1, 0, (5, 1), b"{}")) == "5.1"
    assert cursor.advance((0, 5, (6, 1), b"{}")) == "6.1"
    assert cursor.advance((1, 8, (7, 9), b"{}")) == "7.9"  # the reader's position counts


def test_a_row_gets_its_id_in_front() -> None:
    assert push.with_id("1.2", b'{"a":1}') == b'{"id":"1.2","a":1}'


def test_a_full_queue_disconnects_the_slow_subscriber_only() -> None:
    slow, fast = push.Subscriber(), push.Subscriber()
    event = (0, 1, (2,), b"{}")
    for _ in range(push.QUEUE_ROWS + 5):
        slow.offer(event)
        fast.offer(event)
        fast.queue.get_nowait()  # a client that keeps up
    assert slow.dropped and not fast.dropped
    items = [slow.queue.get_nowait() for _ in range(slow.queue.qsize())]
    assert items[-1] is None  # the end marker the stream closes on
