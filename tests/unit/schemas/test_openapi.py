"""The OpenAPI document: valid OpenAPI 3.1, current on disk, and typed as the models are."""

from pathlib import Path

import orjson
from jsonschema import Draft202012Validator
from openapi_spec_validator import validate
from referencing import Registry
from referencing.jsonschema import DRAFT202012

from schemas import openapi

FILE = Path(__file__).parents[3] / "schemas" / "openapi.json"


def test_the_document_is_valid_openapi_3_1() -> None:
    document = orjson.loads(FILE.read_bytes())
    assert document["openapi"].startswith("3.1")
    validate(document)  # raises with what is wrong
    assert document == orjson.loads(openapi.render())


def test_every_operation_answers_errors_as_json_and_guarded_ones_401() -> None:
    for path, methods in openapi.document()["paths"].items():
        for method, op in methods.items():
            for status, answer in op["responses"].items():
                if status.startswith(("4", "5")):
                    schema = answer["content"]["application/json"]["schema"]["$ref"]
                    assert schema.rsplit("/", 1)[1] in ("Error", "InvalidPipeline"), (
                        method, path, status)
            if {"bearer": []} in op["security"]:
                assert "401" in op["responses"], (method, path)


def _validator(name: str) -> Draft202012Validator:
    """A validator of one component schema, its `$ref`s resolved inside the document."""
    document = openapi.document()
    registry: Registry = Registry().with_resource(
        "urn:doc", DRAFT202012.create_resource(document))
    return Draft202012Validator({"$ref": f"urn:doc#/components/schemas/{name}"},
                                registry=registry)


def test_the_pipeline_input_is_typed_by_source_type() -> None:
    check = _validator("PipelineInput")
    good = {"name": "n", "type": "realtime", "source_type": "webhook",
            "source_config": {"webhook_secret": "s"}}
    assert list(check.iter_errors(good)) == []
    assert list(check.iter_errors({**good, "source_config": {"url": "https://x.example"}}))
    # a view read with GET can be sent back: its read-only fields are taken and ignored
    sink = {"sink_type": "webhook", "status": {},
            "sink_config": {"url": "https://x.example", "secret": "s"}}
    sent_back = {**good, "status": "error", "error_message": 3, "sinks": [sink]}
    assert list(check.iter_errors(sent_back)) == []


def test_the_session_cookie_is_the_web_roles() -> None:
    from agents.web import api

    assert openapi.document()["components"]["securitySchemes"]["session"]["name"] == \
        api.SESSION_COOKIE
