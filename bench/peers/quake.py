"""The README's quake mapping hand-written in plain Python, as a user of a peer tool would write
it; shared by the peer programs (they run in the peers' virtual environment: nothing of
dashpipe is importable there).

One GeoJSON payload -> the transformed records dashpipe's mapper writes for it (the same
fields, key, lineage and filter as `bench_mapping.hand_one`), as dicts; `encode` gives the same
JSON bytes (orjson, `Z` for UTC).
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import orjson

PIPELINE_ID, TEAM_ID, MAPPING_VERSION, SCHEMA_VERSION = "quakes", "team-bench", 1, 1
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
INGEST_HEADER = "dashpipe-ingest-id"


def ingest_id(headers: Any) -> str | None:
    """The Bronze record's ingest id among its headers ((name, bytes) pairs, in any of the
    shapes the clients hand them over: a list of tuples or a dict)."""
    items = headers.items() if isinstance(headers, dict) else headers or ()
    for name, value in items:
        if name == INGEST_HEADER:
            return value.decode() if isinstance(value, bytes) else str(value)
    return None


def rows(doc: dict[str, Any], partition: int, offset: int,
         ingest: str | None) -> list[dict[str, Any]]:
    """The transformed records of one parsed payload; rows failing the required fields or
    the filter are left out (the benchmark's records have none)."""
    out = []
    for index, f in enumerate(doc.get("features") or ()):
        props = f["properties"]
        quake_id, mag = f.get("id"), props.get("mag")
        if quake_id is None or mag is None:
            continue
        mag = float(mag)
        if not mag >= 0:
            continue
        place = props.get("place")
        depth = float(f["geometry"]["coordinates"][2])
        fields = {"quake_id": str(quake_id), "mag": mag,
                  "place": None if place is None else str(place), "depth_km": depth,
                  "depth_m": round(depth * 1000.0, 0)}
        out.append({
            "pipeline_id": PIPELINE_ID, "team_id": TEAM_ID,
            "time": EPOCH + timedelta(milliseconds=props["time"]), "key": fields["quake_id"],
            "fields": fields,
            "lineage": {"raw_partition": partition, "raw_offset": offset, "row_index": index},
            "mapping_version": MAPPING_VERSION, "ingest_id": ingest,
            "schema_version": SCHEMA_VERSION})
    return out


def encode(record: dict[str, Any]) -> bytes:
    return orjson.dumps(record, option=orjson.OPT_UTC_Z)
