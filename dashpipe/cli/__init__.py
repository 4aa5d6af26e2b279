"""The `dashpipe` command. Errors are one clear line on stderr and a non-zero exit, never a
traceback."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import shlex
import sys
import time
from collections.abc import Callable
from dataclasses import replace
from typing import Any

from dashpipe import __version__, logs
from dashpipe.cli import exits, mapping_cli, pipelines_cli, stack
from dashpipe.cli import replay as replay_cli
from dashpipe.cli.output import add_output, answer_only, columns, render
from dashpipe.cli.roles import ROLES, secret_values
from dashpipe.errors import DashpipeError
from dashpipe.settings import Settings, load_settings

log = logging.getLogger("dashpipe")


def cmd_up(settings: Settings, args: argparse.Namespace) -> int:
    if args.brokers is not None:
        settings = replace(settings, stack=settings.stack.model_copy(
            update={"kafka_brokers": args.brokers}))
    ends = stack.up(settings)
    outcome = asyncio.run(_create_topics(settings, ends.bootstrap_servers))
    _print_status(settings)
    created = [name for name, what in outcome.items() if what != "exists"]
    if created:
        print(f"topics: {', '.join(f'{n} {outcome[n]}' for n in created)}")
    print("\nFor other shells:  eval \"$(dashpipe status --env)\"")
    return 0


def cmd_down(settings: Settings, args: argparse.Namespace) -> int:
    stopped = stack.down(settings, purge=args.purge)
    print("stopped: " + ", ".join(stopped) if stopped else "nothing was running")
    return 0


def cmd_status(settings: Settings, args: argparse.Namespace) -> int:
    if args.env:
        ends = stack.endpoints(settings)
        print(f"export DASHPIPE_KAFKA_BOOTSTRAP_SERVERS={shlex.quote(ends.bootstrap_servers)}")
        print(f"export DASHPIPE_DATABASE_URL="
              f"{shlex.quote(ends.database_url.get_secret_value())}")
        return 0
    return 0 if _print_status(settings, args.output) else 1


def _print_status(settings: Settings, output: str = "table") -> bool:
    rows = stack.status(settings)
    print(render({"services": [{"name": r.name, "state": r.state, "where": r.where}
                               for r in rows]}, output,
                 lambda: columns(("SERVICE", "STATE", "WHERE"),
                                 [(r.name, r.state, r.where) for r in rows])))
    return all(r.state != "stopped" for r in rows)


async def _create_topics(settings: Settings, bootstrap: str, wait: float = 60.0
                         ) -> dict[str, str]:
    """Create the catalogue's topics; retried while brokers that just joined the cluster are
    not ready to answer yet (a restarted cluster registers its nodes before they serve)."""
    from aiokafka.errors import KafkaError

    from dashpipe import kafka, topics

    deadline = time.monotonic() + wait
    while True:
        try:
            async with kafka.started(kafka.admin(bootstrap, settings.kafka)) as admin:
                return await topics.create_all(
                    admin, topics.catalogue(stack.topic_settings(settings)))
        except KafkaError as exc:
            if not exc.retriable or time.monotonic() > deadline:
                raise
            log.info("topics: %s; retrying", type(exc).__name__)
            await asyncio.sleep(1)


def cmd_topics(settings: Settings, args: argparse.Namespace) -> int:
    from dashpipe import kafka, topics

    bootstrap = stack.endpoints(settings).bootstrap_servers
    if args.action == "create":
        with answer_only():
            made = asyncio.run(_create_topics(settings, bootstrap))
        print(render({"topics": made}, args.output,
                     lambda: columns(("TOPIC", "OUTCOME"), list(made.items()))))
        return 0

    async def describe() -> list[dict[str, object]]:
        async with kafka.started(kafka.admin(bootstrap, settings.kafka)) as admin:
            return await topics.describe(admin, topics.catalogue(stack.topic_settings(settings)))

    with answer_only():
        rows = asyncio.run(describe())
    print(render(rows, args.output, lambda: _topics_table(rows)))
    return 0 if all(r["exists"] for r in rows) else 1


def _topics_table(rows: list[dict[str, Any]]) -> str:
    return columns(("TOPIC", "PARTITIONS", "REPLICATION", "CONFIG"), [
        (r["topic"], "MISSING", "-", f"({r['purpose']})") if not r["exists"] else
        (r["topic"], str(r["partitions"]), str(r["replication_factor"]),
         " ".join(f"{k}={v}" for k, v in r["config"].items())) for r in rows])


def cmd_schemas(settings: Settings, args: argparse.Namespace) -> int:
    from schemas import export

    if args.action == "export":
        for path in export.export():
            print(path)
        return 0
    stale = export.stale()
    if stale:
        print("stale schemas (run `dashpipe schemas export`): " + ", ".join(stale),
              file=sys.stderr)
        return 1
    print("JSON Schemas and OpenAPI document are current")
    return 0


def cmd_run(settings: Settings, args: argparse.Namespace) -> int:
    from dashpipe.cli.app import run

    roles = args.roles or list(ROLES)
    unknown = [r for r in roles if r not in ROLES]
    if unknown:
        raise DashpipeError(f"unknown role {unknown[0]!r}; roles are: {', '.join(ROLES)}")
    _check_processes(settings, roles, args.processes)
    settings, ends = stack.resolved(settings)  # the local stack's database too
    if args.processes > 1:
        from dashpipe.cli.web_processes import run_web_processes

        return run_web_processes(settings, args.processes, args.log_level)
    run(settings, ends.bootstrap_servers, roles, loglevel=args.log_level,
        process_index=args.process_index)
    return 0


def _check_processes(settings: Settings, roles: list[str], n: int) -> None:
    if n < 1:
        raise DashpipeError(f"--processes must be at least 1, not {n}")
    if n > 1 and roles != ["web"]:
        raise DashpipeError("--processes runs several processes of the web role only: "
                            "`dashpipe run web --processes N` (the other roles scale by "
                            "partitions, one process each)")
    metrics = settings.web.metrics_port
    if n > 1 and metrics and metrics + n > 65536:
        raise DashpipeError(f"--processes {n}: DASHPIPE_WEB_METRICS_PORT {metrics} + "
                            f"{n - 1} is past the last port")


def cmd_demo(settings: Settings, args: argparse.Namespace) -> int:
    from dashpipe.cli import demo

    settings, ends = stack.resolved(settings)
    logging.getLogger("aiokafka").setLevel(logging.WARNING)  # keep the demo's lines readable
    with contextlib.suppress(KeyboardInterrupt):  # Ctrl-C: every role has stopped cleanly
        asyncio.run(demo.run_demo(settings, ends.bootstrap_servers, ends.kafka_local,
                                  out=lambda line: print(line, flush=True)))
    print("demo stopped")
    return 0


def cmd_dlq(settings: Settings, args: argparse.Namespace) -> int:
    from streams.deadletters.ledger import parse_position

    # bad positions fail before Kafka is touched
    shown = parse_position(args.offset) if args.action == "show" else None
    only = [parse_position(o) for o in args.offset or []] if args.action == "redrive" else None
    with answer_only():
        return asyncio.run(_dlq(settings, args, shown, only))


async def _dlq(settings: Settings, args: argparse.Namespace, shown: tuple[int, int] | None,
               only: list[tuple[int, int]] | None) -> int:
    from dashpipe.runtime import open_runtime
    from streams.deadletters import redrive
    from streams.deadletters.ledger import ledger_of, table

    async with open_runtime(settings, stack.endpoints(settings).bootstrap_servers) as rt:
        if args.action == "redrive":
            report = await redrive.redrive(rt, args.pipeline, args.stage, only)
            print("\n".join(report.lines()))
            return 1 if report.still_failing else 0
        ledger = await ledger_of(rt, args.pipeline)
        if shown is not None:
            print(render(ledger.detail(shown), args.output))
            return 0
        entries = ledger.unresolved(args.stage)
        print(render({"pipeline_id": args.pipeline,
                      "dead_letters": [e.summary() for e in entries]}, args.output,
                     lambda: table(entries) if entries else
                     f"no unresolved dead letters of pipeline {args.pipeline}"))
    return 0


def cmd_offsets(settings: Settings, args: argparse.Namespace) -> int:
    from dashpipe.cli import offsets

    bootstrap = stack.endpoints(settings).bootstrap_servers
    if args.action == "show":
        with answer_only():
            state, rows = asyncio.run(offsets.show(settings, bootstrap, args.role))
        print(render({"group": state.group, "state": state.state, "members": state.members,
                      "partitions": [r.as_dict() for r in rows]}, args.output,
                     lambda: offsets.show_table(state, rows)))
        return 0
    target = offsets.parse_target(args.to)
    with answer_only():
        moved = asyncio.run(offsets.reset(settings, bootstrap, args.role, target))
    print("\n".join(offsets.reset_lines(offsets.group_of(settings, args.role), target, moved)))
    return 0


def _dlq_parser(sub: Any) -> None:
    p = sub.add_parser("dlq", help="a pipeline's dead letters: list, show, redrive")
    actions = p.add_subparsers(dest="action", required=True)
    stages = ["map", "persist", "deliver"]
    listing = actions.add_parser("list", help="the unresolved dead letters")
    show = actions.add_parser("show", help="one dead letter in full (resolved or not)")
    redrive = actions.add_parser("redrive", help="apply the pipeline as it is now to its "
                                                 "unresolved dead letters; resolve them")
    for action in (listing, show, redrive):
        action.add_argument("--pipeline", required=True, metavar="ID")
    listing.add_argument("--stage", choices=stages)
    add_output(listing)
    add_output(show, default="json", json_alias=False)
    show.add_argument("--offset", required=True, metavar="P:O",
                      help="partition:offset in the dead-letter topic (as `list` shows)")
    redrive.add_argument("--stage", choices=stages)
    redrive.add_argument("--offset", action="append", metavar="P:O",
                         help="only this dead letter (repeatable)")


def _offsets_parser(sub: Any) -> None:
    p = sub.add_parser("offsets", help="committed offsets and lag of a role's consumer group; "
                                       "reset them while the role is stopped")
    actions = p.add_subparsers(dest="action", required=True)
    show = actions.add_parser("show", help="per partition: committed offset, end, lag")
    reset = actions.add_parser("reset", help="move the committed offsets (the group must have "
                                             "no member)")
    for action in (show, reset):
        action.add_argument("--role", required=True,
                            choices=[name for name, role in ROLES.items() if role.committed])
    add_output(show)
    reset.add_argument("--to", required=True, metavar="TIME|earliest|latest",
                       help="earliest, latest, or an RFC 3339 time (the first record at or "
                            "after it)")


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="dashpipe", description=__doc__, epilog=exits.EPILOG,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--version", action="version", version=f"dashpipe {__version__}")
    sub = p.add_subparsers(dest="command", required=True)
    up = sub.add_parser("up", help="start the local Kafka and PostgreSQL (idempotent)")
    up.add_argument("--brokers", type=int, choices=range(1, 6), metavar="N",
                    help="Kafka nodes (default 1, or as many as the log was made for); 3 "
                         "gives replication factor 3 and min.insync.replicas 2")
    down = sub.add_parser("down", help="stop what `up` started; data stays in the state folder")
    down.add_argument("--purge", action="store_true",
                      help="also delete the state folder: the Kafka log and the database")
    status = sub.add_parser("status", help="what runs where")
    status.add_argument("--env", action="store_true", help="print export lines for other shells")
    add_output(status)
    run = sub.add_parser("run", help="run roles (all of them when none is named)")
    run.add_argument("roles", nargs="*", metavar="ROLE")
    run.add_argument("--log-level", default="info", choices=["debug", "info", "warn", "error"])
    run.add_argument("--processes", type=int, default=1, metavar="N",
                     help="web only: N processes sharing the web port (SO_REUSEPORT), one "
                          "core each; process i serves /metrics on DASHPIPE_WEB_METRICS_PORT "
                          "+ i (default 1)")
    run.add_argument("--process-index", type=int, help=argparse.SUPPRESS)  # set by --processes
    topics = sub.add_parser("topics", help="the topic catalogue")
    topics.add_argument("action", choices=["create", "describe"])
    add_output(topics)
    schemas = sub.add_parser("schemas", help="the JSON Schemas of the public records, and "
                             "the OpenAPI document of the HTTP API")
    schemas.add_argument("action", choices=["export", "check"])
    pipelines_cli.add_parser(sub)
    mapping_cli.add_parser(sub)
    replay_cli.add_parser(sub)
    _dlq_parser(sub)
    _offsets_parser(sub)
    sub.add_parser("demo", help="a sample API, two demo pipelines and every role in this "
                                "process, showing data moving (Ctrl-C stops)")
    return p


COMMANDS: dict[str, Callable[[Settings, argparse.Namespace], int]] = {
    "up": cmd_up,
    "down": cmd_down,
    "status": cmd_status,
    "run": cmd_run,
    "topics": cmd_topics,
    "schemas": cmd_schemas,
    "pipelines": pipelines_cli.cmd_pipelines,
    "mapping": mapping_cli.cmd_mapping,
    "replay": replay_cli.cmd_replay,
    "dlq": cmd_dlq,
    "offsets": cmd_offsets,
    "demo": cmd_demo,
}


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        settings = load_settings()
        logs.configure(settings.log.format, secrets=secret_values(settings), level=logging.INFO)
        return COMMANDS[args.command](settings, args)
    except DashpipeError as exc:
        print(f"dashpipe: error: {exc}", file=sys.stderr)
        return exits.code_of(exc)
    except KeyboardInterrupt:
        return 130
    except Exception as exc:  # a service failed in a way we did not foresee: no traceback
        if logging.getLogger().isEnabledFor(logging.DEBUG):
            raise
        code = exits.code_of(exc)
        what = _unreachable(exc) if code == exits.UNAVAILABLE else f"{type(exc).__name__}: {exc}"
        print(f"dashpipe: error: {what}", file=sys.stderr)
        return code


def _unreachable(exc: BaseException) -> str:
    """Kafka's `KafkaConnectionError: KafkaConnectionError: Unable to bootstrap ...`, said once
    and with what to do."""
    detail = str(exc).removeprefix(f"{type(exc).__name__}: ") or type(exc).__name__
    return (f"service unavailable ({type(exc).__name__}): {detail}; is the stack up "
            "(`dashpipe status`)?")


if __name__ == "__main__":
    sys.exit(main())
