"""What the sides of `bench_peers.py` share: the peers' own virtual environment, under the
stack's cache folder (never the project's), made once with `python -m venv`, the pinned
versions installed with its pip, reused while its stamp file lists the same pins; running a
peer's program under its python; a measured rate.

The pins were checked on PyPI for CPython 3.11 on linux x86_64 (`pip index versions`,
`pip install` into a scratch venv) on 2026-12-03.
"""

from __future__ import annotations

import contextlib
import json
import logging
import subprocess
import sys
import tempfile
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from harness import BENCH_DIR, Child, child

log = logging.getLogger("bench.peers")

# requirement -> version; one table for every peer
PINS: dict[str, str] = {
    "bytewax[kafka]": "0.21.1",
    "quixstreams[postgresql]": "3.28.1",
    "faust-streaming": "0.15.3",
    "fastapi": "0.165.0",
    "uvicorn[standard]": "0.55.0",  # uvloop + httptools, as FastAPI's docs install it
    "aiokafka": "0.14.0",
    "orjson": "3.13.0",
}
# peer -> the modules its program imports (checked before it is run)
NEEDS: dict[str, tuple[str, ...]] = {
    "bytewax": ("bytewax.connectors.kafka", "orjson"),
    "quixstreams": ("quixstreams", "orjson"),
    "quixstreams-postgresql": ("quixstreams.sinks.community.postgresql",),
    "faust": ("faust", "orjson"),
    "fastapi": ("fastapi", "uvicorn", "aiokafka"),
}
STAMP = "dashpipe-peer-pins.json"


@dataclass(frozen=True)
class PeerEnv:
    python: Path
    versions: dict[str, str]  # distribution -> installed version
    unavailable: dict[str, str]  # peer -> why it cannot run

    def reason(self, peer: str) -> str | None:
        return self.unavailable.get(peer)


def why(exc: BaseException) -> str:
    """One line of a peer's failure: what happened and the last line it printed."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    if not lines:
        return type(exc).__name__
    return lines[0] if len(lines) == 1 else f"{lines[0]} {lines[-1][:300]}"


def _run(cmd: list[str], timeout: float) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)


def _tail(done: subprocess.CompletedProcess[str]) -> str:
    lines = (done.stderr or done.stdout).strip().splitlines()
    return lines[-1] if lines else f"exit code {done.returncode}"


def ensure(cache_dir: Path, timeout: float = 600.0) -> PeerEnv:
    """The environment, made or brought to the pins when its stamp differs; a requirement that
    fails to install only makes the peers needing it unavailable."""
    home = cache_dir.expanduser() / "peers-venv"
    python = home / "bin" / "python"
    stamp = home / STAMP
    failed: dict[str, str] = {}
    try:
        current = json.loads(stamp.read_text()) if stamp.exists() else None
        if current != PINS or not python.exists():
            if not python.exists():
                log.info("making the peers' virtual environment %s", home)
                done = _run([sys.executable, "-m", "venv", str(home)], 120)
                if done.returncode != 0:
                    reason = f"python -m venv failed: {_tail(done)}"
                    return PeerEnv(python, {}, dict.fromkeys(NEEDS, reason))
            reqs = [f"{name}=={version}" for name, version in PINS.items()]
            log.info("installing the peers' pins into %s: %s", home, " ".join(reqs))
            # bounded retries: without an index (offline CI) the peers are soon "unavailable"
            pip = [str(python), "-m", "pip", "install", "-q", "--disable-pip-version-check",
                   "--retries", "2", "--timeout", "20"]
            done = _run([*pip, *reqs], timeout)
            if done.returncode != 0:  # one by one, so one broken pin spares the others
                for req in reqs:
                    one = _run([*pip, req], timeout)
                    if one.returncode != 0:
                        failed[req] = _tail(one)
            if not failed:
                stamp.write_text(json.dumps(PINS))
    except (OSError, subprocess.TimeoutExpired) as exc:
        reason = f"installing the peers failed: {type(exc).__name__}: {exc}"
        return PeerEnv(python, {}, dict.fromkeys(NEEDS, reason))
    found = probe(python)
    for req, version in PINS.items():
        have = found["versions"].get(req.split("[")[0])
        if have is not None and have != version:
            log.warning("the peers' environment has %s %s, pinned %s (delete %s to reinstall)",
                        req, have, version, home)
    extra = f" ({'; '.join(f'{k}: {v}' for k, v in failed.items())})" if failed else ""
    unavailable = {peer: f"{reason}{extra}" for peer, reason in found["missing"].items()}
    return PeerEnv(python, found["versions"], unavailable)


# run by the peers' python: which peers' imports fail, and the installed versions
_PROBE = """\
import importlib, importlib.metadata as m, json, sys
needs, names = json.loads(sys.argv[1]), json.loads(sys.argv[2])
missing, versions = {}, {}
for peer, modules in needs.items():
    for module in modules:
        try:
            importlib.import_module(module)
        except Exception as exc:
            missing[peer] = f"import {module}: {type(exc).__name__}: {exc}"
            break
