"""The nemesis: every 5-20 s (seeded), one fault, healed before the next:

- `kill-role`: `kill -9` of a random role process, restarted after a pause of a few seconds;
- `stop-role`: `SIGSTOP` of a random role process for longer than the Kafka consumer session
  timeout (its group evicts it), then `SIGCONT` (it comes back as a zombie member);
- `kill-broker`: `kill -9` of a random Kafka broker, restarted with `dashpipe up`;
- `stop-postgres`: PostgreSQL stopped (`pg_ctl stop -m fast`) for 20 s, started with `dashpipe up`.
"""

from __future__ import annotations

import asyncio
import logging
import random
import signal
import time
from dataclasses import dataclass, field

from dashpipe.settings import KafkaSettings
from tests.system.harness.roles import Fleet
from tests.system.harness.stack import Stack

log = logging.getLogger(__name__)

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
    kinds: tuple[str, ...] = KINDS
    faults: list[Fault] = field(default_factory=list)
    _stopping: asyncio.Event = field(default_factory=asyncio.Event)

    def stop(self) -> None:
        """Stop after the current fault has healed."""
        self._stopping.set()

    async def run(self) -> None:
        while not self._stopping.is_set():
            try:
                await asyncio.wait_for(self._stopping.wait(), self.rng.uniform(5, 20))
                return
            except TimeoutError:
                pass
            kind = self.rng.choice(self.kinds)
            fault = await getattr(self, "_" + kind.replace("-", "_"))()
            fault.healed_at = time.time()
            log.info("nemesis: %s %s healed after %.1f s", fault.kind, fault.target,
                     fault.healed_at - fault.at)

    def _strike(self, kind: str, target: str) -> Fault:
        fault = Fault(kind, target, time.time())
        self.faults.append(fault)
        log.info("nemesis: %s %s", kind, target)
        return fault

    async def _kill_role(self) -> Fault:
        proc = self.rng.choice(self.fleet.procs)
        proc.held = True
        try:
            fault = self._strike("kill-role", f"{proc.name} (pid {proc.pid})")
            proc.kill()
            await asyncio.sleep(self.rng.uniform(2, 6))
            proc.start()
        finally:
            proc.held = False
        return fault

    async def _stop_role(self) -> Fault:
        proc = self.rng.choice(self.fleet.procs)
        pause = session_timeout() + self.rng.uniform(3, 10)
        proc.held = True
        try:
            fault = self._strike("stop-role", f"{proc.name} (pid {proc.pid}, {pause:.0f} s)")
            proc.signal(signal.SIGSTOP)
            await asyncio.sleep(pause)
            proc.signal(signal.SIGCONT)
        finally:
            proc.held = False
        return fault

    async def _kill_broker(self) -> Fault:
        running = [n for n in range(1, self.stack.brokers + 1) if self.stack.broker_pid(n)]
        node = self.rng.choice(running)
        fault = self._strike("kill-broker", f"kafka-{node} (pid {self.stack.kill_broker(node)})")
        await asyncio.sleep(self.rng.uniform(3, 8))
        await self.stack.up()
        return fault

    async def _stop_postgres(self) -> Fault:
        fault = self._strike("stop-postgres", "postgresql (20 s)")
        await self.stack.stop_postgres()
        await asyncio.sleep(20)
        await self.stack.up()
        return fault
