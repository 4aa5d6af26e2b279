"""`dashpipe pipelines`: reading and checking pipelines files, the list table, the parser."""

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
import pytest

from dashpipe import cli
from dashpipe.cli import pipeline_files
from dashpipe.cli.pipeline_files import FileError, check, read, table
from dashpipe.pipelines import parse

ROOT = Path(__file__).resolve().parents[3]
NOW = datetime(2026, 1, 1, 12, tzinfo=UTC)


def webhook(pid: str = "hooks", **extra: Any) -> dict[str, Any]:
    return {"id": pid, "team_id": "team-a", "name": pid, "type": "realtime",
            "source_type": "webhook", "source_config": {"webhook_secret": "s3cret-value"},
            **extra}


def polling(pid: str = "poller", **source: Any) -> dict[str, Any]:
    return {"id": pid, "team_id": "team-a", "name": pid, "type": "polling",
            "interval_seconds": 30, "source_type": "http_api",
            "source_config": {"url": "https://api.example.com/x", **source}}


def test_example_file_is_valid() -> None:
    docs = read(str(ROOT / "examples" / "pipelines.yaml"))
    assert check(docs, {}) == []
    assert {d["source_type"] for d in docs} == {"http_api", "graphql", "webhook", "pipeline"}
    by_id = {d["id"]: d for d in docs}
    # YAML dates stay text, as JSON would give them
    assert by_id["shop-orders"]["source_config"]["cursor"]["initial"] == "2024-01-01T00:00:00Z"


@pytest.mark.parametrize(("name", "text", "ids"), [
    ("one.yaml", "id: a\nteam_id: t\n", ["a"]),
    ("list.yml", "- id: a\n  team_id: t\n- id: b\n  team_id: t\n", ["a", "b"]),
    ("wrapped.json", '{"pipelines": [{"id": "a", "team_id": "t"}, {"id": "b"}]}', ["a", "b"]),
    ("docs.yaml", "id: a\n---\n- id: b\n---\n", ["a", "b"]),
    ("list.json", '[{"id": "a"}, {"id": "b"}]', ["a", "b"]),
    ("no-extension", '{"id": "a"}', ["a"]),
])
def test_a_file_holds_one_a_list_or_a_wrapper(tmp_path: Path, name: str, text: str,
                                              ids: list[str]) -> None:
    path = tmp_path / name
    path.write_text(text)
    assert [d["id"] for d in read(str(path))] == ids


def test_yaml_scalars_follow_yaml_1_2() -> None:
    """The core schema, as JSON reads the same values: only true/false are booleans."""
    text = ("const: NO\nb: yes\nc: on\nd: off\ne: y\nf: true\ng: FALSE\nh: 012\n"
            "i: 0o17\nj: 0x1F\nk: 1e3\nl: .inf\nm: ~\nn:\no: 1_000\np: 2024-01-01\n"
            "q: 1:20\nr: -.5\non: key\n")
    (doc,) = read("-", text)
    assert doc == {"const": "NO", "b": "yes", "c": "on", "d": "off", "e": "y", "f": True,
                   "g": False, "h": 12, "i": 15, "j": 31, "k": 1000.0, "l": float("inf"),
                   "m": None, "n": None, "o": "1_000", "p": "2024-01-01", "q": "1:20",
                   "r": -0.5, "on": "key"}
    assert type(doc["h"]) is int and type(doc["k"]) is float


def test_a_yaml_mapping_constant_no_stays_text() -> None:
    (doc,) = read("-", "data_mapping:\n  fields:\n    answer: {const: NO}\n")
    assert doc["data_mapping"]["fields"]["answer"] == {"const": "NO"}


def test_stdin_reads_yaml_and_json() -> None:
    assert read("-", '{"pipelines": [{"id": "a"}]}') == [{"id": "a"}]
    assert read("-", "id: a\n") == [{"id": "a"}]


@pytest.mark.parametrize(("name", "text", "message"), [
    ("bad.json", '{"id": "a",\n "x": }', "bad.json: invalid JSON at line 2"),
    ("bad.yaml", "id: a\n  - b: [\n", "bad.yaml: invalid YAML at line 2"),
    ("empty.yaml", "# nothing\n", "empty.yaml holds no pipeline"),
])
def test_unreadable_files_say_where(tmp_path: Path, name: str, text: str, message: str) -> None:
    path = tmp_path / name
    path.write_text(text)
    with pytest.raises(FileError, match=message.replace("[", r"\[")):
        read(str(path))
    with pytest.raises(FileError, match="cannot read"):
        read(str(tmp_path / "missing.yaml"))


def test_errors_name_the_pipeline_and_the_field() -> None:
    docs: list[Any] = [
        polling("bad-url", url="ftp://nope"),
        {k: v for k, v in webhook().items() if k != "id"},
        "just text",
        {k: v for k, v in polling("no-team").items() if k != "team_id"},
        polling("paged", pagination={"type": "cursor", "next_path": "next"}),
        {**webhook("mismatch"), "type": "polling", "interval_seconds": 5},
    ]
    errors = check(docs, {})
    assert errors[0].startswith("bad-url: source_config.url: String should match pattern")
    assert "#2: id: Field required" in errors
    assert "#3: expected a pipeline object, got a string" in errors
    assert "no-team: team_id: Field required" in errors
    assert any(e.startswith("paged: source_config.pagination: ") and "param is required" in e
               for e in errors)
    assert any(e.startswith("mismatch: source_type: ") for e in errors)


def test_a_missing_source_config_is_checked_as_empty() -> None:
    bare = {k: v for k, v in webhook("bare").items() if k != "source_config"}
    assert check([bare], {}) == ["bare: source_config.webhook_secret: Field required"]


