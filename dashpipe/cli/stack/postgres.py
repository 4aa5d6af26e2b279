"""Local PostgreSQL: a throwaway cluster made with the system's `initdb` and `pg_ctl`.

PostgreSQL refuses to run as root. When we are root, the server runs as the
`postgres` system user (`runuser -u postgres`) on a folder it owns; if that user
cannot reach `<state_dir>/postgres` (a parent folder closed to others), the
cluster lives under the postgres user's home and `<state_dir>/postgres/data`
is a symlink to it.
"""

from __future__ import annotations

import contextlib
import glob
import hashlib
import os
import pwd
import secrets
import shutil
import subprocess
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import asyncpg

from dashpipe.cli.stack import state as st
from dashpipe.errors import StackError, ToolMissing
from dashpipe.settings import StackSettings

USER = "dashpipe"
DATABASE = "dashpipe"
PG_HINT = "install the PostgreSQL server (Debian: apt-get install postgresql)"


def bin_dir(stack: StackSettings) -> Path:
    """Where initdb and pg_ctl are: the setting, PATH, pg_config, then Debian's layout."""
    candidates: list[Path] = []
    if stack.pg_bin_dir:
        candidates.append(stack.pg_bin_dir)
    on_path = shutil.which("initdb")
    if on_path:
        candidates.append(Path(on_path).parent)
    pg_config = shutil.which("pg_config")
    if pg_config:
        out = subprocess.run([pg_config, "--bindir"], capture_output=True, text=True, check=False)
        candidates.append(Path(out.stdout.strip()))
    versions = sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=_version_key, reverse=True)
    candidates += [Path(p) for p in versions]
    for folder in candidates:
        if (folder / "initdb").exists() and (folder / "pg_ctl").exists():
            return folder
    raise ToolMissing("initdb", PG_HINT)


def _version_key(path: str) -> float:
    try:
        return float(Path(path).parent.name)
    except ValueError:
        return 0.0


def _as_root() -> bool:
    return os.geteuid() == 0


def _postgres_user() -> pwd.struct_passwd:
    try:
        return pwd.getpwnam("postgres")
    except KeyError:
        raise ToolMissing(
            "the 'postgres' system user",
            "PostgreSQL will not run as root; install the server package (it creates the "
            "user) or run dashpipe as a normal user",
        ) from None


def _run(cmd: list[str], check: bool = True) -> subprocess.CompletedProcess[str]:
    if _as_root():
        cmd = ["runuser", "-u", "postgres", "--", *cmd]
    done = subprocess.run(cmd, capture_output=True, text=True, check=False, cwd="/")
    if check and done.returncode != 0:
        raise StackError(f"{Path(cmd[-1] if _as_root() else cmd[0]).name} failed:\n"
                         + (done.stdout + done.stderr)[-2000:])
    return done


def _reachable(folder: Path) -> bool:
    if not _as_root():
        return True
    return _run(["test", "-w", str(folder)], check=False).returncode == 0


def _home(stack: StackSettings, state: st.StackState) -> Path:
    """The folder that holds the cluster, made and owned by the user who runs the server."""
    if state.pg_data:
        return Path(state.pg_data).parent
    home = stack.state_dir.resolve() / "postgres"
    home.mkdir(parents=True, exist_ok=True)
    if not _as_root():
        return home
    user = _postgres_user()
    os.chown(home, user.pw_uid, user.pw_gid)
    if _reachable(home):
        return home
    digest = hashlib.sha256(str(home).encode()).hexdigest()[:12]
    outside = Path(user.pw_dir if os.path.isdir(user.pw_dir) else "/var/tmp") / f"dashpipe-{digest}"
    outside.mkdir(parents=True, exist_ok=True)
    os.chown(outside, user.pw_uid, user.pw_gid)
    link = home / "data"
    if not link.is_symlink():
        link.symlink_to(outside / "data")
    return outside


def _timescaledb_available(bins: Path) -> bool:
    pg_config = bins / "pg_config"
    share = Path("/usr/share/postgresql") / bins.parent.name
    if pg_config.exists():
        out = subprocess.run([str(pg_config), "--sharedir"], capture_output=True, text=True,
                             check=False)
        share = Path(out.stdout.strip() or share)
    return (share / "extension" / "timescaledb.control").exists()


def _init(bins: Path, data: Path, password: str) -> None:
    if (data / "PG_VERSION").exists():
        return
    pwfile = data.parent / "initdb.pw"
    pwfile.write_text(password + "\n")
    if _as_root():
        user = _postgres_user()
        os.chown(pwfile, user.pw_uid, user.pw_gid)
    pwfile.chmod(0o600)
    try:
        _run([str(bins / "initdb"), "-D", str(data), "-U", USER, "--auth=scram-sha-256",
              f"--pwfile={pwfile}", "-E", "UTF8", "--no-locale"])
    finally:
        pwfile.unlink(missing_ok=True)
    with open(data / "postgresql.conf", "a") as conf:
        conf.write("\ninclude_if_exists = 'dashpipe.conf'\n")


