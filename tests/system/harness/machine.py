"""How busy the machine is: the CPU used since the last sample by the whole machine and by
groups of processes (the harness, the web processes, the other roles, the brokers), and the
load average. A run on a noisy 2-core machine reads its latencies next to these."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field

TICK = os.sysconf("SC_CLK_TCK")


def process_cpu(pid: int) -> float | None:
    """CPU seconds (user + system) of a live process; None when it is gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / TICK  # utime, stime


def machine_cpu() -> tuple[float, float]:
    """(busy, total) CPU seconds of the machine since boot."""
    with open("/proc/stat") as f:
        values = [int(v) for v in f.readline().split()[1:]]
    idle = values[3] + (values[4] if len(values) > 4 else 0)
    return (sum(values) - idle) / TICK, sum(values) / TICK


@dataclass
class CpuSampler:
    groups: Callable[[], dict[str, list[int]]]  # group name -> its pids right now
    _last: dict[str, dict[int, float]] = field(default_factory=dict)
    _machine: tuple[float, float] = field(default_factory=machine_cpu)
    _at: float = field(default_factory=time.monotonic)

    def sample(self) -> str:
        now = time.monotonic()
        wall = max(1e-3, now - self._at)
        busy, total = machine_cpu()
        cores = os.cpu_count() or 1
        machine = (busy - self._machine[0]) / max(1e-3, total - self._machine[1]) * cores
        parts = [f"machine {machine:.0%} of {cores:.0%}"]
        for name, pids in self.groups().items():
            seen = {pid: cpu for pid in pids if (cpu := process_cpu(pid)) is not None}
            before = self._last.get(name, {})  # a process gone since is not counted
            used = sum(cpu - before.get(pid, 0.0) for pid, cpu in seen.items())
            self._last[name] = seen
            parts.append(f"{name} {used / wall:.0%}")
        self._machine, self._at = (busy, total), now
        load = os.getloadavg()[0]
        return f"cpu: {', '.join(parts)}, load {load:.1f}"