for name in names:
    try:
        versions[name] = m.version(name)
    except m.PackageNotFoundError:
        pass
print(json.dumps({"missing": missing, "versions": versions}))
"""
DISTRIBUTIONS = ["bytewax", "quixstreams", "faust-streaming", "fastapi", "uvicorn", "aiokafka",
                 "confluent-kafka", "psycopg2-binary", "orjson"]


def probe(python: Path) -> dict[str, Any]:
    """One run of the peers' python: {"missing": {peer: why}, "versions": {dist: version}}."""
    try:
        done = _run([str(python), "-c", _PROBE, json.dumps(NEEDS), json.dumps(DISTRIBUTIONS)],
                    120)
        if done.returncode == 0:
            found: dict[str, Any] = json.loads(done.stdout)
            return found
        reason = _tail(done)
    except (OSError, subprocess.TimeoutExpired, ValueError) as exc:
        reason = f"{type(exc).__name__}: {exc}"
    return {"missing": dict.fromkeys(NEEDS, f"the peers' python failed: {reason}"),
            "versions": {}}


# --- running the peers -----------------------------------------------------------------

PEERS = BENCH_DIR / "peers"
POLL_S = 0.05
START_LIMIT_S = 90.0  # from a process's start to its first output (Faust's start is slow)
IDLE_LIMIT_S = 60.0
Counter = Callable[[], Awaitable[int]]
LABEL = {"bytewax": "Bytewax", "quixstreams": "Quix Streams", "faust": "Faust agent",
         "quixstreams-postgresql": "Quix Streams PostgreSQLSink", "fastapi": "FastAPI"}
DIST = {"bytewax": "bytewax", "quixstreams": "quixstreams", "faust": "faust-streaming",
        "quixstreams-postgresql": "quixstreams", "fastapi": "fastapi"}


@dataclass(frozen=True)
class Rate:
    rows: int  # output rows (requests) inside the measured window
    seconds: float
    cpu_s: float  # the measured process, over the same window
    capped: bool = False  # the window ended at --cap before every row was there

    @property
    def rate(self) -> float:
        return self.rows / self.seconds

    @property
    def cpu_us(self) -> float:
        return self.cpu_s / max(self.rows, 1) * 1e6


def peer_name(env: PeerEnv, peer: str) -> str:
    version = env.versions.get(DIST[peer])
    return f"{LABEL[peer]} {version}" if version else LABEL[peer]


def unavailable(peer: str, reason: str) -> None:
    print(f"peer {peer}: unavailable ({reason})", flush=True)


@contextlib.contextmanager
def peer_child(env: PeerEnv, name: str, args: list[str], extra: dict[str, str]
               ) -> Iterator[Child]:
    """A peer program under the peers' python, with its own scratch state folder."""
    with tempfile.TemporaryDirectory(prefix=f"bench-peer-{name}-") as state, \
            child(name, [str(env.python), *args],
                  {"PEER_STATE_DIR": state, "PYTHONUNBUFFERED": "1", **extra}) as proc:
        yield proc
