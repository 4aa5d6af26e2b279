"""Bare baselines the benchmarks run in subprocesses (not a benchmark itself).

- `python bench/bare.py sink --port P [--reuse-port]`: an aiohttp app answering any
  `POST /webhooks/{id}` with an empty 202 after reading the body; nothing else (no signature,
  no Kafka). `--reuse-port`: N of them share the port (SO_REUSEPORT), as `dashpipe run web
  --processes N` does.
- `python bench/bare.py api --port P`: the local API the poll benchmark polls; `GET /data/{n}`
  answers a ~700-byte JSON document (`application/json`).
- `python bench/bare.py broadcast --port P`: a bare SSE broadcast: `GET /events` streams
  `text/event-stream` (an `event: ready` first), one `asyncio.Queue` and one handler loop per
  client; `POST /publish` takes rows as newline-separated bytes and puts
  `event: row\nid: <n>\ndata: <row>\n\n` on every client's queue; `GET /clients` answers the
  number of connected clients.
- `python bench/bare.py poll --base URL --count N --topic T --interval S`: a bare client loop:
  every `S` seconds it fetches `URL/0 .. URL/N-1` (at most `--concurrency` at a time) with one
  aiohttp session and produces each body, keyed by the URL's number, with a plain aiokafka
  producer (same acks / idempotence / linger as ours, no headers, no status records).
- `python bench/bare.py receiver --port P`: the receiver the deliver benchmark posts to; any
  `POST /hooks/{name}` is read and answered an empty 200, and the `time.perf_counter()` after
  reading its body is noted, with its `webhook-id`. `GET /stats?n=N` answers `count`,
  `distinct_ids`, `first` (the first request's time) and `nth` (the N-th's, null until then);
  `POST /reset` forgets them.
- `python bench/bare.py post --url URL --file F --concurrency C`: a bare client: `F` holds one
  request a line, `[headers, body]` as JSON (the body a string, sent as its UTF-8 bytes); it
  POSTs them all in order with one aiohttp session and `C` requests in flight, prints
  `posted N in S s, K not 2xx`, then waits to be stopped (so its CPU time stays readable).

Each server prints `listening on PORT` once it accepts connections.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import time
from pathlib import Path

import aiohttp
import orjson
from aiohttp import web
from aiokafka import AIOKafkaProducer
from mode.loop import use as use_loop

BODY_SIZE = 700


def document(n: int, size: int = BODY_SIZE) -> bytes:
    """A JSON object of `size` bytes (more when `size` is too small), different per `n`."""
    doc: dict[str, object] = {"id": n, "status": "ok", "region": "eu-west",
                              "metrics": {"latency_ms": 12.5, "requests": 1042, "errors": 3},
                              "note": ""}
    doc["note"] = "x" * max(0, size - len(orjson.dumps(doc)))
    return orjson.dumps(doc)


async def serve(app: web.Application, port: int, reuse_port: bool = False) -> None:
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port, reuse_port=reuse_port or None).start()
    print(f"listening on {port}", flush=True)
    try:
        await asyncio.Event().wait()
    finally:
        await runner.cleanup()


def sink_app() -> web.Application:
    async def accept(request: web.Request) -> web.Response:
        await request.read()
        return web.Response(status=202)

    app = web.Application(client_max_size=1024 * 1024 + 1)
    app.router.add_post("/webhooks/{pipeline_id}", accept)
    return app


def api_app() -> web.Application:
    bodies: dict[int, bytes] = {}

    async def data(request: web.Request) -> web.Response:
        n = int(request.match_info["n"])
        body = bodies.get(n)
        if body is None:
            body = bodies[n] = document(n)
        return web.Response(body=body, content_type="application/json")

    app = web.Application()
    app.router.add_get("/data/{n}", data)
    return app


def broadcast_app() -> web.Application:
    clients: set[asyncio.Queue[bytes]] = set()
    sequence = 0

    async def events(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream",
                                               "Cache-Control": "no-store"})
        await response.prepare(request)
        queue: asyncio.Queue[bytes] = asyncio.Queue()
        clients.add(queue)
        try:
            await response.write(b"event: ready\ndata: {}\n\n")
            while True:
                await response.write(await queue.get())
        finally:
            clients.discard(queue)

    async def publish(request: web.Request) -> web.Response:
        nonlocal sequence
        for row in (await request.read()).split(b"\n"):
            sequence += 1
            event = b"event: row\nid: %d\ndata: %s\n\n" % (sequence, row)
            for queue in clients:
                queue.put_nowait(event)
        return web.Response(status=202)

    async def count(request: web.Request) -> web.Response:
        return web.json_response({"clients": len(clients)})

    app = web.Application(client_max_size=64 * 1024 * 1024)
    app.router.add_get("/events", events)
    app.router.add_post("/publish", publish)
    app.router.add_get("/clients", count)
    return app


def receiver_app() -> web.Application:
    times: list[float] = []
    ids: set[str] = set()

    async def accept(request: web.Request) -> web.Response:
        await request.read()
        times.append(time.perf_counter())
        ids.add(request.headers.get("webhook-id", ""))
        return web.Response(status=200)

    async def stats(request: web.Request) -> web.Response:
        n = int(request.query.get("n", "0"))
        return web.json_response({"count": len(times), "distinct_ids": len(ids),
                                  "first": times[0] if times else None,
                                  "nth": times[n - 1] if 0 < n <= len(times) else None})

    async def reset(request: web.Request) -> web.Response:
        times.clear()
        ids.clear()
        return web.Response(status=204)

    app = web.Application(client_max_size=1024 * 1024 + 1)
    app.router.add_post("/hooks/{name}", accept)
    app.router.add_get("/stats", stats)
    app.router.add_post("/reset", reset)
    return app


def load_requests(path: Path) -> list[tuple[dict[str, str], bytes]]:
    """`[headers, body]` a line -> (headers, body bytes)."""
    return [(headers, body.encode()) for headers, body in
            (orjson.loads(line) for line in path.read_bytes().splitlines() if line)]


async def post_all(url: str, requests: list[tuple[dict[str, str], bytes]],
                   concurrency: int) -> None:
    todo = iter(requests)
    failed = 0
    async with aiohttp.ClientSession() as http:
        async def worker() -> None:
            nonlocal failed
            for headers, body in todo:
                async with http.post(url, data=body, headers=headers,
                                     allow_redirects=False) as resp:
                    await resp.read()
                    failed += not 200 <= resp.status < 300

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        elapsed = time.perf_counter() - started
    print(f"posted {len(requests)} in {elapsed:.3f} s, {failed} not 2xx", flush=True)
    await asyncio.Event().wait()


async def poll_loop(base: str, count: int, topic: str, interval: float,
                    concurrency: int) -> None:
    producer = AIOKafkaProducer(
        bootstrap_servers=os.environ["DASHPIPE_KAFKA_BOOTSTRAP_SERVERS"],
        enable_idempotence=True, acks="all",
        linger_ms=int(os.environ.get("DASHPIPE_KAFKA_LINGER_MS", "5")))
    await producer.start()
    slots = asyncio.Semaphore(concurrency)
    urls = [(str(n).encode(), f"{base}/{n}") for n in range(count)]
    try:
        async with aiohttp.ClientSession() as http:
            async def one(key: bytes, url: str) -> None:
                async with slots:
                    async with http.get(url) as resp:
                        body = await resp.read()
                        resp.raise_for_status()
                    await (await producer.send(topic, body, key=key))

            loop = asyncio.get_running_loop()
            print("polling", flush=True)
            while True:
                started = loop.time()
                await asyncio.gather(*(one(key, url) for key, url in urls))
                await asyncio.sleep(max(0.0, interval - (loop.time() - started)))
    finally:
        await producer.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description="bare baselines for the benchmarks")
    sub = parser.add_subparsers(dest="mode", required=True)
    for mode in ("sink", "api", "broadcast", "receiver"):
        sub.add_parser(mode).add_argument("--port", type=int, required=True)
    sub.choices["sink"].add_argument("--reuse-port", action="store_true",
                                     help="SO_REUSEPORT: several sinks share the port")
    post = sub.add_parser("post")
    post.add_argument("--url", required=True)
    post.add_argument("--file", type=Path, required=True,
                      help="one request a line: [headers, body] as JSON")
    post.add_argument("--concurrency", type=int, default=16)
    poll = sub.add_parser("poll")
    poll.add_argument("--base", required=True, help="URL prefix; /<n> is appended")
    poll.add_argument("--count", type=int, required=True)
    poll.add_argument("--topic", required=True)
    poll.add_argument("--interval", type=float, default=1.0)
    poll.add_argument("--concurrency", type=int, default=64)
    args = parser.parse_args()
    use_loop("uvloop")  # the event loop `dashpipe run` uses: baselines run on the same
    if args.mode == "poll":
        asyncio.run(poll_loop(args.base, args.count, args.topic, args.interval,
                              args.concurrency))
    elif args.mode == "post":
        asyncio.run(post_all(args.url, load_requests(args.file), args.concurrency))
    else:
        apps = {"sink": sink_app, "api": api_app, "broadcast": broadcast_app,
                "receiver": receiver_app}
        asyncio.run(serve(apps[args.mode](), args.port, getattr(args, "reuse_port", False)))


if __name__ == "__main__":
    main()
