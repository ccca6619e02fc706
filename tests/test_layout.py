"""The package's shape: five stages along the data flow, imports pointing one way, no cycles.

The order, lowest first: ``errors``/``fileio`` (below everything) -> ``text`` -> ``config``
(its rules name the corpora and tokenizers that ``text`` defines) -> ``data`` -> ``nn`` ->
``train`` -> ``report`` -> ``walkthrough`` -> ``cli``. A module may import
modules of its own package or of a lower one, never of a higher one, and never in a cycle. The
graph is read from the code's own imports (top level and inside functions).
"""

from __future__ import annotations

import ast
import importlib
import pathlib
import subprocess
import sys

import pytest

PACKAGE = pathlib.Path(__file__).resolve().parents[1] / "jaxembed"
ORDER = ["errors", "fileio", "text", "config", "data", "nn", "train", "report", "walkthrough", "cli"]
# errors and fileio sit below every stage, and fileio may use errors but not the other way round.
BASE = {"errors": 0, "fileio": 1}


def module_names() -> list[str]:
    names = []
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(PACKAGE).with_suffix("")
        parts = [p for p in rel.parts if p != "__init__"]
        names.append(".".join(["jaxembed", *parts]))
    return names


MODULES = module_names()


def group(module: str) -> str:
    """The stage a module belongs to: its subpackage, or its own name at the top level."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def rank(module: str) -> int:
    g = group(module)
    return -1 if g == "__init__" else ORDER.index(g)


def imports_of(module: str) -> set[str]:
    """jaxembed modules (and packages) ``module`` imports anywhere in its source."""
    path = PACKAGE.joinpath(*module.split(".")[1:])
    path = path / "__init__.py" if path.is_dir() else path.with_suffix(".py")
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("jaxembed"):
            for alias in node.names:
                sub = f"{node.module}.{alias.name}"
                found.add(sub if sub in MODULES else node.module)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("jaxembed"))
    return found & set(MODULES)


def test_every_module_belongs_to_a_known_stage():
    assert {group(m) for m in MODULES} - {"__init__"} <= set(ORDER)


def test_there_is_no_import_cycle_between_modules():
    # Package faces (__init__) re-export their own modules, so they are left out of the module graph.
    graph = {
        m: {d for d in imports_of(m) if d != m and not PACKAGE.joinpath(*d.split(".")[1:]).is_dir()} for m in MODULES
    }
    state: dict[str, str] = {}

    def visit(node, path):
        state[node] = "open"
        for dep in sorted(graph[node]):
            if state.get(dep) == "open":
                pytest.fail("import cycle: " + " -> ".join([*path, node, dep]))
            if dep not in state:
                visit(dep, [*path, node])
        state[node] = "done"

    for module in MODULES:
        if module not in state:
            visit(module, [])


@pytest.mark.parametrize("module", [m for m in MODULES if m != "jaxembed"])
def test_imports_point_down_the_data_flow(module):
    upward = sorted(d for d in imports_of(module) if d != "jaxembed" and rank(d) > rank(module))
    assert not upward, f"{module} imports {upward}, above it in {' -> '.join(ORDER)}"


def test_base_modules_stay_below_the_stages():
    for module in ("jaxembed.errors", "jaxembed.fileio"):
        deps = {group(d) for d in imports_of(module)} - {group(module)}
        assert all(d in BASE and BASE[d] < BASE[group(module)] for d in deps), (module, deps)


@pytest.mark.parametrize("package", ["text", "data", "nn", "train", "report"])
def test_every_stage_has_a_public_face(package):
    face = importlib.import_module(f"jaxembed.{package}")
    assert face.__doc__ and ">>>" in face.__doc__
    assert face.__all__ == sorted(face.__all__, key=lambda n: (not n.isupper(), not n[0].isupper(), n))
    for name in face.__all__:
        assert hasattr(face, name), f"jaxembed.{package}.__all__ names {name}, which it does not define"


@pytest.mark.parametrize("module", MODULES)
def test_every_module_imports_alone(module):
    # A fresh interpreter per module: an import that only works after another module was imported fails here.
    proc = subprocess.run([sys.executable, "-c", f"import {module}"], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]


def test_import_jaxembed_is_light_and_names_each_stage_on_first_use():
    # A fresh interpreter: `import jaxembed` loads no JAX; `jaxembed.nn` then imports the stage itself.
    code = (
        "import sys, jaxembed\n"
        "print(sorted(m for m in ('jax', 'flax', 'grain', 'matplotlib') if m in sys.modules))\n"
        "print([getattr(jaxembed, s).__name__ for s in ('text', 'data', 'nn', 'train', 'report')])\n"
        "print(jaxembed.nn.InputEmbedding.__name__, 'nn' in dir(jaxembed))\n"
        "try:\n    jaxembed.no_such_stage\nexcept AttributeError as e:\n    print(e)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.splitlines() == [
        "[]",
        "['jaxembed.text', 'jaxembed.data', 'jaxembed.nn', 'jaxembed.train', 'jaxembed.report']",
        "InputEmbedding True",
        "module 'jaxembed' has no attribute 'no_such_stage'",
    ]
