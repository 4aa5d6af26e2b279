"""The mapping spec (`data_mapping` of a pipeline): declarative, validated here, compiled by
`streams.mapping.compiler`. No user code is ever evaluated: paths, a closed set of types,
transforms and conditions. Semantics in README "Mappings".
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    Tag,
    ValidationInfo,
    field_validator,
    model_validator,
)

from schemas.jsonpath import compile_path

FieldType = Literal["string", "integer", "float", "boolean", "timestamp", "json"]
EPOCH_FORMATS = {"epoch_s": 1, "epoch_ms": 1_000, "epoch_us": 1_000_000}
TIME_FORMATS = (*EPOCH_FORMATS, "rfc3339")
FIELD_NAME = r"^[A-Za-z_][A-Za-z0-9_]{0,62}$"


class _Spec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


def _path(value: str | None) -> str | None:
    if value is not None:
        compile_path(value)  # ValueError names the position
    return value


def _time_format(value: str) -> str:
    if value not in TIME_FORMATS and "%" not in value:
        raise ValueError(f"unknown time format {value!r}: expected one of "
                         f"{', '.join(TIME_FORMATS)} or a strptime pattern such as "
                         "'%Y-%m-%d %H:%M:%S'")
    return value


class TimeSpec(_Spec):
    """Where a row's timestamp is and how it is written."""

    path: str
    format: str = Field(default="rfc3339", description="epoch_s, epoch_ms, epoch_us, rfc3339 "
                        "or a strptime pattern (naive times are UTC)")

    _check_path = field_validator("path")(_path)
    _check_format = field_validator("format")(_time_format)


class Round(_Spec):
    round: int = Field(ge=0, le=12, description="decimal places")


class Scale(_Spec):
    scale: float = Field(description="multiply by this factor")


class ValueMap(_Spec):
    map: dict[str, Any] = Field(description="value (as JSON text for non-strings) -> new value")
    default: Any = Field(default=None, description="for unmapped values; absent or null: "
                         "keep them")


class Regex(_Spec):
    regex: str = Field(description="the first match's group `group` (default: 1 if the "
                       "pattern has groups, else the whole match); no match: null")
    group: int | str | None = None

    @field_validator("regex")
    @classmethod
    def _compiles(cls, value: str) -> str:
        try:
            re.compile(value)
        except re.error as exc:
            raise ValueError(f"invalid regular expression: {exc}") from None
        return value

    @model_validator(mode="after")
    def _group_exists(self) -> Regex:
        pattern = re.compile(self.regex)
        if isinstance(self.group, int) and not 0 <= self.group <= pattern.groups:
            raise ValueError(f"group {self.group} does not exist (the pattern has "
                             f"{pattern.groups})")
        if isinstance(self.group, str) and self.group not in pattern.groupindex:
            raise ValueError(f"the pattern has no group named {self.group!r}")
        return self


def _kind(value: Any, keys: tuple[str, ...]) -> str | None:
    """The tag of a one-of object: its first known key (or, for a model, its alias)."""
    if isinstance(value, BaseModel):
        value = value.model_dump(by_alias=True)
    if isinstance(value, str):
        return "name"
    if isinstance(value, dict):
        return next((k for k in keys if k in value), None)
    return None


_TRANSFORM_KEYS = ("round", "scale", "map", "regex")
Transform = Annotated[
    Annotated[Literal["lower", "upper", "trim"], Tag("name")]
    | Annotated[Round, Tag("round")] | Annotated[Scale, Tag("scale")]
    | Annotated[ValueMap, Tag("map")] | Annotated[Regex, Tag("regex")],
    Discriminator(lambda v: _kind(v, _TRANSFORM_KEYS), custom_error_type="transform",
                  custom_error_message="unknown transform: expected lower, upper, trim or an "
                  "object with one of round, scale, map, regex")]


class Const(_Spec):
    const: Any


