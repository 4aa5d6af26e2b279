"""App wiring: one faust app per process, carrying the roles it was asked to run.

Faust gives every role its worker lifecycle (start, signals, graceful stop) and, where a
role needs one, agents and tables. Hot paths that must move batches use aiokafka directly
from inside a faust task (see README, "Where Faust is used").
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

import faust

from dashpipe.settings import Settings
from dashpipe.stack import Endpoints
from dashpipe.topics import TopicNames

log = logging.getLogger(__name__)

ROLES = ("web", "poll", "map", "persist", "deliver")


@dataclass(frozen=True)
class Context:
    """What every role gets: settings, where the services are, and the topic names."""

    settings: Settings
    endpoints: Endpoints
    topics: TopicNames

    def group(self, role: str) -> str:
        return f"{self.settings.kafka.group_prefix}-{role}"


Attach = Callable[[faust.App, Context], None]


def _placeholder(role: str) -> Attach:
    def attach(app: faust.App, ctx: Context) -> None:
        async def announce() -> None:
            log.info("role %s ready (group %s)", role, ctx.group(role))

        app.task(announce)

    return attach


# role name -> function that adds the role's agents, tasks and services to the app.
REGISTRY: dict[str, Attach] = {role: _placeholder(role) for role in ROLES}


def make_app(ctx: Context, roles: list[str]) -> faust.App:
    app = faust.App(
        f"{ctx.settings.kafka.group_prefix}-app-{'-'.join(roles)}",
        broker=f"kafka://{ctx.endpoints.bootstrap_servers}",
        web_enabled=False,
        store="memory://",
        autodiscover=False,
        datadir=str(ctx.settings.stack.state_dir / "faust"),
        producer_acks=-1,
        topic_replication_factor=ctx.settings.topics.replication_factor,
        topic_allow_declare=False,
    )
    for role in roles:
        REGISTRY[role](app, ctx)
    return app


def run(ctx: Context, roles: list[str], loglevel: str = "info") -> None:
    """Run the roles in this process until a signal stops it."""
    from faust.worker import Worker

    app = make_app(ctx, roles)
    Worker(app, loglevel=loglevel, quiet=True).execute_from_commandline()
