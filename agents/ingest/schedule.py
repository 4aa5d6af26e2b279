"""When a pipeline polls next: pure functions of the clock, the interval and past failures.

- success: `due + interval`, keeping the cadence however late the tick started the poll;
  `started + interval` when that time has passed already (after downtime, a slow poll);
- failure: the first retry after `base` seconds (60 by default, as the original system did),
  doubling with every consecutive failure up to `cap`; a `Retry-After` from the API wins when
  it is longer;
- a pipeline whose interval is longer than `base` tries up to `attempts_per_run` times per due
  run, then waits for its next regular run.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta


@dataclass(frozen=True)
class Policy:
    base: float = 60.0
    cap: float = 3600.0
    attempts_per_run: int = 3


def after_success(due: datetime, started: datetime, now: datetime,
                  interval: float) -> datetime:
    step = timedelta(seconds=interval)
    return due + step if due + step > now else started + step


def after_failure(policy: Policy, run_started: datetime, now: datetime, interval: float,
                  failures: int, attempts_in_run: int,
                  retry_after: float | None = None) -> tuple[datetime, int]:
    """(next due time, attempts counted in the current run) after the `failures`-th
    consecutive failure, the `attempts_in_run`-th attempt of this due run."""
    delay = min(policy.base * 2 ** max(failures - 1, 0), policy.cap)
    if retry_after is not None:
        delay = max(delay, min(retry_after, policy.cap))
    if interval > policy.base and attempts_in_run >= policy.attempts_per_run:
        regular = run_started + timedelta(seconds=interval)
        return max(regular, now + timedelta(seconds=min(delay, interval))), 0
    return now + timedelta(seconds=delay), attempts_in_run