def test_duplicate_ids_are_refused() -> None:
    errors = check([webhook("a"), webhook("a")], {})
    assert errors == ["a: id: appears more than once in the file (#1 and #2)"]


def derived(pid: str, parent: str) -> dict[str, Any]:
    return {"id": pid, "team_id": "team-a", "name": pid, "type": "derived",
            "source_type": "pipeline", "source_config": {"pipeline_id": parent}}


def test_derived_pipelines_apply_after_their_source() -> None:
    docs = [derived("c", "b"), derived("b", "a"), webhook("a"), webhook("z")]
    assert check(docs, {}) == []
    assert [d["id"] for d in pipeline_files.in_order(docs)] == ["a", "b", "c", "z"]
    cycle = [derived("x", "y"), derived("y", "x")]
    assert sorted(d["id"] for d in pipeline_files.in_order(cycle)) == ["x", "y"]


def test_a_derived_pipeline_needs_a_known_source() -> None:
    assert check([derived("c", "nowhere")], {}) == [
        "c: source_config.pipeline_id: pipeline 'nowhere' not found (neither in the file nor "
        "in the registry)"]
    assert check([derived("c", "known")], {"known": parse(webhook("known"))}) == []


def test_masked_secrets_keep_an_existing_secret_only() -> None:
    masked = webhook("a", source_config={"webhook_secret": "***"})
    assert check([masked], {}) == [
        "a: source_config.webhook_secret: a masked value (***) only keeps the secret of an "
        "existing pipeline; give the real value"]
    existing = parse(webhook("a"))
    assert check([masked], {"a": existing}) == []


def test_a_view_applies_as_it_is() -> None:
    view = parse(polling("p", auth_type="bearer", token="upstream-token")).public()
    view.update(status="error", error_message="HTTP 500", last_run_at=NOW.isoformat(),
                next_due_at=None, cursor=3, created_at=NOW.isoformat(),
                updated_at=NOW.isoformat())
    existing = parse(polling("p", auth_type="bearer", token="upstream-token"))
    assert check([view], {"p": existing}) == []
    assert pipeline_files.prepare(view, existing)["source_config"]["token"] == "upstream-token"
    assert pipeline_files.prepare(view, existing)["status"] == "active"


def test_errors_never_hold_secrets() -> None:
    bad = polling("p", url="nope", auth_type="basic", username="u", password="hunter2-secret")
    hook = webhook("h", source_config={"webhook_secret": "whsec_not*base64!secret"})
    text = "\n".join(check([bad, hook], {}))
    assert "hunter2-secret" not in text and "not*base64" not in text
    assert "h: source_config: webhook_secret[0]: a whsec_ secret must be base64" in text


def test_table_shows_status_interval_age_and_error() -> None:
    views: list[dict[str, Any]] = [
        {"id": "quakes", "team_id": "demo", "type": "polling", "status": "error",
         "interval_seconds": 5, "last_run_at": (NOW - timedelta(seconds=75)).isoformat(),
         "error_message": "HTTP 500 " + "x" * 100},
        {"id": "hook", "team_id": "demo", "type": "realtime", "status": "paused",
         "interval_seconds": None, "last_run_at": None, "error_message": None},
    ]
    lines = table(views, NOW).splitlines()
    assert lines[0].split() == ["ID", "TEAM", "TYPE", "STATUS", "INTERVAL", "LAST", "RUN",
                                "ERROR"]
    assert lines[1].split()[:7] == ["quakes", "demo", "polling", "error", "5s", "1m", "ago"]
    assert lines[1].endswith("…") and len(lines[1].split("HTTP 500")[1]) < 60
    assert lines[2].split() == ["hook", "demo", "realtime", "paused", "-", "-", "-"]
    assert lines[1].index("polling") == lines[2].index("realtime")  # aligned columns


def test_parser_knows_the_pipelines_commands() -> None:
    p = cli.parser()
    assert p.parse_args(["pipelines", "apply", "-f", "x.yaml"]).file == "x.yaml"
    assert p.parse_args(["pipelines", "get", "a", "-o", "yaml"]).output == "yaml"
    assert p.parse_args(["pipelines", "list", "--json"]).output == "json"  # -o json's alias
    for action in ("pause", "resume", "delete"):
        assert p.parse_args(["pipelines", action, "a"]).id == "a"
    assert p.parse_args(["demo"]).command == "demo"
    with pytest.raises(SystemExit):
        p.parse_args(["pipelines", "apply"])  # -f is required


def test_an_unreadable_file_fails_before_kafka(tmp_path: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "p.json"
    path.write_bytes(orjson.dumps([webhook()])[:-3])
    assert cli.main(["pipelines", "apply", "-f", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"dashpipe: error: {path}: invalid JSON at line 1")


def test_the_documented_example_is_valid() -> None:
    readme = (ROOT / "docs" / "configuration.md").read_text()
    section = readme.split("### Example", 1)[1].split("\n## ", 1)[0]
    example = section.split("```yaml\n", 1)[1].split("```", 1)[0]
    docs = pipeline_files.read("-", example)
    assert check(docs, {}) == [] and [d["id"] for d in docs] == ["shop-orders", "payments"]


def test_version_is_the_packages(capsys: pytest.CaptureFixture[str]) -> None:
    import tomllib

    with pytest.raises(SystemExit) as done:
        cli.parser().parse_args(["--version"])
    assert done.value.code == 0
    declared = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    assert capsys.readouterr().out == f"dashpipe {declared}\n"
