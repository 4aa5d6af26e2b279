"""The metrics of one process: counters, gauges and histograms kept in plain dicts (a
webhook or a row adds to them in a dict lookup), exposed in Prometheus' text format through
`prometheus_client` together with its process, platform and GC collectors. No globals: each
process makes one `Metrics` (the `Runtime` does) and hands it to the roles.

One label scheme: a pipeline's series carry `pipeline_id` and `team_id` (the team is looked
up when the series is first exposed, and kept: a series never changes its labels), a sink's
also `sink` (its index), a role's `role`; `stage`, `code`, `reason`, `outcome`, `topic` and
`partition` say more where a family needs it. Counters only grow while the process lives
(Prometheus' `rate()` handles the restart); what is recounted from a topic is a gauge."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from bisect import bisect_left
from collections import defaultdict
from collections.abc import Awaitable, Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    GCCollector,
    Metric,
    PlatformCollector,
    ProcessCollector,
    generate_latest,
)

log = logging.getLogger(__name__)

CONTENT_TYPE = CONTENT_TYPE_LATEST
# seconds: a webhook's ack is milliseconds, a row's way to storage seconds, a backlog minutes
BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
           30.0, 60.0, 300.0)


@dataclass(frozen=True)
class Family:
    kind: str  # counter | gauge | histogram
    help: str


FAMILIES: dict[str, Family] = {
    # web and poll: what enters Bronze
    "dashpipe_received_total": Family("counter", "Webhook payloads written to Bronze"),
    "dashpipe_polled_total": Family("counter", "Poll pages written to Bronze"),
    "dashpipe_failed_total": Family("counter", "Failed polls and rejected webhooks, by stage "
                                    "and HTTP status code"),
    "dashpipe_poll_seconds": Family("histogram", "Duration of a poll, first fetch to Kafka ack"),
    "dashpipe_webhook_ack_seconds": Family("histogram", "Webhook request read to Kafka ack of "
                                           "its raw record (accepted webhooks)"),
    # map
    "dashpipe_mapped_total": Family("counter", "Rows this map process wrote to the "
                                    "transformed topic"),
    "dashpipe_filtered_total": Family("counter", "Rows this map process dropped by the filter"),
    "dashpipe_map_dead_letters_total": Family("counter", "Dead letters this map process wrote"),
    "dashpipe_map_skipped_total": Family("counter", "Raw records of deleted pipelines, not "
                                         "mapped"),
    "dashpipe_map_repeats_total": Family("counter", "Raw records not mapped: their dedup id "
                                         "was seen within the window (a sender's retry)"),
    # persist
    "dashpipe_persisted_total": Family("counter", "Rows this persist process stored"),
    "dashpipe_persist_retries_total": Family("counter", "Persist batches retried (database "
                                             "away)"),
    "dashpipe_persist_dead_letters_total": Family("counter", "Rows the database refused"),
    "dashpipe_persist_unreadable_total": Family("counter", "Transformed records persist could "
                                                "not read"),
    "dashpipe_raw_to_stored_seconds": Family("histogram", "Raw record's receipt to its rows "
                                             "committed in the database"),
    # deliver
    "dashpipe_delivered_total": Family("counter", "Rows this deliver process delivered"),
    "dashpipe_delivery_retries_total": Family("counter", "Deliveries scheduled for a retry"),
    "dashpipe_delivery_dead_total": Family("counter", "Deliveries that became dead letters"),
    "dashpipe_delivery_parked_total": Family("counter", "Deliveries of a failing sink parked "
                                             "in the retry topic"),
    "dashpipe_deliver_skipped_total": Family("counter", "Rows not delivered to a sink, by "
                                             "reason (disabled)"),
    "dashpipe_sink_attempt_seconds": Family("histogram", "Duration of one request to a sink, "
                                            "by outcome"),
    "dashpipe_raw_to_delivered_seconds": Family("histogram", "Raw record's receipt to its "
                                                "row's first successful delivery"),
    # every grouped role
    "dashpipe_assignments_total": Family("counter", "Partition assignments of this process's "
                                         "consumer group member (a rebalance storm shows)"),
    "dashpipe_consumer_lag": Family("gauge", "Records after this process's position in each "
                                    "partition it reads (highwater minus position)"),
    # the dead-letter topic, recounted by every web process: gauges (take max, not sum)
    "dashpipe_dead_letters": Family("gauge", "Dead letters in the dead-letter topic, resolved "
                                    "or not, by pipeline and stage"),
    "dashpipe_dead_letters_resolved": Family("gauge", "Dead letters resolved by a redrive, by "
                                             "pipeline and stage"),
    "dashpipe_dead_letters_unresolved": Family("gauge", "Dead letters not resolved yet, by "
                                               "pipeline and stage"),
    "dashpipe_info": Family("gauge", "Always 1: the dashpipe version and the roles of this "
                            "process"),
}


Labels = tuple[tuple[str, str], ...]
Sampler = Callable[[], Awaitable[None]]


def labels_key(**labels: str) -> Labels:
    return tuple(sorted(labels.items()))


class _Histogram:
    __slots__ = ("counts", "total")

    def __init__(self) -> None:
        self.counts = [0] * (len(BUCKETS) + 1)  # the last one: above every bound
        self.total = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect_left(BUCKETS, value)] += 1
        self.total += value

    def observe_many(self, values: Iterable[float]) -> None:
        counts, total = self.counts, 0.0
        for value in values:
            counts[bisect_left(BUCKETS, value)] += 1
            total += value
        self.total += total


class Metrics:
    def __init__(self) -> None:
        # counters and gauges (`FAMILIES` says which a name is)
        self._values: dict[str, dict[Labels, float]] = defaultdict(dict)
        self._histograms: dict[str, dict[Labels, _Histogram]] = defaultdict(dict)
        self._samplers: list[Sampler] = []
        self._teams: dict[str, str] = {}
        self._registry: CollectorRegistry | None = None
        # the team of a pipeline id, while the pipeline exists (the runtime sets it)
        self.team_of: Callable[[str], str | None] = lambda pid: None

    # counters and gauges
    def inc(self, name: str, amount: float = 1.0, **labels: str) -> None:
        self.add(name, labels_key(**labels), amount)

    def add(self, name: str, key: Labels, amount: float = 1.0) -> None:
        """`inc` with the labels already made a key (`labels_key`): for per-request counters."""
        series = self._values[name]
        series[key] = series.get(key, 0.0) + amount

    def value(self, name: str, **labels: str) -> float:
        return self._values.get(name, {}).get(labels_key(**labels), 0.0)

    def total(self, name: str) -> float:
        """The sum over every series of `name`."""
        return sum(self._values.get(name, {}).values())

    def set(self, name: str, value: float, **labels: str) -> None:
        self._values[name][labels_key(**labels)] = value

    def reset(self, name: str) -> None:
        """Forget every series of `name` (a gauge about to be rebuilt from the log)."""
        self._values.pop(name, None)
        self._histograms.pop(name, None)

    def replace(self, name: str, series: dict[Labels, float], **match: str) -> None:
        """Make `series` the gauge's series among those whose labels include `match` (a view
        rebuilt from the log, or the partitions a consumer holds now)."""
        wanted = set(match.items())
        kept = {k: v for k, v in self._values.get(name, {}).items() if not wanted <= set(k)}
        self._values[name] = kept | series

    # histograms
    def observe(self, name: str, seconds: float, **labels: str) -> None:
        self.observe_key(name, labels_key(**labels), seconds)

    def observe_key(self, name: str, key: Labels, seconds: float) -> None:
        self._series(name, key).observe(seconds)

    def observe_many(self, name: str, key: Labels, values: Iterable[float]) -> None:
        self._series(name, key).observe_many(values)

    def _series(self, name: str, key: Labels) -> _Histogram:
        series = self._histograms[name]
        hist = series.get(key)
        if hist is None:
            hist = series[key] = _Histogram()
        return hist

    # exposition
    def sampler(self, sample: Sampler) -> None:
        """`sample` runs before every exposition (a consumer's lag is read when scraped)."""
        self._samplers.append(sample)

    def track_lag(self, role: str, consumer: Any) -> None:
        """Expose the lag of `consumer` (a started aiokafka consumer) per partition it holds,
        as `dashpipe_consumer_lag{role, topic, partition}`."""

        async def sample() -> None:
            series: dict[Labels, float] = {}
            for tp in consumer.assignment():
                high = consumer.highwater(tp)
                if high is None:  # nothing fetched from it yet
                    continue
                with contextlib.suppress(Exception):  # not assigned any more, or no position
                    position = await asyncio.wait_for(consumer.position(tp), 0.5)
                    series[labels_key(role=role, topic=tp.topic, partition=str(tp.partition))
                           ] = max(0, high - position)
            self.replace("dashpipe_consumer_lag", series, role=role)

        self.sampler(sample)

    async def exposition(self) -> bytes:
        for sample in self._samplers:
            try:
                await sample()
            except Exception as exc:  # a sampler failing never fails the scrape
                log.debug("metrics sampler failed: %s", type(exc).__name__)
        return self.render().encode()

    def render(self) -> str:
        """The exposition without running the samplers: our families, then the process's
        (CPU, memory, file descriptors, garbage collections, the Python version)."""
        if self._registry is None:
            registry = self._registry = CollectorRegistry(auto_describe=False)
            registry.register(self)
            ProcessCollector(registry=registry)
            PlatformCollector(registry=registry)
            GCCollector(registry=registry)
        return generate_latest(self._registry).decode()

    def collect(self) -> Iterator[Metric]:
        """The families, for `prometheus_client` (a custom collector)."""
        for name in sorted(set(self._values) | set(self._histograms)):
            family = FAMILIES.get(name, Family("untyped", name))
            if family.kind == "histogram":
                yield self._histogram(name, family)
                continue
            base = name.removesuffix("_total") if family.kind == "counter" else name
            metric = Metric(base, family.help, family.kind)
            for key, value in sorted(self._values.get(name, {}).items()):
                metric.add_sample(name, self._labels(key), value)
            yield metric

    def _histogram(self, name: str, family: Family) -> Metric:
        metric = Metric(name, family.help, "histogram")
        for key, hist in sorted(self._histograms[name].items()):
            labels = self._labels(key)
            running = 0
            for bound, count in zip((*BUCKETS, float("inf")), hist.counts, strict=True):
                running += count
                le = "+Inf" if bound == float("inf") else repr(bound)
                metric.add_sample(f"{name}_bucket", {**labels, "le": le}, running)
            metric.add_sample(f"{name}_count", labels, running)
            metric.add_sample(f"{name}_sum", labels, hist.total)
        return metric

    def _labels(self, key: Labels) -> dict[str, str]:
        labels = dict(key)
        pid = labels.get("pipeline_id")
        if pid is not None and "team_id" not in labels:
            team = self._teams.get(pid)
            if team is None:
                team = self.team_of(pid)
                if team is not None:  # kept: the series never changes its labels
                    self._teams[pid] = team
            labels["team_id"] = team or ""
        return labels

