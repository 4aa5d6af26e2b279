"""The OpenAPI 3.1 document of the HTTP API (role `web`), built from the pydantic models.

`ROUTES` is the route table: every route the web role serves, with what it takes and
answers (tests/integration/web/test_openapi.py checks it against the real router, both
ways). `document()` builds the document; the web role serves it at `GET /api/openapi.json`
and `dashpipe schemas export` writes it to `schemas/openapi.json` (`check` finds it stale).
"""

from __future__ import annotations

import copy
import functools
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import orjson
from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

from schemas import api
from schemas.pipeline import ID_PATTERN

TITLE = "dashpipe HTTP API (role web)"
VERSION = "1"  # of the API contract, not of the package: changes only when the API does
SESSION_COOKIE = "dashpipe_session"
# a view's read-only fields: accepted in a body sent back (a view read with GET), ignored
READ_ONLY = ("created_at", "updated_at", "mapping_version", "error_message", "last_run_at",
             "next_due_at", "cursor", "dead_letters")
WEBHOOK_SIGNATURES = {  # security scheme: (header, the sources' `scheme` that reads it)
    "webhookOriginal": ("x-webhook-signature", "original (hex HMAC-SHA256 of the body)"),
    "standardWebhooks": ("webhook-signature", "standard (with webhook-id, webhook-timestamp)"),
    "githubOrMeta": ("X-Hub-Signature-256", "github, meta"),
    "stripe": ("Stripe-Signature", "stripe"),
    "shopify": ("X-Shopify-Hmac-Sha256", "shopify"),
    "slack": ("X-Slack-Signature", "slack (with X-Slack-Request-Timestamp)"),
}

READ, WRITE, PUBLIC, WEBHOOK = "read", "write", "public", "webhook"
SECURITY: dict[str, list[dict[str, list[str]]]] = {
    READ: [{"bearer": []}, {"session": []}],
    WRITE: [{"bearer": []}],
    PUBLIC: [],
    WEBHOOK: [{name: []} for name in WEBHOOK_SIGNATURES],
}
RETRY_AFTER = {"Retry-After": {"description": "seconds to wait before retrying",
                               "schema": {"type": "integer", "minimum": 1}}}


@dataclass(frozen=True)
class Op:
    """One operation: `answers` maps a status to its description and (optionally) the
    component schema of its JSON body, or a media type and schema for another body."""

    method: str
    path: str
    summary: str
    tag: str
    auth: str = READ
    answers: Mapping[int, tuple[str, ...]] = field(default_factory=dict)
    params: tuple[dict[str, Any], ...] = ()
    body: tuple[str, ...] = ()  # (component, media types...)
    body_required: bool = True
    headers: dict[int, dict[str, Any]] = field(default_factory=dict)
    description: str = ""


def _param(name: str, where: str, schema: dict[str, Any], description: str,
           required: bool = False) -> dict[str, Any]:
    return {"name": name, "in": where, "required": required or where == "path",
            "schema": schema, "description": description}


PIPELINE_ID = _param("id", "path", {"type": "string", "pattern": ID_PATTERN}, "the pipeline id")
WEBHOOK_ID = _param("pipeline_id", "path", {"type": "string", "pattern": ID_PATTERN},
                    "the pipeline id")
TIME = {"type": "string", "format": "date-time"}
DATA_PARAMS = (
    _param("from", "query", TIME, "RFC 3339 (default: an hour before `to`)"),
    _param("to", "query", TIME, "RFC 3339 (default: now); at most 366 days after `from`"),
    _param("fields", "query", {"type": "string", "pattern": r"^[A-Za-z_][A-Za-z0-9_]*"
                               r"(,[A-Za-z_][A-Za-z0-9_]*){0,19}$"},
           "comma-separated field names (default: the mapping's numeric fields)"),
    _param("bucket", "query", {"type": "string", "pattern": r"^[1-9][0-9]{0,6}[smhd]$",
                               "default": "1m"}, "bucket width; at most 10,000 buckets"),
    _param("agg", "query", {"type": "string", "enum": ["avg", "min", "max", "count", "last"],
                            "default": "avg"}, "the aggregate of each bucket"),
)
HUB = (_param("hub.mode", "query", {"type": "string", "enum": ["subscribe"]}, "subscribe",
              required=True),
       *(_param(f"hub.{name}", "query", {"type": "string", "minLength": 1}, text, required=True)
         for name, text in (("verify_token", "the source's verify_token"),
                            ("challenge", "echoed back as text"))))

