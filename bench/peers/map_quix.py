"""Peer: the quake mapping as a Quix Streams application (`sdf.apply(..., expand=True)` then
`to_topic`), as Quix Streams' documentation writes one. Run by `bench_peers.py` in the peers'
environment.

Environment: PEER_BROKERS, PEER_IN (raw topic), PEER_OUT (transformed topic), PEER_GROUP,
PEER_STATE_DIR.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

from quixstreams import Application, message_context
from quixstreams.models.serializers.json import JSONSerializer

sys.path.insert(0, str(Path(__file__).resolve().parent))
import quake  # beside this file: the peers' environment has no dashpipe


def main() -> None:
    app = Application(broker_address=os.environ["PEER_BROKERS"],
                      consumer_group=os.environ["PEER_GROUP"], auto_offset_reset="earliest",
                      state_dir=os.environ["PEER_STATE_DIR"], use_changelog_topics=False,
                      producer_extra_config={"enable.idempotence": True, "acks": "all"},
                      loglevel="WARNING")
    raw = app.topic(os.environ["PEER_IN"], value_deserializer="json")
    # orjson with `Z` for UTC, so the records are byte for byte dashpipe's
    out = app.topic(os.environ["PEER_OUT"], key_serializer="str",
                    value_serializer=JSONSerializer(dumps=quake.encode))

    def transform(doc: Any, key: Any, timestamp: int, headers: Any) -> list[dict[str, Any]]:
        ctx = message_context()
        return quake.rows(doc, ctx.partition, ctx.offset, quake.ingest_id(headers))

    sdf = app.dataframe(raw)
    sdf = sdf.apply(transform, expand=True, metadata=True)
    sdf.to_topic(out, key=lambda record: record["key"])
    app.run()


if __name__ == "__main__":
    main()
