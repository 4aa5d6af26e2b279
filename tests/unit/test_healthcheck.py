"""`python -m dashpipe.healthcheck`, the containers' health check, against real local HTTP
servers (loopback): 0 on a 200, 1 on a 503 or when nobody listens."""

from __future__ import annotations

import http.server
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager

import pytest

from dashpipe import healthcheck


@contextmanager
def answering(status: int) -> Iterator[int]:
    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(status if self.path == "/readyz" else 404)
            self.end_headers()

        def log_message(self, format: str, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port


def test_default_urls_try_the_metrics_port_then_the_web_port() -> None:
    assert healthcheck.default_urls({}) == ["http://127.0.0.1:8080/readyz"]
    env = {"DASHPIPE_WEB_HOST": "0.0.0.0", "DASHPIPE_WEB_METRICS_PORT": "9102"}
    assert healthcheck.default_urls(env) == ["http://127.0.0.1:9102/readyz",
                                             "http://127.0.0.1:8080/readyz"]
    assert healthcheck.default_urls({"DASHPIPE_WEB_HOST": "::1", "DASHPIPE_WEB_PORT": "81"}) \
        == ["http://[::1]:81/readyz"]


def test_ready_when_one_url_answers_200(capsys: pytest.CaptureFixture[str]) -> None:
    with answering(200) as port:
        env = {"DASHPIPE_WEB_METRICS_PORT": str(_closed_port()), "DASHPIPE_WEB_PORT": str(port)}
        assert healthcheck.main([], env) == 0
    assert f":{port}/readyz: ready" in capsys.readouterr().out


def test_not_ready_on_503_or_nobody_listening(capsys: pytest.CaptureFixture[str]) -> None:
    closed = _closed_port()
    with answering(503) as port:
        assert healthcheck.main([f"http://127.0.0.1:{port}/readyz",
                                 f"http://127.0.0.1:{closed}/readyz"]) == 1
    err = capsys.readouterr().err
    assert f":{port}/readyz: HTTP 503" in err
    assert f":{closed}/readyz: URLError" in err


def test_the_module_runs_as_the_image_runs_it() -> None:
    with answering(200) as port:
        done = subprocess.run([sys.executable, "-m", "dashpipe.healthcheck",
                               f"http://127.0.0.1:{port}/readyz"],
                              capture_output=True, text=True, timeout=30, check=False)
    assert done.returncode == 0, done.stderr
    done = subprocess.run([sys.executable, "-m", "dashpipe.healthcheck", "not a url"],
                          capture_output=True, text=True, timeout=30, check=False)
    assert done.returncode == 1 and "ValueError" in done.stderr
