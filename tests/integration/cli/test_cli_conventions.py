"""CLI conventions against the real log: every output format parses, exit code 3 for what does
not exist and 4 for a Kafka that does not answer, `apply --dry-run` shows a change and writes
nothing, `mapping test --from-bronze` maps a pipeline's last raw records."""

import asyncio
import io
import os
import socket
import sys
from pathlib import Path

import orjson
import pytest
import yaml

from dashpipe.cli import exits
from dashpipe.runtime import open_runtime
from dashpipe.settings import Settings
from dashpipe.topics import TopicNames
from tests.helpers import topic_size
from tests.integration.cli.test_cli_pipelines import PIPELINES, SECRETS
from tests.integration.conftest import Run
from tests.integration.mapping.test_mapper import write_raw


def write(path: Path, text: str) -> None:
    path.write_text(text)


async def applied(dashpipe: Run, tmp_path: Path, text: str = PIPELINES) -> str:
    path = tmp_path / "p.yaml"
    write(path, text)
    code, _, err = await dashpipe("pipelines", "apply", "-f", str(path))
    assert code == 0, err
    return str(path)


async def test_every_output_format_parses(dashpipe: Run, tmp_path: Path) -> None:
    await applied(dashpipe, tmp_path)
    for argv in (["pipelines", "list"], ["pipelines", "get", "weather"],
                 ["dlq", "list", "--pipeline", "orders"], ["offsets", "show", "--role", "map"],
                 ["topics", "describe"], ["status"]):
        code, as_json, err = await dashpipe(*argv, "-o", "json")
        assert code == 0, (argv, err)
        code, as_yaml, _ = await dashpipe(*argv, "-o", "yaml")
        assert code == 0 and yaml.safe_load(as_yaml) == orjson.loads(as_json), argv
        code, table, _ = await dashpipe(*argv, "-o", "table")
        assert code == 0 and table.strip() and not table.lstrip().startswith(("{", "[")), argv
    listed = orjson.loads((await dashpipe("pipelines", "list", "-o", "json"))[1])
    assert [p["id"] for p in listed["pipelines"]] == ["orders", "weather"]
    assert listed == orjson.loads((await dashpipe("pipelines", "list", "--json"))[1])
    view = yaml.safe_load((await dashpipe("pipelines", "get", "weather", "-o", "yaml"))[1])
    assert view["source_config"]["token"] == "***"  # masked as the JSON is


async def test_what_does_not_exist_exits_3(dashpipe: Run, tmp_path: Path) -> None:
    await applied(dashpipe, tmp_path)
    for argv in (["pipelines", "get", "nope"], ["pipelines", "pause", "nope"],
                 ["dlq", "list", "--pipeline", "nope"],
                 ["dlq", "show", "--pipeline", "orders", "--offset", "0:999"],
                 ["mapping", "test", "--from-bronze", "nope"]):
        code, out, err = await dashpipe(*argv)
        assert (code, out) == (exits.NOT_FOUND, ""), (argv, err)
        assert err.startswith("dashpipe: error: ") and err.count("\n") == 1


def closed_port() -> int:
    with socket.socket() as s:  # bound then closed: nothing listens there
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port


