"""CLI conventions: `-o table|json|yaml` (and `--json`) on every list and get, and the exit
codes, one table from exception types (dashpipe.cli.exits)."""

from pathlib import Path

import orjson
import pytest
import yaml
from aiokafka.errors import GroupCoordinatorNotAvailableError, KafkaConnectionError

from dashpipe import cli
from dashpipe.cli import exits
from dashpipe.cli.output import render
from dashpipe.cli.pipeline_files import FileError
from dashpipe.cli.roles import RoleFailed
from dashpipe.errors import ConfigError, ToolMissing, Unavailable
from dashpipe.pipelines import NotFound

ROOT = Path(__file__).resolve().parents[3]

LISTS = [  # every list and get command, as argv without the output option
    ["pipelines", "list"], ["pipelines", "get", "a"], ["dlq", "list", "--pipeline", "a"],
    ["dlq", "show", "--pipeline", "a", "--offset", "0:1"], ["offsets", "show", "--role", "map"],
    ["topics", "describe"], ["status"],
]


@pytest.mark.parametrize("argv", LISTS, ids=" ".join)
def test_every_list_and_get_takes_o(argv: list[str]) -> None:
    p = cli.parser()
    for output in ("table", "json", "yaml"):
        assert p.parse_args([*argv, "-o", output]).output == output
        assert p.parse_args([*argv, "--output", output]).output == output
    with pytest.raises(SystemExit) as done:
        p.parse_args([*argv, "-o", "xml"])
    assert done.value.code == exits.USAGE


def test_defaults_and_the_json_alias() -> None:
    p = cli.parser()
    assert p.parse_args(["pipelines", "list"]).output == "table"
    assert p.parse_args(["pipelines", "get", "a"]).output == "json"  # as before -o had table
    assert p.parse_args(["dlq", "show", "--pipeline", "a", "--offset", "0:1"]).output == "json"
    for argv in (["pipelines", "list"], ["dlq", "list", "--pipeline", "a"],
                 ["offsets", "show", "--role", "map"], ["topics", "describe"]):
        assert p.parse_args([*argv, "--json"]).output == "json"
    assert p.parse_args(["replay", "--pipeline", "a", "--from", "0", "-o", "yaml"]).output \
        == "yaml"


def test_json_and_yaml_hold_the_same_document() -> None:
    data = {"pipelines": [{"id": "a", "source_config": {"token": "***"}, "n": 1.5,
                           "when": "2026-01-01T00:00:00+00:00", "none": None}]}
    as_json = orjson.loads(render(data, "json"))
    assert as_json == data
    assert yaml.safe_load(render(data, "yaml")) == as_json
    assert render(data, "table", lambda: "the table") == "the table"
    listing = render({"a": "x", "b": {"c": 1}, "d": None}, "table").splitlines()
    assert [line.split() for line in listing] == [["FIELD", "VALUE"], ["a", "x"],
                                                  ["b", '{"c":1}'], ["d", "-"]]


class Wrapped(RuntimeError):
    pass


def _raised_from(cause: BaseException) -> BaseException:
    try:
        raise Wrapped("while starting") from cause
    except Wrapped as exc:
        return exc


@pytest.mark.parametrize(("error", "code"), [
    (NotFound("pipeline 'x' not found"), 3),
    (Unavailable("the stack is not up"), 4),
    (KafkaConnectionError("Unable to bootstrap"), 4),
    (GroupCoordinatorNotAvailableError(), 4),  # retriable: the broker is settling
    (ConnectionRefusedError(111, "refused"), 4),  # PostgreSQL not listening
    (TimeoutError(), 4),
    (_raised_from(KafkaConnectionError("down")), 4),
    (FileError("p.yaml: invalid YAML"), 2),
    (ConfigError("bad setting"), 2),
    (RoleFailed("map", "DataError: bad"), 1),
    (ToolMissing("java", "install it"), 1),
    (BrokenPipeError(), 1),  # stdout closed by `| head`: not a service down
    (ValueError("unforeseen"), 1),
])
def test_each_error_has_its_exit_code(error: BaseException, code: int) -> None:
    assert exits.code_of(error) == code


def test_a_stack_that_is_not_up_exits_4(monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("DASHPIPE_STATE_DIR", str(tmp_path))
    monkeypatch.delenv("DASHPIPE_KAFKA_BOOTSTRAP_SERVERS", raising=False)
    assert cli.main(["pipelines", "list"]) == exits.UNAVAILABLE
    assert "run `dashpipe up`" in capsys.readouterr().err


def test_exit_codes_are_in_help_and_docs(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        cli.parser().parse_args(["--help"])
    shown = capsys.readouterr().out
    docs = (ROOT / "docs" / "operations.md").read_text()
    for code, meaning in ((0, "ok"), (1, "failure"), (2, "usage error"), (3, "not found"),
                          (4, "service unavailable")):
        assert f"{code}  {meaning}" in shown
        assert f"| {code} | {meaning}" in docs
