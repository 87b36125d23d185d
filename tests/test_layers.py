"""The package's import structure: no import cycles, and every import respects the layer order.

A static check: every ``.py`` file under ``src/semframe/`` is parsed with :mod:`ast`; semframe
itself is never imported here, so the check runs (and fails usefully) even when the package is
broken at import time.

What counts as an import of a semframe module:

* ``import semframe.x.y`` / ``from semframe.x.y import z`` -> ``semframe.x.y``;
* ``from semframe.x import y`` -> ``semframe.x.y`` when that is a module or package of the tree
  (``semframe/x/y.py`` or ``semframe/x/y/``), otherwise ``semframe.x`` (``y`` is a name in it);
* relative imports, resolved against the importing module's package;
* at module level and inside functions, methods and class bodies (a lazy import is still a
  dependency), but not under ``if TYPE_CHECKING:`` / ``if typing.TYPE_CHECKING:`` (its ``else``
  branch does count). ``importlib.import_module(...)`` and ``sys.modules`` look-ups are not seen.

Edges: one edge to the module the import names, and only to it. Python also runs the parent
packages' ``__init__`` (``import semframe.cache.exact`` runs ``semframe/cache/__init__.py``), but
counting that would make every ``plan.nodes -> plan.spec`` import an edge into ``plan/__init__``,
which re-exports ``plan.nodes``: a "cycle" in every package. So a package's ``__init__`` is the
module ``semframe.cache`` and gets an edge only when it is the module named. A module importing
itself (``from semframe.cache import X`` inside ``semframe/cache/__init__.py``) is no edge.
The cycles this rule hides are those through a package ``__init__`` (``accounting/__init__`` ->
``accounting.estimate`` -> ``execution.executor`` -> ``accounting.budget``, which runs
``accounting/__init__`` first): they are reported as package-level cycles, on the graph of
top-level packages (and, between two layers, as a layer violation too).

Layers: ``LAYERS`` below is the single source of truth. A module belongs to the layer named by its
first component after ``semframe.`` (``semframe.plan.nodes`` -> ``plan``). A module in layer i may
import modules of layers <= i, never of a higher one. The first layer holds the leaves: they import
nothing of semframe at all (``config`` not even ``errors``). Top-level modules that no layer lists
(``semframe/__init__.py``, ``datasets.py``, ``__main__.py``, ...) are "top": they may import
anything, and no layered module may import them.
"""

from __future__ import annotations

import ast
from collections import defaultdict, deque
from dataclasses import dataclass
from pathlib import Path

import pytest

LAYERS = (
    ("errors", "config"),   # leaves: import nothing of semframe (errors may be imported by all)
    ("plan",),
    ("optimizer",),
    ("engines",),
    ("cache",),
    ("accounting",),
    ("execution",),
    ("physical",),
    ("frontends",),
)

PACKAGE = "semframe"
REPO = Path(__file__).resolve().parents[1]
PACKAGE_DIR = REPO / "src" / PACKAGE


# --------------------------------------------------------------------------------------------
# The checker (plain functions of a package directory, so the self-tests below can run it on a
# synthetic tree).
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Import:
    """One import of a semframe module found in the source."""

    source: str  # the importing module, e.g. "semframe.config"
    target: str  # the imported module, e.g. "semframe.engines.vllm"
    path: str  # the importing file, for messages: "src/semframe/config.py"
    line: int
    where: str  # "at module level", "inside function default_engine()", ...

    @property
    def site(self) -> str:
        return f"{self.path}:{self.line}, {self.where}"


