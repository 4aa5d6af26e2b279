import os
from pathlib import Path

import pytest
from pydantic import SecretStr

from dashpipe import cli
from dashpipe.cli import stack
from dashpipe.cli.stack import kafka, postgres
from dashpipe.cli.stack import state as st
from dashpipe.errors import ToolMissing, Unavailable
from dashpipe.settings import (
    DatabaseSettings,
    KafkaSettings,
    Settings,
    StackSettings,
    TopicSettings,
    WebSettings,
)


@pytest.fixture(autouse=True)
def _no_dashpipe_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """These settings come from the arguments only, not from a shell that ran
    `eval "$(dashpipe status --env)"`."""
    for name in list(os.environ):
        if name.startswith("DASHPIPE_"):
            monkeypatch.delenv(name)


def _settings(tmp_path: Path, **kafka_kw: str) -> Settings:
    return Settings(KafkaSettings(**kafka_kw), DatabaseSettings(), TopicSettings(),
                    StackSettings(state_dir=tmp_path), WebSettings())


def test_missing_initdb_says_what_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(postgres.shutil, "which", lambda name: None)
    monkeypatch.setattr(postgres.glob, "glob", lambda pattern: [])
    with pytest.raises(ToolMissing) as err:
        postgres.bin_dir(StackSettings(pg_bin_dir=None))
    assert "apt-get install postgresql" in str(err.value)


def test_missing_java_says_what_to_install(monkeypatch: pytest.MonkeyPatch,
                                           tmp_path: Path) -> None:
    monkeypatch.setattr(kafka.shutil, "which", lambda name: None)
    with pytest.raises(ToolMissing) as err:
        kafka.start(StackSettings(state_dir=tmp_path), st.StackState())
    assert str(err.value).startswith("java not found: install a Java 17+")


def test_endpoints_without_stack_or_settings_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(Unavailable, match="run `dashpipe up`"):
        stack.endpoints(_settings(tmp_path))


def test_endpoints_come_from_the_stack_state(tmp_path: Path) -> None:
    st.save(tmp_path, st.StackState(kafka_port=1234, pg_port=5555, pg_password="pw"))
    ends = stack.endpoints(_settings(tmp_path))
    assert ends.bootstrap_servers == "127.0.0.1:1234"
    assert ends.database_url.get_secret_value().endswith("@127.0.0.1:5555/dashpipe")
    assert ends.kafka_local and ends.database_local
    assert (tmp_path / "stack.json").stat().st_mode & 0o077 == 0


def test_settings_override_the_stack(tmp_path: Path) -> None:
    st.save(tmp_path, st.StackState(kafka_port=1234, pg_port=5555, pg_password="pw"))
    ends = stack.endpoints(_settings(tmp_path, bootstrap_servers="kafka:9092"))
    assert ends.bootstrap_servers == "kafka:9092"
    assert not ends.kafka_local


def test_redact_hides_the_password() -> None:
    shown = stack._redact(SecretStr("postgresql://u:s3cret@h:5432/d"))
    assert "s3cret" not in shown
    assert shown == "postgresql://u:***@h:5432/d"


def test_free_port_keeps_a_preferred_free_port() -> None:
    port = st.free_port()
    assert st.free_port(port) == port


def test_status_env_prints_exports(monkeypatch: pytest.MonkeyPatch,
                                   capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("DASHPIPE_KAFKA_BOOTSTRAP_SERVERS", "k:9092")
    monkeypatch.setenv("DASHPIPE_DATABASE_URL", "postgresql://u:p@h/d")
    assert cli.main(["status", "--env"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out == ["export DASHPIPE_KAFKA_BOOTSTRAP_SERVERS=k:9092",
                   "export DASHPIPE_DATABASE_URL=postgresql://u:p@h/d"]


def test_cli_error_is_one_line_without_traceback(monkeypatch: pytest.MonkeyPatch,
                                                 tmp_path: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("DASHPIPE_STATE_DIR", str(tmp_path))
    monkeypatch.delenv("DASHPIPE_KAFKA_BOOTSTRAP_SERVERS", raising=False)
    assert cli.main(["run", "nonsense"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("dashpipe: error: unknown role 'nonsense'")
    assert "Traceback" not in err


def test_cluster_id_never_starts_with_a_dash(monkeypatch: pytest.MonkeyPatch) -> None:
    import uuid
    ids = iter([uuid.UUID(bytes=b"\xf8" + bytes(15)), uuid.UUID(bytes=b"\x04" + bytes(15))])
    monkeypatch.setattr(kafka.uuid, "uuid4", lambda: next(ids))
    found = kafka._cluster_id()
    assert found == "BAAAAAAAAAAAAAAAAAAAAA"
    assert len(found) == 22
