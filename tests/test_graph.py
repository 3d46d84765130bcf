"""The stage graph (tasks/stages/graph.py) against what is derived from it: the committed
dvc.yaml files, each stage function's signature, and the modules each stage really imports."""

from __future__ import annotations

import ast
import inspect
import json
import subprocess
import sys
from pathlib import Path

import pytest

from flows.dvc_yaml import ROOT_FILE, SWEEP_FILE, root_yaml, sweep_yaml
from tasks.stages.graph import PERPLEXITY, ROOT, STAGES, Stage, code_deps, producers, sweep_point_code

ALL = {**STAGES, PERPLEXITY.name: PERPLEXITY}
# Prints the source file of every tasks/kernels module loaded by importing one stage function.
LOADED = """
import importlib, json, sys
module, name = sys.argv[1].split(":")
getattr(importlib.import_module(module), name)
print(json.dumps(sorted(m.__file__ for n, m in list(sys.modules.items())
                        if n.split(".")[0] in ("tasks", "kernels") and getattr(m, "__file__", None))))
"""


@pytest.mark.parametrize("path, generate", [(ROOT_FILE, root_yaml), (SWEEP_FILE, sweep_yaml)],
                         ids=["dvc.yaml", "sweep-dvc.yaml"])
def test_committed_dvc_yaml_is_the_generated_one(path, generate):
    assert (ROOT / path).read_text() == generate(), f"{path} is stale: run `prunepipe dvc-yaml` and commit it"


def test_prunepipe_dvc_yaml_writes_both_files(tmp_path, monkeypatch, capsys):
    from flows.cli import main

    monkeypatch.chdir(tmp_path)
    assert main(["dvc-yaml"]) == 0
    assert capsys.readouterr().out == "dvc.yaml\nsweep/dvc.yaml\n"
    assert (tmp_path / ROOT_FILE).read_text() == root_yaml() and (tmp_path / SWEEP_FILE).read_text() == sweep_yaml()


def test_every_input_is_an_earlier_stage_output():
    made: set[Path] = set()
    for stage in STAGES.values():
        assert set(stage.inputs.values()) <= made, stage.name
        made |= {out.path for out in stage.outputs.values()}


@pytest.mark.parametrize("stage", ALL.values(), ids=list(ALL))
def test_stage_function_takes_its_sections_then_its_paths(stage: Stage):
    parameters = inspect.signature(stage.load()).parameters.values()
    positional = [p.name for p in parameters if p.kind is p.POSITIONAL_OR_KEYWORD]
    keywords = {p.name for p in parameters if p.kind is p.KEYWORD_ONLY}
    assert len(positional) == len(stage.params)
    assert keywords == {*stage.inputs, *stage.outputs, "ctx"}


def _covered(file: Path, code: tuple[str, ...]) -> bool:
    return any(file == ROOT / entry or (ROOT / entry) in file.parents for entry in code)


def _docstring_only(file: Path) -> bool:
    body = ast.parse(file.read_text()).body
    return len(body) == 1 and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant)


@pytest.fixture(scope="module")
def loaded() -> dict[str, list[Path]]:
    """Stage name → modules its function loads in a fresh interpreter (all stages at once)."""
    runs = {name: subprocess.Popen([sys.executable, "-c", LOADED, stage.function], cwd=ROOT, text=True,
                                   stdout=subprocess.PIPE, stderr=subprocess.PIPE)
            for name, stage in ALL.items()}
    result = {}
    for name, run in runs.items():
        out, err = run.communicate(timeout=300)
        assert run.returncode == 0, err
        result[name] = [Path(file) for file in json.loads(out)]
    return result


@pytest.mark.parametrize("name", list(ALL))
def test_stage_code_covers_every_module_its_function_loads(loaded, name):
    stage = ALL[name]
    missing = [str(file.relative_to(ROOT)) for file in loaded[name]
               if not _covered(file, stage.code) and not (file.name == "__init__.py" and _docstring_only(file))]
    assert not missing, f"{name} imports modules its declared code does not cover: {missing}"


def test_sweep_point_code_covers_its_stages():
    for name in ("prune", "quantize", "pack", "evaluate"):
        assert set(code_deps(STAGES[name])) <= set(sweep_point_code())


# ---------------------------------------------------------------- what a change reruns

def _module_file(name: str) -> Path | None:
    base = ROOT / name.replace(".", "/")
    return next((f for f in (base.with_suffix(".py"), base / "__init__.py") if f.is_file()), None)


def _imports(file: Path) -> set[Path]:
    """tasks/kernels modules a file imports anywhere (functions too), except under TYPE_CHECKING."""
    found: set[Path] = set()

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING":
            return
        names = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names = [node.module, *(f"{node.module}.{alias.name}" for alias in node.names)]
        found.update(f for n in names if n.split(".")[0] in ("tasks", "kernels") and (f := _module_file(n)))
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(ast.parse(file.read_text()))
    return found


def _closure(file: Path) -> set[Path]:
    seen, todo = set(), [file]
    while todo:
        if (current := todo.pop()) not in seen:
            seen.add(current)
            todo += _imports(current)
    return seen


def _downstream(names: set[str]) -> set[str]:
    names = set(names)
    while grown := {n for n, s in STAGES.items() if n not in names and {p.name for p in producers(s)} & names}:
        names |= grown
    return names


def test_a_change_to_any_imported_module_reruns_its_importers_and_what_follows_and_nothing_else():
    """The done-when of issue 14, for every tasks/ module a stage imports (statically, lazy imports
    too): the stages whose dvc.yaml deps cover it are exactly its importers and the stages
    downstream. (kernels/ is one folder dep of the stages that use kernels.)"""
    imports = {name: _closure(_module_file(stage.function.split(":")[0])) for name, stage in STAGES.items()}
    for module in sorted(set().union(*imports.values())):
        if ROOT / "tasks" not in module.parents or (module.name == "__init__.py" and _docstring_only(module)):
            continue
        importers = {name for name, files in imports.items() if module in files}
        listed = {name for name, stage in STAGES.items() if _covered(module, code_deps(stage))}
        assert listed == _downstream(importers), module.relative_to(ROOT)
