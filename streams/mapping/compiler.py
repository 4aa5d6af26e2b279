"""The mapping compiler: a spec (`schemas.mapping.Mapping`) becomes a plain callable, built once
per mapping version out of closures; nothing re-reads the spec per record. Pure: no I/O.

`compile_mapping(spec)(payload, received_at)` answers a `Mapped`: the rows that passed, the rows
that failed (each with a reason naming the field, the path and the value's type) and how many
rows the filter dropped; `map_raw` does the same from a raw record's bytes. Row indexes are
positions among the selected records, so lineage is stable whatever the filter keeps.
"""

from __future__ import annotations

import contextlib
import math
import operator
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import orjson

from schemas.jsonpath import MISSING, compile_path
from schemas.mapping import (
    EPOCH_FORMATS,
    AllOf,
    AnyOf,
    Compare,
    Const,
    Exists,
    FieldSpec,
    Mapping,
    Not,
    TimeSpec,
)
from streams.mapping import values
from streams.mapping.values import Value, json_type

Predicate = Callable[[dict[str, Any]], bool]


@dataclass(slots=True)
class Row:
    index: int  # position among the selected records
    time: datetime  # aware, UTC
    key: str | None
    fields: dict[str, Any]


@dataclass(slots=True)
class RowError:
    index: int
    reason: str
    record: Any  # the selected record that failed (the whole payload for a payload error)


@dataclass(slots=True)
class Mapped:
    rows: list[Row]
    errors: list[RowError]
    filtered: int = 0


Compiled = Callable[[Any, datetime], Mapped]


class _Fail(Exception):
    """A row that cannot be mapped; the message is the dead letter's reason."""


# --- fields -------------------------------------------------------------------------------

def _constant(value: Any) -> Value:
    return lambda rec: value


def _source(spec: FieldSpec) -> tuple[Value, str]:
    """The extraction of a field's raw value (MISSING or None when absent), and its path text."""
    if spec.path is not None:
        return compile_path(spec.path).getter(), spec.path
    if spec.first_of is not None:
        getters = [compile_path(p).getter() for p in spec.first_of]

        def first(rec: Any) -> Any:
            for get in getters:
                v = get(rec)
                if v is not None and v is not MISSING:
                    return v
            return MISSING
        return first, " | ".join(spec.first_of)
    if spec.concat is not None:
        parts: list[Value] = []
        for part in spec.concat:
            if isinstance(part, Const):
                if part.const is not None:  # a null part is skipped, as a null value is
                    parts.append(_constant(values.text(part.const)))
            else:
                parts.append(compile_path(part).getter())
        sep = spec.separator

        def concat(rec: Any) -> Any:
            found = [p(rec) for p in parts]
            present = [values.text(v) for v in found if v is not None and v is not MISSING]
            return sep.join(present) if present else MISSING
        return concat, " + ".join(p if isinstance(p, str) else "const" for p in spec.concat)
    return _constant(spec.const), "const"


def _field(name: str, spec: FieldSpec) -> Value:
    """The function giving one output field of a record, or raising `_Fail`."""
    get, where = _source(spec)
    convert = values.converter(spec)
    steps = values.steps(spec.transforms)
    required, default = spec.required, spec.default

    def absent(v: Any) -> Any:
        if required:
            raise _Fail(f"field {name!r}: required, but {where!r} is "
                        f"{'missing' if v is MISSING else 'null'}")
        return default

    def fail(problem: values.Bad, v: Any) -> _Fail:
        return _Fail(f"field {name!r}: {problem} at {where!r}, got {values.shown(v)}")

    if not steps and convert is None:
        def plain(rec: Any) -> Any:
            v = get(rec)
            return absent(v) if v is None or v is MISSING else v
        return plain
    if not steps:
        assert convert is not None
        conv = convert
        same: type | None = {"string": str, "integer": int, "float": float,
                             "boolean": bool}.get(spec.type)  # already of the type: as is
        finite = same is float

        def other(v: Any) -> Any:  # absent, or to be converted
            if v is None or v is MISSING:
                return absent(v)
            try:
                return conv(v)
            except values.Bad as exc:
                raise fail(exc, v) from None

        keys = compile_path(spec.path).keys() if spec.path is not None else None
        if keys is not None and len(keys) <= 2:  # the lookup inline: one call less per row
            k1, k2 = keys[0], keys[-1]
            two = len(keys) == 2

            def typed_inline(rec: Any) -> Any:
                try:
                    v: Any = rec[k1][k2] if two else rec[k1]
                except (KeyError, TypeError):
                    return other(MISSING)
                if type(v) is same and (not finite or -math.inf < v < math.inf):  # type: ignore[operator]
                    return v
                return other(v)
            return typed_inline

        def typed(rec: Any) -> Any:
            v: Any = get(rec)
            if type(v) is same and (not finite or -math.inf < v < math.inf):  # type: ignore[operator]
                return v
            return other(v)
        return typed

    def transformed(rec: Any) -> Any:
        v = original = get(rec)
        if v is None or v is MISSING:
            return absent(v)
        try:
            for step in steps:
                v = step(v)
                if v is None:
                    return absent(v)
            return v if convert is None else convert(v)
        except values.Bad as exc:
            raise fail(exc, original) from None
    return transformed


def _time(spec: TimeSpec) -> Value:
    get = compile_path(spec.path).getter()
    parse = values.timestamp(spec.format)
    path = spec.path

    per_second = EPOCH_FORMATS.get(spec.format, 0)
    direct = 0 < per_second <= 1_000  # integers of s or ms: exact through a float
    lowest, highest = values.MIN_EPOCH_S, values.FAST_EPOCH_S

    def row_time(rec: Any) -> datetime:
        v = get(rec)
        if direct and type(v) is int and lowest <= v / per_second < highest:
            return datetime.fromtimestamp(v / per_second, UTC)
        if v is None or v is MISSING:
            raise _Fail(f"time: {path!r} is {'missing' if v is MISSING else 'null'}")
        try:
            return parse(v)  # type: ignore[no-any-return]
        except values.Bad as exc:
            raise _Fail(f"time: {exc} at {path!r}, got {values.shown(v)}") from None
    return row_time


