"""The earthquake mapping of the demo: GeoJSON features (USGS-style) to typed rows. The demo's
`demo-quakes` pipeline, the mapper's tests and the benchmarks all use this one definition."""

from __future__ import annotations

from typing import Any

MAPPING: dict[str, Any] = {
    "records": "features[*]",
    "time": {"path": "properties.time", "format": "epoch_ms"},
    "key": "quake_id",
    "fields": {
        "quake_id": {"path": "id", "type": "string", "required": True},
        "mag": {"path": "properties.mag", "type": "float", "required": True},
        "place": {"path": "properties.place", "type": "string"},
        "depth_km": {"path": "geometry.coordinates[2]", "type": "float"},
        "depth_m": {"path": "geometry.coordinates[2]", "type": "float",
                    "transforms": [{"scale": 1000}, {"round": 0}]},
    },
    "filter": {"field": "mag", "op": ">=", "value": 0},
}
