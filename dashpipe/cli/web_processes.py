"""`dashpipe run web --processes N`: N web processes on one port, so webhooks use N cores.

A web process is one event loop, one core. The parent reserves the address first: a socket
bound with SO_REUSEPORT and never listening (so no connection waits on it), which turns port 0
into one real port for every child and makes a port another program holds fail here, once.
Then it starts N children, each `dashpipe run web` as the Procfile runs it (its own Runtime:
registry, Kafka producer, metrics), listening on that port with SO_REUSEPORT; the kernel
spreads new connections over them. What must hold across them holds as across any web
processes: rate limits are shared through `dashpipe.members`, a repeated `webhook-id` is
skipped by the map role (docs/architecture.md#several-processes-per-role).

Child #i serves its own `/metrics`, `/healthz` and `/readyz` on DASHPIPE_WEB_METRICS_PORT + i
when that is set (the shared port answers for whichever child took the connection) and its
log lines carry `#i`.

The parent forwards SIGTERM and SIGINT to the children and waits for them, bounded (then
SIGKILL). A child that ends on its own (a role failed, a kill) makes the parent stop the
others and exit non-zero rather than restart it: the supervisor that runs the parent (systemd,
Kubernetes, a Procfile runner) already restarts with backoff and counts restarts, and a child
that failed at start would fail again at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
import sys
from collections.abc import Mapping, Sequence

from dashpipe.cli.roles import RoleFailed
from dashpipe.settings import Settings

log = logging.getLogger(__name__)

STOP_SECONDS = 45.0  # a child's roles get roles.STOP_SECONDS to stop, then its clients close
EXIT_FAILED = 1
# how a child ends when it was asked to stop: 0, or by the signal itself when it came before
# the child's handlers were installed (130: Ctrl-C while it imported)
STOPPED = frozenset({0, -signal.SIGTERM, -signal.SIGINT, 130})

Child = tuple[list[str], Mapping[str, str]]  # argv, environment


def reserve(host: str, port: int) -> socket.socket:
    """A socket bound to (host, port) with SO_REUSEPORT and not listening: port 0 becomes a
    real port the children can share; a port held without SO_REUSEPORT raises OSError."""
    family, kind, proto, _, address = socket.getaddrinfo(
        host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind(address)
    except OSError:
        sock.close()
        raise
    return sock


def child(settings: Settings, index: int, port: int, loglevel: str) -> Child:
    """The command and environment of web process #`index`."""
    env = {**os.environ, "DASHPIPE_WEB_PORT": str(port), "DASHPIPE_WEB_REUSE_PORT": "true"}
    metrics = settings.web.metrics_port
    if metrics is not None:  # 0 stays 0: a free port each
        env["DASHPIPE_WEB_METRICS_PORT"] = str(metrics + index if metrics else 0)
    return ([sys.executable, "-m", "dashpipe.cli", "run", "web", "--log-level", loglevel,
             "--process-index", str(index)], env)


def run_web_processes(settings: Settings, n: int, loglevel: str) -> int:
    """Run `n` web processes on the settings' address until a signal stops them (0) or one
    of them ends (non-zero); the exit code."""
    host, port = settings.web.host, settings.web.port
    try:
        reserved = reserve(host, port)
    except OSError as exc:
        raise RoleFailed("web", f"cannot listen on {host}:{port}: {exc}") from exc
    with reserved:  # held until the children have stopped: the port stays theirs
        port = reserved.getsockname()[1]
        log.info("web on http://%s:%d: %d processes sharing the port", host, port, n)
        return asyncio.run(supervise([child(settings, i, port, loglevel) for i in range(n)]))


async def supervise(children: Sequence[Child], stop_seconds: float = STOP_SECONDS) -> int:
    """Run the children until SIGTERM or SIGINT (forwarded to them as SIGTERM) or until one
    of them ends; then stop the others. The exit code: 0 when a signal stopped every child
    cleanly, else the code of the first that ended or failed (`EXIT_FAILED` for a signal)."""
    loop = asyncio.get_running_loop()
    asked = asyncio.Event()
    signals = (signal.SIGTERM, signal.SIGINT)
    for sig in signals:
        loop.add_signal_handler(sig, asked.set)
    procs: list[asyncio.subprocess.Process] = []
    first: int | None = None
    try:
        for argv, env in children:
            procs.append(await asyncio.create_subprocess_exec(*argv, env=dict(env)))
        log.info("web processes started: %s",
                 ", ".join(f"#{i} pid {p.pid}" for i, p in enumerate(procs)))
        ended = [asyncio.ensure_future(p.wait()) for p in procs]
        signalled = asyncio.ensure_future(asked.wait())
        await asyncio.wait([signalled, *ended], return_when=asyncio.FIRST_COMPLETED)
        signalled.cancel()
        if not asked.is_set():
            first = next(i for i, task in enumerate(ended) if task.done())
            log.error("web process #%d (pid %d) ended (%s): stopping the others", first,
                      procs[first].pid, _status(ended[first].result()))
    finally:
        codes = await _stop(procs, stop_seconds)
        for sig in signals:
            loop.remove_signal_handler(sig)
    if first is not None:
        return codes[first] if codes[first] > 0 else EXIT_FAILED
    failed = [(i, code) for i, code in enumerate(codes) if code not in STOPPED]
    for i, code in failed:
        log.error("web process #%d did not stop cleanly (%s)", i, _status(code))
    return next((code if code > 0 else EXIT_FAILED for _, code in failed), 0)


async def _stop(procs: list[asyncio.subprocess.Process], seconds: float) -> list[int]:
    """SIGTERM to every child still running, then wait up to `seconds`; SIGKILL the late."""
    for proc in procs:
        if proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGTERM)
    waits = [asyncio.ensure_future(p.wait()) for p in procs]
    if waits:
        await asyncio.wait(waits, timeout=seconds)
    for i, (proc, task) in enumerate(zip(procs, waits, strict=True)):
        if not task.done():
            log.warning("web process #%d (pid %d) did not stop within %.0f s: killed", i,
                        proc.pid, seconds)
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
    return [await p.wait() for p in procs]


def _status(code: int) -> str:
    if code >= 0:
        return f"exit code {code}"
    try:
        return f"signal {signal.Signals(-code).name}"
    except ValueError:
        return f"signal {-code}"
