"""The pipeline definition, as kept (key = id) in the compacted `<prefix>.pipelines` topic.

`source_config` holds the model of its `source_type` (`HttpApiSource`, ...), each sink's
`sink_config` the model of its `sink_type`, and `data_mapping` a `Mapping`; errors name the
full path (`source_config.pagination.max_pages`). Secrets inside them are write-only:
`public()` masks them, and a masked value sent back on update keeps the stored secret.
"""

from __future__ import annotations

import base64
from datetime import datetime
from typing import Annotated, Any, Literal, get_args
from urllib.parse import urlsplit

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ModelWrapValidatorHandler,
    ValidationError,
    ValidatorFunctionWrapHandler,
    WithJsonSchema,
    WrapValidator,
    field_serializer,
    field_validator,
    model_validator,
)
from pydantic_core import InitErrorDetails, PydanticKnownError
from pydantic_core.core_schema import ErrorType

from schemas.discriminated import fit_kinds, type_config
from schemas.jsonpath import valid_path
from schemas.mapping import Mapping
from schemas.pagination import Pagination, body_path_problem

PipelineType = Literal["polling", "realtime", "derived"]
SourceType = Literal["http_api", "graphql", "webhook", "pipeline"]
Status = Literal["active", "paused", "error"]

SOURCES_BY_TYPE: dict[str, set[str]] = {
    "polling": {"http_api", "graphql"},
    "realtime": {"webhook"},
    "derived": {"pipeline"},
}
ID_PATTERN = r"^[A-Za-z0-9_-]{1,64}$"
MASK = "***"
SECRET_KEYS = frozenset({"token", "api_key", "password", "webhook_secret", "secret",
                         "verify_token", "client_secret"})
SECRET_HEADER_WORDS = ("authorization", "token", "key", "secret", "cookie", "signature")


class _Config(BaseModel):
    model_config = ConfigDict(extra="forbid")


def _upper(value: Any) -> Any:
    return value.upper() if isinstance(value, str) else value


def _http_url(value: str) -> str:
    """An http(s) URL that parses and names a host (`http://[oops` does not)."""
    try:
        host = urlsplit(value).hostname
    except ValueError as exc:
        raise ValueError(f"not a valid URL: {exc}") from None
    if not host:
        raise ValueError("not a valid URL: no host")
    return value


HttpUrl = Annotated[str, Field(pattern=r"^https?://"), AfterValidator(_http_url)]


# HTTP methods: any case accepted (`get`, as many API docs write it), kept upper case; the
# JSON Schema lists both cases so that editors accept what the API does
PollMethod = Annotated[Literal["GET", "POST", "PUT", "PATCH"], BeforeValidator(_upper),
                       WithJsonSchema({"type": "string", "enum": [
                           "GET", "POST", "PUT", "PATCH", "get", "post", "put", "patch"]})]
SinkMethod = Annotated[Literal["POST", "PUT", "PATCH"], BeforeValidator(_upper),
                       WithJsonSchema({"type": "string", "enum": [
                           "POST", "PUT", "PATCH", "post", "put", "patch"]})]


class IncrementalCursor(_Config):
    """A value taken from each poll's last page and put into the next poll's request."""

    path: str = Field(min_length=1, description="JSON path of the value in the response")
    param: str = Field(min_length=1, description="query param (http_api) or variable (graphql)")
    initial: str | int | float | None = None

    _path = field_validator("path")(lambda cls, v: valid_path(v))


class _Auth(_Config):
    auth_type: Literal["none", "bearer", "api_key", "basic",
                       "oauth2_client_credentials"] = "none"
    token: str | None = None
    api_key_in: Literal["header", "query"] = Field(
        default="header", description="where the API key goes: the header `api_key_header` "
        "or the query parameter `api_key_param`")
    api_key_header: str = "X-API-Key"
    api_key_param: str = Field(default="api_key", min_length=1)
    api_key: str | None = None
    username: str | None = None
    password: str | None = None
    token_url: HttpUrl | None = Field(default=None,
                                      description="OAuth2 token endpoint (client credentials)")
    client_id: str | None = None
    client_secret: str | None = None
    client_auth: Literal["basic", "body"] = Field(
        default="basic", description="how the client authenticates to the token endpoint: "
        "HTTP Basic (RFC 6749 2.3.1) or client_id/client_secret in the form body")
    scope: str | None = None
    audience: str | None = None
    headers: dict[str, str] = Field(default_factory=dict)
    timeout_seconds: float = Field(default=30.0, gt=0, le=300)

    @model_validator(mode="after")
    def _auth_complete(self) -> _Auth:
        need = {"bearer": ["token"], "api_key": ["api_key"], "basic": ["username", "password"],
                "oauth2_client_credentials": ["token_url", "client_id", "client_secret"]}
        for name in need.get(self.auth_type, []):
            if not getattr(self, name):
                raise ValueError(f"{name} is required when auth_type is {self.auth_type!r}")
        return self


