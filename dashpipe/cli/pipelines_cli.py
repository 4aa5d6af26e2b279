"""`dashpipe pipelines ...`: apply (or preview with --dry-run), validate offline, list, get,
pause, resume, delete; every answer on stdout, every refusal one line on stderr."""

from __future__ import annotations

import argparse
import asyncio
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from dashpipe.cli import exits, pipeline_files, stack
from dashpipe.cli.output import add_output, answer_only, render
from dashpipe.settings import Settings


def add_parser(sub: Any) -> None:
    p = sub.add_parser("pipelines", help="manage pipeline definitions on the log (as admin)")
    actions = p.add_subparsers(dest="action", required=True)
    apply = actions.add_parser("apply", help="create or update the pipelines of a YAML/JSON "
                                             "file by id (idempotent)")
    validate = actions.add_parser("validate", help="check every pipeline of a file, offline "
                                                   "(no Kafka): `ok <id>` or its problems")
    for action in (apply, validate):
        action.add_argument("-f", "--file", required=True, metavar="FILE",
                            help="YAML or JSON (by extension); - reads YAML or JSON from stdin")
    apply.add_argument("--dry-run", action="store_true",
                       help="write nothing; print per pipeline created / unchanged / changed "
                            "with a diff against what runs (secrets masked)")
    listing = actions.add_parser("list", help="every pipeline with its runtime status")
    add_output(listing)  # -o json is re-appliable
    listing.add_argument("--team", help="only this team's pipelines")
    get = actions.add_parser("get", help="one pipeline and its runtime status, secrets masked")
    get.add_argument("id")
    add_output(get, default="json", json_alias=False)
    for action, what in (("pause", "stop polling / refuse webhooks"),
                         ("resume", "make active again"), ("delete", "delete the definition")):
        actions.add_parser(action, help=what).add_argument("id")


def _file_name(args: argparse.Namespace) -> str:
    return "<stdin>" if args.file == pipeline_files.STDIN else args.file


def cmd_pipelines(settings: Settings, args: argparse.Namespace) -> int:
    docs = text = None
    if args.action in ("apply", "validate"):  # a file that does not parse fails first
        stdin = sys.stdin.read() if args.file == pipeline_files.STDIN else None
        docs = pipeline_files.read(args.file, stdin)
        text = stdin if stdin is not None else _text(args.file)
    if args.action == "validate":
        return _validate(args, docs or [], text)
    with answer_only():
        return asyncio.run(_pipelines(settings, args, docs))


def _text(path: str) -> str | None:
    try:
        return Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):  # read() just managed: only line numbers are lost
        return None


def _validate(args: argparse.Namespace, docs: list[Any], text: str | None) -> int:
    from dashpipe.cli import validate

    lines, valid = validate.report(docs, text)
    print("\n".join(lines))
    if valid:
        return exits.OK
    bad = sum(1 for line in lines if not line.startswith(("ok ", "  note: ")))
    print(f"dashpipe: error: {_file_name(args)}: {bad} problem(s)", file=sys.stderr)
    return exits.USAGE


async def _pipelines(settings: Settings, args: argparse.Namespace, docs: list[Any] | None
                     ) -> int:
    from dashpipe.runtime import open_runtime
    from dashpipe.settings import ADMIN

    async with open_runtime(settings, stack.endpoints(settings).bootstrap_servers) as rt:
        svc = rt.service
        if docs is not None:
            return await _apply(args, docs, rt)
        if args.action == "list":
            team = args.team or ADMIN
            views = [svc.view(p) for p in svc.list(ADMIN) if team in (ADMIN, p.team_id)]
            now = datetime.now(UTC)
            print(render({"pipelines": views}, args.output,
                         lambda: pipeline_files.table(views, now)))
        elif args.action == "get":
            view = svc.view(svc.get(args.id, ADMIN))
            print(render(view, args.output,
                         lambda: pipeline_files.table([view], datetime.now(UTC))))
        elif args.action == "delete":
            await svc.delete(args.id, ADMIN)
            print(f"{args.id} deleted")
        else:
            pipeline = await svc.set_status(args.id, ADMIN,
                                            "paused" if args.action == "pause" else "active")
            print(f"{pipeline.id} {svc.view(pipeline)['status']}")
    return exits.OK


async def _apply(args: argparse.Namespace, docs: list[Any], rt: Any) -> int:
    from dashpipe.cli import plan

    errors = pipeline_files.check(docs, rt.registry.pipelines)
    if errors:
        for line in errors:
            print(line, file=sys.stderr)
        print(f"dashpipe: error: {_file_name(args)}: {len(errors)} problem(s); "
              "no pipeline was applied", file=sys.stderr)
        return exits.USAGE
    if args.dry_run:
        changes = plan.plan(docs, rt.registry.pipelines, _file_name(args))
        for change in changes:
            print("\n".join(change.lines()))
        counts = {what: sum(1 for c in changes if c.outcome.startswith(what))
                  for what in ("created", "changed", "unchanged")}
        print(f"dry run: {counts['created']} to create, {counts['changed']} to change, "
              f"{counts['unchanged']} unchanged; nothing was written", file=sys.stderr)
        return exits.OK
    for doc in pipeline_files.in_order(docs):
        pipeline, outcome = await rt.service.apply(doc)
        print(f"{pipeline.id} {outcome}")
    return exits.OK
