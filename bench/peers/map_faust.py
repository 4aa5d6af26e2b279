"""Peer: the quake mapping as a Faust agent the way Faust's documentation writes one: `async for`
over the stream, `await topic.send(...)` for each row. Run by `bench_peers.py` in the peers'
environment: `python bench/peers/map_faust.py worker -l warn`.

Environment: PEER_BROKERS, PEER_IN (raw topic), PEER_OUT (transformed topic), PEER_GROUP (the
app id, which Faust uses as its consumer group), PEER_STATE_DIR.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import faust
import orjson

sys.path.insert(0, str(Path(__file__).resolve().parent))
import quake  # beside this file: the peers' environment has no dashpipe

app = faust.App(os.environ["PEER_GROUP"],
                broker=[f"kafka://{b}" for b in os.environ["PEER_BROKERS"].split(",")],
                datadir=os.environ["PEER_STATE_DIR"], consumer_auto_offset_reset="earliest",
                producer_acks=-1, web_enabled=False, topic_allow_declare=False)
raw = app.topic(os.environ["PEER_IN"], key_type=bytes, value_type=bytes,
                value_serializer="raw", key_serializer="raw")
transformed = app.topic(os.environ["PEER_OUT"], key_type=bytes, value_type=bytes,
                        value_serializer="raw", key_serializer="raw")


@app.agent(raw)
async def quake_map(stream: faust.StreamT[bytes]) -> None:
    async for event in stream.events():
        msg = event.message
        for r in quake.rows(orjson.loads(event.value), msg.partition, msg.offset,
                            quake.ingest_id(event.headers)):
            await transformed.send(key=r["key"].encode(), value=quake.encode(r))


if __name__ == "__main__":
    app.main()
