"""`python -m dashpipe.healthcheck [URL...]`: the container health check of every role.

Exit 0 when one of the URLs answers 200, else 1 with each failure on stderr (Docker keeps the
output in `docker inspect`). Without URLs it asks `/readyz` on the metrics port
(`DASHPIPE_WEB_METRICS_PORT`, where a process without the web role serves it) and then on the
web port (`DASHPIPE_WEB_PORT`, where the web role does): one image runs every role, and the
check cannot know which one it was given. Standard library only: slim images have no curl,
and a check that runs every few seconds should not import the whole platform.
"""

from __future__ import annotations

import os
import sys
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence

TIMEOUT_SECONDS = 5.0  # the web role's /readyz waits up to 3 s for Kafka's metadata
WILDCARDS = {"", "0.0.0.0", "::", "[::]"}


def default_urls(env: Mapping[str, str]) -> list[str]:
    """The `/readyz` URLs of this process, from the same variables the settings read."""
    host = env.get("DASHPIPE_WEB_HOST", "127.0.0.1")
    if host in WILDCARDS:  # bound to every address: loopback is one of them
        host = "127.0.0.1"
    if ":" in host and not host.startswith("["):
        host = f"[{host}]"
    ports = [env.get("DASHPIPE_WEB_METRICS_PORT", ""), env.get("DASHPIPE_WEB_PORT", "8080")]
    return [f"http://{host}:{port}/readyz" for port in dict.fromkeys(p for p in ports if p)]


def probe(url: str, timeout: float = TIMEOUT_SECONDS) -> str | None:
    """None when `url` answers 200, else why not (one line)."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            status = response.status
    except urllib.error.HTTPError as exc:  # 503 while Kafka is away or the process stops
        return f"{url}: HTTP {exc.code}"
    except (OSError, ValueError) as exc:  # refused, timed out, not a URL
        return f"{url}: {type(exc).__name__}: {exc}"
    return None if status == 200 else f"{url}: HTTP {status}"


def main(argv: Sequence[str] | None = None, env: Mapping[str, str] | None = None) -> int:
    urls = list(sys.argv[1:] if argv is None else argv) or default_urls(
        os.environ if env is None else env)
    failures = []
    for url in urls:
        failure = probe(url)
        if failure is None:
            print(f"{url}: ready")
            return 0
        failures.append(failure)
    for failure in failures:
        print(failure, file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())
