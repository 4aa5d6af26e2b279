"""`dashpipe replay`: re-map a pipeline's Bronze records, or preview a mapping on them."""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from typing import Any

from dashpipe.cli import pipeline_files, stack
from dashpipe.cli.output import add_output, render
from dashpipe.errors import DashpipeError
from dashpipe.settings import ADMIN, Settings


def add_parser(sub: Any) -> None:
    p = sub.add_parser("replay", help="re-map a pipeline's Bronze records into the transformed "
                                      "topic (or preview with --dry-run)")
    p.add_argument("--pipeline", required=True, metavar="ID")
    p.add_argument("--from", dest="start", required=True, metavar="TIME|OFFSET",
                   help="RFC 3339 time or raw offset to start at")
    p.add_argument("--to", dest="end", metavar="TIME|OFFSET",
                   help="where to stop (exclusive; default: the end now)")
    p.add_argument("--mapping", metavar="FILE", help="a candidate data_mapping (YAML or JSON): "
                   "previewed with --dry-run, else saved on the pipeline first")
    p.add_argument("--workers", type=int, default=1, metavar="N",
                   help="map a written replay on N processes (one core each), written in "
                        "order (default 1)")
    p.add_argument("--dry-run", action="store_true",
                   help="write nothing; print what would change against the current output")
    add_output(p, default="json", choices=("json", "yaml"), json_alias=False)


def cmd_replay(settings: Settings, args: argparse.Namespace) -> int:
    candidate = None
    if args.mapping:
        docs = pipeline_files.read(args.mapping)
        if len(docs) != 1 or not isinstance(docs[0], dict):
            raise DashpipeError(f"{args.mapping}: expected one mapping object")
        candidate = docs[0].get("data_mapping", docs[0])
    root = logging.getLogger()
    root.setLevel(logging.WARNING)  # stdout is the answer, stderr the progress
    return asyncio.run(_replay(settings, args, candidate))


async def _replay(settings: Settings, args: argparse.Namespace, candidate: Any) -> int:
    from dashpipe.pipelines import Invalid
    from dashpipe.runtime import open_runtime
    from schemas.mapping import Mapping
    from streams.replay.replay import replay
    from streams.replay.status import ReplayError, ReplayStatus

    def progress(status: ReplayStatus) -> None:
        end = "\n" if status.done else "\r"
        print(status.line(), end=end, file=sys.stderr, flush=True)

    settings, ends = stack.resolved(settings)
    async with open_runtime(settings, ends.bootstrap_servers) as rt:
        p = rt.service.get(args.pipeline, ADMIN)
        spec = None
        if candidate is not None:
            if args.dry_run:
                try:
                    spec = Mapping.model_validate(candidate)
                except ValueError as exc:
                    print(f"dashpipe: error: {args.mapping}: {exc}", file=sys.stderr)
                    return 2
            else:
                try:
                    p = await rt.service.patch(p.id, {"data_mapping": candidate}, ADMIN)
                except Invalid as exc:
                    print(f"dashpipe: error: {args.mapping}: {exc}", file=sys.stderr)
                    return 2
                print(f"mapping saved on {p.id} as version {p.mapping_version}",
                      file=sys.stderr)
        try:
            summary = await replay(rt, p, args.start, args.end, spec, args.dry_run, progress,
                                   workers=args.workers)
        except ReplayError as exc:
            print(f"dashpipe: error: {exc}", file=sys.stderr)
            return 2
    print(render(summary, args.output))
    return 0
