from __future__ import annotations

import re
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from schemas.jsonpath import MISSING, compile_path

DOC: dict[str, Any] = {
    "a": {"b": {"c": 1}},
    "items": [{"id": 1, "v": "x"}, {"id": 2}, {"id": 3, "v": "z"}],
    "x.y": {"q": True},
    "$id": "root",
    "n": None,
    "0": "zero",
}


@pytest.mark.parametrize(("path", "expected"), [
    ("a.b.c", 1),
    ("$.a.b.c", 1),
    ("$['a'].b", {"c": 1}),
    ("items[0].id", 1),
    ("items[-1].id", 3),
    ("items[-3].id", 1),
    ('["x.y"].q', True),
    ("$[\"x.y\"]['q']", True),
    ("$id", "root"),
    ("$.$id", "root"),
    ("n", None),
    ("0", "zero"),
    ('["a"]["b"]', {"c": 1}),
])
def test_get(path: str, expected: Any) -> None:
    assert compile_path(path).get(DOC) == expected


def test_root() -> None:
    assert compile_path("$").get(DOC) is DOC
    assert compile_path("$").select(DOC) == [DOC]
    assert compile_path("$[1]").get([10, 20]) == 20


@pytest.mark.parametrize("path", [
    "a.q", "a.b.c.d", "items[3]", "items[-4]", "items.0", "a[0]", "items[1].v", "n.x",
    "items[*].missing",
])
def test_missing(path: str) -> None:
    assert compile_path(path).get(DOC) is MISSING
    assert compile_path(path).select(DOC) == []


def test_missing_is_falsy_and_named() -> None:
    assert not MISSING
    assert repr(MISSING) == "MISSING" == str(MISSING)


def test_wildcards() -> None:
    assert compile_path("items[*].id").select(DOC) == [1, 2, 3]
    assert compile_path("items.*.v").select(DOC) == ["x", "z"]
    assert compile_path("a.*").select(DOC) == [{"c": 1}]
    assert compile_path("$[*]").select([1, [2]]) == [1, [2]]
    assert compile_path("*.*").select({"a": [1, 2], "b": {"c": 3}, "d": 4}) == [1, 2, 3]
    assert compile_path("items[*].id").get(DOC) == 1
    assert compile_path("$.n[*]").get(DOC) is MISSING
    assert compile_path("items[*]").has_wildcard
    assert not compile_path("items[0]").has_wildcard


def test_quoted_names() -> None:
    doc = {"*": 1, 'say "hi"': 2, "a]b": 3, "it's": 4}
    assert compile_path('["*"]').select(doc) == [1]
    assert compile_path(r'["say \"hi\""]').get(doc) == 2
    assert compile_path('["a]b"]').get(doc) == 3
    assert compile_path('["it\'s"]').get(doc) == 4


def test_index_is_not_a_key_and_bool_is_not_a_list() -> None:
    assert compile_path("[0]").get({"0": 1}) is MISSING
    assert compile_path("a[0]").get({"a": "text"}) is MISSING
    assert compile_path("a.b").get({"a": [1]}) is MISSING


@pytest.mark.parametrize(("path", "message"), [
    ("a[", "invalid path 'a[': unclosed bracket at position 1"),
    ("", "empty path at position 0"),
    ("a.", "expected a name at position 2"),
    ("$.", "expected a name at position 2"),
    (".a", "expected a name at position 0"),
    ("a..b", "expected a name at position 2"),
    ("a[x]", "expected an index, '*' or a quoted name at position 2"),
    ("a[]", "expected an index, '*' or a quoted name at position 2"),
    ("a[1.5]", "expected an index, '*' or a quoted name at position 2"),
    ("a[0]b", "unexpected 'b' at position 4"),
    ("a]", "unexpected ']' at position 1"),
    ('a["x', "unclosed quote at position 2"),
    ('a["x"y]', "expected ']' at position 5"),
    ("a[12", "unclosed bracket at position 1"),
])
def test_errors_name_the_position(path: str, message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        compile_path(path)


# --- property: a compiled path agrees with a straightforward walk --------------------------

KEYS = st.sampled_from(["a", "b", "c", "x.y", "*", "q'r", 'd"e', "0", "$"])
values = st.recursive(
    st.none() | st.booleans() | st.integers(-5, 5) | st.text(max_size=3),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(KEYS, inner, max_size=4),
    max_leaves=20,
)
docs = st.lists(values, min_size=1, max_size=4) | st.dictionaries(KEYS, values, min_size=1)
Step = str | int | None  # a key, an index, or None for a wildcard
SIMPLE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def render(path: list[Step]) -> str:
    out = "$"
    for step in path:
        if step is None:
            out += "[*]"
        elif isinstance(step, int):
            out += f"[{step}]"
        elif SIMPLE.fullmatch(step):
            out += f".{step}"
        else:
            out += '["' + step.replace("\\", "\\\\").replace('"', '\\"') + '"]'
    return out


def walk(doc: Any, path: list[Step]) -> list[Any]:
    if not path:
        return [doc]
    step, rest = path[0], path[1:]
    if step is None:
        children = doc if isinstance(doc, list) else (
            list(doc.values()) if isinstance(doc, dict) else [])
    elif isinstance(step, int):
        ok = isinstance(doc, list) and -len(doc) <= step < len(doc)
        children = [doc[step]] if ok else []
    else:
        children = [doc[step]] if isinstance(doc, dict) and step in doc else []
    return [found for child in children for found in walk(child, rest)]


def draw_path(data: st.DataObject, doc: Any) -> list[Step]:
    """A path that mostly follows the document (so that it matches), sometimes strays."""
    path: list[Step] = []
    node = doc
    for _ in range(data.draw(st.integers(0, 5))):
        choice = data.draw(st.integers(0, 4))
        step: Step
        if choice <= 2 and isinstance(node, dict) and node:
            step = data.draw(st.sampled_from(sorted(node)))
        elif choice <= 2 and isinstance(node, list) and node:
            step = data.draw(st.integers(-len(node), len(node) - 1))
        elif choice == 3:
            step = None
        else:
            step = data.draw(KEYS | st.integers(-5, 5))
        path.append(step)
        found = walk(node, [step])
        node = found[0] if found else None
    return path


@given(docs, st.data())
def test_agrees_with_reference_walk(doc: Any, data: st.DataObject) -> None:
    path = draw_path(data, doc)
    compiled = compile_path(render(path))
    expected = walk(doc, path)
    assert compiled.select(doc) == expected
    assert compiled.get(doc) == (expected[0] if expected else MISSING)


@given(values, st.lists(KEYS | st.integers(-5, 5), max_size=5))
def test_dotted_and_bracketed_forms_agree(doc: Any, path: list[str | int]) -> None:
    bracketed = "".join(f"[{s}]" if isinstance(s, int) else "['" + s.replace("'", "\\'") + "']"
                        for s in path)
    assert compile_path(render(list(path))).get(doc) == compile_path("$" + bracketed).get(doc)