E400, E401, E404 = ("bad request", "Error"), ("missing or unknown token", "Error"), \
    ("no such pipeline (or another team's)", "Error")
E503 = ("stopping, or Kafka unavailable: retry after `Retry-After`", "Error")
GUARDED = {401: E401, 503: E503}
ONE = {**GUARDED, 200: ("the pipeline", "PipelineView"), 404: E404}
CHANGE = {**ONE, 400: ("the body is not JSON", "Error"),
          422: ("an invalid definition: every error at its field's path", "InvalidPipeline")}

ROUTES: tuple[Op, ...] = (
    Op("GET", "/api/pipelines", "the caller's pipelines (the admin token: every team's)",
       "pipelines", answers={**GUARDED, 200: ("the pipelines", "PipelineList")}),
    Op("POST", "/api/pipelines", "create a pipeline (`id` generated when absent)",
       "pipelines", WRITE, body=("PipelineInput", "application/json"),
       answers={**CHANGE, 201: ("created", "PipelineView"), 409: ("the id exists", "Error")},
       headers={201: {"Location": {"description": "the pipeline's URL",
                                   "schema": {"type": "string"}}}}),
    Op("GET", "/api/pipelines/{id}", "a pipeline and its runtime status", "pipelines",
       answers=ONE),
    Op("PUT", "/api/pipelines/{id}", "replace a pipeline (a view sent back keeps its "
       "masked secrets)", "pipelines", WRITE, body=("PipelineInput", "application/json"),
       answers=CHANGE),
    Op("PATCH", "/api/pipelines/{id}", "change a pipeline by JSON merge patch (RFC 7386)",
       "pipelines", WRITE, body=("MergePatch", "application/merge-patch+json",
                                 "application/json"), answers=CHANGE),
    Op("DELETE", "/api/pipelines/{id}", "delete a pipeline (a tombstone on the log)",
       "pipelines", WRITE, answers={**GUARDED, 204: ("deleted",), 404: E404}),
    Op("POST", "/api/pipelines/{id}/pause", "pause a pipeline", "pipelines", WRITE,
       answers=ONE),
    Op("POST", "/api/pipelines/{id}/resume", "resume a pipeline (a polling one polls at "
       "once)", "pipelines", WRITE, answers=ONE),
    Op("GET", "/api/pipelines/{id}/recent", "the latest rows from this process's cache",
       "rows", params=(_param("limit", "query", {"type": "integer", "minimum": 1,
                                                 "maximum": 500, "default": 50},
                              "how many rows"),),
       answers={**GUARDED, 200: ("the rows, oldest first", "RecentRows"),
                400: ("a bad limit", "Error"), 404: E404}),
    Op("GET", "/api/pipelines/{id}/events", "live rows as Server-Sent Events (never ends)",
       "rows", params=(_param("Last-Event-ID", "header", {"type": "string"},
                              "resume right after this row id"),),
       answers={**GUARDED, 200: ("`event: ready`, then `event: row` per row (`id:` its "
                                 "position, `data:` the row); `event: overflow` ends a "
                                 "slow client's stream", "text/event-stream"),
                400: ("a bad Last-Event-ID, or too far behind to resume", "Error"),
                404: E404}),
    Op("GET", "/api/pipelines/{id}/ws", "live rows over a WebSocket (each message a row "
       "with its `id`)", "rows", params=(_param("resume", "query", {"type": "string"},
                                                "resume right after this row id"),),
       answers={**GUARDED, 101: ("switching to the WebSocket protocol",),
                400: ("not a WebSocket upgrade, or a bad resume id", "Error"), 404: E404}),
    Op("GET", "/api/pipelines/{id}/data", "stored history, bucketed in time", "rows",
       params=DATA_PARAMS,
       answers={**GUARDED, 200: ("one point per bucket", "History"),
                400: ("a bad parameter (named), or a pipeline without persist_data",
                      "Error"), 404: E404}),
    Op("POST", "/api/pipelines/{id}/replay", "replay Bronze: a dry run's diff, or a "
       "written replay started in this process", "replay", WRITE,
       body=("ReplayRequest", "application/json"),
       answers={**GUARDED, 200: ("the dry run's summary and diff", "ReplaySummary"),
                202: ("started", "ReplayStarted"), 404: E404,
                400: ("bad bounds or body", "Error"),
                409: ("a replay of this pipeline is running", "Error"),
                422: ("an invalid mapping", "Error")},
       headers={202: {"Location": {"description": "where its progress is read",
                                   "schema": {"type": "string"}}}}),
    Op("GET", "/api/pipelines/{id}/replay", "the progress or result of the latest replay "
       "started in this process", "replay",
       answers={**GUARDED, 200: ("progress or result", "ReplayProgress"),
                404: ("no such pipeline, or no replay of it here", "Error")}),
    Op("GET", "/api/pipelines/{id}/dead-letters", "the unresolved dead letters, oldest "
       "first", "dead letters", params=(
           _param("stage", "query", {"type": "string", "enum": [
               "", "map", "persist", "deliver"]}, "only this stage's (empty: every stage)"),
           _param("limit", "query", {"type": "integer", "minimum": 1, "maximum": 1000,
                                     "default": 100}, "at most this many listed")),
       answers={**GUARDED, 200: ("the dead letters", "DeadLetterList"),
                400: ("a bad stage or limit", "Error"), 404: E404}),
    Op("POST", "/api/pipelines/{id}/dead-letters/redrive", "redrive dead letters through "
       "what the pipeline is now", "dead letters", WRITE,
       body=("RedriveRequest", "application/json"), body_required=False,
       answers={**GUARDED, 200: ("what became of each", "RedriveReport"),
                400: ("a bad body", "Error"), 404: E404,
                409: ("a redrive of this pipeline is running", "Error")}),
    Op("GET", "/api/pipelines/{id}/lag", "consumer lag of each role on the pipeline's "
       "partitions", "dead letters", answers={**GUARDED, 200: ("lag per group", "Lag"),
                                              404: E404}),
    Op("POST", "/api/session", "a browser session cookie (reads only) for the bearer "
       "token's team", "session", WRITE,
       answers={**GUARDED, 204: ("`Set-Cookie: dashpipe_session=...` (HttpOnly, "
                                 "SameSite=Strict, path /api/)",)},
       headers={204: {"Set-Cookie": {"schema": {"type": "string"},
                                     "description": "the session cookie"}}}),
    Op("DELETE", "/api/session", "remove the session cookie from the browser", "session",
       PUBLIC, answers={204: ("removed",)}),
    Op("GET", "/api/openapi.json", "this document", "meta", PUBLIC,
       answers={200: ("the OpenAPI document", "OpenApiDocument")}),
    Op("POST", "/webhooks/{pipeline_id}", "receive a signed webhook into Bronze (answered "
       "after Kafka acknowledged it)", "webhooks", WEBHOOK, body=("Payload", "application/json"),
       answers={202: ("written (or a duplicate delivery id)", "WebhookAccepted"),
                200: ("Slack's url_verification challenge, answered", "SlackChallenge"),
                400: ("not a realtime pipeline, paused, or the body is not JSON", "Error"),
                401: ("bad or missing signature (says which)", "Error"),
                404: ("no such pipeline", "Error"),
                413: ("body over the limit", "Error"),
                429: ("over the pipeline's rate limit", "Error"),
                503: ("at the limit of webhooks in flight, or Kafka did not acknowledge: "
                      "retry", "Error")},
       description="The checks and their order: docs/http-api.md#webhooks. Signed by the "
       "source's `scheme`; the security schemes name the signature headers."),
    Op("GET", "/webhooks/{pipeline_id}", "Meta's subscription check: the challenge, when "
       "the verify token matches", "webhooks", PUBLIC, params=HUB,
       answers={200: ("`hub.challenge` as sent", "text/plain"),
                400: ("missing parameter, bad hub.mode, or not a realtime pipeline",
                      "Error"),
                403: ("no verify_token, or it does not match", "Error"),
                404: ("no such pipeline", "Error")}),
    Op("GET", "/", "the live page", "meta", PUBLIC, answers={200: ("the page", "text/html")}),
    Op("GET", "/static/{name}", "the live page's scripts and styles", "meta", PUBLIC,
       params=(_param("name", "path", {"type": "string"}, "a file of the page"),),
       answers={200: ("the file", "text/javascript", "text/css"), 404: ("no such file", "Error")}),
    Op("GET", "/version", "what runs: dashpipe's, Python's and the Kafka client's versions",
       "meta", PUBLIC, answers={200: ("the versions", "Version")}),
    Op("GET", "/healthz", "200 while the process runs", "meta", PUBLIC,
       answers={200: ("alive", "Health")}),
    Op("GET", "/readyz", "ready: Kafka answers", "meta", PUBLIC,
       answers={200: ("ready", "Ready"), 503: ("not ready, or stopping", "Error")}),
    Op("GET", "/metrics", "Prometheus metrics", "meta", PUBLIC,
       answers={200: ("the Prometheus text format", "text/plain")}),
)

