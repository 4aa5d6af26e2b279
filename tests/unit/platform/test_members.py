"""How the web processes share a pipeline's allowance, from their heartbeats."""

from __future__ import annotations

import time

import pytest

from dashpipe.members import LIVE_INTERVALS, Member, Members
from dashpipe.settings import KafkaSettings


def members(loads: dict[str, dict[str, float]], mine: dict[str, float],
            dead: dict[str, dict[str, float]] | None = None) -> Members:
    m = Members(None, "", KafkaSettings(), "t.members", "web", id="me")
    now = time.monotonic()
    m.members = {k: Member(now, v) for k, v in loads.items()}
    for k, v in (dead or {}).items():
        m.members[k] = Member(now - LIVE_INTERVALS * m.interval - 1, v)
    m._load = dict(mine)
    m._recompute()
    return m


def shares(loads: dict[str, dict[str, float]], key: str) -> list[float]:
    """Each member's share of `key`, computed as that member would."""
    out = []
    for me, load in loads.items():
        others = {k: v for k, v in loads.items() if k != me}
        out.append(members(others, load).share(key))
    return out


def test_shares_sum_to_one_and_follow_the_load() -> None:
    even = shares({"a": {"p": 3.0}, "b": {"p": 3.0}, "c": {"p": 3.0}}, "p")
    assert even == pytest.approx([1 / 3] * 3)
    pinned = shares({"a": {"p": 5.0}, "b": {}, "c": {}}, "p")
    assert sum(pinned) == pytest.approx(1)
    assert pinned[0] > 0.8 and 0 < pinned[1] == pinned[2] < 0.1


def test_a_key_nobody_reported_is_shared_evenly_among_the_live() -> None:
    m = members({"b": {}}, {}, dead={"c": {"p": 9.0}})
    assert m.share("p") == 0.5 == m.share("unseen")
    assert m.live() == ["b"]
    assert members({}, {}).share("p") == 1.0  # alone: all of it
