"""The map role's dedup window: decisions are a function of the log, so a mapper that warms
from any committed offset decides the rest exactly as one that read it all."""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any

from schemas.headers import Header
from streams.mapping.dedup import Dedup, Window, dedup_key

WINDOW_MS = 10_000


@dataclass
class Rec:
    offset: int
    timestamp: int
    headers: list[tuple[str, bytes]]


def rec(offset: int, ts: int, pid: str, dedup_id: str | None) -> Rec:
    headers = [(Header.PIPELINE_ID, pid.encode())]
    if dedup_id is not None:
        headers.append((Header.DEDUP_ID, dedup_id.encode()))
    return Rec(offset, ts, headers)


def test_a_repeat_within_the_window_is_one_after_it_is_a_first() -> None:
    w = Window(WINDOW_MS, skew_ms=0)
    assert not w.repeat("p a", 1_000)
    assert w.repeat("p a", 1_000 + WINDOW_MS)  # at the edge: still a repeat
    assert not w.repeat("p b", 5_000)
    assert not w.repeat("p a", 1_001 + WINDOW_MS + 1)  # past it: a new first sighting
    assert w.repeat("p a", 2_000 + WINDOW_MS + 1)


def test_keys_are_per_pipeline_and_records_without_an_id_are_never_repeats() -> None:
    d = Dedup(WINDOW_MS / 1000)
    assert not d.repeat(0, rec(0, 1, "p", "x"))
    assert not d.repeat(0, rec(1, 2, "q", "x"))  # same id, another pipeline
    assert d.repeat(0, rec(2, 3, "p", "x"))
    assert not d.repeat(0, rec(3, 4, "p", None))
    assert not d.repeat(0, rec(4, 5, "p", None))
    assert dedup_key(rec(0, 0, "p", None).headers) is None
    assert d.next[0] == 5


def test_skew_keeps_a_first_sighting_for_records_with_an_older_clock() -> None:
    w = Window(WINDOW_MS, skew_ms=5_000)
    assert not w.repeat("p a", 100_000)
    assert not w.repeat("p z", 100_000 + WINDOW_MS + 4_000)  # moves the newest time on
    assert "p a" in w.first
    assert w.repeat("p a", 100_000 + WINDOW_MS)  # another process's clock, 4 s behind
    assert not w.repeat("p z2", 100_000 + WINDOW_MS + 5_001)
    assert "p a" not in w.first


def test_the_window_is_bounded() -> None:
    w = Window(WINDOW_MS, max_ids=3)
    for i in range(5):
        w.repeat(f"p {i}", 1)
    assert list(w.first) == ["p 2", "p 3", "p 4"]


def _log(seed: int, n: int = 400) -> list[Rec]:
    rng = random.Random(seed)
    out, ts = [], 1_000_000
    for offset in range(n):
        ts += rng.randint(0, 400)
        jitter = rng.randint(-2_000, 2_000)  # two web processes' clocks
        dedup_id = None if rng.random() < 0.2 else f"m{rng.randint(0, 60)}"
        out.append(rec(offset, ts + jitter, rng.choice("pq"), dedup_id))
    return out


def _decide(d: Dedup, records: list[Any]) -> list[bool]:
    return [d.repeat(0, r) for r in records]


def test_a_mapper_warmed_at_any_offset_decides_as_one_that_read_everything() -> None:
    for seed in range(20):
        log = _log(seed)
        whole = _decide(Dedup(WINDOW_MS / 1000), log)
        assert any(whole) and not all(whole)
        for committed in (1, 57, 200, 399):
            warmed = Dedup(WINDOW_MS / 1000)
            # what `warm` does: from the first offset at or after the window's start (as
            # offsets-for-times finds it) up to the committed one, decisions dropped
            since = log[committed - 1].timestamp - WINDOW_MS - 60_000
            start = next(r.offset for r in log if r.timestamp >= since)
            _decide(warmed, log[start:committed])
            warmed.next[0] = committed
            assert warmed.continues(0, committed)
            assert _decide(warmed, log[committed:]) == whole[committed:], (seed, committed)


def test_continues_and_keep() -> None:
    d = Dedup(1)
    d.repeat(0, rec(9, 1, "p", "a"))
    d.repeat(1, rec(3, 1, "p", "a"))
    assert d.continues(0, 10) and d.continues(0, 12)  # 10, 11: transaction markers
    assert not d.continues(0, 9)  # reset to before the window's end
    assert not d.continues(2, 5) and d.continues(2, 0)  # not read: only from the start
    d.keep({1})
    assert set(d.windows) == {1} and set(d.next) == {1}
