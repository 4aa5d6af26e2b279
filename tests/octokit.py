"""GitHub's own webhook signer, `@octokit/webhooks-methods`, run with Node: the oracle of the
`github` scheme's tests.

The package is installed on first use, at a pinned version, under the cache folder
(`DASHPIPE_CACHE_DIR`, default `~/.cache/dashpipe`, in `npm/`), never in the repository; a
lock keeps parallel test sessions from installing it twice. Node and npm come from the system
(`.ci/run` installs them when missing).
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import subprocess
from pathlib import Path

PACKAGE = "@octokit/webhooks-methods"
VERSION = "6.0.0"
_SIGN = """
import { sign } from "@octokit/webhooks-methods";
let input = "";
for await (const chunk of process.stdin) input += chunk;
const out = [];
for (const [secret, payload] of JSON.parse(input)) out.push(await sign(secret, payload));
process.stdout.write(JSON.stringify(out));
"""


def missing_tools() -> str | None:
    """Why GitHub's signer cannot run here (no `node` or `npm` on PATH), or None."""
    absent = [tool for tool in ("node", "npm") if shutil.which(tool) is None]
    return f"{' and '.join(absent)} not installed" if absent else None


def folder() -> Path:
    base = os.environ.get("DASHPIPE_CACHE_DIR") or Path.home() / ".cache" / "dashpipe"
    return Path(base).expanduser() / "npm"


def install() -> Path:
    """The npm folder holding `PACKAGE` at `VERSION`, installed now if it is not yet."""
    where = folder()
    where.mkdir(parents=True, exist_ok=True)
    manifest = where / "node_modules" / PACKAGE / "package.json"
    with open(where / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not manifest.exists() or json.loads(manifest.read_text())["version"] != VERSION:
            subprocess.run(["npm", "install", "--prefix", str(where), "--no-audit", "--no-fund",
                            "--loglevel=error", f"{PACKAGE}@{VERSION}"],
                           check=True, timeout=300, stdout=subprocess.DEVNULL)
    return where


def sign(deliveries: list[tuple[str, bytes]]) -> list[str]:
    """The `X-Hub-Signature-256` value GitHub sends for each (secret, body), computed by
    octokit's `sign` in one Node process. Bodies are UTF-8 (octokit signs text)."""
    where = install()
    result = subprocess.run(
        ["node", "--input-type=module", "-e", _SIGN], cwd=where, check=True, timeout=60,
        input=json.dumps([[secret, body.decode()] for secret, body in deliveries]),
        capture_output=True, text=True)
    signatures: list[str] = json.loads(result.stdout)
    return signatures