def module_name(package_dir: Path, file: Path) -> str:
    """``semframe/cache/__init__.py`` -> ``semframe.cache``;
    ``semframe/cache/exact.py`` -> ``semframe.cache.exact``."""
    parts = list(file.relative_to(package_dir.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def discover_modules(package_dir: Path) -> dict[str, Path]:
    """Every module of the tree (packages by their ``__init__``), name -> file."""
    return {
        module_name(package_dir, file): file
        for file in sorted(package_dir.rglob("*.py"))
        if "__pycache__" not in file.parts
    }


def module_exists(name: str, modules: dict[str, Path], package_dir: Path) -> bool:
    """A module file, a regular package or a directory (namespace package) of the tree."""
    if name in modules:
        return True
    parts = name.split(".")
    return parts[0] == package_dir.name and package_dir.parent.joinpath(*parts).is_dir()


def _is_type_checking(test: ast.expr) -> bool:
    if isinstance(test, ast.Name):
        return test.id == "TYPE_CHECKING"
    if isinstance(test, ast.Attribute):
        return test.attr == "TYPE_CHECKING"  # typing.TYPE_CHECKING, t.TYPE_CHECKING
    return False


class _ImportCollector(ast.NodeVisitor):
    def __init__(self, module: str, is_package: bool, display_path: str,
                 modules: dict[str, Path], package_dir: Path, package: str):
        self.module = module
        self.is_package = is_package
        self.display_path = display_path
        self.modules = modules
        self.package_dir = package_dir
        self.package = package
        self.scope: list[tuple[str, str]] = []  # ("function" | "class", name)
        self.found: list[Import] = []

    # -- where are we ------------------------------------------------------------------------
    def _where(self) -> str:
        if not self.scope:
            return "at module level"
        qualname = ".".join(name for _, name in self.scope)
        kind = self.scope[-1][0]
        if kind == "function":
            return f"inside function {qualname}()"
        return f"inside class {qualname} body"

    def _scoped(self, kind: str, node: ast.AST) -> None:
        # Decorators, defaults and bases run in the enclosing scope, but imports cannot appear
        # there anyway; visit the whole node inside the new scope.
        self.scope.append((kind, node.name))  # type: ignore[attr-defined]
        self.generic_visit(node)
        self.scope.pop()

    def visit_FunctionDef(self, node: ast.FunctionDef) -> None:
        self._scoped("function", node)

    def visit_AsyncFunctionDef(self, node: ast.AsyncFunctionDef) -> None:
        self._scoped("function", node)

    def visit_ClassDef(self, node: ast.ClassDef) -> None:
        self._scoped("class", node)

    def visit_If(self, node: ast.If) -> None:
        if _is_type_checking(node.test):
            for child in node.orelse:  # the `else:` of `if TYPE_CHECKING:` runs at runtime
                self.visit(child)
            return
        self.generic_visit(node)

    # -- the imports ---------------------------------------------------------------------------
    def _add(self, node: ast.stmt, target: str) -> None:
        if target == self.module:
            return  # importing yourself (a name of your own package __init__) is no dependency
        found = Import(self.module, target, self.display_path, node.lineno, self._where())
        if found not in self.found:  # `from m import a, b` is one import of m
            self.found.append(found)

    def _ours(self, name: str) -> bool:
        return name == self.package or name.startswith(self.package + ".")

    def visit_Import(self, node: ast.Import) -> None:
        for alias in node.names:
            if self._ours(alias.name):
                self._add(node, alias.name)

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        if node.level:
            # Relative: `from . import x` in semframe/cache/exact.py is relative to semframe.cache;
            # in semframe/cache/__init__.py as well (a package is its own base).
            base = self.module.split(".")
            if not self.is_package:
                base = base[:-1]
            up = node.level - 1
            if up > len(base) - 1:
                return  # beyond the top-level package: an ImportError at runtime, not ours
            base = base[: len(base) - up]
            origin = ".".join(base + ([node.module] if node.module else []))
        else:
            origin = node.module or ""
        if not self._ours(origin):
            return
        for alias in node.names:
            sub = f"{origin}.{alias.name}"
            if alias.name != "*" and module_exists(sub, self.modules, self.package_dir):
                self._add(node, sub)  # `from semframe import cache` -> semframe.cache
            else:
                self._add(node, origin)  # a name defined in `origin`


def collect_imports(package_dir: Path) -> tuple[list[Import], list[str], dict[str, Path]]:
    """All imports of package modules under ``package_dir``, the files that do not parse, and
    the modules of the tree."""
    package_dir = Path(package_dir)
    package = package_dir.name
    display_root = package_dir.parent.parent  # paths shown as "src/semframe/..."
    modules = discover_modules(package_dir)
    imports: list[Import] = []
    errors: list[str] = []
    for module, file in modules.items():
        display = file.relative_to(display_root).as_posix()
        try:
            tree = ast.parse(file.read_text(encoding="utf-8"), filename=display)
        except SyntaxError as exc:
            errors.append(f"{display}:{exc.lineno}: cannot parse: {exc.msg}")
            continue
        collector = _ImportCollector(module, file.name == "__init__.py", display, modules,
                                     package_dir, package)
        collector.visit(tree)
        imports.extend(collector.found)
    return imports, errors, modules


def _shortest_cycle_through(start: str, graph: dict[str, set[str]],
                            allowed: set[str]) -> list[str] | None:
    """The shortest path start -> ... -> start inside ``allowed`` (BFS), as a node list."""
    parent: dict[str, str] = {}
    queue = deque([start])
    seen = {start}
    while queue:
        node = queue.popleft()
        for nxt in sorted(graph.get(node, ())):
            if nxt not in allowed:
                continue
            if nxt == start:
                chain = [node]
                while chain[-1] != start:
                    chain.append(parent[chain[-1]])
                return list(reversed(chain)) + [start]
            if nxt not in seen:
                seen.add(nxt)
                parent[nxt] = node
                queue.append(nxt)
    return None


def _strongly_connected(graph: dict[str, set[str]]) -> list[set[str]]:
    """Tarjan's algorithm, iterative (no recursion limit)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    components: list[set[str]] = []
    counter = 0
    nodes = sorted(set(graph) | {n for targets in graph.values() for n in targets})
    for root in nodes:
        if root in index:
            continue
        work = [(root, iter(sorted(graph.get(root, ()))))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            for child in children:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph.get(child, ())))))
                    break
                if child in on_stack:
                    low[node] = min(low[node], index[child])
            else:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[node])
                if low[node] == index[node]:
                    component = set()
                    while True:
                        member = stack.pop()
                        on_stack.discard(member)
                        component.add(member)
                        if member == node:
                            break
                    components.append(component)
    return components


def top_package(module: str) -> str:
    """``semframe.accounting.estimate`` -> ``semframe.accounting``; ``semframe.config`` stays."""
    return ".".join(module.split(".")[:2])


def _canonical(ring: list[str]) -> tuple[str, ...]:
    """The same cycle read from any start: rotate it to start at its smallest name."""
    pivot = ring.index(min(ring))
    return tuple(ring[pivot:] + ring[:pivot])


def _collapsed(ring: tuple[str, ...]) -> tuple[str, ...]:
    """A module cycle as seen on the package graph (consecutive modules of one package merged)."""
    names = [top_package(m) for m in ring]
    merged = [n for i, n in enumerate(names) if n != names[i - 1]] or names[:1]
    return _canonical(merged)


def find_cycles(imports: list[Import], packages: bool = False) -> list[tuple[tuple[str, ...], str]]:
    """One message per distinct import cycle: the shortest cycle through each module of each
    strongly connected component (so every module caught in a cycle shows up in one), with the
    file:line of each import along the chain.

    ``packages=True`` runs the same search on the graph of top-level packages (every module
    collapsed into ``semframe.<first component>``, imports within one package dropped): it shows
    the cycles between packages, such as accounting.estimate -> execution.executor ->
    accounting.budget, that no module-level cycle closes (see "Edges:" in the module docstring)."""
    graph: dict[str, set[str]] = defaultdict(set)
    sites: dict[tuple[str, str], list[Import]] = defaultdict(list)
    for imp in imports:
        a, b = imp.source, imp.target
        if packages:
            a, b = top_package(a), top_package(b)
        if a == b:
            continue
        graph[a].add(b)
        sites[(a, b)].append(imp)
    messages = []
    seen: set[tuple[str, ...]] = set()
    for component in sorted(_strongly_connected(graph), key=lambda c: sorted(c)):
        if len(component) < 2:
            continue  # self-edges are dropped at collection, so a singleton is no cycle
        for start in sorted(component):
            chain = _shortest_cycle_through(start, graph, component)
            if chain is None:
                continue
            key = _canonical(chain[:-1])
            if key in seen:
                continue
            seen.add(key)
            chain = list(key) + [key[0]]
            kind = "package import cycle" if packages else "import cycle"
            lines = [f"{kind}: {' -> '.join(chain)}"]
            for a, b in zip(chain, chain[1:]):
                edge_sites = sorted(sites[(a, b)], key=lambda i: (i.path, i.line))
                more = f" (and {len(edge_sites) - 1} more)" if len(edge_sites) > 1 else ""
                first = edge_sites[0]
                lines.append(f"    {first.source} imports {first.target} ({first.site}){more}")
            messages.append((key, "\n".join(lines)))
    return messages


def layer_of(module: str, layers: tuple[tuple[str, ...], ...]) -> tuple[int, str] | None:
    """``semframe.plan.nodes`` -> (1, "plan"); None for a top module (not in any layer)."""
    parts = module.split(".")
    if len(parts) < 2:
        return None  # the package __init__ itself
    for i, names in enumerate(layers):
        if parts[1] in names:
            return i, parts[1]
    return None


def check_layers(imports: list[Import], modules: dict[str, Path], package_dir: Path,
                 layers: tuple[tuple[str, ...], ...]) -> list[str]:
    package = Path(package_dir).name
    messages = []
    for names in layers:
        for name in names:
            if not module_exists(f"{package}.{name}", modules, Path(package_dir)):
                messages.append(
                    f"LAYERS lists {name!r}, but there is no {package}/{name}/ package "
                    f"nor {package}/{name}.py"
                )
    for imp in sorted(imports, key=lambda i: (i.path, i.line, i.target)):
        head = f"{imp.source} imports {imp.target} ({imp.site})"
        if not module_exists(imp.target, modules, Path(package_dir)):
            messages.append(f"{head}: there is no module {imp.target} in the tree")
            continue
        src = layer_of(imp.source, layers)
        if src is None:
            continue  # top modules may import anything
        src_index, src_name = src
        dst = layer_of(imp.target, layers)
        if src_index == 0:
            messages.append(
                f"{head}: {src_name} is a leaf layer and must import nothing of {package}"
            )
        elif dst is None:
            messages.append(
                f"{head}: {imp.target} is a top module (in no layer of LAYERS); "
                f"no layered module may import it"
            )
        elif dst[0] > src_index:
            allowed = ", ".join(n for names in layers[: src_index + 1] for n in names)
            messages.append(
                f"{head}: layer {src_name} (#{src_index}) imports the higher layer "
                f"{dst[1]} (#{dst[0]}); it may only import {allowed}"
            )
    return messages


def structure_violations(package_dir: Path,
                         layers: tuple[tuple[str, ...], ...] = LAYERS) -> list[str]:
    imports, parse_errors, modules = collect_imports(package_dir)
    module_cycles = find_cycles(imports)
    shown = {_collapsed(ring) for ring, _ in module_cycles}
    package_cycles = [(ring, msg) for ring, msg in find_cycles(imports, packages=True)
                      if ring not in shown]  # not again what a module cycle already shows
    return (parse_errors + [msg for _, msg in module_cycles + package_cycles]
            + check_layers(imports, modules, package_dir, layers))


# --------------------------------------------------------------------------------------------
# The check of the real package.
# --------------------------------------------------------------------------------------------


def test_package_import_structure():
    assert PACKAGE_DIR.is_dir(), PACKAGE_DIR
    violations = structure_violations(PACKAGE_DIR)
    if violations:
        listing = "\n".join(f"{n}. {v}" for n, v in enumerate(violations, 1))
        pytest.fail(f"{len(violations)} import-structure violation(s):\n{listing}", pytrace=False)


# --------------------------------------------------------------------------------------------
# Self-tests of the checker on a synthetic tree.
# --------------------------------------------------------------------------------------------

SMALL_LAYERS = (("errors", "config"), ("plan",), ("engines",))


def _tree(tmp_path: Path, files: dict[str, str]) -> Path:
    package_dir = tmp_path / "src" / "semframe"
    for rel, text in {"__init__.py": "", "errors.py": "", "config.py": "",
                      "plan/__init__.py": "", "engines/__init__.py": "", **files}.items():
        path = package_dir / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return package_dir


def test_checker_accepts_a_clean_tree(tmp_path):
    package_dir = _tree(tmp_path, {
        "__init__.py": "from semframe import engines, plan\nimport semframe.config\n",
        "plan/__init__.py": "from semframe.plan.nodes import Node\n",
        "plan/nodes.py": "from semframe.plan.spec import Spec\nfrom semframe.errors import E\n",
        "plan/spec.py": "from .. import errors\n",
        "engines/base.py": "from semframe.plan import nodes\nimport semframe.plan.spec as s\n",
    })
    assert structure_violations(package_dir, SMALL_LAYERS) == []


def test_checker_reports_a_cycle_with_its_chain(tmp_path):
    package_dir = _tree(tmp_path, {
        "plan/a.py": "from semframe.plan import b\n",
        "plan/b.py": "\n\ndef f():\n    from semframe.plan.c import x\n",
        "plan/c.py": "from . import a\n",
    })
    (cycle,) = structure_violations(package_dir, SMALL_LAYERS)
    assert cycle == (
        "import cycle: semframe.plan.a -> semframe.plan.b -> semframe.plan.c -> semframe.plan.a\n"
        "    semframe.plan.a imports semframe.plan.b (src/semframe/plan/a.py:1, at module level)\n"
        "    semframe.plan.b imports semframe.plan.c (src/semframe/plan/b.py:4, "
        "inside function f())\n"
        "    semframe.plan.c imports semframe.plan.a (src/semframe/plan/c.py:1, at module level)"
    )


def test_checker_reports_a_package_level_cycle(tmp_path):
    package_dir = _tree(tmp_path, {
        "plan/nodes.py": "from semframe.engines.base import Engine\n",
        "engines/base.py": "",
        "engines/vllm.py": "from semframe.plan.spec import Spec\n",
        "plan/spec.py": "",
    })
    cycle, upward = structure_violations(package_dir, SMALL_LAYERS)
    assert cycle == (
        "package import cycle: semframe.engines -> semframe.plan -> semframe.engines\n"
        "    semframe.engines.vllm imports semframe.plan.spec "
        "(src/semframe/engines/vllm.py:1, at module level)\n"
        "    semframe.plan.nodes imports semframe.engines.base "
        "(src/semframe/plan/nodes.py:1, at module level)"
    )
    assert upward.startswith("semframe.plan.nodes imports semframe.engines.base")
    assert "the higher layer engines" in upward


def test_checker_ignores_type_checking_imports(tmp_path):
    package_dir = _tree(tmp_path, {
        "plan/nodes.py": (
            "import typing\nfrom typing import TYPE_CHECKING\n"
            "if TYPE_CHECKING:\n    from semframe.engines.base import Engine\n"
            "if typing.TYPE_CHECKING:\n    import semframe.engines.base\n"
        ),
        "engines/base.py": "from semframe.plan.nodes import Node\n",
    })
    assert structure_violations(package_dir, SMALL_LAYERS) == []


def test_checker_counts_the_else_of_type_checking(tmp_path):
    package_dir = _tree(tmp_path, {
        "plan/nodes.py": (
            "if TYPE_CHECKING:\n    pass\nelse:\n    from semframe.engines import base\n"
        ),
        "engines/base.py": "",
    })
    (message,) = structure_violations(package_dir, SMALL_LAYERS)
    assert message.startswith(
        "semframe.plan.nodes imports semframe.engines.base (src/semframe/plan/nodes.py:4"
    )


def test_checker_reports_upward_leaf_and_top_imports(tmp_path):
    package_dir = _tree(tmp_path, {
        "config.py": "def default():\n    from semframe.engines.vllm import default_engine\n",
        "errors.py": "",
        "engines/vllm.py": "",
        "plan/nodes.py": "class Node:\n    def run(self):\n        import semframe.engines.vllm\n",
        "plan/spec.py": "from semframe import datasets\nfrom semframe import Thing\n",
        "datasets.py": "from semframe.engines import vllm\n",  # top: may import anything
    })
    violations = structure_violations(package_dir, SMALL_LAYERS)
    assert violations == [
        "semframe.config imports semframe.engines.vllm (src/semframe/config.py:2, inside function "
        "default()): config is a leaf layer and must import nothing of semframe",
        "semframe.plan.nodes imports semframe.engines.vllm (src/semframe/plan/nodes.py:3, inside "
        "function Node.run()): layer plan (#1) imports the higher layer engines (#2); it may only "
        "import errors, config, plan",
        "semframe.plan.spec imports semframe.datasets (src/semframe/plan/spec.py:1, at module "
        "level): semframe.datasets is a top module (in no layer of LAYERS); no layered module may "
        "import it",
        "semframe.plan.spec imports semframe (src/semframe/plan/spec.py:2, at module level): "
        "semframe is a top module (in no layer of LAYERS); no layered module may import it",
    ]


def test_checker_reports_missing_layers_and_modules(tmp_path):
    package_dir = _tree(tmp_path, {"plan/nodes.py": "from semframe.plan.gone import x\n"})
    violations = structure_violations(package_dir, SMALL_LAYERS + (("physical",),))
    assert violations == [
        "LAYERS lists 'physical', but there is no semframe/physical/ package "
        "nor semframe/physical.py",
        "semframe.plan.nodes imports semframe.plan.gone (src/semframe/plan/nodes.py:1, at module "
        "level): there is no module semframe.plan.gone in the tree",
    ]


def test_checker_config_may_not_import_even_errors(tmp_path):
    package_dir = _tree(tmp_path, {"config.py": "from semframe.errors import E\n"})
    (message,) = structure_violations(package_dir, SMALL_LAYERS)
    assert "config is a leaf layer" in message
