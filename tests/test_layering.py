"""The package's imports: no module imports in a circle, and each imports only modules
above it in the flow of docs/architecture.md ("Data flows one way").

The imports are read with ``ast`` from the source of every module of ``maskdla/``, none is
executed. Both module-level imports and imports inside functions count: an import inside
a function only postpones the dependency to the first call (it is how a circle hides), so
it is held to the same order. Imports under ``if TYPE_CHECKING:`` do not count: they
never run, and are how a module names a type from below it in annotations (data/sources.py
names the TrainConfig so). Names that ``maskdla/__init__.py`` and the command tables load
by ``importlib`` from strings are no imports either: they only make the facade and the
dispatchers, which sit at the bottom, light to import.
"""
from __future__ import annotations

import ast
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Set, Tuple

PACKAGE = Path(__file__).resolve().parents[1] / "maskdla"

#: The flow of docs/architecture.md, from the top: each module imports only modules of its
#: own line or of the lines above it. A name stands for the module and everything inside it
#: (``maskdla.data`` is every module of the data package); the most specific name places a
#: module. Keep it and the document's list in step.
LAYERS: List[Tuple[str, ...]] = [
    ("maskdla.errors", "maskdla.cli", "maskdla.files", "maskdla.allocator"),
    ("maskdla.distributed", "maskdla.schedule", "maskdla.energy"),
    ("maskdla.tables",),
    # data/formats.py, data/archives.py and the rest of the data package; the data CLIs
    ("maskdla.data", "maskdla.synth", "maskdla.convert"),
    ("maskdla.backbones",),
    ("maskdla.config",),
    ("maskdla.model",),
    ("maskdla.zoo",),
    ("maskdla.checkpoint", "maskdla.models"),
    ("maskdla.finetune",),
    ("maskdla.inference",),
    ("maskdla.prediction", "maskdla.predict", "maskdla.export"),
    ("maskdla.evaluation", "maskdla.eval"),
    ("maskdla.run_state",),
    ("maskdla.hooks",),
    ("maskdla.run_output",),
    ("maskdla.tensorboard",),
    ("maskdla.train_cli",),
    ("maskdla.train",),
    ("maskdla.experiments", "maskdla.report", "maskdla.ocrd"),
    # may use anything: the benchmarks, the `maskdla X` dispatcher, the lazy facade
    ("maskdla.bench", "maskdla.__main__", "maskdla"),
]


def _module_names() -> Dict[str, Path]:
    """Dotted module name -> source file, for every module of the package."""
    modules = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        modules[".".join(parts)] = path
    return modules


