"""The package's structure: no import cycles (function-level imports included) and layers that
only look down: bottom modules < data < deploy < engine < the command line."""
from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "cgnet"

# the layer of each top-level name inside cgnet; a module may import its own layer or lower ones
LAYERS = {"common": 0, "fileio": 0, "download": 0, "images": 0, "visualize": 0, "model": 0, "preprocess": 0,
          "pipeline": 0, "confusion": 0, "plot": 0, "options": 0, "zoo": 0, "complexity": 1, "checkpoint": 1, "hub": 1, "data": 2,
          "deploy": 3, "engine": 4,
          "cli": 5, "__main__": 6, "__init__": 5}


def module_name(path: Path) -> str:
    parts = ("cgnet",) + path.relative_to(PACKAGE).with_suffix("").parts
    return ".".join(parts[:-1]) if parts[-1] == "__init__" else ".".join(parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in PACKAGE.rglob("*.py")}


def imports_of(name: str, path: Path, known: set[str]) -> set[str]:
    """Every cgnet module `path` imports, wherever the import statement stands."""
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[:len(base) - node.level + 1]
                base = ".".join(base + ([node.module] if node.module else []))
            else:
                base = node.module or ""
            # `from pkg import mod` imports the module pkg.mod when there is one
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in known else base for a in node.names]
        else:
            continue
        found |= {t for t in targets if t in known and t != name}
    return found


def import_graph() -> dict[str, set[str]]:
    mods = modules()
    return {name: imports_of(name, path, set(mods)) for name, path in mods.items()}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}  # 1 = on the current path, 2 = done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def layer(name: str) -> int:
    parts = name.split(".")
    return LAYERS["__init__"] if len(parts) == 1 else LAYERS[parts[1]]


def test_the_scan_sees_function_level_imports_and_cycles():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}
    assert find_cycle(graph) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None
    graph = import_graph()
    # train imports evaluate at module level; export imports the runners; both must be seen
    assert "cgnet.engine.inference" in graph["cgnet.engine.train"]
    assert "cgnet.deploy.runners" in graph["cgnet.deploy.export"]


def test_function_level_import_is_found(tmp_path, monkeypatch):
    pkg = tmp_path / "cgnet"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("def f():\n    from .b import g\n    return g\n")
    (pkg / "b.py").write_text("from . import a\n")
    monkeypatch.setattr(f"{__name__}.PACKAGE", pkg)
    assert find_cycle(import_graph()) == ["cgnet.a", "cgnet.b", "cgnet.a"]


def test_no_import_cycle_in_cgnet():
    assert find_cycle(import_graph()) is None


def test_layers_only_look_down():
    graph = import_graph()
    upward = [f"{a} -> {b}" for a, deps in graph.items() for b in deps
              if b != "cgnet" and layer(b) > layer(a)]
    assert not upward, upward
    assert set(LAYERS) >= {p.stem if p.parent == PACKAGE else p.relative_to(PACKAGE).parts[0]
                           for p in PACKAGE.rglob("*.py")}, "a new top-level module needs a layer"
