"""What `dashpipe up` started and where: `<state_dir>/stack.json`, plus small process helpers."""

from __future__ import annotations

import os
import signal
import socket
import time
from pathlib import Path

import orjson
from pydantic import BaseModel


class StackState(BaseModel):
    kafka_port: int | None = None  # the first node's (every node's: `kafka_ports`)
    controller_port: int | None = None
    kafka_ports: list[int] = []
    controller_ports: list[int] = []
    pg_port: int | None = None
    pg_password: str | None = None
    pg_data: str | None = None


def state_file(state_dir: Path) -> Path:
    return state_dir / "stack.json"


def load(state_dir: Path) -> StackState:
    path = state_file(state_dir)
    if not path.exists():
        return StackState()
    return StackState.model_validate(orjson.loads(path.read_bytes()))


def save(state_dir: Path, state: StackState) -> None:
    state_dir.mkdir(parents=True, exist_ok=True)
    path = state_file(state_dir)
    tmp = path.with_suffix(".tmp")
    tmp.write_bytes(orjson.dumps(state.model_dump(), option=orjson.OPT_INDENT_2))
    tmp.chmod(0o600)  # it holds the database password
    tmp.replace(path)


def port_free(port: int) -> bool:
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def free_port(preferred: int | None = None) -> int:
    """`preferred` when it is still free (so addresses survive a restart), else any free port."""
    if preferred and port_free(preferred):
        return preferred
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def read_pid(pid_file: Path, marker: str) -> int | None:
    """The pid in `pid_file` if that process is alive and its command line holds `marker`."""
    try:
        pid = int(pid_file.read_text().strip())
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except (OSError, ValueError):
        return None
    return pid if marker.encode() in cmdline else None


def terminate(pid: int, timeout: float = 30.0) -> None:
    """SIGTERM, wait for the process to go, SIGKILL after `timeout`."""
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not Path(f"/proc/{pid}").exists() or _zombie(pid):
            return
        time.sleep(0.1)
    os.kill(pid, signal.SIGKILL)


def _zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(") ", 1)[1].startswith("Z")
    except (OSError, IndexError):
        return True
