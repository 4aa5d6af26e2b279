"""The nemesis: every 5-20 s (seeded) one fault strikes, and heals on its own schedule, so
faults overlap as they do in production:

- `kill-role`: `kill -9` of a random role process, restarted after a pause of 2-6 s;
- `stop-role`: `SIGSTOP` of a random role process for longer than the Kafka consumer session
  timeout (its group evicts it; it comes back as a zombie member), then `SIGCONT`;
- `kill-broker`: `kill -9` of a random Kafka broker, restarted with `dashpipe up` after 3-8 s;
- `stop-postgres`: PostgreSQL stopped (`pg_ctl stop -m fast`) for 20 s, started with `dashpipe up`.

The kinds come in shuffled rounds (each kind once per round), so a short run sees all four.
Limits keep the faults within what the system promises to survive: one broker or the database
at a time (`dashpipe up` heals whatever is down, so these two never overlap), and one fault
per role at a time (the other process of the role keeps running).
"""

from __future__ import annotations

import asyncio
import random
import signal
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any

from dashpipe.settings import KafkaSettings
from tests.system.harness.roles import Fleet, RoleProcess
from tests.system.harness.stack import Stack

KINDS = ("kill-role", "stop-role", "kill-broker", "stop-postgres")
AIOKAFKA_SESSION_TIMEOUT_S = 10.0  # aiokafka's default; dashpipe/kafka.py does not change it


def session_timeout() -> float:
    """The consumer session timeout the roles run with (a setting, once dashpipe has one)."""
    ms = getattr(KafkaSettings(), "session_timeout_ms", None)
    return ms / 1000 if isinstance(ms, int | float) else AIOKAFKA_SESSION_TIMEOUT_S


@dataclass
class Fault:
    kind: str
    target: str
    at: float  # when it struck (epoch s)
    healed_at: float | None = None  # when the process / broker / database was back


@dataclass
class Nemesis:
    stack: Stack
    fleet: Fleet
    rng: random.Random
    out: Callable[[str], None] = print
    kinds: tuple[str, ...] = KINDS
    faults: list[Fault] = field(default_factory=list)
    _stopping: asyncio.Event = field(default_factory=asyncio.Event)
    _round: list[str] = field(default_factory=list)
    _stack_busy: bool = False  # a broker or the database is down
    _heals: set[asyncio.Task[None]] = field(default_factory=set)

    def stop(self) -> None:
        """No new fault; `run` returns once every fault has healed."""
        self._stopping.set()

    async def run(self) -> None:
        try:
            while not self._stopping.is_set():
                try:
                    await asyncio.wait_for(self._stopping.wait(), self.rng.uniform(5, 20))
                    break
                except TimeoutError:
                    pass
                self._reap()  # a heal that failed stops the run
                strike = self._next()
                if strike is not None:
                    task = asyncio.create_task(strike)
                    self._heals.add(task)
        finally:
            if self._heals:
                await asyncio.gather(*self._heals)

    def _reap(self) -> None:
        for task in [t for t in self._heals if t.done()]:
            self._heals.discard(task)
            task.result()

    def _next(self) -> Coroutine[Any, Any, None] | None:
        """The next fault of the round that can strike now."""
        if not self._round:
            self._round = list(self.kinds)
            self.rng.shuffle(self._round)
        for kind in list(self._round):
            strike = self._prepare(kind)
            if strike is not None:
                self._round.remove(kind)
                return strike
        return None

    def _prepare(self, kind: str) -> Coroutine[Any, Any, None] | None:
        if kind in ("kill-broker", "stop-postgres"):
            if self._stack_busy:
                return None
            self._stack_busy = True
            return self._kill_broker() if kind == "kill-broker" else self._stop_postgres()
        busy = {p.role for p in self.fleet.procs if p.held}
        free = [p for p in self.fleet.procs if p.role not in busy and p.alive()]
        if not free:
            return None
        proc = self.rng.choice(free)
        proc.held = True
        return self._kill_role(proc) if kind == "kill-role" else self._stop_role(proc)

    def _strike(self, kind: str, target: str) -> Fault:
        fault = Fault(kind, target, time.time())
        self.faults.append(fault)
        self.out(f"chaos: fault {len(self.faults)}: {kind} {target}")
        return fault

    def _healed(self, fault: Fault) -> None:
        fault.healed_at = time.time()
        self.out(f"chaos: fault {self.faults.index(fault) + 1} healed after "
                 f"{fault.healed_at - fault.at:.0f} s ({fault.kind} {fault.target})")

    async def _kill_role(self, proc: RoleProcess) -> None:
        try:
            fault = self._strike("kill-role", f"{proc.name} (pid {proc.pid})")
            proc.kill()
            await asyncio.sleep(self.rng.uniform(2, 6))
            proc.start()
        finally:
            proc.held = False
        self._healed(fault)

    async def _stop_role(self, proc: RoleProcess) -> None:
        pause = session_timeout() + self.rng.uniform(3, 10)
        try:
            fault = self._strike("stop-role", f"{proc.name} (pid {proc.pid}, {pause:.0f} s)")
            proc.signal(signal.SIGSTOP)
            await asyncio.sleep(pause)
            proc.signal(signal.SIGCONT)
        finally:
            proc.held = False
        self._healed(fault)

    async def _kill_broker(self) -> None:
        try:
            running = [n for n in range(1, self.stack.brokers + 1) if self.stack.broker_pid(n)]
            node = self.rng.choice(running)
            fault = self._strike("kill-broker", f"kafka-{node}")
            fault.target += f" (pid {self.stack.kill_broker(node)})"
            await asyncio.sleep(self.rng.uniform(3, 8))
            await self.stack.up()
        finally:
            self._stack_busy = False
        self._healed(fault)

    async def _stop_postgres(self) -> None:
        try:
            fault = self._strike("stop-postgres", "postgresql (20 s)")
            await self.stack.stop_postgres()
            await asyncio.sleep(20)
            await self.stack.up()
        finally:
            self._stack_busy = False
        self._healed(fault)
