"""Mapping cost in one process: our compiled mapping against hand-written Python, no Kafka.

The data: `--payloads` (2,000) GeoJSON payloads shaped like a USGS earthquake feed, in two
variants: one feature per payload (~730 bytes each) and ten features per payload. About 3% of
the features have a negative magnitude (the filter drops them) and 1% have no magnitude (a
required field: the row fails), the rest map to one row each. The mapping is the demo's
(`dashpipe/cli/quakes.py`): `records: features[*]`, time `properties.time` as `epoch_ms`, key
`quake_id`, fields `quake_id` (string, required), `mag` (float, required), `place` (string),
`depth_km` (float, from `geometry.coordinates[2]`), `depth_m` (the same, `scale: 1000` then
`round: 0`), filter `mag >= 0`.

Three sides, each going over the same list of payload bytes:

- ours: `orjson.loads(payload)`, the mapping compiled once by
  `streams.mapping.compiler.compile_mapping`, then for each row `orjson.dumps` (OPT_UTC_Z) of a
  dict shaped exactly like the transformed record `streams.mapping.mapper` writes (pipeline_id,
  team_id, time, key, fields, lineage,
  mapping_version, ingest_id, schema_version);
- hand-written: the plainest fast Python doing the same job with orjson: parse, index the same
  values directly, `float()` / `str()` them, scale and round the depth, turn epoch ms into a
  datetime, check the required fields, apply the filter, build the same dict, dumps. It does
  none of the type checks the compiler does (a string magnitude would pass through `float()`),
  so it is, if anything, a lighter baseline;
- floor: `orjson.loads` + `orjson.dumps` of each payload, nothing else.

Before any timing, ours and hand-written must give identical bytes for every payload (and the
same numbers of failed and filtered rows), or the script stops. The sides are then measured
alternately (the order rotates each round) with `time.perf_counter`, `--rounds` (7) rounds, each
sample going over the list as many times as fill about `--sample-seconds` (0.3 s); the median
per side is kept. Printed: rows/s of each side (output rows, so the floor's figure is "rows of
the same data set per second") and the ratios ours / hand-written (goal >= 0.7) and
ours / floor. One `record()` per variant (`mapping-x1`, `mapping-x10`; baseline = hand-written).
"""

from __future__ import annotations

import argparse
import logging
import random
import statistics
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
from harness import record, setup_logging

from dashpipe.cli import quakes
from schemas.mapping import Mapping
from schemas.records import SCHEMA_VERSION
from streams.mapping.compiler import compile_mapping

log = logging.getLogger("bench.mapping")

PIPELINE_ID, TEAM_ID, MAPPING_VERSION = "quakes", "team-bench", 1
MAPPING = quakes.MAPPING
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
JSON_OPTIONS = orjson.OPT_UTC_Z
PLACES = ["Ridgecrest, CA", "Anza, CA", "Pahala, Hawaii", "Cobb, CA", "Toyah, Texas",
          "Petrolia, CA", "Sand Point, Alaska", "Ponce, Puerto Rico"]
DIRECTIONS = ["N", "NNE", "NE", "E", "SE", "S", "SW", "W", "NW", "WNW"]

# one side: payloads -> (output rows, failed rows, filtered rows)
Side = Callable[[list[bytes]], tuple[int, int, int]]


# --- the data -------------------------------------------------------------------------------

def feature(rng: random.Random, n: int, clean: bool = False) -> dict[str, Any]:
    """One USGS-style earthquake feature; unless `clean`, ~3% negative and ~1% no magnitude."""
    net = rng.choice(["ci", "nc", "hv", "ak", "us", "tx"])
    code = f"{40_000_000 + n}"
    t = 1_764_300_000_000 + n * 7_919 + rng.randrange(1000)
    draw = rng.random()
    mag: float | int | None = round(rng.uniform(0.1, 5.5), 2)
    if draw < 0.05:
        mag = rng.randrange(1, 5)  # an integer magnitude: float() / the compiler convert it
    if not clean and draw > 0.97:
        mag = -round(rng.uniform(0.1, 1.0), 2)
    place = f"{rng.randrange(1, 40)} km {rng.choice(DIRECTIONS)} of {rng.choice(PLACES)}"
    props: dict[str, Any] = {
        "mag": mag, "place": place, "time": t, "updated": t + 120_000, "tz": None,
        "url": f"https://earthquake.usgs.gov/earthquakes/eventpage/{net}{code}",
        "felt": None, "cdi": None, "mmi": None, "alert": None, "status": "automatic",
        "tsunami": 0, "sig": rng.randrange(0, 400), "net": net, "code": code,
        "ids": f",{net}{code},", "sources": f",{net},",
        "types": ",nearby-cities,origin,phase-data,", "nst": rng.randrange(5, 60),
        "dmin": round(rng.uniform(0.001, 0.5), 4), "rms": round(rng.uniform(0.05, 0.5), 2),
        "gap": rng.randrange(20, 200), "magType": "ml", "type": "earthquake",
        "title": f"M {mag} - {place}",
    }
    if not clean and 0.96 < draw <= 0.97:
        del props["mag"]
    depth = round(rng.uniform(-1.0, 30.0), 2)
    return {"type": "Feature", "properties": props,
            "geometry": {"type": "Point",
                         "coordinates": [round(rng.uniform(-125, -114), 4),
                                         round(rng.uniform(32, 42), 4), depth]},
            "id": f"{net}{code}"}


