"""Pipeline definitions in the shapes users write: method case, type and source type."""

from typing import Any

import pytest
from pydantic import ValidationError

from schemas.pipeline import HttpApiSink, HttpApiSource, Pipeline


def polling(**source: Any) -> dict[str, Any]:
    return {"id": "p", "team_id": "t", "name": "n", "type": "polling", "interval_seconds": 60,
            "source_type": "http_api",
            "source_config": {"url": "https://api.example.com/x", **source}}


@pytest.mark.parametrize(("given", "kept"), [("get", "GET"), ("Post", "POST"), ("PUT", "PUT")])
def test_a_method_in_any_case_is_kept_upper_case(given: str, kept: str) -> None:
    pipeline = Pipeline.model_validate(polling(method=given))
    assert isinstance(pipeline.source_config, HttpApiSource)
    assert pipeline.source_config.method == kept
    assert pipeline.model_dump(mode="json")["source_config"]["method"] == kept
    sink = HttpApiSink(url="https://hooks.example.com/in", method="patch")  # type: ignore[arg-type]
    assert sink.method == "PATCH"


def test_an_unknown_method_names_the_field_and_the_choices() -> None:
    with pytest.raises(ValidationError) as err:
        Pipeline.model_validate(polling(method="delete"))
    (only,) = err.value.errors()
    assert only["loc"] == ("source_config", "method")
    assert "'GET', 'POST', 'PUT' or 'PATCH'" in only["msg"]


def test_the_json_schema_accepts_both_cases_of_a_method() -> None:
    schema = HttpApiSource.model_json_schema()["properties"]["method"]
    assert {"GET", "get", "PATCH", "patch"} <= set(schema["enum"])
    assert "DELETE" not in schema["enum"] and "delete" not in schema["enum"]


def test_a_realtime_pipeline_with_a_polling_source_gets_one_error_saying_so() -> None:
    with pytest.raises(ValidationError) as err:
        Pipeline.model_validate({"id": "p", "team_id": "t", "name": "n", "type": "realtime",
                                 "source_type": "http_api",
                                 "source_config": {"url": "https://api.example.com/x"}})
    (only,) = err.value.errors()
    assert only["loc"] == ("source_type",)
    assert "a realtime pipeline takes source_type 'webhook', not 'http_api' (which is for " \
           "polling pipelines)" in only["msg"]


def test_a_fitting_source_type_still_reports_its_config_errors() -> None:
    with pytest.raises(ValidationError) as err:
        Pipeline.model_validate({"id": "p", "team_id": "t", "name": "n", "type": "realtime",
                                 "source_type": "webhook", "source_config": {}})
    assert [e["loc"] for e in err.value.errors()] == [("source_config", "webhook_secret")]


@pytest.mark.parametrize("odd", [{}, [], 1, None, True])
def test_a_type_field_of_any_json_type_is_a_field_error_not_a_crash(odd: Any) -> None:
    # found by schemathesis: `"source_type": {}` was a TypeError (a 500 from the API)
    doc = polling() | {"source_type": odd, "sinks": [{"sink_type": odd, "sink_config": {}}]}
    with pytest.raises(ValidationError) as err:
        Pipeline.model_validate(doc)
    locs = {e["loc"] for e in err.value.errors()}
    assert {("source_type",), ("sinks", 0, "sink_type")} <= locs


@pytest.mark.parametrize(("url", "why"), [("http://[oops", "Invalid IPv6 URL"),
                                          ("https://", "no host"), ("ftp://x", "pattern")])
def test_a_url_that_does_not_parse_is_refused_by_name(url: str, why: str) -> None:
    for model, field in ((HttpApiSource, {"url": url}), (HttpApiSink, {"url": url}),
                         (HttpApiSource, {"url": "https://ok.example", "token_url": url})):
        with pytest.raises(ValidationError) as caught:
            model.model_validate(field)
        [error] = caught.value.errors()
        assert error["loc"] in (("url",), ("token_url",)) and why in error["msg"]
    HttpApiSource.model_validate({"url": "https://api.example.com:8443/v1?x=1"})
