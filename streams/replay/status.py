"""What a replay reports while it runs: its progress per partition, and the error of a replay
that cannot run as asked. Shared by the replay and its worker processes."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

Progress = Callable[["ReplayStatus"], None]


class ReplayError(ValueError):
    """A replay that cannot run as asked; the message says why."""


@dataclass
class ReplayStatus:
    pipeline_id: str
    partition: int
    start: int
    end: int
    position: int = 0
    records: int = 0  # raw records of the pipeline read
    rows: int = 0
    dead: int = 0
    started: float = field(default_factory=time.monotonic)
    done: bool = False
    resumed_from: int | None = None

    @property
    def rate(self) -> float:
        return self.records / max(time.monotonic() - self.started, 1e-9)

    def line(self) -> str:
        total = max(self.end - self.start, 1)
        done = self.position - self.start
        rate = (self.position - (self.resumed_from or self.start)) / max(
            time.monotonic() - self.started, 1e-9)
        eta = (self.end - self.position) / rate if rate > 0 else float("inf")
        return (f"replay {self.pipeline_id} p{self.partition} {done:,}/{total:,} "
                f"({100 * done / total:.0f}%) {rate:,.0f} rec/s, ETA "
                f"{'-' if eta == float('inf') else f'{eta:.0f}s'}; rows {self.rows:,}, "
                f"dead letters {self.dead:,}")

    def view(self) -> dict[str, Any]:
        return {"pipeline_id": self.pipeline_id, "raw_partition": self.partition,
                "from_offset": self.start, "to_offset": self.end, "position": self.position,
                "records": self.records, "rows": self.rows, "dead_letters": self.dead,
                "done": self.done}
