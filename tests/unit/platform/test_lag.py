"""`lag.settled`: a group request is asked again while a fresh broker's coordinator settles,
and the error surfaces once the deadline has passed; other errors surface at once."""

from __future__ import annotations

import pytest
from aiokafka.errors import GroupCoordinatorNotAvailableError, UnknownTopicOrPartitionError

from dashpipe.lag import settled


async def test_a_coordinator_that_settles_is_asked_again() -> None:
    calls = []

    async def call() -> str:
        calls.append(1)
        if len(calls) < 3:
            raise GroupCoordinatorNotAvailableError
        return "described"

    assert await settled(call) == "described" and len(calls) == 3


async def test_the_error_surfaces_after_the_deadline_and_others_at_once() -> None:
    async def never() -> None:
        raise GroupCoordinatorNotAvailableError

    with pytest.raises(GroupCoordinatorNotAvailableError):
        await settled(never, seconds=0.5)
    calls = []

    async def other() -> None:
        calls.append(1)
        raise UnknownTopicOrPartitionError

    with pytest.raises(UnknownTopicOrPartitionError):
        await settled(other)
    assert len(calls) == 1
