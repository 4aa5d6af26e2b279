from datetime import UTC, datetime, timedelta

from agents.ingest.schedule import Policy, after_failure, after_success

T0 = datetime(2026, 1, 1, tzinfo=UTC)
P = Policy(base=60, cap=3600, attempts_per_run=3)


def s(seconds: float) -> timedelta:
    return timedelta(seconds=seconds)


def test_success_keeps_the_cadence() -> None:
    # due at T0, started late at T0+0.2: next due T0+30, not T0+30.2 (no drift)
    assert after_success(T0, T0 + s(0.2), T0 + s(2), 30) == T0 + s(30)
    # overran (or came back after downtime): the next interval counts from the start
    assert after_success(T0, T0 + s(100), T0 + s(101), 30) == T0 + s(130)


def test_first_retry_after_60s_then_doubling_up_to_the_cap() -> None:
    delays = [(after_failure(P, T0, T0, 10, n, 1)[0] - T0).total_seconds() for n in range(1, 9)]
    assert delays == [60, 120, 240, 480, 960, 1920, 3600, 3600]


def test_retry_after_wins_when_longer() -> None:
    assert after_failure(P, T0, T0, 10, 1, 1, retry_after=300)[0] == T0 + s(300)
    assert after_failure(P, T0, T0, 10, 1, 1, retry_after=5)[0] == T0 + s(60)


def test_long_interval_gets_three_attempts_per_run() -> None:
    hour = 3600.0
    first = after_failure(P, T0, T0, hour, 1, 1)
    assert first == (T0 + s(60), 1)
    second = after_failure(P, T0, T0 + s(60), hour, 2, 2)
    assert second == (T0 + s(180), 2)
    third = after_failure(P, T0, T0 + s(180), hour, 3, 3)
    assert third == (T0 + s(hour), 0)  # back to the regular schedule
