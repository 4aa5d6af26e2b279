"""The Procfile shape, scaled: N `dashpipe run <role>` processes of every role, each with its
own port and log, and a supervisor that restarts a process that exits on its own (as a
Procfile runner or systemd would), recording each such exit with the end of its log."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp

from tests.system.harness.stack import DASHPIPE
from tests.system.harness.waiting import until

log = logging.getLogger(__name__)

ROLES = ("web", "poll", "map", "persist", "deliver")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Exit:
    """A role process that exited without being told to."""

    at: float
    name: str
    code: int | None
    tail: str


@dataclass
class RoleProcess:
    role: str
    index: int
    env: dict[str, str]
    log_path: Path
    port: int = field(default_factory=free_port)
    proc: subprocess.Popen[bytes] | None = None
    held: bool = False  # the nemesis holds it (killed and not restarted yet, or stopped)
    starts: int = 0

    @property
    def name(self) -> str:
        return f"{self.role}-{self.index}"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    def start(self) -> None:
        port_var = "DASHPIPE_WEB_PORT" if self.role == "web" else "DASHPIPE_WEB_METRICS_PORT"
        with self.log_path.open("ab") as out:
            out.write(f"--- start {self.starts + 1} at {time.time():.3f}\n".encode())
            out.flush()
            self.proc = subprocess.Popen(
                [DASHPIPE, "run", self.role], env={**self.env, port_var: str(self.port)},
                stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        self.starts += 1

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def signal(self, sig: int) -> None:
        if self.proc is not None and self.alive():
            os.kill(self.proc.pid, sig)

    def kill(self) -> None:
        """`kill -9`, and reap it (so the next `alive()` is false at once)."""
        self.signal(signal.SIGKILL)
        if self.proc is not None:
            self.proc.wait()

    def tail(self, chars: int = 1500) -> str:
        try:
            with self.log_path.open("rb") as f:
                f.seek(max(0, self.log_path.stat().st_size - chars))
                return f.read().decode(errors="replace")
        except OSError:
            return ""

    async def ready(self, session: aiohttp.ClientSession) -> bool:
        path = "/readyz" if self.role == "web" else "/healthz"
        if not self.alive():
            return False
        try:
            async with session.get(self.url + path,
                                   timeout=aiohttp.ClientTimeout(total=2)) as resp:
                return resp.status == 200
        except (aiohttp.ClientError, TimeoutError):
            return False


@dataclass
class Fleet:
    """Every role process, and their supervisor."""

    procs: list[RoleProcess]
    exits: list[Exit] = field(default_factory=list)

    @classmethod
    def make(cls, env: dict[str, str], logs: Path, per_role: int = 2) -> Fleet:
        logs.mkdir(parents=True, exist_ok=True)
        return cls([RoleProcess(role, i, env, logs / f"{role}-{i}.log")
                    for role in ROLES for i in range(1, per_role + 1)])

    def of(self, role: str) -> list[RoleProcess]:
        return [p for p in self.procs if p.role == role]

    def start(self) -> None:
        for proc in self.procs:
            proc.start()

    async def ready(self, timeout: float = 120.0) -> None:
        async with aiohttp.ClientSession() as session:
            async def all_ready() -> bool:
                answers = await asyncio.gather(*(p.ready(session) for p in self.procs))
                return all(answers)

            await until(all_ready, timeout, "every role process ready")

    async def supervise(self, every: float = 0.5) -> None:
        """Restart a process that exited while nobody held it, recording the exit."""
        while True:
            for proc in self.procs:
                if proc.held or proc.proc is None or proc.alive():
                    continue
                code = proc.proc.returncode
                self.exits.append(Exit(time.time(), proc.name, code, proc.tail()))
                log.warning("%s exited on its own (code %s); restarting", proc.name, code)
                proc.start()
            await asyncio.sleep(every)

    def stop(self, timeout: float = 40.0) -> None:
        """SIGTERM to every process at once; SIGKILL to any still there after `timeout`."""
        for proc in self.procs:
            proc.held = True
            proc.signal(signal.SIGCONT)
            proc.signal(signal.SIGTERM)
        deadline = time.monotonic() + timeout
        for proc in self.procs:
            if proc.proc is None:
                continue
            try:
                proc.proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                log.warning("%s did not stop within %.0f s; killing it", proc.name, timeout)
                proc.kill()
