"""Peer: the webhook receiver a user would write with FastAPI + uvicorn + aiokafka: check the
`x-webhook-signature` (hex HMAC-SHA256 of the body) in constant time, `send_and_wait` the body
to Kafka (idempotent producer, acks from every in-sync replica, as dashpipe's) and answer 202
once it is acknowledged. Run by `bench_peers.py` in the peers' environment.

Environment: PEER_BROKERS, PEER_OUT (raw topic), PEER_SECRET, PEER_PORT.
"""

from __future__ import annotations

import hashlib
import hmac
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import uvicorn
from aiokafka import AIOKafkaProducer
from fastapi import FastAPI, HTTPException, Request, Response

TOPIC = os.environ["PEER_OUT"]
SECRET = os.environ["PEER_SECRET"].encode()
producer: AIOKafkaProducer | None = None


@asynccontextmanager
async def lifespan(_: FastAPI) -> AsyncIterator[None]:
    global producer
    producer = AIOKafkaProducer(bootstrap_servers=os.environ["PEER_BROKERS"], acks="all",
                                enable_idempotence=True)
    await producer.start()
    try:
        yield
    finally:
        await producer.stop()


app = FastAPI(lifespan=lifespan)


@app.get("/healthz")
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


@app.post("/webhooks/{pipeline_id}", status_code=202)
async def webhook(pipeline_id: str, request: Request) -> Response:
    body = await request.body()
    expected = hmac.new(SECRET, body, hashlib.sha256).hexdigest()
    if not hmac.compare_digest(expected, request.headers.get("x-webhook-signature", "")):
        raise HTTPException(status_code=401, detail="bad signature")
    assert producer is not None
    await producer.send_and_wait(TOPIC, body, key=pipeline_id.encode())
    return Response(status_code=202)


if __name__ == "__main__":
    uvicorn.run(app, host="127.0.0.1", port=int(os.environ["PEER_PORT"]), log_level="warning",
                access_log=False)
