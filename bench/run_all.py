"""Run every `bench/bench_*.py` in turn; exits non-zero if one of them fails.

Usage: `python bench/run_all.py [--quick]` (`--quick` is passed through to each benchmark;
each quick form takes about a minute or less). The ones that drive the web role with `wrk`
(`bench_overload.py`, `bench_peers.py`, `bench_webhook.py`) run last: their exit code 2 for a
missing `wrk` would otherwise stop the rest, as a broker that is not up rightly does.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
NEED_WRK = ("bench_overload.py", "bench_peers.py", "bench_webhook.py")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="run every bench/bench_*.py in turn")
    parser.add_argument("--quick", action="store_true", help="small smoke runs")
    args = parser.parse_args(argv)
    failed = []
    scripts = sorted(BENCH_DIR.glob("bench_*.py"), key=lambda p: (p.name in NEED_WRK, p.name))
    for script in scripts:
        print(f"== {script.name}", flush=True)
        cmd = [sys.executable, str(script), *(["--quick"] if args.quick else [])]
        code = subprocess.run(cmd, check=False).returncode
        if code != 0:
            print(f"== {script.name} failed with exit code {code}", flush=True)
            failed.append(script.name)
            if code == 2:  # the broker is not up: the others would fail the same way
                break
    if failed:
        print(f"failed: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