def running(stack: StackSettings, state: st.StackState) -> bool:
    if not state.pg_data or not Path(state.pg_data, "PG_VERSION").exists():
        return False
    bins = bin_dir(stack)
    return _run([str(bins / "pg_ctl"), "-D", state.pg_data, "status"], check=False).returncode == 0


def start(stack: StackSettings, state: st.StackState) -> st.StackState:
    """Start the cluster unless it already runs; returns the state with its port and password."""
    if running(stack, state) and state.pg_port:
        return state
    bins = bin_dir(stack)
    home = _home(stack, state)
    data = home / "data"
    password = state.pg_password or secrets.token_urlsafe(18)
    _init(bins, data, password)
    port = st.free_port(state.pg_port)
    settings = [f"port = {port}", "listen_addresses = '127.0.0.1'", "unix_socket_directories = ''",
                "max_connections = 200"]
    if _timescaledb_available(bins):
        settings.append("shared_preload_libraries = 'timescaledb'")
    conf = data / "dashpipe.conf"
    conf.write_text("\n".join(settings) + "\n")
    if _as_root():
        user = _postgres_user()
        os.chown(conf, user.pw_uid, user.pw_gid)
    _run([str(bins / "pg_ctl"), "-D", str(data), "-l", str(home / "server.log"), "-w",
          "-t", "60", "start"])
    return state.model_copy(update={"pg_port": port, "pg_password": password,
                                    "pg_data": str(data)})


def url(state: st.StackState, database: str = DATABASE) -> str:
    return f"postgresql://{USER}:{state.pg_password}@127.0.0.1:{state.pg_port}/{database}"


async def create_database(state: st.StackState) -> bool:
    """Create the `dashpipe` database (and TimescaleDB in it when the server has it)."""
    import asyncpg

    conn = await asyncpg.connect(url(state, "postgres"), timeout=10)
    try:
        exists = await conn.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", DATABASE)
        if not exists:
            await conn.execute(f'CREATE DATABASE "{DATABASE}"')
    finally:
        await conn.close()
    conn = await asyncpg.connect(url(state), timeout=10)
    try:
        has_ts = await conn.fetchval(
            "SELECT 1 FROM pg_available_extensions WHERE name = 'timescaledb'")
        if has_ts:
            await conn.execute("CREATE EXTENSION IF NOT EXISTS timescaledb")
        return bool(has_ts)
    finally:
        await conn.close()


def stop(stack: StackSettings, state: st.StackState) -> bool:
    if not running(stack, state):
        return False
    bins = bin_dir(stack)
    _run([str(bins / "pg_ctl"), "-D", str(state.pg_data), "-m", "fast", "-w", "stop"])
    return True


async def storages(url: str) -> dict[str, str]:
    """Storage (`postgres`, `timescaledb`) -> the URL of a database for it on the server of
    `url`, as the tests and the benchmarks use them: the stack's database for the storage it
    has, and a sibling for the other, created when missing (`<db>_plain` without the extension, or
    `<db>_timescaledb` with it when the server can load it). A storage the server cannot
    give (TimescaleDB not installed) is absent."""
    conn = await asyncpg.connect(url, timeout=10)
    try:
        has = await conn.fetchval("SELECT 1 FROM pg_extension WHERE extname = 'timescaledb'")
        can = await conn.fetchval(
            "SELECT 1 FROM pg_available_extensions WHERE name = 'timescaledb'")
        name = await conn.fetchval("SELECT current_database()")
    finally:
        await conn.close()
    if has:
        return {"postgres": await _sibling(url, f"{name}_plain", False), "timescaledb": url}
    found = {"postgres": url}
    if can:
        found["timescaledb"] = await _sibling(url, f"{name}_timescaledb", True)
    return found


async def _sibling(url: str, name: str, timescaledb: bool) -> str:
    conn = await asyncpg.connect(url, timeout=10)
    try:
        if not await conn.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", name):
            with contextlib.suppress(asyncpg.DuplicateDatabaseError):  # a parallel session
                await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()
    other = urlunsplit(urlsplit(url)._replace(path=f"/{name}"))
    if timescaledb:
        conn = await asyncpg.connect(other, timeout=10)
        try:
            await conn.execute("CREATE EXTENSION IF NOT EXISTS timescaledb")
        finally:
            await conn.close()
    return other