# --- filter -------------------------------------------------------------------------------

_ORDER: dict[str, Callable[[Any, Any], bool]] = {
    "<": operator.lt, "<=": operator.le, ">": operator.gt, ">=": operator.ge}


def _predicate(cond: Any, types: dict[str, FieldSpec]) -> Predicate:
    if isinstance(cond, AllOf):
        parts = [_predicate(c, types) for c in cond.all_of]
        return lambda f: all(p(f) for p in parts)
    if isinstance(cond, AnyOf):
        parts = [_predicate(c, types) for c in cond.any_of]
        return lambda f: any(p(f) for p in parts)
    if isinstance(cond, Not):
        inner = _predicate(cond.negated, types)
        return lambda f: not inner(f)
    if isinstance(cond, Exists):
        name = cond.exists
        return lambda f: f.get(name) is not None
    assert isinstance(cond, Compare)
    name, value = cond.field, cond.value
    spec = types.get(name)
    if spec is not None and spec.type == "timestamp" and isinstance(value, str):
        with contextlib.suppress(values.Bad):  # not a time: it never compares with one
            value = values.timestamp("rfc3339")(value)  # compare times as times
    if cond.op in ("in", "not_in"):
        options = value if isinstance(value, list) else [value]
        inside = cond.op == "in"
        return lambda f: (f.get(name) in options) == inside
    if cond.op in ("==", "!="):
        equal = cond.op == "=="
        return lambda f: (f.get(name) == value) == equal
    order = _ORDER[cond.op]

    def compare(f: dict[str, Any]) -> bool:
        v = f.get(name)
        if v is None or isinstance(v, bool) != isinstance(value, bool):
            return False
        try:
            return order(v, value)
        except TypeError:  # different kinds never match
            return False
    return compare


# --- the mapping ----------------------------------------------------------------------------

def _records(path: str | None) -> Callable[[Any], list[Any] | None]:
    """The rows of a payload; None when the records path does not exist in it."""
    if path is None:
        return lambda payload: [payload]
    compiled = compile_path(path)
    if not compiled.has_wildcard:
        def one(payload: Any) -> list[Any] | None:
            v = compiled.get(payload)
            if v is MISSING:
                return None
            return v if isinstance(v, list) else [v]
        return one
    parent, wildcard_last = compiled.before_wildcard()
    if parent is not None and wildcard_last:
        items = parent.getter()  # the common `features[*]`: the array itself

        def array(payload: Any) -> list[Any] | None:
            v = items(payload)
            if v is MISSING:
                return None
            if type(v) is list:
                return v
            return list(v.values()) if type(v) is dict else []
        return array

    def many(payload: Any) -> list[Any] | None:
        found = compiled.select(payload)
        if not found and parent is not None and parent.get(payload) is MISSING:
            return None
        return found
    return many


MAX_DEAD_RECORD_BYTES = 64 * 1024  # a dead letter keeps at most this much of a bad payload


def map_raw(run: Compiled, value: bytes | None, received_at: datetime) -> Mapped:
    """One raw record's payload, as Bronze keeps it, through a compiled mapping: its rows,
    or (not JSON) one error whose reason is the dead letter's. What the map role does to each
    record, and what `dashpipe mapping test` shows."""
    try:
        payload = orjson.loads(value or b"")
    except orjson.JSONDecodeError as exc:
        text = (value or b"")[:MAX_DEAD_RECORD_BYTES].decode("utf-8", "replace")
        return Mapped([], [RowError(0, f"payload is not valid JSON: {exc}", text)])
    return run(payload, received_at)


def passthrough(payload: Any, received_at: datetime) -> Mapped:
    """No mapping: the payload is one row, its fields the payload (or `{"value": ...}`)."""
    fields = payload if isinstance(payload, dict) else {"value": payload}
    return Mapped([Row(0, received_at, None, fields)], [])


def compile_mapping(spec: Mapping | None) -> Compiled:
    if spec is None:
        return passthrough
    records = _records(spec.records)
    where = spec.records
    fields = [(name, _field(name, f)) for name, f in spec.fields.items()]
    row_time = _time(spec.time) if spec.time is not None else None
    keep = _predicate(spec.filter, spec.fields) if spec.filter is not None else None
    key_name = spec.key

    def run(payload: Any, received_at: datetime) -> Mapped:
        found = records(payload)
        if found is None:
            return Mapped([], [RowError(0, f"records: {where!r} not found in the payload "
                                           f"({json_type(payload)})", payload)])
        rows: list[Row] = []
        errors: list[RowError] = []
        filtered = 0
        for index, rec in enumerate(found):
            try:
                if fields:
                    out = {name: value(rec) for name, value in fields}
                else:
                    out = rec if isinstance(rec, dict) else {"value": rec}
                when = received_at if row_time is None else row_time(rec)
            except _Fail as exc:
                errors.append(RowError(index, str(exc), rec))
                continue
            if keep is not None and not keep(out):
                filtered += 1
                continue
            key = None
            if key_name is not None:
                k = out.get(key_name)
                if k is None:
                    errors.append(RowError(index, f"key: field {key_name!r} is null", rec))
                    continue
                key = k if type(k) is str else values.text(k)
            rows.append(Row(index, when, key, out))
        return Mapped(rows, errors, filtered)
    return run
