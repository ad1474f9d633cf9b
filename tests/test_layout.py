"""The package layout: no import cycles, the library never imports the CLI, and every module imports only from
its own layer or lower ones. Imports are read with ``ast`` (those inside functions too), so nothing is imported.
"""

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "boomerang"

# The layers, lowest first. A module may import from its own layer and from lower layers only. An entry names a
# module or a subpackage (with everything in it); "boomerang" is the package's own __init__ (version and lazy
# exports only).
LAYERS = [
    # base: the error type, type names for signatures, consoles and number formats, Ctrl-C handling
    ("boomerang", "boomerang.errors", "boomerang.hints", "boomerang.ui", "boomerang.interrupts"),
    ("boomerang.core",),  # pure model plumbing: adapters, layer maps, plans, configs, patching, hooks
    ("boomerang.io",),  # files, loading, the offline teacher, sidecars, order files, stream builders
    ("boomerang.data",),  # corpora and token blocks
    ("boomerang.train",),  # initialisation, losses, recipes, the trainer
    ("boomerang.evaluate",),  # perplexity, lm-eval, prefix reuse, plots
    ("boomerang.analysis",),  # data-driven orders, pruning baselines, similarity analysis
    # families of patched models, one member on disk, reference compatibility, model cards, publishing on the Hub
    ("boomerang.family", "boomerang.member", "boomerang.compat", "boomerang.cards", "boomerang.publish"),
    ("boomerang.pipelines",),  # sweep and demo
    ("boomerang.serve",),  # serving a family over an OpenAI-compatible HTTP API
    ("boomerang.cli",),  # the command line
]


def _modules() -> dict[str, Path]:
    """Every module of the package by dotted name (a package by its own name)."""
    out = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = ("boomerang", *path.relative_to(PACKAGE).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


MODULES = _modules()


def _targets(name: str, node: ast.Import | ast.ImportFrom) -> list[str]:
    """The boomerang modules an import statement in module ``name`` imports."""
    if isinstance(node, ast.Import):
        bases = [alias.name for alias in node.names]
        members: list[str | None] = [None] * len(bases)
    else:
        if node.level:
            package = name.split(".") if MODULES[name].name == "__init__.py" else name.split(".")[:-1]
            package = package[: len(package) - (node.level - 1)]
            base = ".".join([*package, *([node.module] if node.module else [])])
        else:
            base = node.module or ""
        bases = [base] * len(node.names)
        members = [alias.name for alias in node.names]
    found = []
    for base, member in zip(bases, members, strict=True):
        if not (base == "boomerang" or base.startswith("boomerang.")):
            continue
        full = f"{base}.{member}" if member else base
        while full not in MODULES:  # `from pkg import name` names a module, or something defined in pkg
            full = full.rpartition(".")[0]
        found.append(full)
    return found


def _graph() -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {}
    for name, path in MODULES.items():
        tree = ast.parse(path.read_text(), filename=str(path))
        nodes = [n for n in ast.walk(tree) if isinstance(n, (ast.Import, ast.ImportFrom))]
        graph[name] = {t for n in nodes for t in _targets(name, n) if t != name}
    return graph


GRAPH = _graph()


def _layer(module: str) -> int:
    for i, entries in enumerate(LAYERS):
        for entry in entries:
            if module == entry or (entry != "boomerang" and module.startswith(entry + ".")):
                return i
    raise AssertionError(f"{module} is in no layer; add it to LAYERS in {Path(__file__).name}")


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_graph_sees_the_imports():
    # a sanity check of the parser itself: top-level, relative, in-function and `from pkg import module` imports
    assert "boomerang.io.loading" in GRAPH["boomerang.cli.core"]  # inside a function, two dots
    assert "boomerang.core.arch" in GRAPH["boomerang.core.patching"]  # top level, one dot
    assert "boomerang.ui" in GRAPH["boomerang.train.trainer"]  # inside methods
    assert "boomerang" in GRAPH["boomerang.family"]  # `from . import __version__`
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_no_import_cycles():
    assert _cycles(GRAPH) == []


def test_library_never_imports_the_cli():
    bad = sorted(
        f"{name} -> {target}"
        for name, targets in GRAPH.items()
        if _layer(name) != _layer("boomerang.cli")
        for target in targets
        if target == "boomerang.cli" or target.startswith("boomerang.cli.")
    )
    assert bad == []


def test_every_module_imports_only_its_own_or_lower_layers():
    upward = sorted(
        f"{name} (layer {_layer(name)}) -> {target} (layer {_layer(target)})"
        for name, targets in GRAPH.items()
        for target in targets
        if _layer(target) > _layer(name)
    )
    assert upward == []


@pytest.mark.parametrize("init", ["boomerang", "boomerang.data"])
def test_lazy_exports_name_real_definitions(init):
    """Each entry of a lazy ``_EXPORTS`` table names a module that defines (or imports) that name."""
    tree = ast.parse(MODULES[init].read_text())
    table = next(
        n.value
        for n in tree.body
        if isinstance(n, ast.Assign) and getattr(n.targets[0], "id", "") == "_EXPORTS"
    )
    exports = ast.literal_eval(table)
    for name, module in exports.items():
        target = f"{init}.{module}"
        assert target in MODULES, f"{name}: no module {target}"
        body = ast.parse(MODULES[target].read_text()).body
        defined = set()
        for n in body:
            if isinstance(n, (ast.FunctionDef, ast.ClassDef)):
                defined.add(n.name)
            elif isinstance(n, ast.Assign):
                defined.update(t.id for t in n.targets if isinstance(t, ast.Name))
            elif isinstance(n, ast.AnnAssign) and isinstance(n.target, ast.Name):
                defined.add(n.target.id)
            elif isinstance(n, (ast.Import, ast.ImportFrom)):
                defined.update(a.asname or a.name for a in n.names)
        assert name in defined, f"{name} is not defined in {target}"


def test_package_inits_import_no_boomerang_module():
    """Subpackage ``__init__`` files stay light: ``import boomerang.io`` imports nothing else of the package."""
    for name, path in MODULES.items():
        if path.name == "__init__.py":
            top = [n for n in ast.parse(path.read_text()).body if isinstance(n, (ast.Import, ast.ImportFrom))]
            assert [t for n in top for t in _targets(name, n)] == [], name


def test_no_machine_paths_in_the_package_or_its_recipes():
    """Nothing in the package points at one machine's layout (the wheel must run anywhere)."""
    bad = ("/work/", "/root/", "/home/", "/tmp/exp")
    hits = [
        f"{p.relative_to(PACKAGE.parent)}: {b}"
        for p in PACKAGE.rglob("*")
        if p.suffix in (".py", ".yaml", ".md", ".toml")
        for b in bad
        if b in p.read_text(encoding="utf-8")
    ]
    assert not hits, hits
