"""Peer: the quake mapping as a Bytewax dataflow (Kafka input -> flat_map -> Kafka output), as
Bytewax's Kafka connector documentation writes one. Run by `bench_peers.py` in the peers'
environment: `python -m bytewax.run bench/peers/map_bytewax.py:flow` (one worker).

Environment: PEER_BROKERS, PEER_IN (raw topic), PEER_OUT (transformed topic), PEER_GROUP.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import bytewax.operators as op
import orjson
from bytewax.connectors.kafka import KafkaSinkMessage, KafkaSourceMessage
from bytewax.connectors.kafka import operators as kop
from bytewax.dataflow import Dataflow

sys.path.insert(0, str(Path(__file__).resolve().parent))
import quake  # beside this file: the peers' environment has no dashpipe

BROKERS = os.environ["PEER_BROKERS"].split(",")
# the producer as dashpipe's: idempotent, acks from every in-sync replica
PRODUCER = {"enable.idempotence": "true", "acks": "all"}


def transform(msg: KafkaSourceMessage[bytes, bytes]) -> list[KafkaSinkMessage[bytes, bytes]]:
    ingest = quake.ingest_id(msg.headers)
    return [KafkaSinkMessage(key=r["key"].encode(), value=quake.encode(r))
            for r in quake.rows(orjson.loads(msg.value), msg.partition, msg.offset, ingest)]


flow = Dataflow("quake-map")
consumed = kop.input("raw", flow, brokers=BROKERS, topics=[os.environ["PEER_IN"]],
                     add_config={"group.id": os.environ["PEER_GROUP"]})
mapped = op.flat_map("map", consumed.oks, transform)
kop.output("transformed", mapped, brokers=BROKERS, topic=os.environ["PEER_OUT"],
           add_config=PRODUCER)
