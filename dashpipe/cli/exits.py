"""The exit codes of `dashpipe`, one table from exception types to codes, so a script can tell
a typo from a missing pipeline from a stack that is down.

    0  ok
    1  failure: the command ran and did not succeed (records still failing a redrive, a role
       failed, a consumer group still has members, an error nobody foresaw)
    2  usage: argparse's own errors, and a bad file or flag value (the request is wrong)
    3  not found: an unknown pipeline id, dead letter, ...
    4  service unavailable: Kafka or PostgreSQL cannot be reached, or the stack is not up
"""

from __future__ import annotations

from dashpipe.errors import DashpipeError, StackError, ToolMissing, Unavailable

OK, FAILURE, USAGE, NOT_FOUND, UNAVAILABLE = 0, 1, 2, 3, 4

EPILOG = """exit codes:
  0  ok
  1  failure (e.g. a redrive with records still failing, a role failed)
  2  usage error (a bad flag, file or value)
  3  not found (an unknown pipeline id, dead letter, ...)
  4  service unavailable (Kafka or PostgreSQL unreachable, the stack is not up)
"""


def _table() -> list[tuple[tuple[type[BaseException], ...], int]]:
    """Most specific first: the first row whose types match decides. Imported when an error
    is being reported, so a command that succeeds never pays for these imports."""
    from aiokafka.errors import KafkaConnectionError, KafkaTimeoutError, NoBrokersAvailable

    from dashpipe.cli.offsets import GroupActive
    from dashpipe.cli.roles import RoleFailed
    from dashpipe.pipelines import Conflict, NotFound

    # not every ConnectionError: a BrokenPipeError is stdout closed by `| head`
    unavailable: tuple[type[BaseException], ...] = (
        Unavailable, KafkaConnectionError, KafkaTimeoutError, NoBrokersAvailable,
        ConnectionRefusedError, ConnectionResetError, TimeoutError)
    try:  # PostgreSQL refusing connections (starting, shutting down, full)
        from asyncpg.exceptions import CannotConnectNowError, TooManyConnectionsError
        unavailable += (CannotConnectNowError, TooManyConnectionsError)
    except ImportError:  # pragma: no cover - asyncpg is a dependency
        pass
    return [
        ((NotFound,), NOT_FOUND),
        (unavailable, UNAVAILABLE),
        ((RoleFailed, GroupActive, Conflict, StackError, ToolMissing), FAILURE),
        ((DashpipeError,), USAGE),  # every other refusal of ours names a bad value
    ]


def code_of(exc: BaseException) -> int:
    """The exit code for an error that ended a command. Kafka's retriable errors (a broker
    that is not reachable or not ready) count as unavailable; so does an error raised from
    one (`raise ... from exc`)."""
    from aiokafka.errors import KafkaError

    table = _table()
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        for types, code in table:
            if isinstance(current, types):
                return code
        if isinstance(current, KafkaError) and current.retriable:
            return UNAVAILABLE
        current = current.__cause__
    return FAILURE
