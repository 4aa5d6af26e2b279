"""App wiring: one faust app per process, carrying the roles it was asked to run.

Faust owns the worker lifecycle (start-up, signals, graceful stop, crash handling). The roles
run as one faust task over a shared `Runtime`; their hot paths use aiokafka directly (batched
sends, `getmany`), see README "Where Faust is used".
"""

from __future__ import annotations

import gc
import logging

import faust
from faust.app.base import BootStrategy

from dashpipe.runtime import open_runtime, run_roles
from dashpipe.settings import Settings

log = logging.getLogger(__name__)

ROLES = ("web", "poll", "map", "persist", "deliver")


def make_app(settings: Settings, bootstrap: str, roles: list[str]) -> faust.App:
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
                # ~25,000 until it is stored. At 20,000, persist ran one 7 ms collection per
                # batch, ~1.2 us per row (bench_persist.py: 0.58 -> 0.7); ~1 us less per
                # webhook than the default (bench_webhook.py), memory unchanged
                gc.set_threshold(100_000, 10, 10)
                await run_roles(rt, roles)
        except Exception as exc:
            log.error("dashpipe stopped: %s", exc)
            await app.crash(exc)

    app.task(main)
    return app


def run(settings: Settings, bootstrap: str, roles: list[str], loglevel: str = "info") -> None:
    """Run the roles in this process until a signal stops it."""
    import mode.loop
    from faust.worker import Worker

    mode.loop.use("uvloop")  # faust-streaming[uvloop]: ~1.5x the requests per CPU second

    app = make_app(settings, bootstrap, roles)
    Worker(app, loglevel=loglevel, quiet=True).execute_from_commandline()