class HttpApiSource(_Auth):
    url: HttpUrl = Field(description="http(s) URL to poll")
    method: PollMethod = "GET"
    params: dict[str, str | int | float | bool] = Field(default_factory=dict)
    body: Any = None
    pagination: Pagination | None = None
    cursor: IncrementalCursor | None = None

    @model_validator(mode="after")
    def _body_path_fits(self) -> HttpApiSource:
        if (problem := body_path_problem(self.pagination, self.body, graphql=False)):
            raise ValueError(problem)
        return self


class GraphQLSource(_Auth):
    url: HttpUrl
    query: str = Field(min_length=1)
    variables: dict[str, Any] = Field(default_factory=dict)
    pagination: Pagination | None = None
    cursor: IncrementalCursor | None = None

    @model_validator(mode="after")
    def _body_path_fits(self) -> GraphQLSource:
        if (problem := body_path_problem(self.pagination, None, graphql=True)):
            raise ValueError(problem)
        return self


WebhookScheme = Literal["auto", "original", "standard", "github", "meta", "stripe", "shopify",
                        "slack"]


class WebhookSource(_Config):
    """A webhook receiver's checks: the signature `scheme` (docs/configuration.md lists each
    one's headers, and the delivery id and event name it takes), its secrets, and the token
    that answers Meta's subscription check."""

    webhook_secret: str | list[str] = Field(description="one secret, or several for rotation")
    scheme: WebhookScheme = Field(
        default="auto", description="how requests are signed: auto (Standard Webhooks when "
        "webhook-signature is sent, else x-webhook-signature), original, standard, github, "
        "meta, stripe, shopify, slack")
    verify_token: str | None = Field(
        default=None, min_length=1, description="answers Meta's GET subscription check "
        "(hub.verify_token) when it matches; write-only, like the secrets")

    @model_validator(mode="after")
    def _usable(self) -> WebhookSource:
        if not self.secrets() or not all(self.secrets()):
            raise ValueError("webhook_secret must be a non-empty string or list of strings")
        for i, secret in enumerate(self.secrets()):
            # only Standard Webhooks decodes what follows whsec_; Stripe's whsec_ secrets
            # are keys as written
            if secret.startswith("whsec_") and self.scheme in ("auto", "standard"):
                encoded = secret.removeprefix("whsec_")
                try:
                    key = base64.b64decode(encoded + "=" * (-len(encoded) % 4), validate=True)
                except ValueError:
                    key = b""
                if not key:
                    raise ValueError(f"webhook_secret[{i}]: a whsec_ secret must be base64 "
                                     f"after the prefix (scheme {self.scheme} decodes it)")
        return self

    def secrets(self) -> list[str]:
        s = self.webhook_secret
        return [s] if isinstance(s, str) else list(s)


class PipelineSource(_Config):
    pipeline_id: str = Field(min_length=1, description="the pipeline whose output feeds this one")


SOURCE_MODELS: dict[str, type[BaseModel]] = {
    "http_api": HttpApiSource,
    "graphql": GraphQLSource,
    "webhook": WebhookSource,
    "pipeline": PipelineSource,
}


class Batching(_Config):
    max_rows: int = Field(default=1, ge=1, le=10_000, description="1: one request per row")
    max_bytes: int = Field(default=1_000_000, ge=1_000, le=50_000_000)
    max_wait_seconds: float = Field(default=1.0, gt=0, le=300)


class _SinkCommon(_Config):
    url: HttpUrl = Field(description="where rows are sent")
    timeout_seconds: float = Field(default=15.0, gt=0, le=120)
    concurrency: int = Field(default=4, ge=1, le=64, description="requests in flight")
    headers: dict[str, str] = Field(default_factory=dict)


