"""The verdict of a run: the counts of the final line, the recovery time per fault kind, and,
for every invariant that failed, the evidence (which ids, where they are in Bronze, the
transformed topic and the table, which process acknowledged them, which faults were near)."""

from __future__ import annotations

import math
import statistics
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime

from tests.system.harness.api import ItemFeed
from tests.system.harness.nemesis import Fault
from tests.system.harness.observe import Bronze, Rows
from tests.system.harness.roles import Exit
from tests.system.harness.sender import Post, Sender
from tests.system.harness.sink import SinkReceiver

WINDOW = 5  # seconds of the moving rate
BACK_AT = 0.8  # "back at its rate": the moving rate at >= 80 % of the offered rate
DIP = 15  # a dip that starts later than this after a fault is not that fault's
SUSTAIN = 10  # back means: back for this long


@dataclass
class Verdict:
    acked: int
    stored: int
    missing: list[str]
    duplicate_rows: int
    delivered: int
    duplicate_deliveries: int
    polled: int
    polled_stored: int
    polled_duplicates: list[str]
    undelivered: list[str]
    faults: int
    latency_p99: float
    latency_max: float
    lines: list[str] = field(default_factory=list)  # the report before the final line
    stuck: str = ""  # what was still moving or behind when the quiesce deadline passed

    def final_line(self) -> str:
        return (f"chaos: acked {self.acked}, stored {self.stored}, missing {len(self.missing)}, "
                f"duplicate rows {self.duplicate_rows}, delivered ids {self.delivered} of "
                f"{self.acked}, duplicate deliveries {self.duplicate_deliveries}, polled items "
                f"{self.polled} stored {self.polled_stored}, faults {self.faults}, lag p99 "
                f"{self.latency_p99:.1f} s max {self.latency_max:.1f} s")

    def failures(self) -> list[str]:
        out = [self.stuck] if self.stuck else []
        if self.missing:
            out.append(f"{len(self.missing)} acked webhooks not stored")
        if self.duplicate_rows:
            out.append(f"{self.duplicate_rows} duplicate rows")
        if self.undelivered:
            out.append(f"{len(self.undelivered)} acked webhooks never delivered")
        if self.polled_stored != self.polled or self.polled_duplicates:
            out.append(f"polled items: {self.polled_stored} of {self.polled} stored, "
                       f"{len(self.polled_duplicates)} stored more than once")
        return out


def percentile(values: list[float], q: float) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, math.ceil(q * len(ordered)) - 1)]


def clock(t: float) -> str:
    return datetime.fromtimestamp(t, UTC).strftime("%H:%M:%S.%f")[:-3]


def recovery(series: Counter[int], offered: float, start: float, end: float) -> float | None:
    """Seconds from `start` until the moving rate of `series` (events per whole second) is
    back at BACK_AT * `offered` and stays there for SUSTAIN seconds: 0 when it did not dip
    within DIP seconds of `start`; None when it was not back before `end`."""
    def ok(t: int) -> bool:
        return sum(series[s] for s in range(t - WINDOW + 1, t + 1)) / WINDOW >= BACK_AT * offered

    t0, t1 = int(start), int(end)
    dipped = next((t for t in range(t0, min(t1, t0 + DIP)) if not ok(t)), None)
    if dipped is None:
        return 0.0
    for t in range(dipped, t1):
        if all(ok(u) for u in range(t, min(t1, t + SUSTAIN))):
            return max(0.0, t - start)
    return None


def recovery_lines(faults: list[Fault], stored: Counter[int], acked: Counter[int],
                   offered: float, load_end: float) -> list[str]:
    by_kind: dict[str, list[Fault]] = {}
    for f in faults:
        by_kind.setdefault(f.kind, []).append(f)
    lines = [f"recovery, per fault kind: seconds from the fault until the {WINDOW} s moving "
             f"rate is back at >= {BACK_AT:.0%} of the offered {offered:.1f}/s for {SUSTAIN} s "
             f"(0: no dip within {DIP} s; '>N': not back before the load ended; 'late': struck "
             "too close to the end to tell; faults overlap, so a dip can be another's too)"]

    def show(series: Counter[int], kind_faults: list[Fault]) -> str:
        done: list[float] = []
        text = []
        for f in kind_faults:
            if load_end - f.at < DIP + SUSTAIN:
                text.append("late")
                continue
            r = recovery(series, offered, f.at, load_end)
            text.append(f">{load_end - f.at:.0f}" if r is None else f"{r:.0f}")
            if r is not None:
                done.append(r)
        med = f"median {statistics.median(done):.0f} s, max {max(done):.0f} s; " if done else ""
        return f"{med}each: {' '.join(text)}"

    for kind, kind_faults in sorted(by_kind.items()):
        heal = [f.healed_at - f.at for f in kind_faults if f.healed_at is not None]
        took = f"  back up after {statistics.mean(heal):.0f} s on average" if heal else ""
        lines.append(f"  {kind:<14} x{len(kind_faults)}{took}")
        lines.append(f"      stored rows/s: {show(stored, kind_faults)}")
        lines.append(f"      acked/s:       {show(acked, kind_faults)}")
    return lines


