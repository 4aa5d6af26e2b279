"""`dashpipe run web --processes N` without Kafka: the usage errors, each child's command and
environment, the reserved port, and the parent's supervision (signals forwarded, a child that
ends stops the others, a child that will not stop is killed), with small Python scripts as
the children."""

from __future__ import annotations

import asyncio
import dataclasses
import os
import signal
import socket
import sys
from pathlib import Path

import pytest

from dashpipe import cli
from dashpipe.cli import web_processes
from dashpipe.cli.web_processes import reserve, supervise
from dashpipe.settings import Settings, WebSettings, load_settings
from tests.helpers import wait_until


@pytest.mark.parametrize(("argv", "says"), [
    (["run", "map", "--processes", "2"], "--processes runs several processes of the web role"),
    (["run", "--processes", "2"], "--processes runs several processes of the web role"),
    (["run", "web", "map", "--processes", "2"], "--processes runs several processes of"),
    (["run", "web", "--processes", "0"], "--processes must be at least 1, not 0"),
])
def test_processes_is_refused_unless_the_only_role_is_web(
        argv: list[str], says: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(argv) == 2  # before any service is touched
    err = capsys.readouterr().err
    assert err.startswith("dashpipe: error: ") and says in err and err.count("\n") == 1


def test_metrics_ports_past_the_last_port_are_refused(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("DASHPIPE_WEB_METRICS_PORT", "65535")
    assert cli.main(["run", "web", "--processes", "2"]) == 2
    assert "DASHPIPE_WEB_METRICS_PORT 65535 + 1 is past the last port" in capsys.readouterr().err


def test_processes_defaults_to_one_and_takes_only_numbers(
        capsys: pytest.CaptureFixture[str]) -> None:
    args = cli.parser().parse_args(["run", "web"])
    assert (args.processes, args.process_index) == (1, None)
    with pytest.raises(SystemExit) as done:
        cli.parser().parse_args(["run", "web", "--processes", "two"])
    assert done.value.code == 2 and "--processes: invalid int value" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        cli.parser().parse_args(["run", "--help"])
    shown = capsys.readouterr().out
    assert "--processes N" in shown and "--process-index" not in shown  # set by the parent


def _settings(metrics_port: int | None) -> Settings:
    return dataclasses.replace(load_settings(), web=WebSettings(metrics_port=metrics_port))


def test_each_child_runs_web_on_the_shared_port_with_its_own_metrics_port(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("DASHPIPE_WEB_METRICS_PORT", raising=False)
    argv, env = web_processes.child(_settings(9100), 1, 8123, "warn")
    assert argv == [sys.executable, "-m", "dashpipe.cli", "run", "web", "--log-level", "warn",
                    "--process-index", "1"]
    assert (env["DASHPIPE_WEB_PORT"], env["DASHPIPE_WEB_REUSE_PORT"],
            env["DASHPIPE_WEB_METRICS_PORT"]) == ("8123", "true", "9101")
    assert web_processes.child(_settings(0), 1, 8123, "info")[1]["DASHPIPE_WEB_METRICS_PORT"] \
        == "0"  # a free port each
    assert "DASHPIPE_WEB_METRICS_PORT" not in web_processes.child(_settings(None), 1, 1, "info")[1]


def _listener(port: int) -> socket.socket:
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    s.bind(("127.0.0.1", port))
    s.listen()
    return s


def test_the_reserved_port_is_real_and_shared_only_with_reuse_port() -> None:
    with reserve("127.0.0.1", 0) as reserved:
        port = reserved.getsockname()[1]
        assert port > 0
        with _listener(port), _listener(port):  # what the children do
            with socket.socket() as plain, pytest.raises(OSError):
                plain.bind(("127.0.0.1", port))  # a program without SO_REUSEPORT cannot
            with socket.create_connection(("127.0.0.1", port), timeout=5):
                pass  # connections reach the listeners, never the reservation
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        with pytest.raises(OSError):
            reserve("127.0.0.1", held.getsockname()[1])


# a child: says it runs (a file), stops on SIGTERM with exit code 0, or as told
CHILD = """
import pathlib, signal, sys, time
signal.signal(signal.SIGTERM, {on_term})
pathlib.Path(sys.argv[1]).write_text("up")
{then}
"""
STOPS = "lambda *_: sys.exit(0)"


def _child(tmp_path: Path, name: str, then: str = "time.sleep(600)", on_term: str = STOPS
           ) -> tuple[list[str], dict[str, str]]:
    code = CHILD.format(on_term=on_term, then=then)
    return [sys.executable, "-c", code, str(tmp_path / name)], dict(os.environ)


async def _all_up(tmp_path: Path, *names: str) -> None:
    await wait_until(lambda: all((tmp_path / n).exists() for n in names), 20, "children up")


async def test_a_signal_is_forwarded_and_children_that_stop_cleanly_exit_0(
        tmp_path: Path) -> None:
    run = asyncio.ensure_future(supervise([_child(tmp_path, "a"), _child(tmp_path, "b")]))
    await _all_up(tmp_path, "a", "b")
    os.kill(os.getpid(), signal.SIGTERM)  # to the parent: the supervisor's handler takes it
    assert await asyncio.wait_for(run, 20) == 0


async def test_a_child_that_ends_stops_the_others_with_its_exit_code(tmp_path: Path) -> None:
    stopped = tmp_path / "stopped"
    other = _child(tmp_path, "b", on_term=f"lambda *_: (pathlib.Path({str(stopped)!r})"
                                          ".write_text('yes'), sys.exit(0))")
    failing = _child(tmp_path, "a", then=f"while not pathlib.Path({str(tmp_path / 'b')!r})"
                                         ".exists(): time.sleep(0.01)\nsys.exit(3)")
    assert await asyncio.wait_for(supervise([failing, other]), 20) == 3
    assert stopped.read_text() == "yes"


async def test_a_killed_child_fails_the_parent(tmp_path: Path) -> None:
    killed = _child(tmp_path, "a", then="import os; os.kill(os.getpid(), signal.SIGKILL)")
    assert await asyncio.wait_for(supervise([killed, _child(tmp_path, "b")]), 20) == 1


async def test_a_child_that_does_not_stop_in_time_is_killed_and_fails_the_parent(
        tmp_path: Path) -> None:
    stubborn = _child(tmp_path, "b", on_term="signal.SIG_IGN")
    run = asyncio.ensure_future(supervise([_child(tmp_path, "a"), stubborn], stop_seconds=1))
    await _all_up(tmp_path, "a", "b")
    os.kill(os.getpid(), signal.SIGTERM)
    assert await asyncio.wait_for(run, 20) == 1
