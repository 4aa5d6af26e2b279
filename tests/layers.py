"""The floors of the house (DESIGN.md "Layout"): an import only points down.

- `schemas` imports none of `dashpipe`, `agents`, `streams`;
- `dashpipe` outside `dashpipe/cli/` imports neither `agents` nor `streams`;
- `streams` does not import `agents`;
- no import cycles between modules.

Every import counts: at module level, inside functions and under `TYPE_CHECKING`.
`python tests/layers.py` prints the breaks and exits 1 (`make lint` runs it).
"""

from __future__ import annotations

import ast
import sys
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("schemas", "dashpipe", "streams", "agents")
FORBIDDEN = {  # importer floor -> packages it must not import
    "schemas": ("dashpipe", "agents", "streams"),
    "dashpipe": ("agents", "streams"),
    "streams": ("agents",),
}


def module_of(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imports(tree: ast.AST, module: str, is_package: bool) -> Iterator[str]:
    """Every module name this module imports (relative imports resolved)."""
    base = module.split(".") if is_package else module.split(".")[:-1]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                kept = base[:len(base) - node.level + 1]
                stem = ".".join(kept + ([node.module] if node.module else []))
            else:
                stem = node.module or ""
            yield stem
            yield from (f"{stem}.{alias.name}" for alias in node.names)


def graph(root: Path) -> dict[str, set[str]]:
    files = {module_of(p, root): p for pkg in PACKAGES for p in (root / pkg).rglob("*.py")}
    out: dict[str, set[str]] = {}
    for module, path in files.items():
        tree = ast.parse(path.read_text(), str(path))
        found = set(imports(tree, module, path.name == "__init__.py"))
        out[module] = {name for name in found if name in files and name != module}
    return out


def floor_breaks(edges: dict[str, set[str]]) -> list[str]:
    out = []
    for module, targets in sorted(edges.items()):
        top = module.split(".")[0]
        if module == "dashpipe.cli" or module.startswith("dashpipe.cli."):
            continue  # the composition root names every role
        deepest = {t for t in targets if not any(o.startswith(t + ".") for o in targets)}
        for target in sorted(deepest):
            if target.split(".")[0] in FORBIDDEN.get(top, ()):
                out.append(f"{module} imports {target}: {top} must not import "
                           f"{target.split('.')[0]}")
    return out


def cycles(edges: dict[str, set[str]]) -> list[str]:
    """One line per import cycle found (Tarjan's strongly connected components)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in edges.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    sys.setrecursionlimit(10_000)
    for v in sorted(edges):
        if v not in index:
            visit(v)
    return [f"import cycle: {' <-> '.join(c)}" for c in found]


def _parents_of(edges: dict[str, set[str]]) -> dict[str, set[str]]:
    """A package's `__init__` runs when a submodule is imported: not a cycle of ours."""
    return {m: {t for t in ts if not m.startswith(t + ".")} for m, ts in edges.items()}


def check(root: Path = ROOT) -> list[str]:
    edges = _parents_of(graph(root))
    return floor_breaks(edges) + cycles(edges)


if __name__ == "__main__":
    problems = check()
    for line in problems:
        print(line)
    if problems:
        print(f"{len(problems)} layer rule(s) broken (DESIGN.md 'Layout')", file=sys.stderr)
    sys.exit(1 if problems else 0)
