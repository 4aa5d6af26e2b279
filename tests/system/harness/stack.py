"""The chaos run's own stack: `dashpipe up --brokers 3` in a temporary state folder (three KRaft
brokers on loopback and a PostgreSQL cluster), and the faults that act on it: a broker killed,
PostgreSQL stopped; `dashpipe up` again brings back whatever is down."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shlex
import signal
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import orjson

from dashpipe.cli.stack import postgres
from dashpipe.settings import StackSettings

log = logging.getLogger(__name__)

# the environment passes through, except what would point `dashpipe` at other services or
# names; DASHPIPE_PG_BIN_DIR (a TimescaleDB build) is kept
KEEP = {"DASHPIPE_PG_BIN_DIR", "DASHPIPE_CACHE_DIR", "DASHPIPE_KAFKA_VERSION"}
DASHPIPE = str(Path(sys.executable).with_name("dashpipe"))


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("DASHPIPE_") or k in KEEP}
    env.update(extra)
    return env


class StackFailed(RuntimeError):
    pass


@dataclass
class Stack:
    state_dir: Path
    brokers: int = 3
    exports: dict[str, str] = field(default_factory=dict)
    log_path: Path | None = None  # every `dashpipe` call, its duration and output

    @property
    def env(self) -> dict[str, str]:
        """What `dashpipe up | down | status` run with: only the state folder is ours."""
        return clean_env(DASHPIPE_STATE_DIR=str(self.state_dir))

    async def dashpipe(self, *args: str, timeout: float = 300.0) -> str:
        """Run `dashpipe ARGS` without blocking the event loop; its stdout, or `StackFailed`."""
        began = time.monotonic()
        proc = await asyncio.create_subprocess_exec(
            DASHPIPE, *args, env=self.env, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE)
        try:
            out, err = await asyncio.wait_for(proc.communicate(), timeout)
        except TimeoutError:
            proc.kill()
            await proc.wait()
            raise StackFailed(f"dashpipe {' '.join(args)}: no answer in {timeout:.0f} s") from None
        if self.log_path is not None:
            with self.log_path.open("a") as f:
                f.write(f"--- {time.strftime('%H:%M:%S')} dashpipe {' '.join(args)}: exit "
                        f"{proc.returncode} after {time.monotonic() - began:.1f} s\n"
                        f"{(out + err).decode(errors='replace')}")
        if proc.returncode != 0:
            raise StackFailed(f"dashpipe {' '.join(args)} exited {proc.returncode}:\n"
                              f"{(out + err).decode(errors='replace')[-3000:]}")
        return out.decode()

    async def up(self, first: bool = False) -> str:
        """Start what is not running (the first time: `--brokers N`); then read the exports."""
        args = ["up", "--brokers", str(self.brokers)] if first else ["up"]
        out = await self.dashpipe(*args)
        await self.read_exports()
        return out

    async def read_exports(self) -> None:
        out = await self.dashpipe("status", "--env", timeout=60)
        for line in out.splitlines():
            name, _, value = line.removeprefix("export ").partition("=")
            self.exports[name] = shlex.split(value)[0] if value else ""

    def save_logs(self, dest: Path, keep: int = 2_000_000) -> None:
        """Copy the end of each broker's and the database's log to `dest` (before a purge)."""
        found = {f"kafka-{n}.log": self.state_dir / "kafka" / f"node-{n}" / "server.log"
                 for n in range(1, self.brokers + 1)}
        with contextlib.suppress(OSError, KeyError, ValueError):
            found["postgres.log"] = Path(self._pg_data()).parent / "server.log"
        for name, path in found.items():
            try:
                with path.open("rb") as f:
                    f.seek(max(0, path.stat().st_size - keep))
                    (dest / name).write_bytes(f.read())
            except OSError:
                continue

    async def down(self, purge: bool = True) -> None:
        await self.dashpipe("down", *(["--purge"] if purge else []), timeout=180)

    @property
    def bootstrap(self) -> str:
        return self.exports["DASHPIPE_KAFKA_BOOTSTRAP_SERVERS"]

    @property
    def database_url(self) -> str:
        return self.exports["DASHPIPE_DATABASE_URL"]

    # --- brokers ---------------------------------------------------------------------------

    def broker_pid(self, node: int) -> int | None:
        """The live pid of node `node` (1-based), from `<state>/kafka/node-<id>/pid`."""
        try:
            pid = int((self.state_dir / "kafka" / f"node-{node}" / "pid").read_text().strip())
            os.kill(pid, 0)
        except (OSError, ValueError):
            return None
        return pid

    def kill_broker(self, node: int) -> int:
        pid = self.broker_pid(node)
        if pid is None:
            raise StackFailed(f"broker {node} is not running")
        os.kill(pid, signal.SIGKILL)
        return pid

    def brokers_running(self) -> int:
        return sum(self.broker_pid(n) is not None for n in range(1, self.brokers + 1))

    # --- PostgreSQL --------------------------------------------------------------------------

    def _pg_data(self) -> str:
        state = orjson.loads((self.state_dir / "stack.json").read_bytes())
        return str(state["pg_data"])

    async def _pg_ctl(self, *args: str) -> int:
        bins = postgres.bin_dir(StackSettings())  # honours DASHPIPE_PG_BIN_DIR
        cmd = [str(bins / "pg_ctl"), "-D", self._pg_data(), *args]
        if os.geteuid() == 0:  # as dashpipe/cli/stack/postgres.py runs it
            cmd = ["runuser", "-u", "postgres", "--", *cmd]
        proc = await asyncio.create_subprocess_exec(
            *cmd, cwd="/", stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE)
        _, err = await proc.communicate()
        if proc.returncode not in (0, 3) and err:  # 3: `status` of a stopped server
            log.warning("pg_ctl %s: %s", " ".join(args), err.decode(errors="replace")[-500:])
        return proc.returncode or 0

    async def stop_postgres(self) -> None:
        if await self._pg_ctl("-m", "fast", "-w", "stop") != 0:
            raise StackFailed("pg_ctl stop failed")

    async def postgres_running(self) -> bool:
        return await self._pg_ctl("status") == 0
