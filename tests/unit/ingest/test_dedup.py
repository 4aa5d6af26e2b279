from __future__ import annotations

import pytest

from agents.ingest.dedup import SeenIds


class FakeClock:
    def __init__(self) -> None:
        self.now = 1_000.0

    def __call__(self) -> float:
        return self.now


def test_first_then_repeats() -> None:
    seen = SeenIds(clock=FakeClock())
    assert seen.first("p:msg_1")
    assert not seen.first("p:msg_1")
    assert not seen.first("p:msg_1")
    assert seen.first("p:msg_2")


def test_expires_after_ttl() -> None:
    clock = FakeClock()
    seen = SeenIds(ttl=10, clock=clock)
    seen.first("a")
    clock.now += 9.9
    assert not seen.first("a")  # a repeat does not extend the ttl
    clock.now += 0.1
    assert seen.first("a")


def test_expired_keys_are_forgotten() -> None:
    clock = FakeClock()
    seen = SeenIds(ttl=10, clock=clock)
    for i in range(100):
        seen.first(str(i))
        clock.now += 0.01
    assert len(seen) == 100
    clock.now += 10
    seen.first("new")
    assert len(seen) == 1


def test_oldest_dropped_over_max_size() -> None:
    seen = SeenIds(max_size=3, clock=FakeClock())
    for key in "abcd":
        assert seen.first(key)
    assert len(seen) == 3
    assert seen.first("a")  # "a" was dropped, so it counts as new (and drops "b")
    assert not seen.first("d")
    assert seen.first("b")


def test_forget_accepts_the_retry() -> None:
    seen = SeenIds(clock=FakeClock())
    assert seen.first("a")
    seen.forget("a")
    seen.forget("never-seen")
    assert seen.first("a")
    assert not seen.first("a")


def test_invalid_arguments() -> None:
    with pytest.raises(ValueError):
        SeenIds(ttl=0)
    with pytest.raises(ValueError):
        SeenIds(max_size=0)
