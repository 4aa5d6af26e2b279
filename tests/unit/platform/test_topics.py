from dashpipe.settings import TopicSettings
from dashpipe.topics import TopicNames, catalogue


def test_names_share_the_prefix() -> None:
    names = TopicNames.from_prefix("acme")
    assert names.raw == "acme.raw"
    assert names.status == "acme.pipeline-status"
    specs = catalogue(TopicSettings(prefix="acme"))
    assert {s.name for s in specs} >= {"acme.raw", "acme.transformed", "acme.dlq",
                                       "acme.pipelines", "acme.pipeline-status"}


def test_raw_is_kept_forever_and_control_topics_are_compacted() -> None:
    by_name = {s.name: s for s in catalogue(TopicSettings(partitions=8, control_partitions=2))}
    raw = by_name["dashpipe.raw"]
    assert raw.config["retention.ms"] == "-1"
    assert raw.config["retention.bytes"] == "-1"
    assert raw.partitions == 8
    for name in ("dashpipe.pipelines", "dashpipe.pipeline-status"):
        assert by_name[name].config["cleanup.policy"] == "compact"
        assert by_name[name].partitions == 2


def test_replication_is_a_setting() -> None:
    specs = catalogue(TopicSettings(replication_factor=3))
    assert all(s.replication_factor == 3 for s in specs)
    assert all(s.config["min.insync.replicas"] in ("1", "2") for s in specs)
