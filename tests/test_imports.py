"""The package's import graph: no cycles inside minissd/, and the commands never import each other.

Every module under minissd/ is parsed with `ast` (nothing is imported), and every import statement
counts, at module level or inside a function: a function-level import that closes a cycle only
postpones the cycle to the first call. Importing ``minissd.a.b`` also runs the packages ``minissd.a``
(unless the importer is inside it), so those count as edges too.
"""
import ast
import os

import pytest

ROOT = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "minissd")
COMMANDS = ("minissd.train", "minissd.evaluate", "minissd.detect", "minissd.convert", "minissd.explain")


def module_sources(root=ROOT, package="minissd") -> dict:
    """{dotted module name: source text} of every .py file under ``root``."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith((".", "__")))
        rel = os.path.relpath(dirpath, root)
        parts = [package] + ([] if rel == "." else rel.split(os.sep))
        for f in sorted(filenames):
            if f.endswith(".py"):
                name = ".".join(parts if f == "__init__.py" else parts + [f[:-3]])
                with open(os.path.join(dirpath, f), encoding="utf-8") as fh:
                    out[name] = fh.read()
    return out


def import_graph(sources: dict, package="minissd") -> dict:
    """{module: set of modules of ``sources`` it imports (anywhere in its body)}."""
    modules = set(sources)
    packages = {m for m, src in sources.items() if _is_package(m, sources)}

    def targets(importer, node):
        base_pkg = importer if importer in packages else importer.rpartition(".")[0]
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        else:
            if node.level:
                base = base_pkg
                for _ in range(node.level - 1):
                    base = base.rpartition(".")[0]
                mod = f"{base}.{node.module}" if node.module else base
            else:
                mod = node.module or ""
            # `from pkg import name`: name may be a submodule
            names = [mod] + [f"{mod}.{a.name}" for a in node.names if f"{mod}.{a.name}" in modules]
        found = set()
        for name in names:
            if not (name == package or name.startswith(package + ".")):
                continue
            # the module itself, or the nearest enclosing module of an attribute path
            while name and name not in modules:
                name = name.rpartition(".")[0]
            if not name:
                continue
            found.add(name)
            parent = name.rpartition(".")[0]
            while parent:   # parents run first, unless the importer is already inside them
                if parent in modules and not (importer == parent or importer.startswith(parent + ".")):
                    found.add(parent)
                parent = parent.rpartition(".")[0]
        # the importer itself, and the packages it lives in (they are already being initialised)
        return {m for m in found if not (importer == m or importer.startswith(m + "."))}

    graph = {}
    for name, src in sources.items():
        edges = set()
        for node in ast.walk(ast.parse(src, filename=name)):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                edges |= targets(name, node)
        graph[name] = edges
    return graph


def _is_package(name, sources):
    return any(other.startswith(name + ".") for other in sources)


def find_cycles(graph: dict) -> list:
    """The strongly connected components with more than one module (Tarjan), each sorted."""
    index, low, stack, on_stack, out = {}, {}, [], set(), []
    counter = [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


@pytest.fixture(scope="module")
def graph():
    return import_graph(module_sources())


def test_no_import_cycle_inside_minissd(graph):
    cycles = find_cycles(graph)
    assert not cycles, "import cycles (module-level or function-level imports): " + "; ".join(
        " <-> ".join(c) for c in cycles)


def test_commands_import_library_code_only(graph):
    for command in COMMANDS:
        assert command in graph, command
        others = sorted(graph[command] & (set(COMMANDS) - {command}))
        assert not others, f"{command} imports the command(s) {others}; move the shared code into the library"
    for module, edges in graph.items():
        if module not in COMMANDS:
            bad = sorted(edges & set(COMMANDS))
            assert not bad, f"library module {module} imports the command(s) {bad}"


def test_the_checks_can_fail():
    # A cycle through a function-level import, a parent package run by a submodule import, and a
    # command importing a command are all seen.
    sources = {
        "minissd": "",
        "minissd.a": "def f():\n    from .b import g\n",
        "minissd.b": "from minissd.a import f\n",
        "minissd.pkg": "from . import sub\n",
        "minissd.pkg.sub": "",
        "minissd.c": "import minissd.pkg.sub\n",
        "minissd.d": "from .pkg.sub import x\nfrom . import c\n",
    }
    g = import_graph(sources)
    assert g["minissd.a"] == {"minissd.b"} and g["minissd.b"] == {"minissd.a"}
    assert find_cycles(g) == [["minissd.a", "minissd.b"]]
    assert g["minissd.c"] == {"minissd.pkg", "minissd.pkg.sub"}
    assert g["minissd.pkg"] == {"minissd.pkg.sub"}     # a package importing its own submodule
    assert g["minissd.d"] == {"minissd.pkg", "minissd.pkg.sub", "minissd.c"}
    assert find_cycles({"x": {"y"}, "y": {"z"}, "z": set()}) == []
