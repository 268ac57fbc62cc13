"""The import graph of src/bld has no circle, lazy (function-level) imports included.

Every ``import`` / ``from ... import`` statement of every module is read from the source (the
modules are not imported), resolved to the bld module it names, and the graph searched for a
cycle. Importing ``bld.a.b`` from outside the package ``bld.a`` runs ``bld/a/__init__.py``
first, so that counts as an edge to ``bld.a`` too; a module inside ``bld.a`` importing a
sibling does not re-run it. The package root ``bld/__init__.py`` is left out: it imports
nothing when imported (checked here), only on first use of its lazy alias
``bld.BinaryLatentDiffusionPipeline``, so modules may take ``__version__`` from it.

The packages are layers, and an import only points down (or within its own package):

    app                          the command line, the demo, the browser app
    evaluation                   figures, FD classifier, reports
    training  |  inference       (side by side: neither imports the other)
    core                         config, device, checkpoints, run folders, loading, metrics, plots
    models  |  data              (the bottom: each imports only itself)

Run alone: ``python3 -m pytest -q tests/test_imports.py``; a failure prints the circle or
the edges that point the wrong way.
"""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"
ROOT = "bld"


def module_names() -> dict[str, Path]:
    """Every module of the package: dotted name -> file (a package is its __init__.py)."""
    out = {}
    for path in sorted((SRC / ROOT).rglob("*.py")):
        parts = list(path.relative_to(SRC).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = path
    return out


def is_package(name: str, modules: dict[str, Path]) -> bool:
    return modules[name].name == "__init__.py"


def imported(name: str, tree: ast.AST, modules: dict[str, Path], top_level_only: bool = False
             ) -> set[str]:
    """The bld modules that module ``name`` imports by name."""
    package = name if is_package(name, modules) else name.rpartition(".")[0]
    nodes = tree.body if top_level_only else ast.walk(tree)
    out: set[str] = set()
    for node in nodes:
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[:len(base) - (node.level - 1)]
                where = ".".join(base + ([node.module] if node.module else []))
            else:
                where = node.module or ""
            # `from pkg import sub` names a module when pkg/sub.py exists
            targets = [f"{where}.{a.name}" if f"{where}.{a.name}" in modules else where
                       for a in node.names]
        else:
            continue
        for target in targets:
            while target and target not in modules:  # `import bld.x.y` of a name inside x
                target = target.rpartition(".")[0]
            if target.split(".")[0] == ROOT:
                out.add(target)
    return out


def graph() -> dict[str, set[str]]:
    modules = module_names()
    edges: dict[str, set[str]] = {}
    for name, path in modules.items():
        if name == ROOT:
            continue
        deps: set[str] = set()
        for target in imported(name, ast.parse(path.read_text(), str(path)), modules):
            parts = target.split(".")
            for i in range(2, len(parts) + 1):  # the packages an import runs on its way
                step = ".".join(parts[:i])
                if step != name and not name.startswith(step + "."):
                    deps.add(step)
        edges[name] = deps
    return edges


def find_cycle(edges: dict[str, set[str]]) -> list[str] | None:
    """One cycle of the graph as [a, b, ..., a], or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(n: str) -> list[str] | None:
        state[n] = 1
        path.append(n)
        for m in sorted(edges.get(n, ())):
            if state.get(m) == 1:
                return path[path.index(m):] + [m]
            if m not in state and (found := visit(m)) is not None:
                return found
        path.pop()
        state[n] = 2
        return None

    for n in sorted(edges):
        if n not in state and (found := visit(n)) is not None:
            return found
    return None


def test_the_package_root_imports_nothing_when_imported():
    modules = module_names()
    tree = ast.parse(modules[ROOT].read_text())
    assert imported(ROOT, tree, modules, top_level_only=True) == set()


def test_no_import_circle_in_src_bld():
    edges = graph()
    assert len(edges) > 20 and "bld.training.prior" in edges  # the walk found the modules
    cycle = find_cycle(edges)
    assert cycle is None, "import circle: " + " -> ".join(cycle)


def test_the_cycle_finder_finds_a_circle_through_a_lazy_import():
    """The check itself: a lazy import that closes a circle is found."""
    modules = module_names()
    lazy = ast.parse("def f():\n    from ..inference.pipeline import bits_flipped\n")
    edges = graph()
    edges["bld.core.metrics"] = imported("bld.core.metrics", lazy, modules)
    edges["bld.inference.pipeline"] = edges["bld.inference.pipeline"] | {"bld.core.metrics"}
    cycle = find_cycle(edges)
    assert cycle is not None and {"bld.core.metrics", "bld.inference.pipeline"} <= set(cycle)


# The layer of each package of bld; an import may point to a lower layer or within its own
# package. Two packages of one layer (training, inference; models, data) never import each
# other.
LAYERS = {"models": 0, "data": 0, "core": 1, "training": 2, "inference": 2, "evaluation": 3,
          "app": 4}


def wrong_way(edges: dict[str, set[str]]) -> list[str]:
    """Every edge ``a -> b`` whose package is not below a's (nor a's own), as text."""
    bad = []
    for a, deps in sorted(edges.items()):
        pa = a.split(".")[1]
        for b in sorted(deps):
            parts = b.split(".")
            if len(parts) < 2 or parts[1] == pa:
                continue  # the package root (its __version__) or a's own package
            if LAYERS[parts[1]] >= LAYERS[pa]:
                bad.append(f"{a} -> {b}")
    return bad


def test_every_module_is_in_a_layer():
    """A new top-level module or package must be given its place (LAYERS) to pass."""
    loose = [n for n in module_names() if n != ROOT and n.split(".")[1] not in LAYERS]
    assert loose == []


def test_imports_point_down_the_layers():
    bad = wrong_way(graph())
    assert bad == [], "imports against the layers: " + "; ".join(bad)


def test_the_layer_check_finds_an_upward_and_a_sideways_import():
    """The check itself: models importing core, inference importing training."""
    modules = module_names()
    edges = graph()
    edges["bld.models.diffusion"] = imported(
        "bld.models.diffusion", ast.parse("from ..core.config import ConfigError\n"), modules)
    edges["bld.inference.generate"] = edges["bld.inference.generate"] | imported(
        "bld.inference.generate", ast.parse("def f():\n    from ..training import loop\n"),
        modules)
    bad = wrong_way(edges)
    assert "bld.models.diffusion -> bld.core.config" in bad
    assert "bld.inference.generate -> bld.training.loop" in bad