MODELS: dict[str, type[BaseModel]] = {
    "Error": api.Error, "InvalidPipeline": api.InvalidPipeline,
    "PipelineView": api.PipelineView, "PipelineList": api.PipelineList,
    "RecentRows": api.RecentRows, "History": api.History, "ReplayRequest": api.ReplayRequest,
    "ReplayStarted": api.ReplayStarted, "ReplayProgress": api.ReplayProgress,
    "WebhookAccepted": api.WebhookAccepted, "SlackChallenge": api.SlackChallenge,
    "Health": api.Health, "Ready": api.Ready, "DeadLetterList": api.DeadLetterList,
    "RedriveRequest": api.RedriveRequest, "RedriveReport": api.RedriveReport,
    "Lag": api.Lag, "Version": api.Version,
}
OPEN_SCHEMAS: dict[str, dict[str, Any]] = {
    "Payload": {"description": "the sender's payload, written to Bronze byte for byte; JSON "
                "(an object or an array of objects is one row each, per the mapping)"},
    "ReplaySummary": {"type": "object", "additionalProperties": True, "properties": {
        n: {"type": "integer", "minimum": 0} for n in (
            "rows_before", "rows_after", "added", "removed", "changed", "unchanged",
            "dead_letters")}},
    "OpenApiDocument": {"type": "object", "required": ["openapi", "paths"]},
}


