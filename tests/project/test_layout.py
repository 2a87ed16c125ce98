"""The code's layout as the design says it: no import circles, nothing importing upward, the store
owning its files.

The imports are read from the source (every `import`, module level or inside a function, but
not those under `if TYPE_CHECKING:`, which never run), so a circle hidden by a local import
counts. The layers, lowest first, follow the pipeline; a module may import its own layer or
lower ones only.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
ROOTS = {"hashtagkit": REPO / "hashtagkit", "hashtagkit.stores": REPO / "stores", "hashtagkit.cli": REPO / "cli"}

LAYERS = [  # lowest first: a module's layer is that of its longest matching prefix
    ("hashtagkit.errors", "hashtagkit.remote", "hashtagkit.choices", "hashtagkit.records", "hashtagkit.provenance", "hashtagkit.outputs",
     "hashtagkit.views",
     "hashtagkit.metrics",
     "hashtagkit.images", "hashtagkit.plots"),
    ("hashtagkit.stores", "hashtagkit.devices", "hashtagkit.ddp"),
    ("hashtagkit.data", "hashtagkit.backbones"),
    ("hashtagkit.extraction", "hashtagkit.heads"),
    ("hashtagkit.rerank", "hashtagkit.thresholds", "hashtagkit.postprocess"),
    ("hashtagkit.runs", "hashtagkit.evaluation", "hashtagkit.recommend"),
    ("hashtagkit.prepare", "hashtagkit.benchmark", "hashtagkit.show"),
    ("hashtagkit.serve",),
    ("hashtagkit.cli",),
]


def modules() -> dict[str, Path]:
    out = {}
    for package, root in ROOTS.items():
        for f in sorted(root.rglob("*.py")):
            parts = [p for p in f.relative_to(root).with_suffix("").parts if p != "__init__"]
            if package == "hashtagkit" and parts and parts[0] in ("stores", "cli"):
                continue
            out[".".join([package, *parts])] = f
    return out


MODULES = modules()


def imports_of(path: Path) -> set[str]:
    """The hashtagkit modules `path` imports (a name imported from a package counts as its
    submodule when it is one; the top-level package itself is lazy and never counts)."""
    found: set[str] = set()

    class Visitor(ast.NodeVisitor):
        def visit_If(self, node: ast.If) -> None:
            test = node.test
            if getattr(test, "id", None) == "TYPE_CHECKING" or getattr(test, "attr", None) == "TYPE_CHECKING":
                for n in node.orelse:
                    self.visit(n)
                return
            self.generic_visit(node)

        def visit_Import(self, node: ast.Import) -> None:
            found.update(a.name for a in node.names)

        def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
            if node.level or not node.module:
                return
            for a in node.names:
                sub = f"{node.module}.{a.name}"
                found.add(sub if sub in MODULES else node.module)

    Visitor().visit(ast.parse(path.read_text()))
    return {m for m in found if m in MODULES and m != "hashtagkit"}


GRAPH = {m: imports_of(p) - {m} for m, p in MODULES.items()}


def layer(module: str) -> int:
    best, found = -1, None
    for i, prefixes in enumerate(LAYERS):
        for p in prefixes:
            if (module == p or module.startswith(p + ".")) and len(p) > best:
                best, found = len(p), i
    return found


def test_every_module_has_a_layer():
    assert [m for m in MODULES if m != "hashtagkit" and layer(m) is None] == []


def test_nothing_imports_upward():
    upward = [f"{a} (layer {layer(a)}) imports {b} (layer {layer(b)})"
              for a, targets in GRAPH.items() if a != "hashtagkit" for b in sorted(targets) if layer(b) > layer(a)]
    assert upward == []


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan's algorithm)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in graph.get(v, ()):
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
                out.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_no_import_circles():
    # a package importing its own submodules (its __init__ re-exporting them) is not a circle;
    # a submodule importing its package's __init__ back is
    graph = {a: {b for b in targets if not a.startswith(b + ".") or MODULES[b].name != "__init__.py"}
             for a, targets in GRAPH.items()}
    assert cycles(graph) == []


def test_the_cycle_finder_finds_one():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


STORE_PRIVATE = sorted({node.name for node in ast.walk(ast.parse((REPO / "stores" / "store.py").read_text()))
                        if isinstance(node, ast.FunctionDef) and node.name.startswith("_")
                        and not node.name.startswith("__")})


@pytest.mark.parametrize("module", [m for m in MODULES if not m.startswith("hashtagkit.stores")])
def test_only_the_store_touches_its_zarr_group(module):
    """`store.group` (the Zarr group) and the Store's private methods are `stores/`'s own: a
    regex match's `.group(...)` is a call, the store's group never is."""
    tree = ast.parse(MODULES[module].read_text())
    called = {id(node.func) for node in ast.walk(tree) if isinstance(node, ast.Call)}
    reaches = [f"line {node.lineno}: .{node.attr}" for node in ast.walk(tree) if isinstance(node, ast.Attribute)
               and ((node.attr == "group" and id(node) not in called) or node.attr in STORE_PRIVATE)]
    assert reaches == []


def test_choice_lists_match_what_implements_them():
    """hashtagkit.choices (no torch, for the CLI's fast start) agrees with the code it names."""
    from hashtagkit import choices
    from hashtagkit.cli.main import cli
    from hashtagkit.heads import HEADS
    from hashtagkit.stores import SPLIT_CODES

    assert tuple(HEADS) == choices.HEAD_NAMES
    assert set(SPLIT_CODES) == set(choices.SPLITS)
    fit_options = {p.name: p for p in cli.commands["fit"].params}
    assert tuple(fit_options["head_name"].type.choices) == choices.HEAD_NAMES
    extract_options = {p.name: p for p in cli.commands["extract"].params}
    assert tuple(extract_options["decode"].type.choices) == choices.DECODE_MODES
    assert tuple(extract_options["precision"].type.choices) == choices.PRECISIONS
