"""The Dockerfile's build, replayed on this machine: no Docker engine answers here or in CI.

`python tests/image_steps.py` reads the Dockerfile, copies what the `build` stage's COPY lines
name (less what .dockerignore leaves out of the context) into a temporary folder, runs its RUN
lines there with `$VIRTUAL_ENV` pointing into that folder (so `pip install .` without the dev
extras, into a fresh venv), then checks the final stage against the result: the venv it copies
is the one built, its CMD and every Procfile role's command start far enough to answer
`--version` and `--help`, the roles' code imports, no dev tool came along, every data file
of the packages was installed, and the HEALTHCHECK command runs with what the image has
(answering 0 on a `/readyz` that says 200, 1 on one that nobody serves). Exit 1 on the first
failure. Not replayed: the final stage's RUN (user and folders) and the base image itself.
"""

from __future__ import annotations

import fnmatch
import http.server
import os
import re
import shlex
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import tomllib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("schemas", "dashpipe", "streams", "agents")
STEP_TIMEOUT = 600.0


class StepFailed(Exception):
    """One check of the replay failed; the message says which and why."""


@dataclass
class Stage:
    base: str
    name: str | None
    steps: list[tuple[str, str]] = field(default_factory=list)  # (INSTRUCTION, arguments)

    def all(self, instruction: str) -> list[str]:
        return [args for kind, args in self.steps if kind == instruction]

    def env(self) -> dict[str, str]:
        out: dict[str, str] = {}
        for args in self.all("ENV"):
            for word in shlex.split(args):
                key, sep, value = word.partition("=")
                if not sep:
                    raise StepFailed(f"ENV {args!r}: use the KEY=value form")
                out[key] = re.sub(r"\$(\w+)|\$\{(\w+)\}",
                                  lambda m: out.get(m[1] or m[2], "$" + (m[1] or m[2])), value)
        return out


def instructions(text: str) -> Iterator[tuple[str, str]]:
    """(INSTRUCTION, arguments) of a Dockerfile: comments dropped, continuations joined."""
    pending = ""
    for line in text.splitlines():
        stripped = line.strip()
        if not pending and (not stripped or stripped.startswith("#")):
            continue
        if pending and stripped.startswith("#"):
            continue  # a comment inside a continued instruction
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        whole = (pending + stripped).strip()
        pending = ""
        kind, _, args = whole.partition(" ")
        yield kind.upper(), args.strip()
    if pending:
        raise StepFailed("the Dockerfile ends inside a continued line")


def stages(text: str) -> list[Stage]:
    out: list[Stage] = []
    for kind, args in instructions(text):
        if kind == "FROM":
            words = args.split()
            name = words[2] if len(words) == 3 and words[1].upper() == "AS" else None
            out.append(Stage(words[0], name))
        elif not out:
            raise StepFailed(f"{kind} before the first FROM")
        else:
            out[-1].steps.append((kind, args))
    return out


def exec_form(args: str) -> list[str]:
    """The JSON array of an exec-form CMD/HEALTHCHECK (shell form is refused: a slim image's
    /bin/sh would be one more thing to trust)."""
    import json

    start = args.find("[")
    value = json.loads(args[start:]) if start >= 0 else None
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value) or not value:
        raise StepFailed(f"{args!r} is not in exec form")
    return value


def strip_flags(args: str) -> tuple[dict[str, str], str]:
    """Leading `--flag=value` words of COPY/RUN/HEALTHCHECK, and the rest."""
    flags: dict[str, str] = {}
    rest = args
    while rest.startswith("--"):
        word, _, rest = rest.partition(" ")
        key, _, value = word[2:].partition("=")
        flags[key] = value
        rest = rest.lstrip()
    return flags, rest


# --- the build context ----------------------------------------------------------------------

def ignore_patterns(root: Path) -> list[str]:
    path = root / ".dockerignore"
    lines = path.read_text().splitlines() if path.exists() else []
    patterns = [line.strip().rstrip("/") for line in lines
                if line.strip() and not line.strip().startswith("#")]
    if any(p.startswith("!") for p in patterns):
        raise StepFailed(".dockerignore: exceptions (!) are not replayed here; list exclusions")
    return patterns


def ignored(relative: str, patterns: Sequence[str]) -> bool:
    """Docker's rule, as far as this project uses it: a pattern matches a path from the
    context's root or any of its parent folders; `**/` matches at any depth."""
    parts = relative.split("/")
    prefixes = ["/".join(parts[:i]) for i in range(1, len(parts) + 1)]
    for pattern in patterns:
        if pattern.startswith("**/"):
            tail = pattern[3:]
            if any(fnmatch.fnmatchcase(part, tail) for part in parts):
                return True
        elif any(fnmatch.fnmatchcase(prefix, pattern) for prefix in prefixes):
            return True
    return False


