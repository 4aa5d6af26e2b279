"""Peer: transformed records stored into `pipeline_data` by Quix Streams' PostgreSQL sink
(`quixstreams.sinks.community.postgresql.PostgreSQLSink`), as its documentation writes it:
`sdf.apply(to_row)` then `sdf.sink(sink)`. Run by `bench_peers.py` in the peers' environment.

The table is made beforehand by dashpipe's migration (same columns, primary key, partitions or
hypertable), so the sink writes into the same table shape as `dashpipe run persist`: no
metadata columns, no schema updates, `ON CONFLICT DO NOTHING` on the lineage key (a repeat
after a restart is skipped, as dashpipe skips it). A checkpoint (sink flush, then offset
commit) every PEER_BATCH_ROWS records: the role's batch size.

Environment: PEER_BROKERS, PEER_IN (transformed topic), PEER_GROUP, PEER_STATE_DIR,
PEER_BATCH_ROWS, PEER_PG_HOST, PEER_PG_PORT, PEER_PG_DB, PEER_PG_USER, PEER_PG_PASSWORD,
PEER_PG_SCHEMA.
"""

from __future__ import annotations

import os
from datetime import datetime
from typing import Any

from quixstreams import Application
from quixstreams.sinks.community.postgresql import PostgreSQLSink


def to_row(r: dict[str, Any]) -> dict[str, Any]:
    """A transformed record as a `pipeline_data` row (the columns dashpipe's persister fills)."""
    lineage = r["lineage"]
    key = r.get("key")
    return {
        "time": datetime.fromisoformat(r["time"]), "team_id": r["team_id"],
        "pipeline_id": r["pipeline_id"],
        "row_key": key if key is not None else
        f"~{lineage['raw_partition']}:{lineage['raw_offset']}:{lineage['row_index']}",
        "data": r["fields"], "raw_partition": lineage["raw_partition"],
        "raw_offset": lineage["raw_offset"], "row_index": lineage["row_index"],
        "mapping_version": r["mapping_version"], "ingest_id": r.get("ingest_id")}


def main() -> None:
    env = os.environ
    app = Application(broker_address=env["PEER_BROKERS"], consumer_group=env["PEER_GROUP"],
                      auto_offset_reset="earliest", state_dir=env["PEER_STATE_DIR"],
                      use_changelog_topics=False, commit_every=int(env["PEER_BATCH_ROWS"]),
                      loglevel="WARNING")
    sink = PostgreSQLSink(host=env["PEER_PG_HOST"], port=int(env["PEER_PG_PORT"]),
                          dbname=env["PEER_PG_DB"], user=env["PEER_PG_USER"],
                          password=env["PEER_PG_PASSWORD"], table_name="pipeline_data",
                          schema_name=env["PEER_PG_SCHEMA"], schema_auto_update=False,
                          include_metadata=False, on_conflict_do_nothing=True)
    sdf = app.dataframe(app.topic(env["PEER_IN"], value_deserializer="json"))
    sdf = sdf.apply(to_row)
    sdf.sink(sink)
    app.run()


if __name__ == "__main__":
    main()
