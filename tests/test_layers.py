"""Imports go one way: models -> inference -> (chips, stac, runs) -> (training, evaluation)
-> pretraining -> the application (``xchm`` itself, the demo, the command line).

Every ``import`` in the package, function-local ones included, is read with ``ast`` and
mapped to its room (a sub-package, or a top-level module); a room may import only rooms
of a lower layer or, for siblings, the ones listed in ``SIBLINGS``. The map is written in
docs/development.md; change both together. Inside a room, modules may import each other
but never in a cycle (imports under ``if TYPE_CHECKING:`` do not run and do not count).
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "xchm"

#: Layer of each room; a room imports only from lower layers (and its allowed siblings).
LAYERS = {
    # Leaf utilities: errors first, then what needs only errors.
    "_version": 0,
    "errors": 0,
    "_compat": 0,
    "_html": 0,
    "_optional": 1,
    "datasets": 1,
    "storage": 1,
    "outputs": 2,
    "cluster": 2,
    "models": 3,
    "inference": 4,
    "chips": 5,
    "stac": 5,
    "runs": 5,
    "training": 6,
    "evaluation": 6,
    "pretraining": 7,
    # The application: the public API (``xchm``) and what is built on it.
    "testing": 8,
    "accessor": 8,
    "demo_report": 8,
    "__init__": 9,
    "demo": 10,
    "cli": 11,
    "__main__": 12,
}
#: Same-layer imports that are part of the design.
SIBLINGS: set[tuple[str, str]] = set()


def _room(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def _imports(root: Path = PACKAGE) -> list[tuple[str, str, str]]:
    """(file, importing room, imported room) for every xchm import under ``root``."""
    found = []
    for path in sorted(root.rglob("*.py")):
        rel = path.relative_to(root.parent).with_suffix("")
        module = ".".join(rel.parts).removesuffix(".__init__")
        package = module if path.name == "__init__.py" else module.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = package.split(".")[: len(package.split(".")) - node.level + 1]
                    targets = [".".join([*base, *([node.module] if node.module else [])])]
                else:
                    targets = [node.module or ""]
            else:
                continue
            for target in targets:
                if target == "xchm" or target.startswith("xchm."):
                    src, dst = _room(module), _room(target) if target != "xchm" else "__init__"
                    if src != dst:
                        found.append((str(path.relative_to(root.parent)), src, dst))
    return found


def test_layers__every_room_has_a_layer():
    rooms = {p.stem if p.is_file() else p.name for p in PACKAGE.iterdir()}
    rooms = {r for r in rooms if not r.startswith((".", "py")) and r != "__pycache__"}
    missing = rooms - set(LAYERS)
    assert not missing, f"add these to LAYERS (and docs/development.md): {missing}"


def test_layers__imports_only_go_down():
    upward = set()
    for path, src, dst in _imports():
        if src != dst and LAYERS[dst] >= LAYERS[src] and (src, dst) not in SIBLINGS:
            upward.add(f"{path}: {src} imports {dst}")
    assert not upward, "imports that go up or sideways:\n" + "\n".join(sorted(upward))


def test_layers__the_reader_sees_function_local_and_relative_imports(tmp_path):
    """Upward imports hid inside functions; the reader must see those and relative ones."""
    models = tmp_path / "xchm" / "models"
    models.mkdir(parents=True)
    (models / "__init__.py").write_text("from ..errors import XCHMError\n")
    (models / "a.py").write_text("def f():\n    from xchm.training import state\n")
    found = {(src, dst) for _, src, dst in _imports(tmp_path / "xchm")}
    assert found == {("models", "errors"), ("models", "training")}


def _module_graph(root: Path = PACKAGE) -> dict[str, set[str]]:
    """Module -> the xchm modules it imports at run time (function-local ones included)."""
    files = {}
    for path in root.rglob("*.py"):
        rel = path.relative_to(root.parent).with_suffix("")
        files[".".join(rel.parts).removesuffix(".__init__")] = path
    graph: dict[str, set[str]] = {}
    for module, path in files.items():
        package = module if path.name == "__init__.py" else module.rpartition(".")[0]
        tree = ast.parse(path.read_text(), str(path))
        typing_only = {
            id(inner)
            for node in ast.walk(tree)
            if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)
            for stmt in node.body
            for inner in ast.walk(stmt)
        }
        edges = set()
        for node in ast.walk(tree):
            if id(node) in typing_only:
                continue
            if isinstance(node, ast.Import):
                edges |= {alias.name for alias in node.names}
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    parts = package.split(".")
                    base = ".".join([*parts[: len(parts) - node.level + 1], *filter(None, [base])])
                subs = {f"{base}.{alias.name}" for alias in node.names} & set(files)
                # `from pkg import sub` imports the submodule; `from pkg import name`, pkg.
                edges |= subs if len(subs) == len(node.names) else {base, *subs}
        graph[module] = {m for m in edges if m in files and m != module}
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected groups of more than one module (Tarjan's algorithm)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    groups = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while group[-1:] != [v]:
                group.append(stack.pop())
            if len(group) > 1:
                groups.append(sorted(group))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return groups


def test_layers__no_module_imports_in_a_cycle():
    assert _cycles(_module_graph()) == []


def test_layers__the_cycle_finder_sees_a_function_local_cycle(tmp_path):
    """models/checkpoint.py <-> models/network.py was such a cycle, hidden in a function."""
    models = tmp_path / "xchm" / "models"
    models.mkdir(parents=True)
    (models / "__init__.py").write_text("")
    (models / "a.py").write_text("from xchm.models.b import f\n")
    (models / "b.py").write_text("def f():\n    from . import a\n")
    (models / "c.py").write_text(
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from xchm.models import a\n"
    )
    assert _cycles(_module_graph(tmp_path / "xchm")) == [["xchm.models.a", "xchm.models.b"]]