def copy_into(root: Path, sources: Sequence[str], dest: Path, patterns: Sequence[str]) -> None:
    for source in sources:
        if any(ch in source for ch in "*?["):
            raise StepFailed(f"COPY {source}: wildcards are not replayed here")
        path = root / source
        if not path.exists() or ignored(source, patterns):
            raise StepFailed(f"COPY {source}: not in the build context")
        if path.is_file():
            target = dest / path.name if len(sources) > 1 or dest.is_dir() else dest
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(path, target)
            continue
        for item in sorted(path.rglob("*")):
            relative = item.relative_to(root).as_posix()
            if item.is_file() and not ignored(relative, patterns):
                target = dest / item.relative_to(path)
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(item, target)


# --- the replay -----------------------------------------------------------------------------

def run(argv: Sequence[str], *, env: dict[str, str], cwd: Path,
        expect: int | None = 0) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(list(argv), env=env, cwd=cwd, capture_output=True, text=True,
                          timeout=STEP_TIMEOUT, check=False)
    if expect is not None and done.returncode != expect:
        raise StepFailed(f"{shlex.join(argv)} exited {done.returncode}, not {expect}:\n"
                         f"{done.stdout[-2000:]}{done.stderr[-2000:]}")
    return done


def replay_build(stage: Stage, root: Path, work: Path) -> tuple[Path, Path]:
    """Run the build stage in `work`; the WORKDIR and the venv it made."""
    env = stage.env()
    if "VIRTUAL_ENV" not in env:
        raise StepFailed("the build stage sets no VIRTUAL_ENV: where would the venv be?")
    venv = work / "venv"
    shim = work / "bin"  # `python` is the base image's interpreter: this machine's 3.11
    shim.mkdir()
    (shim / "python").symlink_to(sys.executable)
    proc_env = {**os.environ, **env, "VIRTUAL_ENV": str(venv),
                "PATH": f"{shim}{os.pathsep}{os.environ['PATH']}"}
    proc_env.pop("PYTHONPATH", None)
    patterns = ignore_patterns(root)
    cwd: Path | None = None
    for kind, args in stage.steps:
        if kind == "WORKDIR":
            cwd = work / "root" / args.lstrip("/")
            cwd.mkdir(parents=True, exist_ok=True)
        elif kind == "COPY":
            flags, rest = strip_flags(args)
            *sources, dest = shlex.split(rest)
            if flags or dest.startswith("/") or cwd is None:
                raise StepFailed(f"COPY {args}: only relative copies after WORKDIR are replayed")
            copy_into(root, sources, cwd / dest, patterns)
        elif kind == "RUN":
            _, command = strip_flags(args)  # --mount=type=cache: this machine's pip cache
            print(f"  RUN {command}", flush=True)
            if cwd is None:
                raise StepFailed("RUN before WORKDIR is not replayed")
            run(["sh", "-c", command], env=proc_env, cwd=cwd)
        elif kind not in ("ENV", "ARG", "LABEL"):
            raise StepFailed(f"{kind} in the build stage is not replayed here")
    if cwd is None or not (venv / "bin" / "python").exists():
        raise StepFailed("the build stage made no venv at $VIRTUAL_ENV")
    return cwd, venv


def procfile(root: Path) -> dict[str, tuple[dict[str, str], list[str]]]:
    """role -> (the variables its line sets, its command)."""
    out = {}
    for line in (root / "Procfile").read_text().splitlines():
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        role, _, rest = line.partition(":")
        words = shlex.split(rest)
        assignments = {}
        while words and re.fullmatch(r"[A-Z_][A-Z0-9_]*=.*", words[0]):
            key, _, value = words.pop(0).partition("=")
            assignments[key] = value
        out[role.strip()] = (assignments, words)
    return out