def _components() -> dict[str, Any]:
    _, top = models_json_schema([(m, "validation") for m in MODELS.values()],
                                ref_template="#/components/schemas/{model}")
    schemas: dict[str, Any] = top["$defs"]
    schemas["PipelineInput"] = _input(schemas["PipelineView"], "SinkInput")
    schemas["SinkInput"] = _input(schemas["SinkView"], None)
    schemas["MergePatch"] = {
        "type": "object", "additionalProperties": False, "description": "a JSON merge patch "
        "(RFC 7386) of a PipelineInput: each field replaces the current one (objects "
        "merge), null removes it; the result is checked as a whole",
        "properties": {name: {} for name in schemas["PipelineInput"]["properties"]}}
    return {**schemas, **OPEN_SCHEMAS}


def _input(view: dict[str, Any], sink: str | None) -> dict[str, Any]:
    """What a create or replace takes: a view, `id` and `team_id` optional (the id is
    generated, the team is the token's), its read-only fields taken and ignored."""
    out = copy.deepcopy(view)
    out["title"] = out["title"].replace("View", "Input")
    ignored = [n for n in ((*READ_ONLY, "status") if sink is None else READ_ONLY)
               if n in out["properties"]]
    for name in ignored:
        out["properties"][name] = {"description": "read-only: ignored"}
    out["required"] = [n for n in out.get("required", [])
                       if n not in ("id", "team_id", *ignored)]
    if sink is not None:
        out["properties"]["sinks"]["items"] = {"$ref": f"#/components/schemas/{sink}"}
        out["properties"]["status"]["description"] = "active or paused (error: read-only, " \
            "taken as active)"
    return out


