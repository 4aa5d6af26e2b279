"""The chaos test (`make chaos MINUTES=N`): the whole Procfile shape, two processes of every
role on three Kafka brokers and PostgreSQL, under a webhook load and a polled API, while a
nemesis kills and pauses processes, kills brokers and stops the database. Acked data is never
lost, storage never duplicates, every acked webhook is delivered.

Environment: DASHPIPE_CHAOS_MINUTES (load duration, default 3), DASHPIPE_CHAOS_SEED (default:
random, printed), DASHPIPE_CHAOS_FAULTS=0 (no nemesis: a check of the harness itself),
DASHPIPE_CHAOS_RATE (webhooks per second, default 20), DASHPIPE_CHAOS_DIR (where the logs go).
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
from pathlib import Path

import pytest

from tests.system.harness.run import Options, run_chaos

pytestmark = pytest.mark.system


def options() -> Options:
    env = os.environ
    seed = int(env.get("DASHPIPE_CHAOS_SEED") or random.SystemRandom().randrange(1, 10**6))
    folder = env.get("DASHPIPE_CHAOS_DIR")
    return Options(minutes=float(env.get("DASHPIPE_CHAOS_MINUTES") or 3), seed=seed,
                   faults=env.get("DASHPIPE_CHAOS_FAULTS", "1") not in ("0", "false", "no"),
                   rate=float(env.get("DASHPIPE_CHAOS_RATE") or 20),
                   workdir=Path(folder) if folder else None)


def test_chaos() -> None:
    logging.getLogger("aiokafka").setLevel(logging.CRITICAL)  # brokers die on purpose
    lines: list[str] = []

    def out(line: str) -> None:
        lines.append(line)
        print(line, flush=True)

    v = asyncio.run(run_chaos(options(), out))
    for line in [*v.lines, v.final_line()]:
        out(line)
    report = "\n".join(lines)
    assert not v.stuck, f"the system did not settle:\n{report}"
    assert not v.missing, f"acked webhooks not stored:\n{report}"
    assert v.duplicate_rows == 0, f"duplicate rows:\n{report}"
    assert not v.undelivered, f"acked webhooks not delivered:\n{report}"
    assert v.polled_stored == v.polled and not v.polled_duplicates, \
        f"polled items not stored exactly once:\n{report}"
