"""The package's layering, checked on every import statement, function-local ones included.

The paper's concepts sit flat at the top of ``eagle3_ref/`` (the *core*); the cost-aware
tree, the conformance suite, the tools and the command line are layers built on it, each
importing only the layers below it, as ``LAYERS`` says. Three rules:

* no import from a layer to one it may not use (the core never imports a tool);
* no circle between modules (a function-local import closes a circle as surely as a top-level one);
* no ``from x import _name`` across modules, in the package, the tests, the docs' scripts and the
  notebooks: a helper another module needs has a public home.

The check is a function of the sources, so the self-tests below can hand it one forbidden
import each and watch it fail.
"""

from __future__ import annotations

import ast
import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = "eagle3_ref"

# layer: the layers it may import (its own is always allowed)
LAYERS = {
    "core": set(),
    "costaware": {"core"},
    "testing": {"core"},
    "tools": {"core", "costaware", "testing"},
    "cli": {"core", "costaware", "testing", "tools", "facade"},
    "facade": {"core", "costaware"},  # eagle3_ref/__init__.py: the public names, re-exported
}
SUBPACKAGES = ("costaware", "testing", "tools", "cli")

# Old paths kept for one release with a DeprecationWarning (eagle3_ref/_compat.py has the
# moved modules'); each is a call-time import that the next release removes with its shim.
DEPRECATED = {
    ("eagle3_ref.tree", "eagle3_ref.costaware.auto_tree"): "TreeConfig.auto, removed in 0.3",
    ("eagle3_ref.generate", "eagle3_ref.decoding"): "batches through eagle3_ref.generate, removed in 0.3",
}


def layer(module: str) -> str:
    parts = module.split(".")
    if parts == [PACKAGE]:
        return "facade"
    return parts[1] if parts[1] in SUBPACKAGES else "core"


def module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(module: str, source: str, is_package: bool = False) -> list[tuple[str, str, int]]:
    """(imported module, imported name or "", line) for every import in ``source``, at any depth.
    ``from pkg import sub`` names the submodule ``pkg.sub`` when ``sub`` is one (resolved later)."""
    package = module if is_package else module.rpartition(".")[0]
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found += [(alias.name, "", node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join(anchor + ([node.module] if node.module else []))
            found += [(base, alias.name, node.lineno) for alias in node.names]
    return found


def violations(sources: dict[str, tuple[str, bool]], outside: dict[str, str] | None = None) -> list[str]:
    """Every broken rule in ``sources`` ({module: (source, is_package)}, the package) and
    ``outside`` ({file: source}: tests, scripts, notebooks, which may only import public names)."""
    problems, edges = [], {m: set() for m in sources}
    for module, (source, is_package) in sources.items():
        for target, name, line in imports(module, source, is_package):
            if not target.startswith(PACKAGE):
                continue
            if name and f"{target}.{name}" in sources:  # from package import submodule
                target, name = f"{target}.{name}", ""
            if name.startswith("_") and not name.startswith("__") and target != module:
                problems.append(f"{module}:{line}: imports the private name {target}.{name}")
            if target == PACKAGE and name.startswith("__"):  # the root's __version__, set before any import
                continue
            if target not in sources or target == module or (module, target) in DEPRECATED:
                continue
            edges[module].add(target)
            if layer(target) != layer(module) and layer(target) not in LAYERS[layer(module)]:
                problems.append(f"{module}:{line}: imports {target} ({layer(module)} may not import "
                                f"{layer(target)})")
    problems += [f"import circle: {' -> '.join(c)}" for c in circles(edges)]
    for where, source in (outside or {}).items():
        for target, name, line in imports("", source):
            if target.startswith(PACKAGE) and name.startswith("_") and not name.startswith("__"):
                problems.append(f"{where}:{line}: imports the private name {target}.{name}")
    return problems


def circles(edges: dict[str, set[str]]) -> list[list[str]]:
    """One cycle through each strongly connected group of modules (Tarjan), as a path."""
    index, low, stack, on, found, counter = {}, {}, [], set(), [], [0]

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in sorted(edges[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while True:
                w = stack.pop()
                on.discard(w)
                group.append(w)
                if w == v:
                    break
            if len(group) > 1:
                found.append(sorted(group) + [min(group)])
    for v in sorted(edges):
        if v not in index:
            visit(v)
    return found


def package_sources() -> dict[str, tuple[str, bool]]:
    return {module_name(p, ROOT): (p.read_text(), p.name == "__init__.py")
            for p in sorted((ROOT / PACKAGE).rglob("*.py"))}


def outside_sources() -> dict[str, str]:
    files = {str(p.relative_to(ROOT)): p.read_text()
             for folder in ("tests", "docs") for p in sorted((ROOT / folder).rglob("*.py"))}
    for notebook in sorted((ROOT / "notebooks").glob("*.ipynb")):
        cells = json.loads(notebook.read_text())["cells"]
        code = ["".join(c["source"]) for c in cells if c["cell_type"] == "code"]
        lines = [line for cell in code for line in cell.splitlines() if not line.lstrip().startswith(("%", "!"))]
        files[str(notebook.relative_to(ROOT))] = "\n".join(lines)
    return files


def test_the_package_keeps_its_layers():
    problems = violations(package_sources(), outside_sources())
    assert not problems, "\n".join(problems)


def test_every_module_has_a_layer_and_the_core_is_flat():
    """A new folder under eagle3_ref/ must be given its place in LAYERS (else it would count as core)."""
    folders = {p.name for p in (ROOT / PACKAGE).iterdir() if (p / "__init__.py").is_file()}
    assert folders == set(SUBPACKAGES)


# --- the guard itself, shown red: one forbidden import each -----------------------------

BASE = {
    "eagle3_ref": ("from .tree import TreeConfig\n", True),
    "eagle3_ref.tree": ("import torch\n\ndef _best(x):\n    return x\n", False),
    "eagle3_ref.generate": ("from .tree import TreeConfig\n", False),
    "eagle3_ref.tools": ("", True),
    "eagle3_ref.tools.bench": ("from ..generate import TreeConfig\n", False),
}


def with_source(module: str, extra: str) -> dict[str, tuple[str, bool]]:
    sources = dict(BASE)
    source, is_package = sources[module]
    sources[module] = (source + extra, is_package)
    return sources


def test_the_guard_passes_a_clean_package():
    assert violations(BASE) == []


@pytest.mark.parametrize("module, extra, expected", [
    ("eagle3_ref.tree", "from .tools import bench\n", "core may not import tools"),
    ("eagle3_ref.tree", "def f():\n    from .tools.bench import run\n", "core may not import tools"),
    ("eagle3_ref.tree", "def f():\n    from .generate import x\n", "import circle: eagle3_ref.generate -> eagle3_ref.tree"),
    ("eagle3_ref.generate", "from .tree import _best\n", "private name eagle3_ref.tree._best"),
    ("eagle3_ref.tools.bench", "import eagle3_ref.tools\nfrom eagle3_ref import tools\n", ""),
])
def test_the_guard_turns_red_on_a_forbidden_import(module, extra, expected):
    problems = violations(with_source(module, extra))
    if expected:
        assert any(expected in p for p in problems), problems
    else:  # a tool importing its own package is allowed
        assert problems == []


def test_the_guard_reads_tests_and_notebooks_for_private_names():
    assert violations(BASE, {"tests/test_x.py": "from eagle3_ref.tree import _best\n"}) == [
        "tests/test_x.py:1: imports the private name eagle3_ref.tree._best"]
    assert violations(BASE, {"notebooks/07.ipynb": "from eagle3_ref.tree import TreeConfig\n"}) == []
