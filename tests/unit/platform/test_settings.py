import pytest
from pydantic import ValidationError

from dashpipe.settings import DatabaseSettings, KafkaSettings, TopicSettings, load_settings


def test_reads_prefixed_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DASHPIPE_KAFKA_BOOTSTRAP_SERVERS", "broker:9092")
    monkeypatch.setenv("DASHPIPE_DATABASE_URL", "postgresql://u:hunter2@db/x")
    monkeypatch.setenv("DASHPIPE_TOPIC_PARTITIONS", "12")
    s = load_settings()
    assert s.kafka.bootstrap_servers == "broker:9092"
    assert s.topics.partitions == 12
    assert s.database.url is not None
    assert s.database.url.get_secret_value() == "postgresql://u:hunter2@db/x"


def test_secret_never_in_repr(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DASHPIPE_DATABASE_URL", "postgresql://u:hunter2@db/x")
    s = DatabaseSettings()
    assert "hunter2" not in repr(s)
    assert "hunter2" not in str(s.model_dump())


def test_invalid_value_names_the_field(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DASHPIPE_TOPIC_PARTITIONS", "zero")
    with pytest.raises(ValidationError) as err:
        TopicSettings()
    assert err.value.errors()[0]["loc"] == ("partitions",)


def test_settings_are_frozen() -> None:
    s = KafkaSettings(bootstrap_servers="a:1")
    with pytest.raises(ValidationError):
        s.bootstrap_servers = "b:2"  # type: ignore[misc]
