"""Live rows for dashboards (role `web`): one tail of the transformed topic per web process,
fanned out to SSE and WebSocket clients, with a recent-rows cache per pipeline.

Positions: the hub reads every partition of the transformed topic in one consumer and keeps a
position vector (per partition, the next offset to read). A row's event id is the vector right
after it, written `o0.o1.o2...`. A client that comes back with that id needs exactly the rows of
its pipeline at or after those offsets: the hub answers them from its cache when the cache still
holds everything past the id, else from Kafka (a short-lived reader from the id up to the hub's
position at the moment the client subscribed); live rows from that moment on are queued
meanwhile. So a resume has no gap and no duplicate.

Slow clients: each has a bounded queue; when it is full the client is disconnected (it can
resume with its last id), and nobody else waits for it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from aiohttp import WSMsgType, web

from dashpipe import kafka
from dashpipe.runtime import Runtime
from schemas.headers import Header, header

log = logging.getLogger(__name__)

Position = tuple[int, ...]
# a row: its partition and offset, the reader's position right after it, its JSON
Event = tuple[int, int, Position, bytes]
RECENT_ROWS = 500  # per pipeline
WARM_ROWS = 2000  # per partition, read at start to fill the cache
QUEUE_ROWS = 1000
HUB_CHUNK = 250  # rows the hub hands out before letting the clients run
KEEP_ALIVE_SECONDS = 15
CATCH_UP_LIMIT = 100_000  # rows read from Kafka for one resume, at most


class BadPosition(ValueError):
    pass


def encode(pos: Position) -> str:
    return ".".join(map(str, pos))


def decode(text: str, partitions: int) -> Position:
    try:
        pos = tuple(int(x) for x in text.split("."))
    except ValueError:
        raise BadPosition(f"not a position: {text[:40]!r}") from None
    if len(pos) != partitions or any(o < 0 for o in pos):
        raise BadPosition(f"a position has {partitions} non-negative offsets")
    return pos


class Cursor:
    """What one client has been sent, as a position: each row it gets moves it, and a row it
    already has (from a resume across processes) is skipped."""

    def __init__(self, start: Position) -> None:
        self.pos = list(start)

    def advance(self, event: Event) -> str | None:
        """The id of `event` for this client, or None when the client has the row already."""
        partition, offset, after, _ = event
        pos = self.pos
        if offset < pos[partition]:
            return None
        for i, o in enumerate(after):
            if o > pos[i]:
                pos[i] = o
        pos[partition] = offset + 1
        return ".".join(map(str, pos))


def with_id(event_id: str, row: bytes) -> bytes:
    """The row JSON with its position as `id` (the rows are JSON objects)."""
    return b'{"id":"%s",%s' % (event_id.encode(), row[1:])


@dataclass(eq=False)
class Subscriber:
    queue: asyncio.Queue[Event | None] = field(
        default_factory=lambda: asyncio.Queue(QUEUE_ROWS))
    dropped: bool = False

    def offer(self, event: Event) -> None:
        if self.dropped:
            return
        try:
            self.queue.put_nowait(event)
        except asyncio.QueueFull:  # too slow: disconnect it, never slow the others
            self.dropped = True
            with contextlib.suppress(asyncio.QueueEmpty):
                self.queue.get_nowait()
            self.queue.put_nowait(None)


@dataclass
class Recent:
    rows: deque[Event] = field(default_factory=lambda: deque(maxlen=RECENT_ROWS))
    evicted: list[int] = field(default_factory=list)  # per partition: offsets below are gone


class Hub:
    def __init__(self, rt: Runtime) -> None:
        self.rt = rt
        self.position: Position = ()
        self.start: Position = ()
        self.recent: dict[str, Recent] = {}
        self.subscribers: dict[str, set[Subscriber]] = {}
        self.ready = asyncio.Event()

    async def run(self) -> None:
        """Tail the topic; the last `WARM_ROWS` of each partition first fill the cache, and
        `ready` is set once they are read, so a restarted web process answers `/recent`."""
        consumer = kafka.consumer(self.rt.bootstrap, self.rt.settings.kafka, group_id=None)
        async with kafka.started(consumer):
            tps = await kafka.partitions(consumer, self.rt.names.transformed)
            consumer.assign(tps)
            self.rt.metrics.track_lag("web", consumer)
            ends = await consumer.end_offsets(tps)
            begins = await consumer.beginning_offsets(tps)
            warm = {tp: max(begins[tp], ends[tp] - WARM_ROWS) for tp in tps}
            for tp in tps:
                consumer.seek(tp, warm[tp])
            self.start = self.position = tuple(warm[tp] for tp in tps)
            while True:
                if not self.ready.is_set():
                    read = [await consumer.position(tp) for tp in tps]
                    if all(o >= ends[tp] for o, tp in zip(read, tps, strict=True)):
                        self.ready.set()
                batch = await consumer.getmany(timeout_ms=200 if not self.ready.is_set()
                                               else 1000, max_records=2000)
                handed = 0
                for _, records in sorted(batch.items(), key=lambda item: item[0].partition):
                    for record in records:
                        self._apply(record.partition, record.offset, record.headers,
                                    record.value)
                        handed += 1
                        if handed % HUB_CHUNK == 0:
                            await asyncio.sleep(0)  # clients drain before the next chunk

    def _apply(self, partition: int, offset: int, headers: list[tuple[str, bytes]],
               value: bytes | None) -> None:
        pos = list(self.position)
        pos[partition] = offset + 1
        self.position = tuple(pos)
        pid = header(headers, Header.PIPELINE_ID)
        if pid is None or value is None:
            return
        event = (partition, offset, self.position, value)
        recent = self.recent.get(pid)
        if recent is None:
            recent = self.recent[pid] = Recent(evicted=list(self.start))
        if len(recent.rows) == recent.rows.maxlen:
            old_partition, old_offset, _, _ = recent.rows[0]
            recent.evicted[old_partition] = max(recent.evicted[old_partition], old_offset + 1)
        recent.rows.append(event)
        for sub in self.subscribers.get(pid, ()):
            sub.offer(event)

    def latest(self, pid: str, limit: int) -> list[Event]:
        recent = self.recent.get(pid)
        return list(recent.rows)[-limit:] if recent else []

    @contextlib.asynccontextmanager
    async def subscribe(self, pid: str, since: Position | None
                        ) -> AsyncIterator[tuple[list[Event] | None, Position, Subscriber]]:
        """Live rows of `pid` from now on (the subscriber's queue), the position now, and, when
        `since` is given and the cache covers it, the rows missed since then (else None: the
        caller reads them from Kafka up to the position now)."""
        await self.ready.wait()
        sub = Subscriber()
        self.subscribers.setdefault(pid, set()).add(sub)  # atomically with `now`
        now = self.position
        missed: list[Event] | None = None
        if since is not None:
            recent = self.recent.get(pid) or Recent(evicted=list(self.start))
            if all(s >= e for s, e in zip(since, recent.evicted, strict=True)):
                missed = [event for event in recent.rows if event[1] >= since[event[0]]]
        try:
            yield missed, now, sub
        finally:
            self.subscribers[pid].discard(sub)

    async def read_missed(self, pid: str, since: Position, until: Position
                          ) -> AsyncIterator[Event]:
        """Rows of `pid` from `since` up to `until` (exclusive), from Kafka, with positions as
        the hub gives them (the partitions are merged in offset order per partition)."""
        names = self.rt.names
        consumer = kafka.consumer(self.rt.bootstrap, self.rt.settings.kafka, group_id=None)
        async with kafka.started(consumer):
            tps = await kafka.partitions(consumer, names.transformed)
            todo = [tp for tp in tps if since[tp.partition] < until[tp.partition]]
            if not todo:
                return
            consumer.assign(todo)
            for tp in todo:
                consumer.seek(tp, since[tp.partition])
            pos = list(since)
            read = 0
            while any(pos[tp.partition] < until[tp.partition] for tp in todo):
                batch = await consumer.getmany(timeout_ms=1000)
                for tp, records in sorted(batch.items(), key=lambda item: item[0].partition):
                    for record in records:
                        if record.offset >= until[tp.partition]:
                            consumer.pause(tp)
                            break
                        pos[tp.partition] = record.offset + 1
                        read += 1
                        if read > CATCH_UP_LIMIT:
                            raise BadPosition("too far behind to resume; reconnect without "
                                              "an id and read /recent")
                        if header(record.headers, Header.PIPELINE_ID) == pid and \
                                record.value is not None:
                            yield tp.partition, record.offset, tuple(pos), record.value


async def events(request: web.Request, hub: Hub, pid: str) -> web.StreamResponse:
    """`GET /api/pipelines/{id}/events`: Server-Sent Events, resumable by Last-Event-ID."""
    since = _since(request, request.headers.get("Last-Event-ID"), hub)
    response = web.StreamResponse(headers={"Content-Type": "text/event-stream",
                                           "Cache-Control": "no-store",
                                           "X-Accel-Buffering": "no"})
    await response.prepare(request)
    try:
        await _stream_events(response, hub, pid, since)
    except ConnectionResetError:  # the browser closed the page: the usual end of a stream
        log.info("events of %s: the client went away", pid, extra={"pipeline_id": pid})
    return response


async def _stream_events(response: web.StreamResponse, hub: Hub, pid: str,
                         since: Position | None) -> None:
    async with hub.subscribe(pid, since) as (missed, now, sub):
        cursor = Cursor(since or now)
        await response.write(b"event: ready\nid: %s\ndata: {}\n\n"
                             % encode(since or now).encode())
        async for event in _backlog(hub, pid, since, missed, now):
            await _send_sse(response, cursor, event)
        while True:
            if sub.queue.empty():
                try:
                    async with asyncio.timeout(KEEP_ALIVE_SECONDS):
                        item = await sub.queue.get()
                except TimeoutError:
                    await response.write(b": keep-alive\n\n")
                    continue
            else:
                item = sub.queue.get_nowait()
            chunks = []  # everything queued goes out in one write
            while item is not None:
                event_id = cursor.advance(item)
                if event_id is not None:
                    chunks.append(b"event: row\nid: %s\ndata: %s\n\n"
                                  % (event_id.encode(), item[3]))
                if sub.queue.empty():
                    break
                item = sub.queue.get_nowait()
            if chunks:
                await response.write(b"".join(chunks))
            if item is None:
                await response.write(b"event: overflow\ndata: {\"error\": \"too slow: "
                                     b"reconnect with your last event id\"}\n\n")
                break


async def websocket(request: web.Request, hub: Hub, pid: str) -> web.StreamResponse:
    """`GET /api/pipelines/{id}/ws`: the same rows as JSON messages `{"id": ..., ...row}`;
    resume with `?resume=<id>`."""
    since = _since(request, request.query.get("resume"), hub)
    ws = web.WebSocketResponse(heartbeat=15)
    await ws.prepare(request)
    try:
        await _stream_ws(ws, hub, pid, since)
    except ConnectionResetError:  # gone without a close frame
        log.info("websocket of %s: the client went away", pid, extra={"pipeline_id": pid})
    return ws


async def _stream_ws(ws: web.WebSocketResponse, hub: Hub, pid: str,
                     since: Position | None) -> None:
    async with hub.subscribe(pid, since) as (missed, now, sub):
        cursor = Cursor(since or now)
        await ws.send_str(f'{{"event":"ready","id":"{encode(since or now)}"}}')
        async for event in _backlog(hub, pid, since, missed, now):
            if (event_id := cursor.advance(event)) is not None:
                await ws.send_bytes(with_id(event_id, event[3]))
        reader = asyncio.create_task(_drain_incoming(ws))
        try:
            while not ws.closed:
                getter = asyncio.create_task(sub.queue.get())
                done, _ = await asyncio.wait({getter, reader},
                                             return_when=asyncio.FIRST_COMPLETED)
                if getter not in done:
                    getter.cancel()
                    break
                item = getter.result()
                if item is None:
                    await ws.close(code=1008, message=b"too slow: resume with your last id")
                    break
                if (event_id := cursor.advance(item)) is not None:
                    await ws.send_bytes(with_id(event_id, item[3]))
        finally:
            reader.cancel()


async def _drain_incoming(ws: web.WebSocketResponse) -> None:
    async for msg in ws:
        if msg.type in (WSMsgType.CLOSE, WSMsgType.ERROR):
            break


def _since(request: web.Request, text: str | None, hub: Hub) -> Position | None:
    if not text:
        return None
    try:
        return decode(text, len(hub.start) or len(hub.position))
    except BadPosition as exc:
        raise web.HTTPBadRequest(text=f'{{"error": "{exc}"}}',
                                 content_type="application/json") from None


async def _backlog(hub: Hub, pid: str, since: Position | None, missed: list[Event] | None,
                   now: Position) -> AsyncIterator[Event]:
    if since is None:
        return
    if missed is not None:
        for event in missed:
            yield event
        return
    async for event in hub.read_missed(pid, since, now):
        yield event


async def _send_sse(response: web.StreamResponse, cursor: Cursor, event: Event) -> None:
    event_id = cursor.advance(event)
    if event_id is not None:
        await response.write(b"event: row\nid: %s\ndata: %s\n\n" % (event_id.encode(), event[3]))
