"""Imports go one way: models -> inference -> (chips, stac, runs) -> (training, evaluation)
-> pretraining -> the application (``xchm`` itself, the demo, the command line).

Every ``import`` in the package, function-local ones included, is read with ``ast`` and
mapped to its room (a sub-package, or a top-level module); a room may import only rooms
of a lower layer or, for siblings, the ones listed in ``SIBLINGS``. The map is written in
docs/development.md; change both together.
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
    "_optional": 1,
    "outputs": 1,
    "datasets": 1,
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