def _type_checking_only(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _imports(tree: ast.AST) -> Iterator[ast.stmt]:
    """Every import statement of ``tree``, at any depth, but those under TYPE_CHECKING."""
    for node in ast.iter_child_nodes(tree):
        if isinstance(node, ast.If) and _type_checking_only(node):
            yield from (child for branch in node.orelse for child in _imports_of(branch))
            continue
        yield from _imports_of(node)


def _imports_of(node: ast.AST) -> Iterator[ast.stmt]:
    if isinstance(node, (ast.Import, ast.ImportFrom)):
        yield node
    else:
        yield from _imports(node)


def _target(name: str, modules: Dict[str, Path]) -> Optional[str]:
    """The package's module that the dotted ``name`` is or is inside of (None: not ours)."""
    while name and name not in modules:
        name = name.rpartition(".")[0]
    return name or None


def import_graph() -> Dict[str, Set[str]]:
    """Module -> the package's modules it imports (itself left out)."""
    modules = _module_names()
    graph: Dict[str, Set[str]] = {}
    for module, path in modules.items():
        package = module if path.name == "__init__.py" else module.rpartition(".")[0]
        names: List[str] = []
        for node in _imports(ast.parse(path.read_text(encoding="utf-8"), str(path))):
            if isinstance(node, ast.Import):
                names += [alias.name for alias in node.names]
                continue
            base = node.module or ""
            if node.level:  # a relative import: from the package, level - 1 up
                parent = package.split(".")[:len(package.split(".")) - node.level + 1]
                base = ".".join(parent + ([base] if base else []))
            # `from X import y`: y is a module of X, or a name defined in X
            names += [f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base
                      for alias in node.names]
        graph[module] = {target for target in map(lambda name: _target(name, modules), names)
                         if target is not None and target != module}
    return graph


def layer_of(module: str) -> Optional[int]:
    """The index in :data:`LAYERS` of the most specific name that places ``module``."""
    best: Optional[Tuple[int, int]] = None
    for index, names in enumerate(LAYERS):
        for name in names:
            if module == name or module.startswith(name + "."):
                if best is None or len(name) > best[0]:
                    best = (len(name), index)
    return None if best is None else best[1]


def _circle_from(start: str, graph: Dict[str, Set[str]]) -> Optional[List[str]]:
    """A path start -> ... -> start through the graph, or None."""
    stack, seen = [(start, [start])], set()
    while stack:
        module, path = stack.pop()
        for target in sorted(graph.get(module, ())):
            if target == start:
                return path + [start]
            if target not in seen:
                seen.add(target)
                stack.append((target, path + [target]))
    return None


def test_the_reader_sees_imports_at_any_depth_but_not_type_checking_ones():
    source = """
import maskdla.errors
from typing import TYPE_CHECKING
if TYPE_CHECKING:
    from maskdla.config import TrainConfig
else:
    from maskdla import files
def fit():
    if True:
        from maskdla.tensorboard import TensorBoardWriter
class Run:
    def method(self):
        import maskdla.hooks
"""
    found = [node.module if isinstance(node, ast.ImportFrom) else node.names[0].name
             for node in _imports(ast.parse(source))]
    assert found == ["maskdla.errors", "typing", "maskdla", "maskdla.tensorboard",
                     "maskdla.hooks"]
    graph = import_graph()
    assert "maskdla.tensorboard" in graph["maskdla.train"]  # inside fit(), for --tensorboard
    assert "maskdla.hooks" in graph["maskdla.tensorboard"]
    assert layer_of("maskdla.data.formats") == layer_of("maskdla.data")
    assert layer_of("maskdla.evaluation.evaluators") < layer_of("maskdla.train")


def test_no_import_circle():
    graph = import_graph()
    circles = set()
    for module in graph:
        circle = _circle_from(module, graph)
        if circle is not None:  # one entry per circle, whichever module it was found from
            turn = circle.index(min(circle[:-1]))
            circles.add(tuple(circle[turn:-1] + circle[:turn + 1]))
    assert not circles, "import circles:\n" + "\n".join(" -> ".join(c) for c in sorted(circles))


def test_every_module_has_a_place_in_the_layers():
    unplaced = sorted(module for module in import_graph() if layer_of(module) is None)
    assert not unplaced, f"add these to LAYERS and to docs/architecture.md: {unplaced}"


def test_each_module_imports_only_modules_above_it():
    graph = import_graph()
    against = sorted(
        f"{module} (line {layer_of(module)}) imports {target} (line {layer_of(target)})"
        for module, targets in graph.items() for target in targets
        if layer_of(target) is not None and layer_of(module) is not None
        and layer_of(target) > layer_of(module))
    assert not against, "imports against the flow of docs/architecture.md:\n" + "\n".join(against)


def test_the_architecture_document_lists_the_layers_in_this_order():
    """Every name of LAYERS appears in docs/architecture.md's flow, in the same order."""
    text = (PACKAGE.parent / "docs" / "architecture.md").read_text(encoding="utf-8")
    flow = text[text.index("## Data flows one way"):text.index("Each module imports only")]
    positions = []
    for names in LAYERS:
        for name in names:
            if name == "maskdla":
                continue  # the facade, `import maskdla`: under Public API
            found = [flow.find(f"{name}{end}") for end in (" ", ",", "\n", ":", ")", ";")]
            found = [position for position in found if position >= 0]
            assert found, f"docs/architecture.md's flow does not name {name}"
            positions.append((min(found), name))
    names_in_order = [name for _, name in positions]
    assert names_in_order == [name for _, name in sorted(positions)], \
        "docs/architecture.md lists the modules in another order than LAYERS"
