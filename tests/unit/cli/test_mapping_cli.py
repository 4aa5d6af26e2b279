"""`dashpipe mapping test -f mapping.yaml --input sample.json`, offline: the rows the map role's
own code makes, and each failing record's dead-letter reason."""

from collections.abc import Callable
from pathlib import Path

import orjson
import pytest
import yaml

from dashpipe import cli
from dashpipe.cli import exits

Run = Callable[..., tuple[int, str, str]]

MAPPING = """\
records: "items[*]"
key: sku
fields:
  sku: {path: sku}
  qty: {path: qty, type: integer}
"""
PIPELINE = """\
id: orders
team_id: team-a
name: Orders
type: realtime
source_type: webhook
source_config: {webhook_secret: s}
data_mapping:
  records: "items[*]"
  fields:
    sku: {path: sku}
"""
LINES = b"""{"items": [{"sku": "a", "qty": "2"}, {"sku": "b", "qty": 3}]}
not json
{"items": [{"sku": "c", "qty": "many"}]}

{"other": 1}
"""


@pytest.fixture
def run(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> Run:
    def go(mapping: str, sample: bytes, *extra: str) -> tuple[int, str, str]:
        (tmp_path / "m.yaml").write_text(mapping)
        (tmp_path / "in.json").write_bytes(sample)
        code = cli.main(["mapping", "test", "-f", str(tmp_path / "m.yaml"), "--input",
                         str(tmp_path / "in.json"), *extra])
        out, err = capsys.readouterr()
        return code, out, err
    return go


def test_json_lines_give_rows_and_dead_letters_in_input_order(run: Run) -> None:
    code, out, err = run(MAPPING, LINES)
    assert code == exits.FAILURE  # some records would be dead letters
    items = [orjson.loads(line) for line in out.splitlines()]
    assert [(i["record"], i["row_index"]) for i in items] == [(0, 0), (0, 1), (1, 0), (2, 0),
                                                               (3, 0)]
    assert items[0]["fields"] == {"sku": "a", "qty": 2} and items[0]["key"] == "a"
    assert items[1]["fields"] == {"sku": "b", "qty": 3}
    assert items[2]["dead_letter"].startswith("payload is not valid JSON")
    assert "'qty'" in items[3]["dead_letter"] and "integer" in items[3]["dead_letter"]
    assert items[4]["dead_letter"] == "records: 'items[*]' not found in the payload (object)"
    assert err.strip() == "4 record(s): 2 row(s), 3 dead letter(s), 0 filtered"


def test_one_document_is_one_record(run: Run) -> None:
    document = b'{\n  "items": [\n    {"sku": "a", "qty": 1}\n  ]\n}\n'
    code, out, _ = run(MAPPING, document)
    assert code == exits.OK
    assert [orjson.loads(line)["fields"] for line in out.splitlines()] == [
        {"sku": "a", "qty": 1}]


@pytest.mark.parametrize("output", ["json", "yaml"])
def test_json_and_yaml_carry_rows_and_dead_letters(run: Run, output: str) -> None:
    _, out, _ = run(MAPPING, LINES, "-o", output)
    doc = orjson.loads(out) if output == "json" else yaml.safe_load(out)
    assert doc["records"] == 4 and len(doc["rows"]) == 2 and len(doc["dead_letters"]) == 3
    assert doc["rows"][0]["time"].endswith("Z")


def test_table_has_a_column_per_field(run: Run) -> None:
    _, out, _ = run(MAPPING, LINES, "-o", "table")
    rows, dead = out.split("\n\n")
    assert rows.splitlines()[0].split() == ["RECORD", "ROW", "TIME", "KEY", "SKU", "QTY"]
    assert rows.splitlines()[1].split()[-2:] == ["a", "2"]
    assert dead.splitlines()[0].split() == ["RECORD", "ROW", "DEAD", "LETTER"]


def test_a_pipeline_file_gives_its_data_mapping(run: Run) -> None:
    code, out, _ = run(PIPELINE, b'{"items": [{"sku": "a"}]}')
    assert code == exits.OK and orjson.loads(out)["fields"] == {"sku": "a"}


def test_a_bad_mapping_is_a_usage_error_naming_the_field(run: Run) -> None:
    code, out, err = run("fields:\n  n: {path: n, type: nonsense}\n", b"{}")
    assert (code, out) == (exits.USAGE, "")
    assert err.startswith("dashpipe: error: ") and "data_mapping: fields.n.type" in err


def test_input_needs_a_mapping(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["mapping", "test", "--input", "x.json"]) == exits.USAGE
    with pytest.raises(SystemExit) as done:  # one of --input / --from-bronze
        cli.parser().parse_args(["mapping", "test", "-f", "m.yaml"])
    assert done.value.code == exits.USAGE