def payload(rng: random.Random, first: int, count: int, clean: bool = False) -> bytes:
    """A FeatureCollection of `count` features numbered from `first`, as JSON bytes."""
    features = [feature(rng, first + i, clean) for i in range(count)]
    generated = features[-1]["properties"]["updated"]
    return orjson.dumps({"type": "FeatureCollection",
                         "metadata": {"generated": generated, "status": 200, "api": "1.14.1",
                                      "count": count},
                         "features": features})


def payloads(n: int, per_payload: int, seed: int = 7, clean: bool = False) -> list[bytes]:
    rng = random.Random(seed)
    return [payload(rng, i * per_payload, per_payload, clean) for i in range(n)]


# --- the three sides ------------------------------------------------------------------------

def ours_side(spec: dict[str, Any]) -> tuple[Side, Callable[[bytes, int], list[bytes]]]:
    """Ours, as `streams.mapping.mapper.map_record` builds transformed records (the Kafka
    parts aside)."""
    run = compile_mapping(Mapping.model_validate(spec))
    prefix = {"pipeline_id": PIPELINE_ID, "team_id": TEAM_ID}
    received = datetime.now(UTC)
    loads, dumps = orjson.loads, orjson.dumps

    def one(data: bytes, offset: int) -> tuple[list[bytes], int, int]:
        mapped = run(loads(data), received)
        ingest_id = f"bench-{offset}"
        out = [dumps({
            **prefix, "time": row.time, "key": row.key, "fields": row.fields,
            "lineage": {"raw_partition": 0, "raw_offset": offset, "row_index": row.index},
            "mapping_version": MAPPING_VERSION, "ingest_id": ingest_id,
            "schema_version": SCHEMA_VERSION}, option=JSON_OPTIONS) for row in mapped.rows]
        return out, len(mapped.errors), mapped.filtered

    def side(items: list[bytes]) -> tuple[int, int, int]:
        rows = failed = filtered = 0
        for offset, data in enumerate(items):
            out, f, d = one(data, offset)
            rows, failed, filtered = rows + len(out), failed + f, filtered + d
        return rows, failed, filtered

    return side, lambda data, offset: one(data, offset)[0]


def hand_one(data: bytes, offset: int) -> tuple[list[bytes], list[tuple[int, str, Any]], int]:
    """The hand-written mapping of one payload: (rows as bytes, failed rows, filtered rows)."""
    doc = orjson.loads(data)
    features = doc.get("features")
    if features is None:
        return [], [(0, "records: 'features[*]' not found in the payload", doc)], 0
    ingest_id = f"bench-{offset}"
    out: list[bytes] = []
    errors: list[tuple[int, str, Any]] = []
    filtered = 0
    for index, f in enumerate(features):
        props = f["properties"]
        quake_id = f.get("id")
        mag = props.get("mag")
        if quake_id is None or mag is None:
            errors.append((index, "required field missing (id or properties.mag)", f))
            continue
        mag = float(mag)
        place = props.get("place")
        depth = float(f["geometry"]["coordinates"][2])
        fields = {"quake_id": str(quake_id), "mag": mag,
                  "place": None if place is None else str(place), "depth_km": depth,
                  "depth_m": round(depth * 1000.0, 0)}
        when = EPOCH + timedelta(milliseconds=props["time"])
        if not mag >= 0:
            filtered += 1
            continue
        out.append(orjson.dumps({
            "pipeline_id": PIPELINE_ID, "team_id": TEAM_ID, "time": when,
            "key": fields["quake_id"], "fields": fields,
            "lineage": {"raw_partition": 0, "raw_offset": offset, "row_index": index},
            "mapping_version": MAPPING_VERSION, "ingest_id": ingest_id,
            "schema_version": SCHEMA_VERSION}, option=JSON_OPTIONS))
    return out, errors, filtered


def hand_side(items: list[bytes]) -> tuple[int, int, int]:
    rows = failed = filtered = 0
    for offset, data in enumerate(items):
        out, errors, dropped = hand_one(data, offset)
        rows, failed, filtered = rows + len(out), failed + len(errors), filtered + dropped
    return rows, failed, filtered


