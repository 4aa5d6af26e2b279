from __future__ import annotations

import pytest

from agents.ingest.ratelimit import RateLimiter


class FakeClock:
    def __init__(self, now: float = 12_345.678) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def test_burst_of_per_minute_then_refused() -> None:
    clock = FakeClock()
    limiter = RateLimiter(clock)
    assert [limiter.take("p", 100) for _ in range(100)] == [0.0] * 100
    retry_after = limiter.take("p", 100)
    assert retry_after == pytest.approx(0.6)
    # a refused request is not charged
    assert limiter.take("p", 100) == pytest.approx(0.6)

    clock.now += retry_after
    assert limiter.take("p", 100) == 0.0
    assert limiter.take("p", 100) == pytest.approx(0.6)


@pytest.mark.parametrize("per_minute", [1, 7, 100, 1_000_000])
def test_burst_is_exact_for_awkward_rates(per_minute: int) -> None:
    limiter = RateLimiter(FakeClock(987_654_321.123))
    assert all(limiter.take("p", per_minute) == 0.0 for _ in range(per_minute))
    assert limiter.take("p", per_minute) == pytest.approx(60 / per_minute)


def test_long_run_rate_is_per_minute() -> None:
    clock = FakeClock()
    limiter = RateLimiter(clock)
    allowed = 0
    for _ in range(60_000):  # ten minutes of a client trying every 10 ms
        allowed += limiter.take("p", 100) == 0.0
        clock.now += 0.01
    # the initial burst, then 100 per minute
    assert allowed == pytest.approx(100 + 10 * 100, abs=1)


def test_client_honouring_retry_after_gets_the_rate() -> None:
    clock = FakeClock()
    limiter = RateLimiter(clock)
    for _ in range(30):
        limiter.take("p", 30)
    start, allowed = clock.now, 0
    while clock.now - start < 600:
        wait = limiter.take("p", 30)
        if wait:
            clock.now += wait
        else:
            allowed += 1
    assert allowed == pytest.approx(300, abs=1)


def test_keys_are_independent() -> None:
    limiter = RateLimiter(FakeClock())
    for _ in range(10):
        assert limiter.take("a", 10) == 0.0
    assert limiter.take("a", 10) > 0
    assert limiter.take("b", 10) == 0.0


def test_refills_after_idle() -> None:
    clock = FakeClock()
    limiter = RateLimiter(clock)
    for _ in range(5):
        limiter.take("p", 5)
    assert limiter.take("p", 5) > 0
    clock.now += 60
    assert [limiter.take("p", 5) for _ in range(5)] == [0.0] * 5
    assert limiter.take("p", 5) > 0


def test_sweep_forgets_idle_keys_occasionally() -> None:
    clock = FakeClock()
    limiter = RateLimiter(clock, sweep_interval=60)
    for i in range(1000):
        limiter.take(f"k{i}", 100)
    assert len(limiter) == 1000
    clock.now += 30  # within the sweep interval: nothing swept
    limiter.take("busy", 1)
    assert len(limiter) == 1001
    clock.now += 31  # sweep due; "busy" is still within its minute
    limiter.take("other", 100)
    assert len(limiter) == 2
    # a forgotten key starts from idle again
    assert [limiter.take("k0", 2) for _ in range(2)] == [0.0, 0.0]


def test_per_minute_must_be_positive() -> None:
    with pytest.raises(ValueError):
        RateLimiter(FakeClock()).take("p", 0)


def test_a_fractional_share_keeps_its_rate_and_bursts_at_least_one() -> None:
    now = [0.0]
    limiter = RateLimiter(clock=lambda: now[0])
    admitted = 0
    for step in range(600):  # 10 minutes, a request every second, at 2.5 a minute
        now[0] = float(step)
        admitted += limiter.take("p", 2.5) == 0.0
    assert 2.5 * 10 <= admitted <= 2.5 * 10 + 3  # the rate, plus the burst of 2.5
    slow = RateLimiter(clock=lambda: now[0])
    assert slow.take("q", 0.5) == 0.0  # below one a minute: one now...
    assert slow.take("q", 0.5) == pytest.approx(120.0)  # ...the next after its interval
