"""A deliberately naive reference interpreter of a mapping spec, for the property tests.

Written from the README ("## Mappings (role `map`)"), not from `streams/compiler.py`: it
reads the spec as a plain dict (the YAML/JSON form), re-reads it for every record and has its
own path evaluation. Slow and simple on purpose.

`reference(spec, payload, received_at)` answers `(rows, errors, filtered)`:

- rows: `(index, time, key, fields)` tuples;
- errors: `(index, prefix)` tuples, where `prefix` is how the compiler's reason must start:
  `field 'name'`, `time`, `key` or `records`.

Where the README leaves a choice open, the choice made here is marked "README ambiguous".
"""

from __future__ import annotations

import contextlib
import json
import math
import re
from datetime import UTC, datetime, timedelta
from typing import Any

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
PER_SECOND = {"epoch_s": 1, "epoch_ms": 1_000, "epoch_us": 1_000_000}


class Missing:
    """What a path gives when a step is absent or meets the wrong kind of value."""

    def __repr__(self) -> str:
        return "MISSING"


MISSING = Missing()


class BadValue(Exception):
    """A value that does not fit a type, transform or time format."""


class RowFailed(Exception):
    """The row is a dead letter; the message is the start of the expected reason."""


# --- paths ------------------------------------------------------------------------------------


def parse_path(path: str) -> list[tuple[str, Any]]:
    """The steps of a path: ("key", name), ("index", n) or ("wild", None)."""
    steps: list[tuple[str, Any]] = []
    if path == "$":
        return steps
    i = 0
    if path.startswith("$."):
        i = 2
    elif path.startswith("$["):
        i = 1
    while i < len(path):
        if path[i] == "[":
            if path[i + 1] in "\"'":
                quote = path[i + 1]
                i += 2
                name = ""
                while path[i] != quote:
                    if path[i] == "\\":
                        i += 1
                    name += path[i]
                    i += 1
                steps.append(("key", name))
                i += 2  # the closing quote and "]"
            else:
                end = path.index("]", i)
                inner = path[i + 1:end]
                if inner == "*":
                    steps.append(("wild", None))
                else:
                    steps.append(("index", int(inner)))
                i = end + 1
        else:
            if path[i] == ".":
                i += 1
            start = i
            while i < len(path) and path[i] not in ".[]":
                i += 1
            name = path[start:i]
            if name == "*":
                steps.append(("wild", None))
            else:
                steps.append(("key", name))
    return steps


def select_steps(steps: list[tuple[str, Any]], doc: Any) -> list[Any]:
    """Every value the steps reach, in document order."""
    nodes = [doc]
    for kind, arg in steps:
        found = []
        for node in nodes:
            if kind == "wild":
                if isinstance(node, list):
                    found.extend(node)
                elif isinstance(node, dict):
                    found.extend(node.values())
            elif kind == "key":
                if isinstance(node, dict) and arg in node:
                    found.append(node[arg])
            elif isinstance(node, list) and -len(node) <= arg < len(node):
                found.append(node[arg])
        nodes = found
    return nodes


def get(path: str, doc: Any) -> Any:
    """The value at a path (with a wildcard: its first match), or MISSING."""
    found = select_steps(parse_path(path), doc)
    if found:
        return found[0]
    return MISSING


def is_absent(value: Any) -> bool:
    return value is MISSING or value is None


# --- text -------------------------------------------------------------------------------------