def floor_side(items: list[bytes]) -> tuple[int, int, int]:
    loads, dumps = orjson.loads, orjson.dumps
    for data in items:
        dumps(loads(data))
    return 0, 0, 0


# --- checks and timing ----------------------------------------------------------------------

def check_identical(items: list[bytes], ours_one: Callable[[bytes, int], list[bytes]],
                    ours: Side) -> tuple[int, int, int]:
    """Ours and hand-written must write the same bytes for every payload; returns the counts."""
    for offset, data in enumerate(items):
        mine, theirs = ours_one(data, offset), hand_one(data, offset)[0]
        if mine != theirs:
            raise RuntimeError(f"payload {offset}: ours and hand-written differ:\n"
                               f"ours {mine[:2]!r}\nhand {theirs[:2]!r}")
    counts, hand_counts = ours(items), hand_side(items)
    if counts != hand_counts:
        raise RuntimeError(f"(rows, failed, filtered) differ: ours {counts}, hand-written "
                           f"{hand_counts}")
    if counts[0] == 0:
        raise RuntimeError("the data set maps to no rows")
    return counts


def passes_for(side: Side, items: list[bytes], seconds: float) -> int:
    """How many passes over `items` take about `seconds` (after one warm-up pass)."""
    side(items)
    start = time.perf_counter()
    side(items)
    return max(1, round(seconds / max(time.perf_counter() - start, 1e-6)))


def timed(side: Side, items: list[bytes], passes: int) -> float:
    """Seconds per pass over `items`, over `passes` passes."""
    start = time.perf_counter()
    for _ in range(passes):
        side(items)
    return (time.perf_counter() - start) / passes


def measure(sides: dict[str, Side], items: list[bytes], rounds: int,
            sample_seconds: float) -> dict[str, float]:
    """Median seconds per pass of each side, measured alternately, the order rotating."""
    passes = passes_for(sides["ours"], items, sample_seconds)
    names = list(sides)
    samples: dict[str, list[float]] = {name: [] for name in names}
    for round_ in range(rounds):
        shift = round_ % len(names)
        for name in names[shift:] + names[:shift]:
            samples[name].append(timed(sides[name], items, passes))
    return {name: statistics.median(values) for name, values in samples.items()}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--payloads", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--sample-seconds", type=float, default=0.3,
                        help="about this long per timed sample of one side")
    parser.add_argument("--quick", action="store_true", help="smoke run: 300 payloads, 3 rounds")
    args = parser.parse_args(argv)
    if args.quick:
        args.payloads, args.rounds = min(args.payloads, 300), min(args.rounds, 3)
        args.sample_seconds = min(args.sample_seconds, 0.05)
    if args.payloads < 1 or args.rounds < 1:
        parser.error("--payloads and --rounds must be at least 1")
    return args


def run(args: argparse.Namespace) -> None:
    ours, ours_one = ours_side(MAPPING)
    sides: dict[str, Side] = {"ours": ours, "hand": hand_side, "floor": floor_side}
    for per_payload in (1, 10):
        items = payloads(args.payloads, per_payload)
        rows, failed, filtered = check_identical(items, ours_one, ours)
        size = statistics.mean(len(p) for p in items)
        log.info("%d payloads of %d feature(s), %.0f bytes on average: %d rows, %d failed, "
                 "%d filtered; ours and hand-written give identical bytes", len(items),
                 per_payload, size, rows, failed, filtered)
        took = measure(sides, items, args.rounds, args.sample_seconds)
        rate = {name: rows / seconds for name, seconds in took.items()}
        name = f"mapping-x{per_payload}"
        print(f"{name}: ours {rate['ours']:,.0f} rows/s, hand-written {rate['hand']:,.0f} "
              f"rows/s, floor (loads+dumps) {rate['floor']:,.0f} rows/s; ours/hand-written "
              f"{rate['ours'] / rate['hand']:.3f} (goal >= 0.7), ours/floor "
              f"{rate['ours'] / rate['floor']:.3f}", flush=True)
        record(name, unit="rows/s", ours=round(rate["ours"]), baseline=round(rate["hand"]),
               floor=round(rate["floor"]), ours_vs_floor=round(rate["ours"] / rate["floor"], 4),
               features_per_payload=per_payload, payloads=len(items),
               payload_bytes=round(size), rows=rows, failed=failed, filtered=filtered,
               ours_us_per_row=round(took["ours"] / rows * 1e6, 3),
               hand_us_per_row=round(took["hand"] / rows * 1e6, 3),
               floor_us_per_row=round(took["floor"] / rows * 1e6, 3),
               rounds=args.rounds, quick=args.quick)


def main(argv: list[str] | None = None) -> None:
    setup_logging()
    args = parse_args(argv)
    try:
        run(args)
    except RuntimeError as exc:
        print(f"bench_mapping: error: {exc}", file=sys.stderr)
        raise SystemExit(1) from None


if __name__ == "__main__":
    main()
