"""`dashpipe mapping test`: a `data_mapping` tried on sample records, with the code the map role
runs (`streams.mapping.compiler.map_raw`): the rows it makes, and each record's dead-letter
reason when it fails. Offline with `--input`; `--from-bronze` samples a pipeline's last raw
records from Kafka instead (and uses its own mapping unless `-f` gives another).

Input: one JSON document is one record (an array too: the mapping's `records` path picks its
rows); otherwise every non-blank line is one record (JSON lines), and a line that is not JSON
is a dead letter, as it would be on the log. Exit 0 when no record fails, 1 when one does.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson

from dashpipe.cli import exits, pipeline_files, stack
from dashpipe.cli.output import add_output, answer_only, columns, render
from dashpipe.cli.pipeline_files import FileError
from dashpipe.errors import DashpipeError
from dashpipe.settings import Settings

Sample = tuple[bytes, datetime, int | None]  # payload, received time, raw offset
PIPELINE_KEYS = frozenset({"id", "team_id", "source_type", "source_config", "type"})
MAX_SCANNED = 200_000  # raw records read at most to find a pipeline's last ones


def add_parser(sub: Any) -> None:
    p = sub.add_parser("mapping", help="try a data_mapping on sample records")
    actions = p.add_subparsers(dest="action", required=True)
    test = actions.add_parser("test", help="print the rows a mapping makes of sample records, "
                                           "and each failing record's dead-letter reason")
    test.add_argument("-f", "--file", metavar="FILE",
                      help="a data_mapping object, or a pipelines file (its data_mapping); "
                           "with --from-bronze, default: the pipeline's own mapping")
    test.add_argument("--pipeline", metavar="ID", help="the pipeline of a file that holds "
                                                       "several")
    source = test.add_mutually_exclusive_group(required=True)
    source.add_argument("--input", metavar="FILE", help="a JSON document, or JSON lines (a "
                                                        "record per line); - reads stdin")
    source.add_argument("--from-bronze", metavar="PIPELINE_ID",
                        help="the pipeline's last raw records from the raw topic (needs Kafka)")
    test.add_argument("--limit", type=int, default=10, metavar="N",
                      help="with --from-bronze: how many records (default 10)")
    add_output(test, default="jsonl", choices=("jsonl", "table", "json", "yaml"),
               json_alias=False)


def load_mapping(path: str, pipeline: str | None) -> Any:
    """The `data_mapping` of a file: the object itself, or the one of its (chosen) pipeline;
    None for a pipeline without one (rows pass through)."""
    docs = pipeline_files.read(path)
    if pipeline is not None:
        docs = [d for d in docs if isinstance(d, dict) and d.get("id") == pipeline]
        if not docs:
            raise FileError(f"{path}: no pipeline {pipeline!r} in the file")
    if len(docs) != 1:
        raise FileError(f"{path} holds {len(docs)} pipelines: name one with --pipeline ID")
    doc = docs[0]
    if not isinstance(doc, dict):
        raise FileError(f"{path}: expected a data_mapping or pipeline object")
    if "data_mapping" in doc or PIPELINE_KEYS & doc.keys():
        return doc.get("data_mapping")
    return doc


def compiled(spec: Any, name: str) -> Any:
    """The mapping checked by the model the pipeline API uses, then compiled."""
    from pydantic import ValidationError

    from schemas.mapping import Mapping
    from streams.mapping.compiler import compile_mapping

    if spec is None:
        return compile_mapping(None)
    try:
        return compile_mapping(Mapping.model_validate(spec))
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or '(mapping)'}: "
                             f"{e['msg'].removeprefix('Value error, ')}" for e in exc.errors())
        raise FileError(f"{name}: data_mapping: {problems}") from None


def read_input(data: bytes, name: str) -> list[bytes]:
    """The records of an input: the whole text when it is one JSON document, else its lines."""
    try:
        orjson.loads(data)
        return [data]
    except orjson.JSONDecodeError:
        lines = [line for line in data.splitlines() if line.strip()]
    if not lines:
        raise FileError(f"{name} holds no record")
    return lines


def results(run: Any, samples: list[Sample]) -> dict[str, Any]:
    """Every sample through the mapping: its rows and dead letters, in input order."""
    from streams.mapping.compiler import map_raw

    rows: list[dict[str, Any]] = []
    dead: list[dict[str, Any]] = []
    filtered = 0
    for n, (value, received, offset) in enumerate(samples):
        where: dict[str, Any] = {"record": n} if offset is None else \
            {"record": n, "raw_offset": offset}
        mapped = map_raw(run, value, received)
        rows += [{**where, "row_index": r.index, "time": _iso(r.time), "key": r.key,
                  "fields": r.fields} for r in mapped.rows]
        dead += [{**where, "row_index": e.index, "dead_letter": e.reason}
                 for e in mapped.errors]
        filtered += mapped.filtered
    return {"records": len(samples), "rows": rows, "dead_letters": dead, "filtered": filtered}


def _iso(when: datetime) -> str:
    return when.astimezone(UTC).isoformat().replace("+00:00", "Z")


def shown(out: dict[str, Any], output: str) -> str:
    if output == "jsonl":  # rows and dead letters in input order, one object a line
        items = sorted(out["rows"] + out["dead_letters"],
                       key=lambda i: (i["record"], i["row_index"]))
        return "\n".join(orjson.dumps(i).decode() for i in items)
    return render(out, output, lambda: _table(out))


def _table(out: dict[str, Any]) -> str:
    names = list(dict.fromkeys(k for r in out["rows"] for k in r["fields"]))
    text = columns(("RECORD", "ROW", "TIME", "KEY", *(n.upper() for n in names)), [
        (str(r["record"]), str(r["row_index"]), r["time"], r["key"] or "-",
         *(_cell(r["fields"].get(n)) for n in names)) for r in out["rows"]])
    if out["dead_letters"]:
        text += "\n\n" + columns(("RECORD", "ROW", "DEAD LETTER"), [
            (str(d["record"]), str(d["row_index"]), d["dead_letter"])
            for d in out["dead_letters"]])
    return text


def _cell(value: Any) -> str:
    return "-" if value is None else value if isinstance(value, str) else \
        orjson.dumps(value).decode()


def cmd_mapping(settings: Settings, args: argparse.Namespace) -> int:
    if args.file is None and args.input is not None:
        raise DashpipeError("mapping test --input needs -f FILE (the mapping)")
    if args.limit < 1:
        raise DashpipeError("--limit: expected a positive number")
    spec = load_mapping(args.file, args.pipeline) if args.file else None
    if args.input is not None:
        data = sys.stdin.buffer.read() if args.input == pipeline_files.STDIN else \
            _read(args.input)
        now = datetime.now(UTC)
        samples: list[Sample] = [(v, now, None) for v in read_input(data, args.input)]
        run = compiled(spec, args.file)
    else:
        with answer_only():
            own, samples = asyncio.run(sample(settings, args.from_bronze, args.limit))
        run = compiled(spec, args.file) if args.file else compiled(own, args.from_bronze)
    out = results(run, samples)
    text = shown(out, args.output)
    if text:
        print(text)
    print(f"{out['records']} record(s): {len(out['rows'])} row(s), "
          f"{len(out['dead_letters'])} dead letter(s), {out['filtered']} filtered",
          file=sys.stderr)
    return exits.FAILURE if out["dead_letters"] else exits.OK


def _read(path: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise FileError(f"cannot read {path}: {exc.strerror or exc}") from None


async def sample(settings: Settings, pipeline_id: str, limit: int) -> tuple[Any, list[Sample]]:
    """The pipeline's mapping and its last `limit` raw records, oldest
    first. Its records all sit in one raw partition, shared with other pipelines: windows
    ending at the end, doubling, until enough are found or the start is reached."""
    from aiokafka import TopicPartition

    from dashpipe import kafka
    from dashpipe.batcher import partition_for
    from dashpipe.runtime import open_runtime
    from dashpipe.settings import ADMIN

    async with open_runtime(settings, stack.endpoints(settings).bootstrap_servers) as rt:
        p = rt.service.get(pipeline_id, ADMIN)
        spec = p.data_mapping
        count = len(await kafka.partitions(rt.producer, rt.names.raw))
        tp = TopicPartition(rt.names.raw, partition_for(p.id.encode(), count))
        consumer = kafka.consumer(rt.bootstrap, rt.settings.kafka, group_id=None)
        async with kafka.started(consumer):
            consumer.assign([tp])
            first = (await consumer.beginning_offsets([tp]))[tp]
            end = hi = (await consumer.end_offsets([tp]))[tp]
            found: list[Sample] = []
            window = limit
            while len(found) < limit and hi > first and end - hi < MAX_SCANNED:
                lo = max(first, hi - window)
                found = await _read_range(consumer, tp, lo, hi, p.id) + found
                hi, window = lo, window * 2
    return spec, found[-limit:]


async def _read_range(consumer: Any, tp: Any, lo: int, hi: int, pipeline_id: str
                      ) -> list[Sample]:
    from dashpipe.errors import Unavailable
    from schemas.headers import Header

    consumer.seek(tp, lo)
    out: list[Sample] = []
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 30
    while await consumer.position(tp) < hi:
        if loop.time() > deadline:
            raise Unavailable(f"reading {tp.topic} partition {tp.partition}: no records "
                              "within 30s")
        batch = await consumer.getmany(tp, timeout_ms=500)
        for record in batch.get(tp, []):
            if record.offset < hi and \
                    dict(record.headers).get(Header.PIPELINE_ID) == pipeline_id.encode():
                out.append((record.value or b"", datetime.fromtimestamp(
                    record.timestamp / 1000, UTC), record.offset))
    return out