class WebhookSink(_SinkCommon):
    """POST each row as JSON, signed: Standard Webhooks with a `whsec_` secret, or the
    original way (`x-webhook-signature`, hex HMAC-SHA256 of the body)."""

    secret: str = Field(min_length=1, description="whsec_... (Standard Webhooks) or any text "
                        "(original signing)")
    signing: Literal["standard", "original"] = "standard"


class HttpApiSink(_SinkCommon, _Auth):
    """Send rows to an HTTP API: the row, or `body_template` (strings `{{path}}` replaced by
    the row's value at that path), one per request or batched as a JSON array."""

    method: SinkMethod = "POST"
    body_template: Any = None
    batching: Batching = Field(default_factory=Batching)
    timeout_seconds: float = Field(default=15.0, gt=0, le=120)

    @model_validator(mode="after")
    def _sink_auth(self) -> HttpApiSink:
        if self.auth_type == "oauth2_client_credentials":
            raise ValueError("auth_type 'oauth2_client_credentials' is for poll sources; a "
                             "sink takes none, bearer, api_key or basic")
        if self.auth_type == "api_key" and self.api_key_in == "query":
            raise ValueError("api_key_in 'query' is for poll sources; a sink sends the key "
                             "in api_key_header")
        return self


SINK_MODELS: dict[str, type[BaseModel]] = {"webhook": WebhookSink, "http_api": HttpApiSink}


def _typed_by_model_validator(value: Any, _: ValidatorFunctionWrapHandler) -> Any:
    """The field validation of a typed config. Which model fits depends on another field
    (`source_type`, `sink_type`), so the model validator types the config before this runs
    and a model passes as is; so does a dict, left untyped only when the definition is
    invalid anyway (its errors are reported)."""
    if isinstance(value, dict | BaseModel):
        return value
    raise PydanticKnownError("dict_type")


# In the JSON Schema a config is the union of its models; the model that holds it says, by
# `if`/`then` on the type field (schemas/discriminated.py), which one each type takes.
_TYPED = WrapValidator(_typed_by_model_validator)
SourceModel = HttpApiSource | GraphQLSource | WebhookSource | PipelineSource
SinkModel = WebhookSink | HttpApiSink
SourceConfig = Annotated[SourceModel, _TYPED]
SinkConfig = Annotated[SinkModel, _TYPED]
TypedMapping = Annotated[Mapping, _TYPED]


def _typed(kind: type[BaseModel], raw: Any, loc: tuple[str, ...],
           errors: list[InitErrorDetails]) -> Any:
    """`raw` validated as `kind`, or None with its errors added to `errors` under `loc`."""
    try:
        return kind.model_validate(raw)
    except ValidationError as exc:
        errors += _details(exc, prefix=loc)
        return None


def _typed_sink(sink: Any, loc: tuple[str, ...], errors: list[InitErrorDetails]) -> Any:
    """`sink` (a `SinkSpec` as a dict) with its `sink_config` typed by its `sink_type`, errors
    added under `loc`. A config that fails is replaced by a blank of its type, so that
    `SinkSpec`'s own validator does not report the same errors again."""
    kind = _model(SINK_MODELS, sink.get("sink_type")) if isinstance(sink, dict) else None
    if kind is None or not isinstance(raw := sink.get("sink_config", {}), dict | BaseModel):
        return sink
    config = _typed(kind, raw, (*loc, "sink_config"), errors)
    return {**sink, "sink_config": kind.model_construct() if config is None else config}


class SinkSpec(_Config):
    model_config = ConfigDict(extra="forbid", json_schema_extra=lambda s: type_config(
        s, "sink_type", "sink_config", SINK_MODELS, get_args(SinkModel)))

    sink_type: Literal["webhook", "http_api"]
    # absent: the model validator types {} (its required fields are reported missing)
    sink_config: SinkConfig = Field(default_factory=dict)  # type: ignore[assignment]
    enabled: bool = Field(default=True, description="false after a 410 Gone; a PATCH "
                          "re-enables it")
    disabled_reason: str | None = None

    @model_validator(mode="wrap")
    @classmethod
    def _validate_config(cls, data: Any, handler: ModelWrapValidatorHandler[SinkSpec]) -> SinkSpec:
        """Type `sink_config` with its type's model, errors located under it. Inside a
        `Pipeline` the config comes typed already (the pipeline reports its errors)."""
        errors: list[InitErrorDetails] = []
        data = _typed_sink(data, (), errors)
        if not errors:
            return handler(data)
        try:
            handler(data)
        except ValidationError as exc:
            errors = _details(exc) + errors
        raise ValidationError.from_exception_data(cls.__name__, errors)


