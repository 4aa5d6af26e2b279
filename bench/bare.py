"""Bare baselines the benchmarks run in subprocesses (not a benchmark itself).

- `python bench/bare.py sink --port P`: an aiohttp app answering any `POST /webhooks/{id}`
  with an empty 202 after reading the body; nothing else (no signature, no Kafka).
- `python bench/bare.py api --port P`: the local API the poll benchmark polls; `GET /data/{n}`
  answers a ~700-byte JSON document (`application/json`).
- `python bench/bare.py poll --base URL --count N --topic T --interval S`: a bare client loop:
  every `S` seconds it fetches `URL/0 .. URL/N-1` (at most `--concurrency` at a time) with one
  aiohttp session and produces each body, keyed by the URL's number, with a plain aiokafka
  producer (same acks / idempotence / linger as ours, no headers, no status records).

Each server prints `listening on PORT` once it accepts connections.
"""

from __future__ import annotations

import argparse
import asyncio
import os

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


async def serve(app: web.Application, port: int) -> None:
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
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
    for mode in ("sink", "api"):
        sub.add_parser(mode).add_argument("--port", type=int, required=True)
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
    else:
        asyncio.run(serve(sink_app() if args.mode == "sink" else api_app(), args.port))


if __name__ == "__main__":
    main()
