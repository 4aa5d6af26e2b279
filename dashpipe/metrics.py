"""Counters and latency summaries, rendered as Prometheus text. No dependency, no globals:
each process makes one `Metrics` and hands it to the roles."""

from __future__ import annotations

from collections import defaultdict

HELP = {
    "dashpipe_received_total": ("counter", "Webhook payloads written to Bronze"),
    "dashpipe_polled_total": ("counter", "Poll pages written to Bronze"),
    "dashpipe_failed_total": ("counter", "Failed polls and rejected webhooks"),
    "dashpipe_poll_seconds": ("summary", "Duration of a poll, fetch to Kafka ack"),
    "dashpipe_mapped_total": ("counter", "Rows this map process wrote to the transformed topic"),
    "dashpipe_filtered_total": ("counter", "Rows this map process dropped by the filter"),
    "dashpipe_map_dead_letters_total": ("counter", "Dead letters this map process wrote"),
    "dashpipe_map_skipped_total": ("counter", "Raw records of deleted pipelines, not mapped"),
    "dashpipe_map_repeats_total": ("counter", "Raw records not mapped: their dedup id was seen "
                                   "within the window (a sender's retry)"),
    "dashpipe_persisted_total": ("counter", "Rows this persist process stored"),
    "dashpipe_persist_retries_total": ("counter", "Persist batches retried (database away)"),
    "dashpipe_persist_assignments_total": ("counter", "Partition assignments of this persist "
                                           "process (a rebalance storm shows here)"),
    "dashpipe_persist_dead_letters_total": ("counter", "Rows the database refused"),
    "dashpipe_persist_unreadable_total": ("counter", "Transformed records persist could not "
                                          "read"),
    "dashpipe_delivered_total": ("counter", "Rows this deliver process delivered, per sink"),
    "dashpipe_delivery_seconds_total": ("counter", "Seconds spent in delivered requests"),
    "dashpipe_delivery_retries_total": ("counter", "Deliveries scheduled for a retry"),
    "dashpipe_delivery_dead_total": ("counter", "Deliveries that became dead letters"),
    "dashpipe_delivery_parked_total": ("counter", "Deliveries of a failing sink parked in the "
                                       "retry topic"),
    "dashpipe_dead_letters_total": ("counter", "Records in the dead-letter topic, by pipeline "
                                    "and stage (counted from the topic)"),
    "dashpipe_dead_letters_resolved_total": ("counter", "Dead letters resolved by a redrive, by "
                                             "pipeline and stage (counted from the topic)"),
}


Labels = tuple[tuple[str, str], ...]


def labels_key(**labels: str) -> Labels:
    return tuple(sorted(labels.items()))


class Metrics:
    def __init__(self) -> None:
        self._counters: dict[str, dict[Labels, float]] = defaultdict(dict)
        self._sums: dict[str, dict[Labels, list[float]]] = defaultdict(dict)

    def inc(self, name: str, amount: float = 1.0, **labels: str) -> None:
        self.add(name, labels_key(**labels), amount)

    def add(self, name: str, key: Labels, amount: float = 1.0) -> None:
        """`inc` with the labels already made a key (`labels_key`): for per-request counters."""
        series = self._counters[name]
        series[key] = series.get(key, 0.0) + amount

    def observe(self, name: str, seconds: float, **labels: str) -> None:
        key = tuple(sorted(labels.items()))
        sc = self._sums[name].setdefault(key, [0.0, 0.0])
        sc[0] += seconds
        sc[1] += 1

    def reset(self, name: str) -> None:
        """Forget every series of `name` (a view rebuilt from the log)."""
        self._counters.pop(name, None)
        self._sums.pop(name, None)

    def value(self, name: str, **labels: str) -> float:
        return self._counters[name].get(tuple(sorted(labels.items())), 0.0)

    def render(self) -> str:
        lines: list[str] = []
        for name in sorted(set(self._counters) | set(self._sums)):
            kind, text = HELP.get(name, ("untyped", name))
            lines += [f"# HELP {name} {text}", f"# TYPE {name} {kind}"]
            for key, value in sorted(self._counters.get(name, {}).items()):
                lines.append(f"{name}{_labels(key)} {value:g}")
            for key, (total, count) in sorted(self._sums.get(name, {}).items()):
                lines.append(f"{name}_sum{_labels(key)} {total:.6f}")
                lines.append(f"{name}_count{_labels(key)} {count:g}")
        return "\n".join(lines) + "\n"


def _labels(key: Labels) -> str:
    if not key:
        return ""
    inner = ",".join(f'{k}="{_escape(v)}"' for k, v in key)
    return "{" + inner + "}"


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