def _pipeline_rules(schema: dict[str, Any]) -> None:
    """The rules that the model validator checks across fields, as JSON Schema."""
    fit_kinds(schema, "type", "source_type", SOURCES_BY_TYPE, {"polling": {
        "required": ["interval_seconds"], "properties": {"interval_seconds": {"type": "integer"}}}})
    type_config(schema, "source_type", "source_config", SOURCE_MODELS, get_args(SourceModel))


class Pipeline(BaseModel):
    model_config = ConfigDict(extra="forbid", json_schema_extra=_pipeline_rules)

    id: str = Field(pattern=ID_PATTERN)
    team_id: str = Field(min_length=1, max_length=64)
    name: str = Field(min_length=1, max_length=200)
    type: PipelineType
    status: Literal["active", "paused"] = Field(
        default="active", description="what the owner asked for; `error` is runtime status")
    interval_seconds: int | None = Field(default=None, ge=1, le=7 * 24 * 3600)
    source_type: SourceType
    # absent: the model validator types {} (its required fields are reported missing)
    source_config: SourceConfig = Field(default_factory=dict)  # type: ignore[assignment]
    data_mapping: TypedMapping | None = Field(
        default=None, title="Data Mapping",  # pydantic gives a model-typed field no title
        description="a mapping spec (schemas/mapping.schema.json); absent: each payload "
        "passes through as one row")
    mapping_version: int = Field(default=0, ge=0, description="set by the server: 1 for the "
                                 "first mapping, +1 on every change; 0 without one")
    persist_data: bool = False
    sinks: list[SinkSpec] = Field(default_factory=list)
    rate_limit_per_minute: int = Field(default=100, ge=1, le=1_000_000)
    created_at: datetime | None = None
    updated_at: datetime | None = None

    @model_validator(mode="wrap")
    @classmethod
    def _validate_typed(cls, data: Any, handler: ModelWrapValidatorHandler[Pipeline]) -> Pipeline:
        """Type `source_config`, each sink's `sink_config` and `data_mapping` with their
        models, errors located under them and listed after those of the other fields."""
        typed_errors: list[InitErrorDetails] = []
        if isinstance(data, dict):
            data = dict(data)
            kind = _model(SOURCE_MODELS, data.get("source_type"))
            raw = data.get("source_config", {})
            if kind is not None and isinstance(raw, dict | BaseModel) \
                    and _fits(data.get("type"), data.get("source_type")):
                source = _typed(kind, raw, ("source_config",), typed_errors)
                if source is not None:
                    data["source_config"] = source
            sinks = data.get("sinks")
            if isinstance(sinks, list):
                data["sinks"] = [_typed_sink(sink, ("sinks", str(i)), typed_errors)
                                 for i, sink in enumerate(sinks)]
            if data.get("data_mapping") is not None:
                mapping = _typed(Mapping, data["data_mapping"], ("data_mapping",), typed_errors)
                if mapping is not None:
                    data["data_mapping"] = mapping
        errors: list[InitErrorDetails] = []
        model: Pipeline | None = None
        try:
            model = handler(data)
        except ValidationError as exc:
            errors += _details(exc)
        errors += typed_errors
        if model is not None:
            errors += model.fit_errors()
        if errors:
            raise ValidationError.from_exception_data(cls.__name__, errors)
        assert model is not None
        return model

    @field_serializer("data_mapping")
    def _mapping_as_written(self, mapping: Mapping | None) -> dict[str, Any] | None:
        """The mapping in the words it was written in: aliases (`and`, `or`, `not`), and
        none of the defaults it left out."""
        if mapping is None:
            return None
        return mapping.model_dump(mode="json", by_alias=True, exclude_unset=True)

    def fit_errors(self) -> list[InitErrorDetails]:
        out = []
        allowed = SOURCES_BY_TYPE[self.type]
        if self.source_type not in allowed:
            serves = next(k for k, v in SOURCES_BY_TYPE.items() if self.source_type in v)
            out.append(_error(("source_type",), self.source_type,
                              f"a {self.type} pipeline takes source_type "
                              f"{' or '.join(map(repr, sorted(allowed)))}, not "
                              f"{self.source_type!r} (which is for {serves} pipelines)"))
        if self.type == "polling" and self.interval_seconds is None:
            out.append(_error(("interval_seconds",), None,
                              "interval_seconds is required for a polling pipeline"))
        return out

    def public(self) -> dict[str, Any]:
        """The definition as an API answers it: every secret masked."""
        masked: dict[str, Any] = mask_secrets(self.model_dump(mode="json"))
        return masked


