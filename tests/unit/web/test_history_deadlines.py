"""The data API's deadlines without a database: a pool with no free connection and a statement
past its deadline are `Unavailable` with the seconds to wait; the connection always goes back
(a timed-out one closed first); a failed give-back never hides the answer."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from agents.web import history
from dashpipe import db
from dashpipe.errors import Unavailable

QUERY = history.Query(datetime(2026, 1, 1, tzinfo=UTC), datetime(2026, 1, 1, 1, tzinfo=UTC),
                      ["v"], timedelta(minutes=1), "avg")


class FakeConnection:
    def __init__(self, fetch: Any) -> None:
        self._fetch = fetch
        self.terminated = False

    async def fetch(self, *args: Any, timeout: float | None = None) -> Any:
        self.timeout = timeout
        return self._fetch()

    def terminate(self) -> None:
        self.terminated = True


class FakePool:
    def __init__(self, conn: FakeConnection | None, release_error: Exception | None = None
                 ) -> None:
        self.conn, self.release_error = conn, release_error
        self.released: list[tuple[FakeConnection, float | None]] = []

    async def acquire(self, timeout: float | None = None) -> FakeConnection:
        if self.conn is None:
            raise TimeoutError
        return self.conn

    async def release(self, conn: FakeConnection, timeout: float | None = None) -> None:
        self.released.append((conn, timeout))
        if self.release_error is not None:
            raise self.release_error


def raise_timeout() -> Any:
    raise TimeoutError


async def series(pool: FakePool) -> tuple[list[dict[str, Any]], str]:
    return await history.series(pool, db.Storage(), "p", QUERY, 0.5,  # type: ignore[arg-type]
                                statement_timeout=2.0)


async def test_no_free_connection_is_unavailable_with_a_short_retry() -> None:
    with pytest.raises(Unavailable) as caught:
        await series(FakePool(None))
    assert str(caught.value).startswith("the database is busy: no connection free within 0.5 s")
    assert caught.value.retry_after == history.BUSY_RETRY_SECONDS


async def test_a_statement_past_its_deadline_closes_its_connection() -> None:
    conn = FakeConnection(raise_timeout)
    pool = FakePool(conn)
    with pytest.raises(Unavailable) as caught:
        await series(pool)
    assert "deadline of 2 s" in str(caught.value)
    assert caught.value.retry_after == history.SLOW_RETRY_SECONDS
    assert conn.timeout == 2.0 and conn.terminated and pool.released == [(conn, 2.0)]


async def test_the_answer_survives_a_failed_give_back() -> None:
    conn = FakeConnection(lambda: [(datetime(2026, 1, 1, tzinfo=UTC), 1.5)])
    pool = FakePool(conn, release_error=TimeoutError())
    points, source = await series(pool)
    assert points == [{"time": datetime(2026, 1, 1, tzinfo=UTC), "v": 1.5}]
    assert source == "rows" and not conn.terminated and pool.released == [(conn, 2.0)]
