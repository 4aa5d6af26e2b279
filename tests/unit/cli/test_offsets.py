"""The pure parts of `dashpipe offsets` (`dashpipe.cli.offsets`): targets, lag, where a reset moves
each partition, and which group states may be reset."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest

from dashpipe.cli import offsets
from dashpipe.errors import DashpipeError
from dashpipe.topics import TopicNames


def test_targets_are_earliest_latest_or_an_rfc3339_time() -> None:
    assert offsets.parse_target("earliest") == "earliest"
    assert offsets.parse_target("latest") == "latest"
    assert offsets.parse_target("2026-01-31T12:00:00Z") == datetime(2026, 1, 31, 12, tzinfo=UTC)
    assert offsets.parse_target("2026-01-31T12:00:00") == datetime(2026, 1, 31, 12, tzinfo=UTC)
    plus2 = offsets.parse_target("2026-01-31T14:00:00+02:00")
    assert plus2 == datetime(2026, 1, 31, 14, tzinfo=timezone(timedelta(hours=2)))
    for bad in ("yesterday", "", "2026-13-01T00:00:00Z"):
        with pytest.raises(DashpipeError):
            offsets.parse_target(bad)


def test_each_role_reads_its_own_topics() -> None:
    names = TopicNames.from_prefix("x")
    assert offsets.topics_of(names, "map") == ["x.raw"]
    assert offsets.topics_of(names, "persist") == ["x.transformed"]
    assert offsets.topics_of(names, "deliver") == ["x.transformed", "x.deliver-retry"]
    with pytest.raises(DashpipeError):
        offsets.topics_of(names, "web")


def test_lag_counts_from_the_commit_or_from_the_earliest_offset() -> None:
    assert offsets.PartitionOffsets("t", 0, 7, 0, 10).lag == 3
    assert offsets.PartitionOffsets("t", 0, None, 4, 10).lag == 6  # no commit: from the start
    assert offsets.PartitionOffsets("t", 0, 2, 4, 10).lag == 6  # committed below the start
    assert offsets.PartitionOffsets("t", 0, 10, 0, 10).as_dict()["lag"] == 0


def test_a_reset_moves_to_the_start_the_end_or_the_first_record_at_the_time() -> None:
    current = [offsets.PartitionOffsets("t", 0, 5, 1, 9),
               offsets.PartitionOffsets("t", 1, None, 0, 4)]
    assert offsets.new_offsets("earliest", current) == {("t", 0): 1, ("t", 1): 0}
    assert offsets.new_offsets("latest", current) == {("t", 0): 9, ("t", 1): 4}
    when = datetime(2026, 1, 1, tzinfo=UTC)
    assert offsets.new_offsets(when, current, {("t", 0): 3, ("t", 1): None}) == {
        ("t", 0): 3, ("t", 1): 4}  # nothing that recent: the end


def test_only_an_empty_or_dead_group_may_be_reset() -> None:
    assert offsets.GroupState("g", "Empty", 0).resettable
    assert offsets.GroupState("g", "Dead", 0).resettable
    for state in ("Stable", "PreparingRebalance", "CompletingRebalance"):
        assert not offsets.GroupState("g", state, 1).resettable
    lines = offsets.reset_lines("g", "earliest",
                                [(offsets.PartitionOffsets("t", 0, None, 0, 4), 0)])
    assert lines == ["t 0: - -> 0", "group g reset to earliest"]
