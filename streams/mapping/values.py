"""Values inside a mapping: JSON type names, the conversions of the field types, time formats
and transforms. Pure functions; `Bad` says why a value does not fit."""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson

from schemas.jsonpath import MISSING
from schemas.mapping import EPOCH_FORMATS, FieldSpec, Regex, Round, Scale, ValueMap

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
# integers of seconds or milliseconds go through a float of seconds, which is exact to the
# microsecond below 2**33 s (year 2242); outside that, and before year 1, the exact path
FAST_EPOCH_S = 2**33
MIN_EPOCH_S = -62135596800  # 0001-01-01T00:00:00Z
Value = Callable[[Any], Any]


class Bad(Exception):
    """A value that does not fit; the message says what was expected."""


def json_type(value: Any) -> str:
    """The JSON name of a value's type, for reasons: object, array, string, ..."""
    if value is None or value is MISSING:
        return "null" if value is None else "nothing"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    if isinstance(value, dict):
        return "object"
    return type(value).__name__


def shown(value: Any) -> str:
    text = orjson.dumps(value, default=str).decode() if value is not MISSING else ""
    return f"{json_type(value)} {text[:40]}{'...' if len(text) > 40 else ''}".rstrip()


# --- types -------------------------------------------------------------------------------

def _to_string(v: Any) -> Any:
    if type(v) is str:
        return v
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int | float):
        return str(v)
    raise Bad("expected a string")


def _to_integer(v: Any) -> Any:
    if type(v) is int:
        return v
    if isinstance(v, float) and v.is_integer():
        return int(v)
    if type(v) is str:
        try:
            return int(v.strip())
        except ValueError:
            pass
    raise Bad("expected an integer")


def _to_float(v: Any) -> Any:
    if type(v) is float:
        if math.isfinite(v):
            return v
    elif type(v) is int:
        return float(v)
    elif type(v) is str:
        try:
            f = float(v)
        except ValueError:
            raise Bad("expected a number") from None
        if math.isfinite(f):
            return f
    raise Bad("expected a finite number")


def _to_boolean(v: Any) -> Any:
    if type(v) is bool:
        return v
    if type(v) is str and v.strip().lower() in ("true", "false"):
        return v.strip().lower() == "true"
    if type(v) is int and v in (0, 1):
        return v == 1
    raise Bad("expected a boolean")


def timestamp(fmt: str) -> Value:
    """A parser of one time format into an aware UTC datetime."""
    if fmt in EPOCH_FORMATS:
        per_second = EPOCH_FORMATS[fmt]
        micros = 1_000_000 // per_second

        exact_float = per_second <= 1_000  # see FAST_EPOCH_S

        def epoch(v: Any) -> datetime:
            if type(v) is int and exact_float and \
                    MIN_EPOCH_S <= v / per_second < FAST_EPOCH_S:
                try:
                    return datetime.fromtimestamp(v / per_second, UTC)
                except (OverflowError, OSError, ValueError):
                    raise Bad(f"{fmt} out of range") from None
            if type(v) is str:
                try:
                    v = float(v) if any(c in v for c in ".eE") else int(v)
                except ValueError:
                    raise Bad(f"expected {fmt} (a number)") from None
            try:
                if type(v) is int:
                    return EPOCH + timedelta(microseconds=v * micros)
                if type(v) is float and math.isfinite(v):
                    return EPOCH + timedelta(microseconds=round(v * micros))
            except OverflowError:
                raise Bad(f"{fmt} out of range") from None
            raise Bad(f"expected {fmt} (a number)")
        return epoch

    def parse(v: Any) -> datetime:
        if type(v) is not str:
            raise Bad(f"expected a {fmt} string")
        try:
            t = datetime.fromisoformat(v) if fmt == "rfc3339" else datetime.strptime(v, fmt)
        except ValueError:
            raise Bad(f"expected {fmt}") from None
        try:
            return t.replace(tzinfo=UTC) if t.tzinfo is None else t.astimezone(UTC)
        except (OverflowError, ValueError):
            raise Bad(f"{fmt} out of range") from None
    return parse


def converter(spec: FieldSpec) -> Value | None:
    if spec.type == "timestamp":
        return timestamp(spec.format or "rfc3339")
    return {"string": _to_string, "integer": _to_integer, "float": _to_float,
            "boolean": _to_boolean, "json": None}[spec.type]


# --- transforms ---------------------------------------------------------------------------

def _string_op(name: str, op: Callable[[str], str]) -> Value:
    def apply(v: Any) -> Any:
        if type(v) is not str:
            raise Bad(f"{name} needs a string")
        return op(v)
    return apply


def _number(v: Any, name: str) -> Any:
    if isinstance(v, bool) or not isinstance(v, int | float):
        raise Bad(f"{name} needs a number")
    return v


def _transform(t: Any) -> Value:
    if t == "lower":
        return _string_op("lower", str.lower)
    if t == "upper":
        return _string_op("upper", str.upper)
    if t == "trim":
        return _string_op("trim", str.strip)
    if isinstance(t, Round):
        places = t.round
        return lambda v: round(_number(v, "round"), places)
    if isinstance(t, Scale):
        factor = t.scale
        return lambda v: _number(v, "scale") * factor
    if isinstance(t, ValueMap):
        table, default = t.map, t.default

        def mapped(v: Any) -> Any:
            found = table.get(v if type(v) is str else orjson.dumps(v).decode(), MISSING)
            if found is not MISSING:
                return found
            return v if default is None else default
        return mapped
    if isinstance(t, Regex):
        pattern = re.compile(t.regex)
        group = t.group if t.group is not None else (1 if pattern.groups else 0)

        def extract(v: Any) -> Any:
            if type(v) is not str:
                raise Bad("regex needs a string")
            m = pattern.search(v)
            return None if m is None else m.group(group)
        return extract
    raise ValueError(f"unknown transform {t!r}")


def _numeric(ops: list[Round | Scale]) -> Value:
    """Consecutive `round` / `scale` transforms as one step (one number check)."""
    first = "round" if isinstance(ops[0], Round) else "scale"
    plan = [(isinstance(op, Scale), op.scale if isinstance(op, Scale) else op.round)
            for op in ops]
    if len(plan) == 2 and plan[0][0] and not plan[1][0]:  # the usual: scale, then round
        factor, places = plan[0][1], int(plan[1][1])

        def scale_round(v: Any) -> Any:
            if type(v) is not float and (type(v) is not int):
                _number(v, first)
            return round(v * factor, places)
        return scale_round

    def numeric(v: Any) -> Any:
        if type(v) is not float and (type(v) is not int):
            _number(v, first)
        for is_scale, arg in plan:
            v = v * arg if is_scale else round(v, int(arg))
        return v
    return numeric


def steps(transforms: list[Any]) -> list[Value]:
    steps: list[Value] = []
    run: list[Round | Scale] = []
    for t in [*transforms, None]:
        if isinstance(t, Round | Scale):
            run.append(t)
            continue
        if run:
            steps.append(_numeric(run))
            run = []
        if t is not None:
            steps.append(_transform(t))
    return steps


def text(v: Any) -> str:
    if type(v) is str:
        return v
    if isinstance(v, datetime):
        return v.isoformat()
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int | float):
        return str(v)
    return orjson.dumps(v).decode()
