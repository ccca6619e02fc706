"""The package's shape: no import cycles, data flowing one way, small modules.

The layers, lowest first (a module may import only modules of lower or the
same layer, and never in a cycle):
fileio/tokenizer -> corpus -> text_stream -> token_files ; windows -> data ;
windows/token_files -> splits -> input_pipeline -> modules -> model ->
trainer -> checkpoint/workdir -> train -> run -> analysis -> report -> cli.
"""

from __future__ import annotations

import ast
import pathlib
import subprocess
import sys

import pytest

PACKAGE = pathlib.Path(__file__).resolve().parents[1] / "jaxembed"
MODULES = sorted(p.stem for p in PACKAGE.glob("*.py") if p.stem != "__init__")


def imports_of(module: str) -> set[str]:
    """jaxembed modules ``module`` imports anywhere (top level or inside functions)."""
    tree = ast.parse((PACKAGE / f"{module}.py").read_text())
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("jaxembed"):
            parts = node.module.split(".")
            if len(parts) > 1:
                found.add(parts[1])
            else:
                found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.Import):
            found.update(a.name.split(".")[1] for a in node.names if a.name.startswith("jaxembed."))
    return found & set(MODULES)


def test_there_is_no_import_cycle():
    graph = {m: imports_of(m) - {m} for m in MODULES}
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


def test_lower_layers_never_import_higher_ones():
    # (module, modules it must never import): the one-way data flow.
    # Everything above the data layer.
    above_data = {"modules", "model", "trainer", "checkpoint", "workdir", "train", "run", "report", "analysis", "cli"}
    forbidden = {
        "modules": set(MODULES) - {"modules"},  # imports nothing of the package
        "tokenizer": set(MODULES) - {"tokenizer"},
        "corpus": set(MODULES) - {"corpus", "fileio"},
        "text_stream": set(MODULES) - {"text_stream", "tokenizer"},
        "token_files": {"windows", "data", "splits", "input_pipeline"} | above_data,
        "windows": {"data", "text_stream", "token_files", "splits", "input_pipeline"} | above_data,
        "data": {"token_files", "text_stream", "splits", "input_pipeline"} | above_data,
        "splits": {"data", "input_pipeline"} | above_data,
        "input_pipeline": {"model", "trainer", "train", "run", "report", "analysis", "cli"},
        "model": {"trainer", "train", "run", "report", "analysis", "cli", "input_pipeline"},
        "trainer": {"train", "run", "report", "analysis", "cli"},
        "train": {"run", "report", "analysis", "cli"},
        "analysis": {"train", "trainer", "cli", "report"},
        "probes": {"train", "trainer", "cli", "report"},
        "report": {"cli"},
    }
    for module, banned in forbidden.items():
        assert not imports_of(module) & banned, f"{module} imports {sorted(imports_of(module) & banned)}"


@pytest.mark.parametrize("module", MODULES)
def test_every_module_imports_alone(module):
    # A fresh interpreter per module: an import that only works after another module was imported fails here.
    proc = subprocess.run([sys.executable, "-c", f"import jaxembed.{module}"], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]


def test_no_module_is_over_450_lines():
    sizes = {m: len((PACKAGE / f"{m}.py").read_text().splitlines()) for m in MODULES}
    assert max(sizes.values()) <= 450, sizes
