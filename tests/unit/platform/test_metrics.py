"""The metrics exposition: every family the code counts is declared (HELP and TYPE), names
and labels follow one scheme, histograms are cumulative, series keep their labels, and the
output passes `promtool check metrics` (Debian's `prometheus` package; CI installs it)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from dashpipe.metrics import BUCKETS, FAMILIES, Metrics
from streams.deadletters import counts

ROOT = Path(__file__).resolve().parents[3]
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
LABELS = {"pipeline_id", "team_id", "role", "sink", "stage", "code", "reason", "outcome",
          "topic", "partition", "version", "roles"}
CALL = re.compile(r"\.(?:inc|add|set|observe|observe_key|observe_many)\(\s*\"(dashpipe_\w+)\"")
LITERAL = re.compile(r"\"(dashpipe_\w+)\"")


def sources() -> str:
    return "\n".join(path.read_text() for folder in ("dashpipe", "streams", "agents")
                     for path in (ROOT / folder).rglob("*.py") if path.name != "metrics.py")


def test_every_family_the_code_counts_is_declared_and_every_declared_one_is_counted() -> None:
    code = sources()
    counted = set(CALL.findall(code)) | {counts.METRIC, counts.RESOLVED_METRIC,
                                         counts.UNRESOLVED_METRIC}
    assert counted - set(FAMILIES) == set()  # counted without HELP/TYPE
    named = set(LITERAL.findall(code)) | {"dashpipe_consumer_lag"}  # metrics.track_lag's
    assert set(FAMILIES) - named == set()  # declared, never counted


def test_names_follow_the_conventions() -> None:
    for name, family in FAMILIES.items():
        assert family.kind in ("counter", "gauge", "histogram") and family.help, name
        assert name.startswith("dashpipe_"), name
        assert name.endswith("_total") == (family.kind == "counter"), name
        if family.kind == "histogram":
            assert name.endswith("_seconds"), name


def sample_metrics() -> Metrics:
    m = Metrics()
    teams = {"orders": "team-a"}
    m.team_of = teams.get
    m.inc("dashpipe_received_total", pipeline_id="orders")
    m.inc("dashpipe_failed_total", pipeline_id="orders", stage="webhook", code="401")
    m.inc("dashpipe_assignments_total", role="persist")
    m.set("dashpipe_dead_letters", 3, pipeline_id="orders", stage="map")
    for seconds in (0.001, 0.0011, 0.3, 400.0):
        m.observe("dashpipe_webhook_ack_seconds", seconds, pipeline_id="orders")
    m.observe("dashpipe_sink_attempt_seconds", 0.02, pipeline_id="orders", sink="0",
              outcome="delivered")
    m.set("dashpipe_info", 1, version="0.1.0", roles="web")
    return m


def test_the_exposition_parses_with_help_type_and_the_label_scheme() -> None:
    text = sample_metrics().render()
    families = {f.name: f for f in text_string_to_metric_families(text)}
    ours = {name: f for name, f in families.items() if name.startswith("dashpipe_")}
    assert {"dashpipe_received", "dashpipe_failed", "dashpipe_assignments",
            "dashpipe_dead_letters", "dashpipe_webhook_ack_seconds",
            "dashpipe_sink_attempt_seconds", "dashpipe_info"} <= set(ours)
    for family in ours.values():
        declared = FAMILIES.get(family.name) or FAMILIES[f"{family.name}_total"]
        assert family.type == declared.kind and family.documentation == declared.help
        for sample in family.samples:
            assert set(sample.labels) - {"le"} <= LABELS, sample
            if "pipeline_id" in sample.labels:
                assert sample.labels["team_id"] == "team-a"
    # the process's own: CPU, memory, file descriptors, garbage collections, Python
    assert {"process_cpu_seconds", "process_resident_memory_bytes", "process_open_fds",
            "python_gc_collections", "python_info"} <= set(families)


def test_histograms_are_cumulative_with_inclusive_bounds() -> None:
    text = sample_metrics().render()
    [family] = [f for f in text_string_to_metric_families(text)
                if f.name == "dashpipe_webhook_ack_seconds"]
    buckets = {s.labels["le"]: s.value for s in family.samples
               if s.name.endswith("_bucket")}
    assert buckets["0.001"] == 1  # 0.001 is inside the bucket le=0.001
    assert buckets["0.0025"] == 2 and buckets["0.5"] == 3
    assert buckets["300.0"] == 3 and buckets["+Inf"] == 4  # 400 s is above every bound
    values = [buckets[repr(b)] for b in BUCKETS]
    assert values == sorted(values)
    [count] = [s.value for s in family.samples if s.name.endswith("_count")]
    [total] = [s.value for s in family.samples if s.name.endswith("_sum")]
    assert count == 4 and total == pytest.approx(400.3021)


def test_a_series_keeps_its_team_after_the_pipeline_is_deleted() -> None:
    m = Metrics()
    teams = {"orders": "team-a"}
    m.team_of = teams.get
    m.inc("dashpipe_received_total", pipeline_id="orders")
    assert 'team_id="team-a"' in m.render()
    del teams["orders"]
    m.inc("dashpipe_received_total", pipeline_id="orders")
    assert 'dashpipe_received_total{pipeline_id="orders",team_id="team-a"} 2.0' in m.render()


def test_replace_keeps_other_roles_and_drops_partitions_no_longer_held() -> None:
    m = Metrics()
    m.set("dashpipe_consumer_lag", 5, role="map", topic="raw", partition="0")
    m.set("dashpipe_consumer_lag", 7, role="map", topic="raw", partition="1")
    m.set("dashpipe_consumer_lag", 9, role="persist", topic="transformed", partition="0")
    m.replace("dashpipe_consumer_lag", {(("partition", "1"), ("role", "map"),
                                         ("topic", "raw")): 2}, role="map")
    assert m.value("dashpipe_consumer_lag", role="map", topic="raw", partition="0") == 0
    assert m.value("dashpipe_consumer_lag", role="map", topic="raw", partition="1") == 2
    assert m.value("dashpipe_consumer_lag", role="persist", topic="transformed",
                   partition="0") == 9


def promtool() -> str:
    found = shutil.which("promtool")
    if found is None:
        if IN_CI:
            pytest.fail("promtool is missing in CI (apt-get install prometheus)", pytrace=False)
        pytest.skip("promtool is not installed (apt-get install prometheus)")
    return found


def promtool_check(text: str) -> None:
    done = subprocess.run([promtool(), "check", "metrics"], input=text.encode(),
                          capture_output=True, timeout=30, check=False)
    assert done.returncode == 0, (done.stdout + done.stderr).decode()


def test_promtool_accepts_the_exposition() -> None:
    promtool_check(sample_metrics().render())


def test_promtool_would_catch_a_bad_family() -> None:
    bad = "# HELP dashpipe_things Things\n# TYPE dashpipe_things counter\ndashpipe_things 1\n"
    with pytest.raises(AssertionError, match="_total"):
        promtool_check(bad)
