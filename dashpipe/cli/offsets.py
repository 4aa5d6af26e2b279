"""The committed offsets of a role's consumer group (`dashpipe offsets`): shown with the lag,
and moved (to the earliest or latest offsets, or to a time) while the group has no member.

Group `<group prefix>-<role>`; its input topics: `map` the raw topic, `persist` the transformed
topic, `deliver` the transformed and the retry topics. A reset commits the new offsets as a
member-less client (the way Kafka's own `kafka-consumer-groups --reset-offsets` does), which the
broker accepts only for a group without members; it is refused before that, with the reason,
unless the group is `Empty` or `Dead` (never used, or gone).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, Literal

from aiokafka import TopicPartition
from aiokafka.errors import CommitFailedError

from dashpipe import kafka, lag
from dashpipe.cli.roles import ROLES
from dashpipe.errors import DashpipeError
from dashpipe.lag import GroupState, PartitionOffsets, describe_group
from dashpipe.settings import Settings
from dashpipe.topics import TopicNames

__all__ = ["GroupState", "PartitionOffsets", "describe_group"]  # re-exported: they live lower
Target = Literal["earliest", "latest"] | datetime


class GroupActive(DashpipeError):
    """The group has members: its offsets are theirs to commit."""


def group_of(settings: Settings, role: str) -> str:
    return f"{settings.kafka.group_prefix}-{role}"


def topics_of(names: TopicNames, role: str) -> list[str]:
    committed = {name: r.inputs for name, r in ROLES.items() if r.committed}
    if role not in committed:
        raise DashpipeError(f"unknown role {role!r}; roles with offsets are: "
                            f"{', '.join(committed)}")
    return [getattr(names, t) for t in committed[role]]


def parse_target(text: str) -> Target:
    """`earliest`, `latest` or an RFC 3339 time (without an offset: UTC)."""
    if text in ("earliest", "latest"):
        return "earliest" if text == "earliest" else "latest"
    try:
        when = datetime.fromisoformat(text)
    except ValueError:
        raise DashpipeError(f"--to: expected earliest, latest or an RFC 3339 time "
                            f"(2026-01-31T12:00:00Z), got {text!r}") from None
    return when if when.tzinfo is not None else when.replace(tzinfo=UTC)


def new_offsets(target: Target, current: list[PartitionOffsets],
                by_time: dict[tuple[str, int], int | None] | None = None
                ) -> dict[tuple[str, int], int]:
    """Where each partition goes: its start, its end, or the first offset at or after the
    time (the end when no record is that recent)."""
    out: dict[tuple[str, int], int] = {}
    for p in current:
        if target == "earliest":
            out[(p.topic, p.partition)] = p.start
        elif target == "latest":
            out[(p.topic, p.partition)] = p.end
        else:
            found = (by_time or {}).get((p.topic, p.partition))
            out[(p.topic, p.partition)] = p.end if found is None else found
    return out


async def _offsets(admin: Any, consumer: Any, group: str, topics: list[str]
                   ) -> list[PartitionOffsets]:
    return await lag.offsets(admin, consumer, group, await kafka.partitions(consumer, *topics))


async def show(settings: Settings, bootstrap: str, role: str
               ) -> tuple[GroupState, list[PartitionOffsets]]:
    """The role's group state, and per input partition its committed offset, end and lag."""
    topics = topics_of(TopicNames.from_prefix(settings.topics.prefix), role)
    group = group_of(settings, role)
    async with kafka.started(kafka.admin(bootstrap, settings.kafka)) as admin, \
            kafka.started(kafka.consumer(bootstrap, settings.kafka, group_id=None)) as consumer:
        state = await describe_group(admin, group)
        return state, await _offsets(admin, consumer, group, topics)


async def reset(settings: Settings, bootstrap: str, role: str, target: Target
                ) -> list[tuple[PartitionOffsets, int]]:
    """Commit the role's group offsets at `target`; each partition before, and its new offset.
    Refused (`GroupActive`) while the group has members."""
    topics = topics_of(TopicNames.from_prefix(settings.topics.prefix), role)
    group = group_of(settings, role)
    async with kafka.started(kafka.admin(bootstrap, settings.kafka)) as admin, \
            kafka.started(kafka.consumer(bootstrap, settings.kafka, group_id=None)) as reader:
        state = await describe_group(admin, group)
        if not state.resettable:
            raise _active(state, role)
        current = await _offsets(admin, reader, group, topics)
        by_time: dict[tuple[str, int], int | None] | None = None
        if isinstance(target, datetime):
            ms = int(target.timestamp() * 1000)
            found = await reader.offsets_for_times(
                {TopicPartition(p.topic, p.partition): ms for p in current})
            by_time = {(tp.topic, tp.partition): None if at is None else at.offset
                       for tp, at in found.items()}
        moves = new_offsets(target, current, by_time)
    # a member-less commit: the broker refuses it too if a member joined meanwhile
    committer = kafka.consumer(bootstrap, settings.kafka, group_id=group)
    async with kafka.started(committer):
        committer.assign([TopicPartition(t, p) for t, p in moves])
        try:
            await committer.commit({TopicPartition(t, p): o for (t, p), o in moves.items()})
        except CommitFailedError:
            async with kafka.started(kafka.admin(bootstrap, settings.kafka)) as admin:
                raise _active(await describe_group(admin, group), role) from None
    return [(p, moves[(p.topic, p.partition)]) for p in current]


def _active(state: GroupState, role: str) -> GroupActive:
    return GroupActive(f"consumer group {state.group} is {state.state} with {state.members} "
                       f"member(s): stop every {role} process first (only an Empty or Dead "
                       "group can be reset)")


def show_table(state: GroupState, rows: list[PartitionOffsets]) -> str:
    lines = [f"group {state.group}: {state.state}, {state.members} member(s)"]
    cells = [("TOPIC", "PARTITION", "COMMITTED", "END", "LAG")] + [
        (p.topic, str(p.partition), "-" if p.committed is None else str(p.committed),
         str(p.end), str(p.lag)) for p in rows]
    widths = [max(len(c[i]) for c in cells) for i in range(5)]
    lines += ["  ".join(c[i].ljust(widths[i]) for i in range(5)).rstrip() for c in cells]
    lines.append(f"total lag {sum(p.lag for p in rows)}")
    return "\n".join(lines)


def reset_lines(group: str, target: Target, moved: list[tuple[PartitionOffsets, int]]
                ) -> list[str]:
    lines = [f"{p.topic} {p.partition}: {'-' if p.committed is None else p.committed} -> {new}"
             for p, new in moved]
    what = target.isoformat() if isinstance(target, datetime) else target
    return [*lines, f"group {group} reset to {what}"]