def _model(models: dict[str, type[BaseModel]], kind: Any) -> type[BaseModel] | None:
    """The model of a type named by input of any JSON type (an object is no dict key: the
    type field's own error reports it)."""
    return models.get(kind) if isinstance(kind, str) else None


def _fits(kind: Any, source_type: Any) -> bool:
    """False when `source_type` cannot serve the pipeline `type`: its config is then not
    checked, so the one error is that the two do not fit (`fit_errors`)."""
    allowed = SOURCES_BY_TYPE.get(kind) if isinstance(kind, str) else None
    return allowed is None or source_type in allowed


def _error(loc: tuple[str, ...], value: Any, message: str) -> InitErrorDetails:
    return InitErrorDetails(type="value_error", loc=loc, input=value, ctx={"error": message})


_KNOWN_ERRORS = frozenset(get_args(ErrorType)) - {"value_error"}


def _details(exc: ValidationError, prefix: tuple[str, ...] = ()) -> list[InitErrorDetails]:
    out: list[InitErrorDetails] = []
    for e in exc.errors():
        ctx = e.get("ctx") or {}
        if e["type"] == "value_error" or e["type"] not in _KNOWN_ERRORS:  # custom: keep the msg
            message = e["msg"].removeprefix("Value error, ")
            out.append(_error((*prefix, *map(str, e["loc"])), e["input"], message))
            continue
        out.append(InitErrorDetails(type=e["type"], loc=(*prefix, *e["loc"]), input=e["input"],
                                    ctx=ctx))
    return out


def _secret_header(name: str) -> bool:
    lower = name.lower()
    return any(word in lower for word in SECRET_HEADER_WORDS)


def mask_secrets(value: Any) -> Any:
    """A copy with every secret value replaced by `***` (keys named like secrets, and the
    values of headers named like credentials)."""
    if isinstance(value, dict):
        out: dict[str, Any] = {}
        for k, v in value.items():
            if k in SECRET_KEYS and v:
                out[k] = MASK if isinstance(v, str) else [MASK for _ in v]
            elif k == "headers" and isinstance(v, dict):
                out[k] = {h: MASK if _secret_header(h) else hv for h, hv in v.items()}
            else:
                out[k] = mask_secrets(v)
        return out
    if isinstance(value, list):
        return [mask_secrets(v) for v in value]
    return value


def keep_masked(new: Any, old: Any) -> Any:
    """`new` with every `***` replaced by the value at the same place in `old`, so a client can
    send back what it read without erasing the secrets it never saw."""
    if new == MASK:
        return old
    if isinstance(new, dict) and isinstance(old, dict):
        return {k: keep_masked(v, old.get(k)) for k, v in new.items()}
    if isinstance(new, list) and isinstance(old, list) and len(new) == len(old):
        return [keep_masked(n, o) for n, o in zip(new, old, strict=True)]
    return new


class PipelineStatus(BaseModel):
    """Runtime status of a pipeline, as kept (key = id) in the compacted
    `<prefix>.pipeline-status` topic: written by the poller that owns the pipeline."""

    model_config = ConfigDict(extra="forbid")

    pipeline_id: str
    state: Literal["active", "error"] = "active"
    error_message: str | None = None
    last_run_at: datetime | None = None
    last_success_at: datetime | None = None
    next_due_at: datetime | None = None
    cursor: Any = None
    consecutive_failures: int = Field(default=0, ge=0)
    attempts_in_run: int = Field(default=0, ge=0)
    run_started_at: datetime | None = Field(default=None, description="first attempt of the "
                                            "current due run")
    updated_at: datetime | None = None


class SinkStatus(BaseModel):
    """Delivery counts of one sink as seen by one `deliver` process, kept in the status topic
    under the key `sink:<pipeline id>:<sink index>:<process>`; the API sums the processes."""

    model_config = ConfigDict(extra="forbid")

    pipeline_id: str
    sink_index: int = Field(ge=0)
    process: str
    delivered: int = Field(default=0, ge=0)
    retrying: int = Field(default=0, ge=0, description="waiting for a retry in this process")
    dead: int = Field(default=0, ge=0)
    last_error: str | None = None
    last_error_at: datetime | None = None
    updated_at: datetime | None = None
