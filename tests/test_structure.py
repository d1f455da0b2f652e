"""The shape of the package itself, read from its source (nothing is imported): which module
may import which (data flows one way, DESIGN.md "The house"), no walker deciding structure by a
layer's display name, every function short enough to read on one screen, every module saying
its public names."""
import ast
import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1] / "funcnet"
MODULES = {p: ast.parse(p.read_text()) for p in sorted(ROOT.rglob("*.py"))}
assert len(MODULES) > 30, ROOT  # the package itself, not an empty folder


def module_name(path) -> str:
    parts = path.relative_to(ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path, tree) -> set:
    """Every funcnet module `path` imports, at the top or inside a function (lazy imports
    count: they run too)."""
    here = module_name(path).split(".")
    package = here if path.name == "__init__.py" else here[:-1]
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("funcnet")}
        elif isinstance(node, ast.ImportFrom):
            base = package[:len(package) - node.level + 1] if node.level else []
            target = ".".join(base + ([node.module] if node.module else []))
            if not target.startswith("funcnet"):
                continue
            found.add(target)
            if not node.module:  # from . import losses, ops: each a module
                found |= {f"{target}.{a.name}" for a in node.names}
    return found


GRAPH = {module_name(p): imports(p, t) for p, t in MODULES.items()}

# (importer, what it must never import): each a prefix of module names.
FORBIDDEN = [
    ("funcnet.core", ["funcnet.combinators", "funcnet.layers", "funcnet.train", "funcnet.fit",
                      "funcnet.gradcheck", "funcnet.models", "funcnet.sharding"]),
    ("funcnet.layers", ["funcnet.combinators", "funcnet.train", "funcnet.fit", "funcnet.gradcheck",
                        "funcnet.models", "funcnet.sharding", "funcnet.cli", "funcnet.data"]),
    ("funcnet.sharding", ["funcnet.core", "funcnet.combinators", "funcnet.layers", "funcnet.train"]),
    ("funcnet.train", ["funcnet.layers", "funcnet.fit", "funcnet.models", "funcnet.cli"]),
    ("funcnet.data", ["funcnet.checkpoint", "funcnet.train", "funcnet.layers"]),
    ("funcnet.gradcheck", ["funcnet.train", "funcnet.fit", "funcnet.cli", "funcnet.models"]),
    ("funcnet.ops", ["funcnet.layers", "funcnet.core", "funcnet.combinators"]),
]


@pytest.mark.parametrize("importer, banned", FORBIDDEN)
def test_data_flows_one_way(importer, banned):
    bad = sorted((m, t) for m, targets in GRAPH.items() if m.startswith(importer)
                 for t in targets for b in banned if t == b or t.startswith(b + "."))
    assert not bad, f"{importer} must not import {banned}: {bad}"


def test_nothing_but_the_entry_points_imports_the_command_line():
    users = sorted(m for m, targets in GRAPH.items() if "funcnet.cli" in targets)
    assert users == ["funcnet.__main__"]


def test_no_walker_decides_structure_by_a_layers_display_name():
    """`x.name == "..."` / `!=` against a string: structure is `Layer.combine`, not names."""
    found = []
    for path, tree in MODULES.items():
        for node in ast.walk(tree):
            if not isinstance(node, ast.Compare):
                continue
            sides = [node.left] + list(node.comparators)
            named = [s for s in sides if isinstance(s, ast.Attribute) and s.attr == "name"
                     and not (isinstance(s.value, ast.Name) and s.value.id == "os")]
            if named and any(isinstance(s, ast.Constant) and isinstance(s.value, str) for s in sides):
                found.append(f"{path.relative_to(ROOT.parent)}:{node.lineno}")
    assert not found, found


def test_no_function_is_longer_than_a_screen():
    long = [f"{path.relative_to(ROOT.parent)}:{node.name} ({node.end_lineno - node.lineno + 1} lines)"
            for path, tree in MODULES.items() for node in ast.walk(tree)
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
            and node.end_lineno - node.lineno + 1 > 80]
    assert not long, long


def test_every_module_names_its_public_names():
    exempt = {"__main__.py", "parallel.py"}  # an entry point; a deprecation shim
    missing = [str(p.relative_to(ROOT.parent)) for p, tree in MODULES.items()
               if p.name not in exempt and p.name != "__init__.py"
               and not any(isinstance(n, ast.Assign) and any(getattr(t, "id", "") == "__all__"
                                                             for t in n.targets) for n in tree.body)]
    assert not missing, missing