async def test_kafka_not_answering_exits_4(dashpipe_cli: Run, settings: Settings,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    env = {**os.environ, "DASHPIPE_KAFKA_BOOTSTRAP_SERVERS": f"127.0.0.1:{closed_port()}",
           "DASHPIPE_KAFKA_REQUEST_TIMEOUT_MS": "3000",
           "DASHPIPE_TOPIC_PREFIX": settings.topics.prefix}
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "dashpipe.cli", "pipelines", "list", env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(process.communicate(), 60)
    assert (process.returncode, out) == (exits.UNAVAILABLE, b"")
    # one line, no traceback, no aiokafka ERROR lines, no "Unclosed AIOKafka..." at exit
    assert err.count(b"\n") == 1, err
    assert err.startswith(b"dashpipe: error: service unavailable (KafkaConnectionError)")

    monkeypatch.setenv("DASHPIPE_KAFKA_BOOTSTRAP_SERVERS", env["DASHPIPE_KAFKA_BOOTSTRAP_SERVERS"])
    monkeypatch.setenv("DASHPIPE_KAFKA_REQUEST_TIMEOUT_MS", "3000")
    for argv in (["topics", "describe"], ["offsets", "show", "--role", "map"],
                 ["dlq", "list", "--pipeline", "orders"],
                 ["pipelines", "apply", "--dry-run", "-f", "-"],
                 ["mapping", "test", "--from-bronze", "orders"]):
        monkeypatch.setattr("sys.stdin", io.StringIO(PIPELINES))
        code, out, err = await dashpipe_cli(*argv)
        assert (code, out) == (exits.UNAVAILABLE, ""), (argv, err)
        assert "service unavailable" in err


async def test_dry_run_shows_the_diff_and_writes_nothing(dashpipe: Run, tmp_path: Path,
                                                         settings: Settings) -> None:
    path = await applied(dashpipe, tmp_path)
    names = TopicNames.from_prefix(settings.topics.prefix)
    before = await topic_size(settings, names.pipelines)
    changed = PIPELINES.replace("name: Weather", "name: Weather (Paris)").replace(
        "whsec-never-printed-1234", "whsec-never-printed-5678") + """\
  - id: fresh
    team_id: team-a
    name: Fresh
    type: realtime
    source_type: webhook
    source_config: {webhook_secret: whsec-never-printed-1234}
"""
    write(Path(path), changed)
    code, out, err = await dashpipe("pipelines", "apply", "--dry-run", "-f", path)
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0] == "orders changed"
    assert lines[1] == "  note: source_config.webhook_secret: the secret changes (value not shown)"
    assert lines[2] == "weather changed"
    assert lines[3:5] == ["--- weather (running)", f"+++ weather ({path})"]
    assert "-name: Weather" in lines and "+name: Weather (Paris)" in lines
    assert "fresh created" in lines and "+name: Fresh" in lines
    assert err.strip() == "dry run: 1 to create, 2 to change, 0 unchanged; nothing was written"

    assert await topic_size(settings, names.pipelines) == before  # not one record written
    async with open_runtime(settings, settings.kafka.bootstrap_servers) as rt:
        stored = rt.registry.pipelines
        assert set(stored) == {"orders", "weather"} and stored["weather"].name == "Weather"
        assert stored["orders"].source_config.webhook_secret == SECRETS[0]

    listed = tmp_path / "listed.json"  # `***` everywhere: the running secrets are kept
    write(listed, (await dashpipe("pipelines", "list", "-o", "json"))[1])
    code, out, _ = await dashpipe("pipelines", "apply", "--dry-run", "-f", str(listed))
    assert (code, out) == (0, "orders unchanged\nweather unchanged\n")


async def test_mapping_test_samples_the_last_raw_records(dashpipe: Run, tmp_path: Path,
                                                         settings: Settings) -> None:
    await applied(dashpipe, tmp_path, PIPELINES.replace(
        "    source_config: {webhook_secret: whsec-never-printed-1234}\n",
        "    source_config: {webhook_secret: whsec-never-printed-1234}\n"
        "    data_mapping: {fields: {n: {path: n, type: integer}}}\n", 1))
    names = TopicNames.from_prefix(settings.topics.prefix)
    await write_raw(settings, names.raw, "orders",
                    [b'{"n": 1}', b'{"n": 2}', b"{oops", b'{"n": "x"}', b'{"n": 5}'])
    code, out, err = await dashpipe("mapping", "test", "--from-bronze", "orders", "--limit", "4")
    assert code == exits.FAILURE  # two of them would be dead letters
    items = [orjson.loads(line) for line in out.splitlines()]
    assert [i["record"] for i in items] == [0, 1, 2, 3]
    offsets = [i["raw_offset"] for i in items]
    assert offsets == sorted(offsets) and len(set(offsets)) == 4  # the last 4, oldest first
    assert [i.get("fields") for i in items] == [{"n": 2}, None, None, {"n": 5}]
    assert items[1]["dead_letter"].startswith("payload is not valid JSON")
    assert err.strip() == "4 record(s): 2 row(s), 2 dead letter(s), 0 filtered"

    candidate = tmp_path / "m.yaml"  # another mapping on the same records
    write(candidate, "fields: {copy: {path: n}}\n")
    code, out, _ = await dashpipe("mapping", "test", "--from-bronze", "orders", "--limit", "1",
                                  "-f", str(candidate), "-o", "json")
    assert code == 0 and [r["fields"] for r in orjson.loads(out)["rows"]] == [{"copy": 5}]