def _content(spec: tuple[str, ...]) -> dict[str, Any]:
    """An answer's body: a component (JSON), or media types of a text body."""
    if len(spec) < 2:
        return {}
    if "/" in spec[1]:
        return {"content": {kind: {"schema": {"type": "string"}} for kind in spec[1:]}}
    return {"content": {"application/json": {"schema": {
        "$ref": f"#/components/schemas/{spec[1]}"}}}}


def _operation(op: Op) -> dict[str, Any]:
    out: dict[str, Any] = {
        "operationId": f"{op.method.lower()}{_camel(op.path)}", "summary": op.summary,
        "tags": [op.tag], "security": SECURITY[op.auth], "responses": {}}
    if op.description:
        out["description"] = op.description
    params = list(op.params)
    if "{id}" in op.path:
        params.insert(0, PIPELINE_ID)
    if "{pipeline_id}" in op.path:
        params.insert(0, WEBHOOK_ID)
    if params:
        out["parameters"] = params
    if op.body:
        ref = {"$ref": f"#/components/schemas/{op.body[0]}"}
        out["requestBody"] = {"required": op.body_required, "content": {
            media: {"schema": ref} for media in op.body[1:]}}
    for status, spec in sorted(op.answers.items()):
        answer: dict[str, Any] = {"description": spec[0], **_content(spec)}
        headers = dict(op.headers.get(status, {}))
        if status in (429, 503):
            headers |= RETRY_AFTER
        if status == 401 and op.auth in (READ, WRITE):
            headers["WWW-Authenticate"] = {"schema": {"type": "string"}}
        if headers:
            answer["headers"] = headers
        out["responses"][str(status)] = answer
    return out


def _camel(path: str) -> str:
    words = path.replace("{", "").replace("}", "").replace(".", "/").replace("-", "/")
    return "".join(w[:1].upper() + w[1:] for w in words.split("/") if w) or "Page"


@functools.cache
def document() -> dict[str, Any]:
    paths: dict[str, dict[str, Any]] = {}
    for op in ROUTES:
        paths.setdefault(op.path, {})[op.method.lower()] = _operation(op)
    schemes: dict[str, Any] = {
        "bearer": {"type": "http", "scheme": "bearer", "description": "a team token "
                   "(DASHPIPE_API_TOKENS) or the admin token (DASHPIPE_ADMIN_TOKEN)"},
        "session": {"type": "apiKey", "in": "cookie", "name": SESSION_COOKIE,
                    "description": "from POST /api/session; reads (GET) only"}}
    for name, (header, schemes_) in WEBHOOK_SIGNATURES.items():
        schemes[name] = {"type": "apiKey", "in": "header", "name": header,
                         "description": f"webhook signature; source scheme {schemes_}"}
    return {
        "openapi": "3.1.0",
        "info": {"title": TITLE, "version": VERSION, "description": (
            "Every error is `{\"error\": \"...\"}`; a 422 adds `errors: [{loc, msg}]`. "
            "Reference: docs/http-api.md.")},
        "servers": [{"url": "/"}],
        "jsonSchemaDialect": "https://json-schema.org/draft/2020-12/schema",
        "paths": paths,
        "components": {"schemas": _components(), "securitySchemes": schemes},
    }


@functools.cache
def render() -> bytes:
    return orjson.dumps(document(), option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS) + b"\n"
