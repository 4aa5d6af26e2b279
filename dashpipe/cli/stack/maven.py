"""Resolving the broker's jars with `mvn dependency:copy-dependencies`, with progress: the first
`dashpipe up` downloads tens of MB, which takes a minute or more. Maven's own lines are reduced
to one line per jar it downloads (name, size, running count and total) and a last line with
what was copied; everything goes to `say` (stderr), and nothing at all when the jars are
cached.
"""

from __future__ import annotations

import re
import subprocess
import sys
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from dashpipe.errors import StackError

Say = Callable[[str], None]

# Maven 3's batch-mode lines, e.g. `[INFO] Downloaded from central:
# https://repo.maven.apache.org/maven2/org/x/y/1.0/y-1.0.jar (69 kB at 103 kB/s)` (one line)
_DOWNLOADED = re.compile(r"Downloaded from [^:]+: (\S+) \(([\d.]+) (B|kB|MB|GB)")
_COPYING = re.compile(r"Copying (\S+\.jar) to ")
_ANSI = re.compile(r"\x1b\[[0-9;]*m")
_UNITS = {"B": 1, "kB": 1000, "MB": 1000**2, "GB": 1000**3}


def stderr(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def size(n: float) -> str:
    for unit in ("GB", "MB", "kB"):
        if n >= _UNITS[unit]:
            return f"{n / _UNITS[unit]:.1f} {unit}"
    return f"{int(n)} B"


@dataclass
class Progress:
    """Maven's output, line by line, turned into the lines worth showing."""

    jars: int = 0
    downloaded: float = 0  # bytes of every file downloaded (jars and poms)
    copied: int = 0

    def feed(self, line: str) -> str | None:
        """The progress line for one line of Maven's output, or None."""
        line = _ANSI.sub("", line)
        got = _DOWNLOADED.search(line)
        if got:
            url, amount, unit = got.groups()
            self.downloaded += float(amount) * _UNITS[unit]
            if not url.endswith(".jar"):
                return None  # poms: counted in the total, not shown one by one
            self.jars += 1
            return (f"  {url.rsplit('/', 1)[-1]} {amount} {unit} "
                    f"({self.jars} jars, {size(self.downloaded)} downloaded)")
        if _COPYING.search(line):
            self.copied += 1
        return None


def resolve(mvn: str, pom: Path, into: Path, what: str, say: Say = stderr) -> None:
    """Copy the runtime dependencies of `pom` into `into`, showing progress through `say`."""
    say(f"resolving {what} and its dependencies with mvn from Maven Central (first run only; "
        f"cached in {pom.parent})")
    progress = Progress()
    tail: deque[str] = deque(maxlen=40)  # what an error shows
    with subprocess.Popen(
            [mvn, "-B", "-Dstyle.color=never", "-f", str(pom),
             "dependency:copy-dependencies", f"-DoutputDirectory={into}",
             "-DincludeScope=runtime"],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) as proc:
        assert proc.stdout is not None
        for line in proc.stdout:
            tail.append(line.rstrip("\n"))
            shown = progress.feed(line)
            if shown is not None:
                say(shown)
    if proc.returncode != 0:
        raise StackError(f"mvn could not resolve {what}:\n" + "\n".join(tail)[-2000:])
    jars = list(into.glob("*.jar"))
    say(f"resolved {len(jars)} jars ({size(sum(j.stat().st_size for j in jars))}); "
        f"{progress.jars} downloaded, the rest from the local Maven repository")
