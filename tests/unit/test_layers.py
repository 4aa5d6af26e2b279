"""The layer rules of `tests/layers.py`, on this tree and on small trees that break them."""

from pathlib import Path

from tests import layers


def test_this_tree_keeps_every_rule() -> None:
    assert layers.check() == []


def _tree(root: Path, files: dict[str, str]) -> Path:
    for pkg in layers.PACKAGES:
        (root / pkg).mkdir(parents=True, exist_ok=True)
        (root / pkg / "__init__.py").write_text("")
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root


def test_an_arrow_upwards_is_found_even_inside_a_function(tmp_path: Path) -> None:
    root = _tree(tmp_path, {
        "schemas/models.py": "def f():\n    from dashpipe import kafka\n",
        "dashpipe/kafka.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n"
                             "    from agents.web import server\n",
        "agents/web/__init__.py": "", "agents/web/server.py": "",
        "streams/mapper.py": "import agents.web.server\n",
        "dashpipe/cli/__init__.py": "from agents.web import server\n",  # allowed: the root
    })
    assert layers.check(root) == [
        "dashpipe.kafka imports agents.web.server: dashpipe must not import agents",
        "schemas.models imports dashpipe.kafka: schemas must not import dashpipe",
        "streams.mapper imports agents.web.server: streams must not import agents"]


def test_a_cycle_is_found(tmp_path: Path) -> None:
    root = _tree(tmp_path, {
        "streams/replay/__init__.py": "",
        "streams/replay/a.py": "from streams.replay.b import x\n",
        "streams/replay/b.py": "def g():\n    from streams.replay import a\n",
    })
    assert layers.check(root) == ["import cycle: streams.replay.a <-> streams.replay.b"]
