"""The package's imports point one way (docs/DEVELOPMENT.md, "Layout"): read from the source with ast, every import
of every module, lazy ones inside functions too, so a dependency hidden in a function body still counts."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
PACKAGE = REPO / "travel"

# Layers, lowest first: a module may import its own layer and those below, never one above.
LAYERS = [
    ("base", ["travel", "travel.errors", "travel.hashing"]),
    ("config", ["travel.config"]),
    ("building blocks", ["travel.compat", "travel.data", "travel.augment", "travel.losses", "travel.runtime", "travel.nets"]),
    ("files", ["travel.checkpoint"]),
    ("training and translation", ["travel.train", "travel.inference"]),
    ("options and the Python API", ["travel.options", "travel.api"]),
    ("lab", ["travel.lab"]),
    ("front ends", ["travel.cli", "travel.apps", "travel.__main__"]),
]
CORE_LAYERS = {name for name, _ in LAYERS[:6]}


def module_files() -> dict[str, Path]:
    modules = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(REPO).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        modules[name] = path
    modules["travel.apps.demo"] = REPO / "apps" / "demo.py"  # installed as travel.apps.demo
    return modules


def imports_of(path: Path, name: str, known: set[str]) -> set[str]:
    """The travel modules `path` (module `name`) imports: `from travel.x import y` counts as travel.x.y when that is a
    module, else as travel.x. Relative imports are resolved against the module's package."""
    tree = ast.parse(path.read_text(), filename=str(path))
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else []))
            targets = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in known else base for alias in node.names]
        else:
            continue
        for target in targets:
            while target and target not in known:  # import travel.inference.memory as m -> that module
                target = target.rpartition(".")[0]
            if target and target != name:
                found.add(target)
    return found


def layer_of(module: str) -> int:
    best = None
    for index, (_, prefixes) in enumerate(LAYERS):
        for prefix in prefixes:
            if module == prefix or (prefix != "travel" and module.startswith(prefix + ".")):
                best = index
    assert best is not None, f"{module} belongs to no layer: add it to LAYERS"
    return best


@pytest.fixture(scope="module")
def graph() -> dict[str, set[str]]:
    files = module_files()
    return {name: imports_of(path, name, set(files)) for name, path in files.items()}


def test_every_module_has_a_layer(graph):
    for module in graph:
        layer_of(module)


def test_no_module_imports_a_layer_above_its_own(graph):
    upward = [f"{m} ({LAYERS[layer_of(m)][0]}) imports {t} ({LAYERS[layer_of(t)][0]})"
              for m, targets in graph.items() for t in targets if layer_of(t) > layer_of(m)]
    assert not upward, "\n".join(upward)


def test_the_core_never_imports_the_lab_or_a_front_end(graph):
    core = [m for m in graph if LAYERS[layer_of(m)][0] in CORE_LAYERS]
    assert "travel.train.loop" in core and "travel.nets.generator" in core and "travel.lab.speed" not in core
    bad = [f"{m} imports {t}" for m in core for t in graph[m] if t.startswith(("travel.lab", "travel.cli", "travel.apps"))]
    assert not bad, "\n".join(bad)


def test_translation_never_imports_a_discriminator_or_the_training_loop(graph):
    """Translate, the demo and the export need the generator alone (and never timm)."""
    reachable, todo = set(), ["travel.inference", "travel.inference.translator", "travel.inference.export"]
    while todo:
        module = todo.pop()
        if module not in reachable:
            reachable.add(module)
            todo.extend(graph.get(module, ()))
    assert "travel.nets.generator" in reachable
    assert not [m for m in reachable if m.startswith(("travel.nets.discriminators", "travel.nets.backbone", "travel.train"))]


def test_there_is_no_import_cycle(graph):
    state: dict[str, int] = {}  # 1 on the current path, 2 done
    path: list[str] = []

    def visit(module: str) -> list[str] | None:
        state[module] = 1
        path.append(module)
        for target in sorted(graph.get(module, ())):
            if state.get(target) == 1:
                return path[path.index(target):] + [target]
            if target not in state:
                cycle = visit(target)
                if cycle:
                    return cycle
        path.pop()
        state[module] = 2
        return None

    for module in sorted(graph):
        if module not in state:
            cycle = visit(module)
            assert cycle is None, " -> ".join(cycle)


def test_the_checks_see_what_they_must(tmp_path):
    """The reader finds lazy imports and relative ones, so the rules above cannot pass by not looking."""
    source = tmp_path / "mod.py"
    source.write_text("def f():\n    from travel.lab import speed\n    from . import config\n")
    found = imports_of(source, "travel.mod", {"travel", "travel.lab", "travel.lab.speed", "travel.config", "travel.mod"})
    assert found == {"travel.lab.speed", "travel.config"}