class FieldSpec(_Spec):
    """One output field: a source (exactly one of path, first_of, concat, const), a type,
    transforms applied in order before the type, and required or default."""

    path: str | None = None
    first_of: list[str] | None = Field(default=None, min_length=1,
                                       description="the first of these paths that is not null")
    concat: list[str | Const] | None = Field(default=None, min_length=1,
                                             description="paths (or {const}) joined as text")
    separator: str = ""
    const: Any = Field(default=None, description="a constant value (not null)")
    type: FieldType = "json"
    format: str | None = Field(default=None, description="timestamp fields: as `time.format`")
    required: bool = False
    default: Any = Field(default=None, description="for a missing or null value")
    transforms: list[Transform] = Field(default_factory=list)

    _check_path = field_validator("path")(_path)

    @field_validator("first_of")
    @classmethod
    def _paths(cls, value: list[str] | None) -> list[str] | None:
        for p in value or ():
            compile_path(p)
        return value

    @field_validator("concat")
    @classmethod
    def _parts(cls, value: list[str | Const] | None) -> list[str | Const] | None:
        for p in value or ():
            if isinstance(p, str):
                compile_path(p)
        return value

    @field_validator("format")
    @classmethod
    def _format(cls, value: str | None) -> str | None:
        return None if value is None else _time_format(value)

    @model_validator(mode="before")
    @classmethod
    def _shorthand(cls, data: Any) -> Any:
        return {"path": data} if isinstance(data, str) else data

    @model_validator(mode="after")
    def _consistent(self) -> FieldSpec:
        sources = [name for name in ("path", "first_of", "concat", "const")
                   if getattr(self, name) is not None]
        if len(sources) != 1:
            raise ValueError("give exactly one of path, first_of, concat, const"
                             + (f" (got {', '.join(sources)})" if sources else ""))
        if self.required and self.default is not None:
            raise ValueError("a field is either required or has a default, not both")
        if self.format is not None and self.type != "timestamp":
            raise ValueError("format applies only to type timestamp")
        if self.separator and self.concat is None:
            raise ValueError("separator applies only to concat")
        return self



class Compare(_Spec):
    field: str
    op: Literal["==", "!=", "<", "<=", ">", ">=", "in", "not_in"]
    value: Any = None

    @model_validator(mode="after")
    def _list_for_in(self) -> Compare:
        if self.op in ("in", "not_in") and not isinstance(self.value, list):
            raise ValueError(f"op {self.op} needs a list value")
        return self


class Exists(_Spec):
    exists: str = Field(description="the field is present and not null")


class AllOf(_Spec):
    all_of: list[Condition] = Field(alias="and", min_length=1)


class AnyOf(_Spec):
    any_of: list[Condition] = Field(alias="or", min_length=1)


class Not(_Spec):
    negated: Condition = Field(alias="not")


_CONDITION_KEYS = ("and", "or", "not", "exists", "field")
Condition = Annotated[
    Annotated[AllOf, Tag("and")] | Annotated[AnyOf, Tag("or")] | Annotated[Not, Tag("not")]
    | Annotated[Exists, Tag("exists")] | Annotated[Compare, Tag("field")],
    Discriminator(lambda v: _kind(v, _CONDITION_KEYS), custom_error_type="condition",
                  custom_error_message="unknown condition: expected an object with one of "
                  "field (+ op, value), exists, and, or, not")]


class Mapping(_Spec):
    """`data_mapping`: which rows, their time, their fields, which rows to keep, the key."""

    records: str | None = Field(default=None, description="path selecting the rows, e.g. "
                                "`features[*]`; absent: the whole payload is one row")
    time: TimeSpec | None = Field(default=None, description="absent: the received time")
    fields: dict[str, FieldSpec] = Field(default_factory=dict, description="absent: each row "
                                         "passes through as its fields")
    # after `fields`, so that their validators see them
    key: str | None = Field(default=None, description="an output field used as the Kafka key")
    filter: Condition | None = Field(default=None, description="rows for which it is false "
                                     "are dropped")

    _check_records = field_validator("records")(_path)

    @field_validator("fields")
    @classmethod
    def _names(cls, value: dict[str, FieldSpec]) -> dict[str, FieldSpec]:
        for name in value:
            if not re.match(FIELD_NAME, name):
                raise ValueError(f"field name {name!r}: letters, digits and _, not starting "
                                 "with a digit, at most 63 characters")
        return value

    @field_validator("key")
    @classmethod
    def _key_is_a_field(cls, value: str | None, info: ValidationInfo) -> str | None:
        fields = info.data.get("fields")
        if value is not None and fields and value not in fields:
            raise ValueError(f"key {value!r} is not one of the fields")
        return value

    @field_validator("filter")
    @classmethod
    def _filter_fields(cls, value: Any, info: ValidationInfo) -> Any:
        fields = info.data.get("fields")
        if value is not None and fields:
            unknown = sorted(_condition_fields(value) - set(fields))
            if unknown:
                raise ValueError(f"filter uses unknown field(s): {', '.join(unknown)}")
        return value


def _condition_fields(cond: Any) -> set[str]:
    if isinstance(cond, Compare):
        return {cond.field}
    if isinstance(cond, Exists):
        return {cond.exists}
    if isinstance(cond, AllOf | AnyOf):
        items = cond.all_of if isinstance(cond, AllOf) else cond.any_of
        return set().union(*(_condition_fields(c) for c in items))
    if isinstance(cond, Not):
        return _condition_fields(cond.negated)
    return set()


AllOf.model_rebuild()
AnyOf.model_rebuild()
Not.model_rebuild()
Mapping.model_rebuild()
