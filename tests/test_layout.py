"""The package's layering: lower layers never import higher ones, no file imports another's private names, no cycles."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "darec"

# area -> areas it must never import (an area is the first component under darec/, or the top-level module name)
FORBIDDEN = {
    "evaluation": {"data", "modules", "cli", "search", "recommend"},
    "data": {"modules", "evaluation", "cli", "search", "recommend"},
    "modules": {"cli", "search", "recommend"},
    "search": {"cli"},
    "recommend": {"cli", "search"},
}


def package_files(root: Path) -> dict[str, Path]:
    """``{dotted module name: file}`` for every .py file of the package at ``root``."""
    def name(path: Path) -> str:
        parts = path.relative_to(root.parent).with_suffix("").parts
        return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)

    return {name(p): p for p in sorted(root.rglob("*.py"))}


def _imports(path: Path) -> list[tuple[str, list[str], int]]:
    """(module imported, names taken from it, line) for every darec import in ``path``, at any depth."""
    out = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("darec") and node.level == 0:
            out.append((node.module, [a.name for a in node.names], node.lineno))
        elif isinstance(node, ast.Import):
            out += [(a.name, [], node.lineno) for a in node.names if a.name.startswith("darec")]
    return out


def _area(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def _targets(files: dict[str, Path], module: str, names: list[str]) -> list[str]:
    """The files an import reads: ``module.name`` where that is a submodule, else ``module``."""
    return [f"{module}.{n}" if f"{module}.{n}" in files else module for n in names] or [module]


def layer_violations(files: dict[str, Path]) -> list[str]:
    return [f"{mod} imports {t} (line {line})" for mod, path in files.items() for imp, names, line in _imports(path)
            for t in _targets(files, imp, names) if _area(t) in FORBIDDEN.get(_area(mod), set())]


def private_name_violations(files: dict[str, Path]) -> list[str]:
    return [f"{mod} takes {n} from {imp} (line {line})" for mod, path in files.items()
            for imp, names, line in _imports(path) for n in names
            if n.startswith("_") and not n.startswith("__") and _targets(files, imp, [n])[0] != mod]


def import_cycles(files: dict[str, Path]) -> list[str]:
    graph = {mod: {t for imp, names, _ in _imports(path) for t in _targets(files, imp, names) if t in files and t != mod}
             for mod, path in files.items()}
    # a package's __init__ importing its own submodules (so that they register) is how packages work: not a cycle
    graph = {m: {t for t in ts if not (files[m].name == "__init__.py" and t.startswith(m + "."))} for m, ts in graph.items()}
    state: dict[str, int] = {}
    cycles: list[str] = []

    def visit(node: str, stack: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                cycles.append(" -> ".join(stack[stack.index(nxt):] + [nxt]))
            elif nxt not in state:
                visit(nxt, stack + [nxt])
        state[node] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m, [m])
    return cycles


FILES = package_files(PACKAGE)


def test_lower_layers_never_import_higher_ones():
    assert not layer_violations(FILES), "\n".join(layer_violations(FILES))


def test_no_file_imports_another_files_private_names():
    assert not private_name_violations(FILES), "\n".join(private_name_violations(FILES))


def test_no_import_cycle_between_files():
    assert not import_cycles(FILES), "\n".join(import_cycles(FILES))


def test_the_checks_catch_violations(tmp_path):
    """Not vacuous: a toy package with each violation is reported."""
    root = tmp_path / "darec"
    for rel, text in {"__init__.py": "", "cli/__init__.py": "", "cli/main.py": "def main(): ...\n",
                      "data/__init__.py": "", "data/a.py": "from darec.cli.main import main\nfrom darec.data.b import _x\n",
                      "data/b.py": "from darec.data.a import main\n_x = 1\n"}.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)
    files = package_files(root)
    assert layer_violations(files) == ["darec.data.a imports darec.cli.main (line 1)"]
    assert private_name_violations(files) == ["darec.data.a takes _x from darec.data.b (line 2)"]
    assert import_cycles(files) == ["darec.data.a -> darec.data.b -> darec.data.a"]
