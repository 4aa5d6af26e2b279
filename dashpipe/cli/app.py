"""App wiring: one faust app per process, carrying the roles it was asked to run.

Faust owns the worker lifecycle (start-up, signals, graceful stop). The roles run as one
faust task over a shared `Runtime`; their hot paths use aiokafka directly (batched sends,
`getmany`), see README "Where Faust is used".

A role that fails (at start or later) stops the process: one line `role <name> failed:
<Type>: <message>`, the other roles stopped (the API answering 503 meanwhile), exit code 1.
"""

from __future__ import annotations

import asyncio
import gc
import logging
from collections.abc import Callable

import faust
from faust.app.base import BootStrategy
from faust.worker import Worker

from dashpipe import logs
from dashpipe.cli.roles import RoleFailed, describe, run_roles, secret_values
from dashpipe.runtime import open_runtime
from dashpipe.settings import Settings

log = logging.getLogger(__name__)

EXIT_FAILED = 1  # a role failed, or what the roles share could not start


def make_app(settings: Settings, bootstrap: str, roles: list[str],
             failed: Callable[[], None]) -> faust.App:
    """The faust app of a process; `failed` is called once its roles have stopped because
    one failed (or the runtime could not start), the reason already logged in one line."""
    app = faust.App(
        f"{settings.kafka.group_prefix}-app-{'-'.join(roles)}",
        broker=f"kafka://{bootstrap}",
        web_enabled=False,
        store="memory://",
        autodiscover=False,
        datadir=str(settings.stack.state_dir / "faust"),
        producer_acks=-1,
        topic_replication_factor=settings.topics.replication_factor,
        topic_allow_declare=False,
    )

    # faust's own Kafka clients (its consumer thread, group and assignor topic) and sensors stay
    # off: the roles bring their own aiokafka clients, faust runs the worker lifecycle only
    app.boot_strategy = BootStrategy(app, enable_kafka=False, enable_sensors=False)

    async def main() -> None:
        try:
            async with open_runtime(settings, bootstrap) as rt:
                gc.freeze()  # start-up objects live forever: keep them out of every collection
                # a young collection when 100,000 more container objects live than at the
                # last one, instead of 700: a request or a record allocates dozens that
                # refcounting frees anyway, and a consumer batch of 5,000 records holds
                # ~25,000 until it is stored, which a lower threshold scans again and again
                gc.set_threshold(100_000, 10, 10)
                await run_roles(rt, roles)
        except RoleFailed as exc:  # the other roles have stopped; nothing else is running
            log.error("%s", exc)
        except Exception as exc:  # open_runtime: Kafka unreachable, registry never ready
            log.debug("dashpipe could not start", exc_info=exc)
            log.error("dashpipe could not start: %s", describe(exc, settings))
        failed()  # not app.crash(): it logs a traceback and a second line for the same cause

    app.task(main)
    return app


class RolesWorker(Worker):
    """faust's worker, which the roles' task can also stop, with exit code `EXIT_FAILED`."""

    exit_code = 0
    _stopping: asyncio.Future[None] | None = None

    def stop_failed(self) -> None:
        self.exit_code = EXIT_FAILED
        self._stopping = asyncio.ensure_future(self.stop())

    def stop_and_shutdown(self) -> None:
        if self._stopping is not None:  # as a signal's stop is, finish it before the loop ends
            self.loop.run_until_complete(self._stopping)
        super().stop_and_shutdown()


def run(settings: Settings, bootstrap: str, roles: list[str], loglevel: str = "info",
        process_index: int | None = None) -> None:
    """Run the roles in this process until a signal stops them (exit 0) or one of them fails
    (exit `EXIT_FAILED`). `process_index`: this is web process #i of `--processes` (its log
    lines say so)."""
    import mode.loop

    mode.loop.use("uvloop")  # faust-streaming[uvloop]: fewer CPU seconds per request

    worker: RolesWorker | None = None

    def failed() -> None:
        assert worker is not None  # the app's task starts inside the worker
        worker.stop_failed()

    # the worker would replace the root logger's handlers with mode's, whose formatter turns
    # Faust's and aiokafka's arguments into multi-line tables: logging stays ours (text or
    # JSON, secrets masked, now including the local stack's database password)
    logs.configure(settings.log.format, secrets=secret_values(settings), roles=roles,
                   level=loglevel, process_index=process_index)
    worker = RolesWorker(make_app(settings, bootstrap, roles, failed), loglevel=loglevel,
                         quiet=True, override_logging=False)
    worker.spinner = None  # faust's progress spinner draws on stdout: log lines say the same
    try:
        worker.execute_from_commandline()
    except SystemExit as exc:  # the worker always ends with one, 0 when it stopped cleanly
        if worker.exit_code and not exc.code:
            raise SystemExit(worker.exit_code) from None
        raise
