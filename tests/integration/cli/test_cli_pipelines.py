"""`dashpipe pipelines ...` against the real log: the CLI as a user runs it (`main(argv)`, settings
from the environment), in a thread so it owns its event loop as it does in a shell."""

import io
from pathlib import Path
from typing import Any

import orjson
import pytest
import yaml

from dashpipe.runtime import open_runtime
from dashpipe.settings import Settings
from tests.integration.conftest import Run

ROOT = Path(__file__).resolve().parents[3]

PIPELINES = """
pipelines:
  - id: orders
    team_id: team-a
    name: Orders
    type: realtime
    source_type: webhook
    source_config: {webhook_secret: whsec-never-printed-1234}
  - id: weather
    team_id: team-b
    name: Weather
    type: polling
    interval_seconds: 60
    source_type: http_api
    source_config:
      url: http://127.0.0.1:9/obs
      auth_type: bearer
      token: upstream-token-never-printed
"""
SECRETS = ("whsec-never-printed-1234", "upstream-token-never-printed")


def write(tmp_path: Path, name: str, text: str) -> str:
    path = tmp_path / name
    path.write_text(text)
    return str(path)


async def test_apply_is_idempotent_and_reports_each_pipeline(dashpipe: Run, tmp_path: Path,
                                                             settings: Settings) -> None:
    path = write(tmp_path, "p.yaml", PIPELINES)
    assert await dashpipe("pipelines", "apply", "-f", path) == (
        0, "orders created\nweather created\n", "")
    assert (await dashpipe("pipelines", "apply", "-f", path))[1] == (
        "orders unchanged\nweather unchanged\n")
    write(tmp_path, "p.yaml", PIPELINES.replace("name: Weather", "name: Weather (Paris)"))
    assert (await dashpipe("pipelines", "apply", "-f", path))[1] == (
        "orders unchanged\nweather updated\n")
    async with open_runtime(settings, settings.kafka.bootstrap_servers) as rt:
        stored = rt.registry.pipelines
        assert stored["weather"].name == "Weather (Paris)" and stored["weather"].team_id == "team-b"
        assert stored["orders"].source_config.webhook_secret == SECRETS[0]


async def test_list_get_pause_resume_delete(dashpipe: Run, tmp_path: Path) -> None:
    await dashpipe("pipelines", "apply", "-f", write(tmp_path, "p.yaml", PIPELINES))
    code, out, _ = await dashpipe("pipelines", "list")
    assert code == 0
    header, *rows = out.splitlines()
    assert header.split()[:4] == ["ID", "TEAM", "TYPE", "STATUS"]
    assert [r.split()[:5] for r in rows] == [["orders", "team-a", "realtime", "active", "-"],
                                             ["weather", "team-b", "polling", "active", "60s"]]
    code, out, _ = await dashpipe("pipelines", "list", "--team", "team-b", "--json")
    assert [v["id"] for v in orjson.loads(out)["pipelines"]] == ["weather"]

    code, out, _ = await dashpipe("pipelines", "get", "weather")
    view = orjson.loads(out)
    assert code == 0 and view["source_config"]["token"] == "***" and view["status"] == "active"
    code, out, _ = await dashpipe("pipelines", "get", "orders", "-o", "yaml")
    assert yaml.safe_load(out)["source_config"]["webhook_secret"] == "***"

    assert (await dashpipe("pipelines", "pause", "weather"))[:2] == (0, "weather paused\n")
    assert "paused" in (await dashpipe("pipelines", "list"))[1].splitlines()[2].split()
    assert (await dashpipe("pipelines", "resume", "weather"))[:2] == (0, "weather active\n")
    assert (await dashpipe("pipelines", "delete", "weather"))[:2] == (0, "weather deleted\n")
    for action in ("get", "pause", "resume", "delete"):
        assert await dashpipe("pipelines", action, "weather") == (
            3, "", "dashpipe: error: pipeline 'weather' not found\n")  # 3: not found
    assert [r.split()[0] for r in (await dashpipe("pipelines", "list"))[1].splitlines()[1:]] == [
        "orders"]


async def test_an_invalid_pipeline_applies_none_of_the_file(dashpipe: Run,
                                                            tmp_path: Path) -> None:
    broken = PIPELINES.replace("url: http://127.0.0.1:9/obs", "url: ftp://nope") + """
  - name: nameless
    team_id: team-a
    type: realtime
    source_type: webhook
    source_config: {webhook_secret: whsec-never-printed-1234}
"""
    code, out, err = await dashpipe("pipelines", "apply", "-f",
                                    write(tmp_path, "bad.yaml", broken))
    assert (code, out) == (2, "")
    lines = err.splitlines()
    assert lines[0] == "weather: source_config.url: String should match pattern '^https?://'"
    assert lines[1] == "#3: id: Field required"
    assert lines[-1].startswith("dashpipe: error: ") and "no pipeline was applied" in lines[-1]
    assert (await dashpipe("pipelines", "list", "--json"))[1].strip() == (
        '{\n  "pipelines": []\n}')


async def test_list_json_applies_back_unchanged(dashpipe: Run, tmp_path: Path) -> None:
    code, out, _ = await dashpipe("pipelines", "apply", "-f",
                                  str(ROOT / "examples" / "pipelines.yaml"))
    assert code == 0 and out.split() == [
        "usgs-quakes", "created", "shop-orders", "created", "shop-products", "created",
        "payments", "created", "large-orders", "created"]
    listed = (await dashpipe("pipelines", "list", "--json"))[1]
    assert "***" in listed and "replace-with-your-token" not in listed
    code, out, _ = await dashpipe("pipelines", "apply", "-f",
                                  write(tmp_path, "listed.json", listed))
    assert code == 0 and out.split()[1::2] == ["unchanged"] * 5


async def test_apply_reads_stdin(dashpipe: Run, monkeypatch: pytest.MonkeyPatch) -> None:
    one: dict[str, Any] = {"id": "s", "team_id": "t", "name": "s", "type": "realtime",
                           "source_type": "webhook", "source_config": {"webhook_secret": "x"}}
    monkeypatch.setattr("sys.stdin", io.StringIO(orjson.dumps(one).decode()))
    assert await dashpipe("pipelines", "apply", "-f", "-") == (0, "s created\n", "")