def json_text(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


def as_text(value: Any) -> str:
    """A value as text: strings as is, booleans true/false, numbers as their decimal text,
    anything else as its JSON text (README ambiguous for objects and arrays)."""
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        if value:
            return "true"
        return "false"
    if isinstance(value, int | float):
        return str(value)
    return json_text(value)


def is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


# --- times ------------------------------------------------------------------------------------


def parse_time(fmt: str, value: Any) -> datetime:
    """A time in one of the formats, as an aware UTC datetime; BadValue when it is not one."""
    if fmt in PER_SECOND:
        per_second = PER_SECOND[fmt]
        if isinstance(value, bool):
            raise BadValue("a boolean is not an epoch")
        if isinstance(value, str):
            try:
                value = int(value)
            except ValueError:
                try:
                    value = float(value)
                except ValueError:
                    raise BadValue("not a numeric string") from None
        if isinstance(value, int):
            try:
                return EPOCH + timedelta(microseconds=value * (1_000_000 // per_second))
            except OverflowError:
                raise BadValue("out of range") from None
        if isinstance(value, float):
            if not math.isfinite(value):
                raise BadValue("not finite")
            try:
                return EPOCH + timedelta(seconds=value / per_second)
            except OverflowError:
                raise BadValue("out of range") from None
        raise BadValue("not a number")
    if not isinstance(value, str):
        raise BadValue("not a string")
    try:
        if fmt == "rfc3339":
            parsed = datetime.fromisoformat(value)
        else:
            parsed = datetime.strptime(value, fmt)
    except ValueError:
        raise BadValue("does not parse") from None
    if parsed.tzinfo is None:
        return parsed.replace(tzinfo=UTC)
    try:
        return parsed.astimezone(UTC)
    except OverflowError:  # e.g. 0001-01-01T00:00:00+01:00: not a time in UTC
        raise BadValue("out of range") from None


# --- types ------------------------------------------------------------------------------------


def convert(type_name: str, fmt: str | None, value: Any) -> Any:
    if type_name == "json":
        return value
    if type_name == "string":
        if isinstance(value, str):
            return value
        if isinstance(value, bool):
            return as_text(value)
        if isinstance(value, int | float):
            return str(value)
        raise BadValue("objects and arrays are not strings")
    if type_name == "integer":
        if isinstance(value, bool):
            raise BadValue("booleans are refused")
        if isinstance(value, int):
            return value
        if isinstance(value, float):
            if math.isfinite(value) and value == int(value):
                return int(value)
            raise BadValue("a float with a fraction")
        if isinstance(value, str):
            try:
                return int(value)
            except ValueError:
                raise BadValue("not an integer string") from None
        raise BadValue("not an integer")
    if type_name == "float":
        if isinstance(value, bool):
            raise BadValue("booleans are refused")
        if isinstance(value, int):
            return float(value)
        if isinstance(value, float):
            if math.isfinite(value):
                return value
            raise BadValue("not finite")
        if isinstance(value, str):
            try:
                number = float(value)
            except ValueError:
                raise BadValue("not a numeric string") from None
            if math.isfinite(number):
                return number
            raise BadValue("not finite")
        raise BadValue("not a number")
    if type_name == "boolean":
        if isinstance(value, bool):
            return value
        if isinstance(value, str):
            # README ambiguous: "strings true/false in any case" says nothing of surrounding
            # blanks; like int() and float() for the numeric types, they are ignored here.
            word = value.strip().lower()
            if word == "true":
                return True
            if word == "false":
                return False
            raise BadValue("not true or false")
        if isinstance(value, int) and value in (0, 1):
            return value == 1
        raise BadValue("not a boolean")
    if type_name == "timestamp":
        return parse_time(fmt or "rfc3339", value)
    raise AssertionError(f"unknown type {type_name}")


# --- transforms -------------------------------------------------------------------------------


def apply_transform(transform: Any, value: Any) -> Any:
    if transform in ("lower", "upper", "trim"):
        if not isinstance(value, str):
            raise BadValue(f"{transform} needs a string")
        if transform == "lower":
            return value.lower()
        if transform == "upper":
            return value.upper()
        return value.strip()
    if "round" in transform:
        if not is_number(value):
            raise BadValue("round needs a number")
        return round(value, transform["round"])
    if "scale" in transform:
        if not is_number(value):
            raise BadValue("scale needs a number")
        # README ambiguous: "multiply" does not say whether an integer times an integer
        # factor stays an integer. The schema declares the factor a float, so the product
        # is always a float (3 * {scale: 2} is 6.0, text "6.0").
        return value * float(transform["scale"])
    if "map" in transform:
        table = transform["map"]
        lookup = value if isinstance(value, str) else json_text(value)
        if lookup in table:
            return table[lookup]
        if transform.get("default") is not None:
            return transform["default"]
        return value
    if "regex" in transform:
        if not isinstance(value, str):
            raise BadValue("regex needs a string")
        pattern = re.compile(transform["regex"])
        group = transform.get("group")
        if group is None:
            group = 1 if pattern.groups > 0 else 0
        match = pattern.search(value)
        if match is None:
            return None
        return match.group(group)
    raise AssertionError(f"unknown transform {transform!r}")


# --- fields -----------------------------------------------------------------------------------


def source_value(spec: dict[str, Any], record: Any) -> Any:
    if "path" in spec:
        return get(spec["path"], record)
    if "first_of" in spec:
        for path in spec["first_of"]:
            value = get(path, record)
            if not is_absent(value):
                return value
        return MISSING
    if "concat" in spec:
        texts = []
        for part in spec["concat"]:
            value = part["const"] if isinstance(part, dict) else get(part, record)
            if not is_absent(value):
                texts.append(as_text(value))
        if not texts:
            return MISSING
        return spec.get("separator", "").join(texts)
    return spec["const"]


def field_value(name: str, spec: Any, record: Any) -> Any:
    if isinstance(spec, str):
        spec = {"path": spec}
    value = source_value(spec, record)
    if is_absent(value):
        if spec.get("required", False):
            raise RowFailed(f"field {name!r}")
        return spec.get("default")
    try:
        for transform in spec.get("transforms", []):
            value = apply_transform(transform, value)
            if value is None:
                # "null passes through all of them (and, for a required field, is a dead
                # letter)". README ambiguous on whether a non-required field then takes its
                # `default`; as for a null source, it does here.
                if spec.get("required", False):
                    raise RowFailed(f"field {name!r}")
                return spec.get("default")
        return convert(spec.get("type", "json"), spec.get("format"), value)
    except BadValue:
        raise RowFailed(f"field {name!r}") from None


def row_time(spec: dict[str, Any], record: Any) -> datetime:
    value = get(spec["path"], record)
    if is_absent(value):
        raise RowFailed("time")
    try:
        return parse_time(spec.get("format", "rfc3339"), value)
    except BadValue:
        raise RowFailed("time") from None


# --- filter -----------------------------------------------------------------------------------


def compare(op: str, left: Any, right: Any) -> bool:
    if op == "==":
        return bool(left == right)
    if op == "!=":
        return bool(left != right)
    if op == "in":
        return left in right
    if op == "not_in":
        return left not in right
    if left is None:
        return False
    if isinstance(left, bool) != isinstance(right, bool):
        return False
    try:
        if op == "<":
            return bool(left < right)
        if op == "<=":
            return bool(left <= right)
        if op == ">":
            return bool(left > right)
        if op == ">=":
            return bool(left >= right)
    except TypeError:  # the kinds do not compare
        return False
    raise AssertionError(f"unknown op {op}")


def holds(cond: dict[str, Any], fields: dict[str, Any], specs: dict[str, Any]) -> bool:
    if "and" in cond:
        return all(holds(c, fields, specs) for c in cond["and"])
    if "or" in cond:
        return any(holds(c, fields, specs) for c in cond["or"])
    if "not" in cond:
        return not holds(cond["not"], fields, specs)
    if "exists" in cond:
        return fields.get(cond["exists"]) is not None
    name, op, value = cond["field"], cond["op"], cond.get("value")
    spec = specs.get(name)
    is_timestamp = isinstance(spec, dict) and spec.get("type") == "timestamp"
    # "on a timestamp field an RFC 3339 string value is compared as a time". README ambiguous
    # on whether this also holds for == and != (the sentence sits with the ordering ops);
    # here it does. A string that is not RFC 3339 stays a string (and so never compares).
    if is_timestamp and isinstance(value, str) and op not in ("in", "not_in"):
        with contextlib.suppress(BadValue):
            value = parse_time("rfc3339", value)
    return compare(op, fields.get(name), value)


# --- the mapping ------------------------------------------------------------------------------


def select_records(path: str | None, payload: Any) -> list[Any] | None:
    """The selected records, or None when the records path does not exist in the payload."""
    if path is None:
        return [payload]
    steps = parse_path(path)
    kinds = [kind for kind, _ in steps]
    if "wild" in kinds:
        before_wildcard = steps[:kinds.index("wild")]
        if not select_steps(before_wildcard, payload):
            return None
        return select_steps(steps, payload)
    found = select_steps(steps, payload)
    if not found:
        return None
    if isinstance(found[0], list):
        return found[0]
    return [found[0]]


def reference(
    spec: dict[str, Any] | None, payload: Any, received_at: datetime
) -> tuple[list[tuple[int, datetime, str | None, Any]], list[tuple[int, str]], int]:
    if spec is None:
        spec = {}
    records = select_records(spec.get("records"), payload)
    if records is None:
        return [], [(0, "records")], 0
    specs = spec.get("fields") or {}
    rows = []
    errors = []
    filtered = 0
    for index, record in enumerate(records):
        try:
            if specs:
                fields = {}
                for name, field_spec in specs.items():
                    fields[name] = field_value(name, field_spec, record)
            elif isinstance(record, dict):
                fields = record
            else:
                fields = {"value": record}
            time = received_at if spec.get("time") is None else row_time(spec["time"], record)
        except RowFailed as exc:
            errors.append((index, str(exc)))
            continue
        if spec.get("filter") is not None and not holds(spec["filter"], fields, specs):
            filtered += 1
            continue
        key = None
        if spec.get("key") is not None:
            value = fields.get(spec["key"])
            if value is None:
                errors.append((index, "key"))
                continue
            key = as_text(value)
        rows.append((index, time, key, fields))
    return rows, errors, filtered