def per_second(times: list[float]) -> Counter[int]:
    return Counter(int(t) for t in times)


def timeline(sender: Sender, stored_times: list[float], sink: SinkReceiver,
             faults: list[Fault]) -> list[str]:
    """Per bucket from the start of the load: ids posted, acked, stored, delivered, extra
    deliveries, and the faults that struck in it (about 60 buckets, at least 10 s each)."""
    t0 = sender.started_at
    step = max(10, int(sender.load_seconds / 60) // 10 * 10)

    def count(times: list[float]) -> Counter[int]:
        return Counter(int((t - t0) // step) for t in times)

    cols = [count([p.started for p in sender.posts.values()]),
            count([p.acked_at for p in sender.posts.values() if p.acked_at is not None]),
            count(stored_times), count(list(sink.first_at.values())), count(sink.repeated_at)]
    last = max((max(c, default=0) for c in cols), default=0)
    lines = [f"timeline (per {step} s from the start of the load): posted acked stored "
             "delivered extra-deliveries, and the faults that struck"]
    for b in range(last + 1):
        struck = "; ".join(
            f"{f.kind} {f.target} at +{f.at - t0:.0f}s"
            + (f", back after {f.healed_at - f.at:.0f} s" if f.healed_at else "")
            for f in faults if int((f.at - t0) // step) == b)
        lines.append(f"  +{b * step:>5}s " + " ".join(f"{c[b]:>5}" for c in cols)
                     + (f"  <- {struck}" if struck else ""))
    after: Counter[str] = Counter()
    for t in sink.repeated_at:
        before = [f for f in faults if f.at <= t]
        after[f"{before[-1].kind} {before[-1].target}" if before else "no fault yet"] += 1
    if after:
        lines.append("extra deliveries, by the fault that struck last before them: "
                     + "; ".join(f"{k}: {n}" for k, n in after.most_common()))
    return lines


def near(faults: list[Fault], t: float, before: float = 60.0, after: float = 10.0) -> str:
    """The faults that struck shortly before (or just after) `t`, for the evidence."""
    hits = [f"{f.kind} {f.target} at {clock(f.at)} ({f.at - t:+.0f} s)" for f in faults
            if t - before <= f.at <= t + after]
    return "; ".join(hits) or "no fault near"


def post_story(post: Post) -> str:
    tries = ", ".join(f"{clock(a.at)} {a.backend} {a.status} {a.outcome}"
                      for a in post.attempts[-6:])
    return f"{len(post.attempts)} attempt(s): {tries}"


def verdict(sender: Sender, rows: Rows, polled_rows: Rows, sink: SinkReceiver,
            feed: ItemFeed, faults: list[Fault], exits: list[Exit], bronze: Bronze | None,
            load_end: float) -> Verdict:
    acked = sender.acked_ids()
    stored = acked & rows.count.keys()
    missing = sorted(acked - rows.count.keys())
    delivered = acked & sink.delivered_ids()
    undelivered = sorted(acked - delivered)
    served = feed.served_ids()
    polled_dups = sorted(i for i, n in polled_rows.count.items() if n > 1)
    latencies = [max(0.0, rows.first_stored[i] - t) for i in stored
                 if (t := sender.posts[i].acked_at) is not None]
    v = Verdict(len(acked), len(stored), missing, rows.extra() + polled_rows.extra(),
                len(delivered), sink.extra_deliveries(), len(served),
                len(served & polled_rows.count.keys()), polled_dups, undelivered, len(faults),
                percentile(latencies, 0.99), max(latencies, default=0.0))
    acked_times = [p.acked_at for p in sender.posts.values() if p.acked_at is not None]
    stored_times = [rows.first_stored[i] for i in stored]
    v.lines += recovery_lines(faults, per_second(stored_times), per_second(acked_times),
                              sender.offered(), load_end)
    v.lines += timeline(sender, stored_times, sink, faults)
    v.lines += _counts(sender, rows, sink, feed, polled_rows, exits)
    v.lines += _evidence(v, sender, rows, polled_rows, sink, feed, faults, bronze)
    return v


def _counts(sender: Sender, rows: Rows, sink: SinkReceiver, feed: ItemFeed,
            polled_rows: Rows, exits: list[Exit]) -> list[str]:
    outcomes = Counter(p.outcome or "unacked" for p in sender.repeats)
    firsts = Counter(p.outcome or "unacked" for p in sender.posts.values())
    retried = sum(1 for p in sender.posts.values() if len(p.attempts) > 1)
    unacked_stored = len(rows.count.keys() - sender.acked_ids())
    lines = [f"webhooks: {len(sender.posts)} ids posted ({sender.offered():.1f}/s of the "
             f"{sender.rate:g}/s asked), first posts answered {dict(firsts)}, "
             f"{retried} needed retries; {len(sender.repeats)} deliberate repeats answered "
             f"{dict(outcomes)}; {sender.skipped} load ticks skipped (too many pending)",
             f"rows: {rows.total()} webhook rows ({unacked_stored} of ids never acked), "
             f"{polled_rows.total()} polled rows; sink: {sink.total()} deliveries, "
             f"{len(sink.deliveries)} webhook-ids, {sink.rejected} bad signatures",
             f"polled API: {feed.generated} items made, {len(feed.requests)} polls answered",
             f"role processes that exited on their own: {len(exits)}"]
    for e in exits[:10]:
        last = [line for line in e.tail.splitlines() if line.strip()][-3:]
        lines.append(f"  {clock(e.at)} {e.name} code {e.code}: " + " | ".join(last))
    return lines


def _cause(sender: Sender, msg_id: str) -> str:
    """Why a webhook id was written to Bronze more than once, from what the sender saw."""
    first = sender.posts.get(msg_id)
    if first is None:
        return "never posted by the sender"
    again = [r for r in sender.repeats if r.msg_id == msg_id]
    if any(r.outcome == "received" for r in again):
        return "deliberate repeats answered 'received' (not recognised as a repeat)"
    if len(first.attempts) > 1:
        return "retries after an answer was lost (the first attempt was written)"
    if any(len(r.attempts) > 1 for r in again):
        return "repeats retried after a lost answer"
    return "answered 'received' once, written twice downstream"


def _poll_cause(feed: ItemFeed, item_id: str) -> str:
    polls = feed.repeats(int(item_id.rsplit("-", 1)[1]))
    if len(polls) > 1:
        return "polled items served by more than one poll (a cursor used twice)"
    return "polled items served once, stored twice downstream"


def _evidence(v: Verdict, sender: Sender, rows: Rows, polled_rows: Rows, sink: SinkReceiver,
              feed: ItemFeed, faults: list[Fault], bronze: Bronze | None) -> list[str]:
    def where(i: str) -> str:
        if bronze is None:
            return ""
        return (f"bronze {bronze.raw.get(i, [])}, transformed {bronze.transformed.get(i, [])}, "
                f"rows {rows.lineage.get(i) or polled_rows.lineage.get(i) or []}")

    lines: list[str] = []
    causes = Counter(_cause(sender, i) for i, n in rows.count.items() if n > 1)
    causes.update(_poll_cause(feed, i) for i in v.polled_duplicates)
    if causes:
        lines.append("duplicate rows by cause: " + "; ".join(
            f"{n} {cause}" for cause, n in causes.most_common()))
    for i in v.missing[:10]:
        post = sender.posts[i]
        t = post.acked_at or post.started
        lines += [f"MISSING {i}: acked {clock(t)} {post.outcome}; {where(i)}",
                  f"    {post_story(post)}", f"    faults: {near(faults, t)}"]
    dups = sorted((i for i, n in rows.count.items() if n > 1), key=lambda i: i)
    for i in dups[:10]:
        first = sender.posts.get(i)
        if first is None:
            continue
        post = first
        again = [r for r in sender.repeats if r.msg_id == i]
        received = post.received_by() + [b for r in again for b in r.received_by()]
        lines += [f"DUPLICATE ROW {i} x{rows.count[i]}: answered 'received' by {received}; "
                  f"{where(i)}", f"    first post: {post_story(post)}"]
        lines += [f"    repeat: {post_story(r)}" for r in again]
        lines.append(f"    faults: {near(faults, post.acked_at or post.started)}")
    if len(dups) > 10:
        lines.append(f"... {len(dups) - 10} more duplicate webhook rows")
    for i in v.polled_duplicates[:10]:
        seq = int(i.rsplit("-", 1)[1])
        polls = feed.repeats(seq)
        lines.append(f"DUPLICATE POLLED ROW {i} x{polled_rows.count[i]}: served by "
                     + "; ".join(f"{clock(r.at)} after={r.after} items {r.first}-{r.last} "
                                 f"to {r.peer}" for r in polls) + f"; {where(i)}")
        lines.append(f"    faults: {near(faults, polls[0].at if polls else 0.0)}")
    unstored = sorted(feed.served_ids() - polled_rows.count.keys())
    for i in unstored[:10]:
        lines.append(f"POLLED NOT STORED {i}: {where(i)}")
    for i in v.undelivered[:10]:
        post = sender.posts[i]
        lines.append(f"UNDELIVERED {i}: acked {clock(post.acked_at or 0)}; {where(i)}; "
                     f"faults: {near(faults, post.acked_at or post.started)}")
    several = sink.ids_under_several_webhook_ids()
    if several:
        sample = list(several.items())[:3]
        lines.append(f"{len(several)} ids were delivered under more than one webhook-id "
                     f"(stored twice upstream), e.g. {sample}")
    return lines
