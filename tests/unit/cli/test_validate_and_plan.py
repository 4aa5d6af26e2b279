"""`dashpipe pipelines validate` (offline, field paths and lines) and the change `apply
--dry-run` reports against running definitions (dashpipe.cli.plan), without Kafka."""

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from dashpipe import cli
from dashpipe.cli import exits, pipeline_files
from dashpipe.cli.plan import plan
from dashpipe.cli.validate import line_of, pipeline_nodes, report
from dashpipe.pipelines import parse
from schemas.pipeline import Pipeline

ROOT = Path(__file__).resolve().parents[3]
NOW = datetime(2026, 1, 1, tzinfo=UTC)

FILE = """\
pipelines:
  - id: weather
    team_id: team-b
    name: Weather
    type: polling
    interval_seconds: 60
    source_type: http_api
    source_config:
      url: ftp://nope
  - id: hooks
    team_id: team-a
    name: Hooks
    type: realtime
    source_type: webhook
    source_config: {webhook_secret: s3cret}
    sinks:
      - sink_type: webhook
        sink_config: {url: 12, secret: x}
  - id: fine
    team_id: team-a
    name: Fine
    type: realtime
    source_type: webhook
    source_config: {webhook_secret: "***"}
"""


def test_validate_names_each_bad_field_by_path_and_line() -> None:
    docs = pipeline_files.read("-", FILE)
    lines, valid = report(docs, FILE)
    assert not valid
    assert lines == [
        "weather: source_config.url: String should match pattern '^https?://' (line 9)",
        "hooks: sinks.0.sink_config.url: Input should be a valid string (line 18)",
        "ok fine",
        "  note: fine: source_config.webhook_secret: a masked value (***) only keeps the secret "
        "of an existing pipeline; give the real value (line 24)",
    ]


def test_lines_point_at_the_field_or_the_object_that_lacks_it() -> None:
    text = "- id: a\n  source_config:\n    url: x\n- id: b\n"
    nodes = pipeline_nodes(text, 2)
    assert line_of(nodes[0], "source_config.url") == 3
    assert line_of(nodes[0], "source_config.token") == 3  # missing: its parent object
    assert line_of(nodes[1], "name") == 4
    assert pipeline_nodes(text, 3) == []  # counts differ: no line numbers rather than wrong ones


def test_validate_command_exit_codes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(FILE)
    assert cli.main(["pipelines", "validate", "-f", str(bad)]) == exits.USAGE
    out, err = capsys.readouterr()
    assert "weather: source_config.url:" in out and "2 problem(s)" in err
    example = str(ROOT / "examples" / "pipelines.yaml")
    assert cli.main(["pipelines", "validate", "-f", example]) == exits.OK
    assert capsys.readouterr().out.split() == [
        "ok", "usgs-quakes", "ok", "shop-orders", "ok", "shop-products", "ok", "payments",
        "ok", "large-orders"]
    missing = str(tmp_path / "nope.yaml")
    assert cli.main(["pipelines", "validate", "-f", missing]) == exits.USAGE


def running(doc: dict[str, Any], version: int = 1) -> Pipeline:
    return parse({**doc, "created_at": NOW, "updated_at": NOW, "mapping_version": version})


def hook(**extra: Any) -> dict[str, Any]:
    return {"id": "hooks", "team_id": "team-a", "name": "Hooks", "type": "realtime",
            "source_type": "webhook", "source_config": {"webhook_secret": "s3cret-1"},
            **extra}


def test_masked_and_same_secrets_are_unchanged() -> None:
    old = running(hook())
    view = old.public()  # what `get -o json` prints, `***` included
    assert view["source_config"]["webhook_secret"] == "***"
    [same] = plan([view], {"hooks": old}, "listed.json")
    [again] = plan([hook()], {"hooks": old}, "p.yaml")
    assert (same.outcome, same.diff, again.outcome) == ("unchanged", [], "unchanged")


def test_a_change_is_a_unified_diff_of_the_masked_view() -> None:
    old = running(hook())
    new = hook(name="Hooks (EU)", source_config={"webhook_secret": "s3cret-2"},
               data_mapping={"fields": {"n": {"path": "n"}}})
    [change] = plan([new], {"hooks": old}, "p.yaml")
    assert change.outcome == "changed (mapping version 1 -> 2)"
    assert change.diff[:2] == ["--- hooks (running)", "+++ hooks (p.yaml)"]
    assert "-name: Hooks" in change.diff and "+name: Hooks (EU)" in change.diff
    assert any(line.startswith("+data_mapping:") for line in change.diff)
    text = "\n".join(change.lines())
    assert "s3cret" not in text  # never a secret, old or new
    assert change.notes == ["source_config.webhook_secret: the secret changes (value not shown)"]


def test_created_pipelines_come_in_apply_order() -> None:
    child = {"id": "child", "team_id": "team-a", "name": "c", "type": "derived",
             "source_type": "pipeline", "source_config": {"pipeline_id": "hooks"}}
    changes = plan([child, hook()], {}, "p.yaml")
    assert [(c.id, c.outcome) for c in changes] == [("hooks", "created"), ("child", "created")]
    assert changes[0].diff[0] == "--- hooks (not running)"
    assert "+  webhook_secret: '***'" in changes[0].diff
