"""Consumer group offsets and lag: per partition, what a group committed against the log's
start and end. `dashpipe offsets` (the CLI) and the console's lag (`GET
/api/pipelines/{id}/lag`) both read them here.

A member-less client may commit for a group only while the group is `Empty` or `Dead`, which is
why `GroupState` knows whether it can be reset.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass
from typing import Any, TypeVar

from aiokafka import TopicPartition
from aiokafka.errors import (
    CoordinatorLoadInProgressError,
    GroupCoordinatorNotAvailableError,
    NotCoordinatorError,
    for_code,
)

from dashpipe.errors import DashpipeError

RESETTABLE = ("Empty", "Dead")
SETTLE_SECONDS = 30.0  # a fresh broker creates __consumer_offsets on the first group request
# a coordinator that does not exist yet, is loading or moved: asked again
SETTLING = (GroupCoordinatorNotAvailableError, CoordinatorLoadInProgressError,
            NotCoordinatorError)
T = TypeVar("T")


async def settled(call: Callable[[], Awaitable[T]], seconds: float = SETTLE_SECONDS) -> T:
    """`call()` again while the group coordinator settles, for up to `seconds`."""
    loop = asyncio.get_running_loop()
    deadline, delay = loop.time() + seconds, 0.2
    while True:
        try:
            return await call()
        except SETTLING:
            if loop.time() + delay > deadline:
                raise
            await asyncio.sleep(delay)
            delay = min(delay * 2, 2.0)


@dataclass(frozen=True)
class PartitionOffsets:
    topic: str
    partition: int
    committed: int | None  # None: the group never committed here
    start: int  # the earliest offset still in the log
    end: int

    @property
    def lag(self) -> int:
        """Records the group has yet to read (from the earliest offset when it has no commit:
        the roles start there)."""
        return max(0, self.end - max(self.start, self.committed if self.committed is not None
                                     else self.start))

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "lag": self.lag}


@dataclass(frozen=True)
class GroupState:
    group: str
    state: str  # Kafka's: Empty, Dead, Stable, PreparingRebalance, CompletingRebalance, ...
    members: int

    @property
    def resettable(self) -> bool:
        return self.state in RESETTABLE and self.members == 0


async def describe_group(admin: Any, group: str) -> GroupState:
    async def describe() -> GroupState:
        [response] = await admin.describe_consumer_groups([group])
        error, group_id, state, _, _, members, *_ = response.groups[0]
        if error:
            kind = for_code(error)
            if issubclass(kind, SETTLING):  # in the answer, not raised by the client
                raise kind()
            raise DashpipeError(f"describing consumer group {group}: {kind.__name__}")
        return GroupState(group_id, state, len(members))

    return await settled(describe)


async def offsets(admin: Any, consumer: Any, group: str, tps: list[TopicPartition]
                  ) -> list[PartitionOffsets]:
    """Per partition of `tps`: the group's committed offset, the log's start and end (the
    consumer needs no group: it only asks for the log's bounds)."""
    committed = await settled(lambda: admin.list_consumer_group_offsets(group, partitions=tps))
    starts = await consumer.beginning_offsets(tps)
    ends = await consumer.end_offsets(tps)
    out = []
    for tp in tps:
        meta = committed.get(tp)
        offset = meta.offset if meta is not None and meta.offset >= 0 else None
        out.append(PartitionOffsets(tp.topic, tp.partition, offset, starts[tp], ends[tp]))
    return out


async def committed_topics(admin: Any, group: str) -> set[str]:
    """The topics the group has committed offsets on (what it consumes, as far as the log
    knows): a reader that does not know the group's role learns its inputs here."""
    return {tp.topic for tp in await settled(lambda: admin.list_consumer_group_offsets(group))}