class _Ready(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        self.send_response(200 if self.path == "/readyz" else 404)
        self.end_headers()

    def log_message(self, format: str, *args: object) -> None:
        pass


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def check_final(stage: Stage, build: Stage, venv: Path, root: Path, home: Path
                ) -> Iterator[str]:
    """Run from `home`, an empty folder as the image's WORKDIR is: `python -m` and `-c` put
    the current folder first on sys.path, and the checkout's sources would hide the install."""
    built = build.env()["VIRTUAL_ENV"]
    copies = [strip_flags(a) for a in stage.all("COPY")]
    if not any(f.get("from") == build.name and rest.split() == [built, built]
               for f, rest in copies):
        raise StepFailed(f"the final stage does not copy {built} from stage {build.name}")
    env = {k: v.replace(built, str(venv)) for k, v in stage.env().items()}
    env = {**os.environ, **env, "PATH": env.get("PATH", "").replace("$PATH", os.environ["PATH"])}
    env.pop("DASHPIPE_WEB_METRICS_PORT", None)
    env.pop("DASHPIPE_WEB_PORT", None)
    if not env["PATH"].startswith(str(venv / "bin")):
        raise StepFailed(f"the final stage's PATH does not start with {built}/bin")

    cmd = exec_form(stage.all("CMD")[-1])
    commands = {"CMD": cmd} | {f"Procfile {r}": c for r, (_, c) in procfile(root).items()}
    for what, argv in commands.items():
        if shutil.which(argv[0], path=env["PATH"]) != str(venv / "bin" / argv[0]):
            raise StepFailed(f"{what}: {argv[0]} is not the venv's")
    run(["dashpipe", "--version"], env=env, cwd=home)
    for program in {tuple(a[:2]) for a in commands.values()}:
        run([*program, "--help"], env=env, cwd=home)
    yield f"{len(commands)} commands answer --version and --help"

    where, *listed = run(["python", "-c", "import dashpipe.cli.roles as r, dashpipe as d; "
                          "print(d.__file__, *r.ROLES)"], env=env, cwd=home).stdout.split()
    if not where.startswith(str(venv)):
        raise StepFailed(f"dashpipe was imported from {where}, not from the venv")
    missing = set(procfile(root)) - set(listed)
    if missing:
        raise StepFailed(f"roles of the Procfile the installed package lacks: {missing}")
    yield f"roles import: {' '.join(listed)}"

    dev = tomllib.loads((root / "pyproject.toml").read_text())["project"][
        "optional-dependencies"]["dev"]
    names = [re.split(r"[<>=!~\[; ]", d, maxsplit=1)[0] for d in dev]
    probe = ("import importlib.metadata as m, sys\n"
             "for n in sys.argv[1:]:\n"
             "    try: m.distribution(n); print(n)\n"
             "    except m.PackageNotFoundError: pass\n")
    extra = run(["python", "-c", probe, *names], env=env, cwd=home).stdout.split()
    if extra:
        raise StepFailed(f"dev tools in the image: {extra}")
    yield f"none of the {len(names)} dev extras installed"

    site = run(["python", "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
               env=env, cwd=home).stdout.strip()
    lacking = [str(p.relative_to(root)) for pkg in PACKAGES for p in (root / pkg).rglob("*")
               if p.is_file() and p.suffix not in (".py", ".pyc", ".md")
               and "__pycache__" not in p.parts
               and not (Path(site) / p.relative_to(root)).exists()]
    if lacking:
        raise StepFailed(f"data files not installed (pyproject package-data): {lacking}")
    yield "every data file of the packages installed"

    check = exec_form(strip_flags(stage.all("HEALTHCHECK")[-1])[1])
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Ready)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        ready = {**env, "DASHPIPE_WEB_METRICS_PORT": str(server.server_address[1])}
        run(check, env=ready, cwd=home, expect=0)
        web = {**env, "DASHPIPE_WEB_PORT": str(server.server_address[1])}
        run(check, env=web, cwd=home, expect=0)
    finally:
        server.shutdown()
        server.server_close()
    nobody = {**env, "DASHPIPE_WEB_PORT": str(_free_port())}
    refused = run(check, env=nobody, cwd=home, expect=1)
    if "/readyz" not in refused.stderr:
        raise StepFailed(f"the health check says no URL when it fails: {refused.stderr!r}")
    yield f"HEALTHCHECK {shlex.join(check)}: 0 when ready, 1 when nobody answers"


def main(root: Path = ROOT) -> int:
    found = stages((root / "Dockerfile").read_text())
    build = next((s for s in found if s.name == "build"), None)
    if build is None or found[-1] is build:
        print("the Dockerfile needs a `build` stage and a final stage", file=sys.stderr)
        return 1
    tag = found[-1].base.partition(":")[2]
    here = f"{sys.version_info.major}.{sys.version_info.minor}"
    if not tag.startswith(here + "-") and tag != here:
        print(f"the image is {found[-1].base}, this machine's Python {here}", file=sys.stderr)
        return 1
    with tempfile.TemporaryDirectory(prefix="dashpipe-image-") as tmp:
        try:
            print(f"image steps: replaying the build stage in {tmp}", flush=True)
            _, venv = replay_build(build, root, Path(tmp))
            home = Path(tmp) / "home"
            home.mkdir()
            for line in check_final(found[-1], build, venv, root, home):
                print(f"  ok: {line}", flush=True)
        except (StepFailed, subprocess.TimeoutExpired) as exc:
            print(f"image steps: {exc}", file=sys.stderr)
            return 1
    print("image steps: the image's build and start commands work on this machine")
    return 0


if __name__ == "__main__":
    sys.exit(main())
