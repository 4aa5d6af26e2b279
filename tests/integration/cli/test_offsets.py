"""`dashpipe offsets` against the real broker: a reset is refused while the role's group has a
member and allowed once it stopped; offsets-for-times; and a persist group reset to the earliest
offsets reprocesses everything without changing one row of the database."""

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from typing import Any

import asyncpg
import orjson
import pytest

from dashpipe import cli, kafka
from dashpipe.cli import offsets
from dashpipe.cli.roles import run_roles
from dashpipe.runtime import Runtime, open_runtime
from dashpipe.settings import ADMIN, Settings
from tests.helpers import wait_until
from tests.integration.mapping.test_mapper import write_raw
from tests.integration.persist.test_persist import count, persisting, readings

Run = Callable[..., Awaitable[tuple[int, str, str]]]


@pytest.fixture
def dashpipe(settings: Settings, monkeypatch: pytest.MonkeyPatch,
             capsys: pytest.CaptureFixture[str]) -> Run:
    """`await dashpipe("offsets", "show", ...)` -> (exit code, stdout, stderr)."""
    monkeypatch.setenv("DASHPIPE_KAFKA_BOOTSTRAP_SERVERS", settings.kafka.bootstrap_servers)
    monkeypatch.setenv("DASHPIPE_KAFKA_GROUP_PREFIX", settings.kafka.group_prefix)
    monkeypatch.setenv("DASHPIPE_TOPIC_PREFIX", settings.topics.prefix)

    async def run(*argv: str) -> tuple[int, str, str]:
        capsys.readouterr()
        code = await asyncio.to_thread(cli.main, list(argv))
        out, err = capsys.readouterr()
        return code, out, err

    return run


@asynccontextmanager
async def running(settings: Settings, *roles: str) -> AsyncIterator[Runtime]:
    """Roles in this process, as `start_roles` runs them, stopped when the block ends (the
    consumers leave their groups)."""
    async with open_runtime(settings, settings.kafka.bootstrap_servers) as rt:
        task = asyncio.create_task(run_roles(rt, list(roles)))
        try:
            yield rt
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)


async def state(settings: Settings, role: str) -> offsets.GroupState:
    return (await offsets.show(settings, settings.kafka.bootstrap_servers, role))[0]


async def lag(settings: Settings, role: str) -> int:
    _, rows = await offsets.show(settings, settings.kafka.bootstrap_servers, role)
    return sum(r.lag for r in rows)


async def test_a_reset_is_refused_while_the_role_runs_and_allowed_after(
        start_roles: Any, settings: Settings, db: asyncpg.Pool, dashpipe: Run) -> None:
    rt = await start_roles()  # the topics and the registry
    topic = rt.names.transformed
    base = int(time.time() * 1000) - 60_000
    producer = kafka.producer(settings.kafka.bootstrap_servers, settings.kafka)
    async with kafka.started(producer):  # rows of no pipeline: persist reads and skips them
        for i in range(3):
            await producer.send_and_wait(topic, b"{}", partition=0, timestamp_ms=base + i * 1000)

    async with running(settings, "persist"):
        await wait_until(lambda: _stable(settings), 30, "the persist group to have a member")
        await wait_until(lambda: _lag_is(settings, 0), 30, "persist to read the rows")
        with pytest.raises(offsets.GroupActive) as refused:
            await offsets.reset(settings, settings.kafka.bootstrap_servers, "persist",
                                "earliest")
        assert "with 1 member(s): stop every persist process first" in str(refused.value)
        code, out, err = await dashpipe("offsets", "reset", "--role", "persist", "--to",
                                        "earliest")
        assert (code, out) == (1, "")  # refused: a failure (exit codes: dashpipe.cli.exits)
        assert err.startswith(f"dashpipe: error: consumer group "
                              f"{settings.kafka.group_prefix}-persist is Stable with 1 "
                              "member(s): stop every persist process first")
        assert await lag(settings, "persist") == 0  # nothing moved

    assert (await state(settings, "persist")).state == "Empty"
    second = datetime.fromtimestamp((base + 1000) / 1000, UTC).isoformat()
    code, out, err = await dashpipe("offsets", "reset", "--role", "persist", "--to",
                                    second.replace("+00:00", "Z"))
    assert code == 0, err
    assert f"{topic} 0: 3 -> 1" in out.splitlines()
    code, out, _ = await dashpipe("offsets", "show", "--role", "persist", "--json")
    shown = orjson.loads(out)
    assert (shown["state"], shown["members"]) == ("Empty", 0)
    assert [(p["partition"], p["committed"], p["end"], p["lag"]) for p in shown["partitions"]] \
        == [(0, 1, 3, 2), (1, 0, 0, 0), (2, 0, 0, 0)]  # no record that recent: the end
    code, out, _ = await dashpipe("offsets", "show", "--role", "persist")
    lines = out.splitlines()
    assert lines[0] == f"group {settings.kafka.group_prefix}-persist: Empty, 0 member(s)"
    assert lines[1].split() == ["TOPIC", "PARTITION", "COMMITTED", "END", "LAG"]
    assert lines[2].split() == [topic, "0", "1", "3", "2"] and lines[-1] == "total lag 2"
    assert (await dashpipe("offsets", "reset", "--role", "persist", "--to", "latest"))[0] == 0
    assert await lag(settings, "persist") == 0
    code, _, err = await dashpipe("offsets", "reset", "--role", "persist", "--to", "yesterday")
    assert code == 2 and "expected earliest, latest or an RFC 3339 time" in err


async def test_a_reset_to_earliest_reprocesses_without_changing_the_database(
        start_roles: Any, settings: Settings, db: asyncpg.Pool) -> None:
    rt = await start_roles()
    await rt.service.create(persisting("sensors"), ADMIN)
    for batch in range(3):
        await write_raw(settings, rt.names.raw, "sensors", [readings(
            *((f"s{i}", 1764300000 + batch * 60, 20.0 + i) for i in range(5)))])
    async with running(settings, "map", "persist"):
        await wait_until(lambda: _count_is(db, "sensors", 15), 30, "15 rows stored")
        await wait_until(lambda: _lag_is(settings, 0, "map"), 30, "map to catch up")
        await wait_until(lambda: _lag_is(settings, 0), 30, "persist to catch up")
    before = await _rows(db)
    assert len(before) == 15

    bootstrap = settings.kafka.bootstrap_servers
    moved = await offsets.reset(settings, bootstrap, "persist", "earliest")
    assert sum(p.committed or 0 for p, _ in moved) == 15 and all(new == 0 for _, new in moved)
    assert await lag(settings, "persist") == 15

    async with running(settings, "persist") as again:
        await wait_until(lambda: _lag_is(settings, 0), 30, "persist to catch up again")
        await wait_until(lambda: again.metrics.total("dashpipe_persisted_total") == 15,
                         what="every row written once more")
    assert await _rows(db) == before  # not one row changed, not even stored_at


async def _stable(settings: Settings) -> bool:
    s = await state(settings, "persist")
    return s.state == "Stable" and s.members == 1


async def _lag_is(settings: Settings, value: int, role: str = "persist") -> bool:
    _, rows = await offsets.show(settings, settings.kafka.bootstrap_servers, role)
    return all(r.committed is not None for r in rows if r.end) and \
        sum(r.lag for r in rows) == value


async def _count_is(db: asyncpg.Pool, pid: str, n: int) -> bool:
    return await count(db, pid) == n


async def _rows(db: asyncpg.Pool) -> list[tuple[Any, ...]]:
    return [tuple(r) for r in await db.fetch(
        "SELECT * FROM pipeline_data ORDER BY pipeline_id, row_key, time")]
