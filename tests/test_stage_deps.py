"""dvc.yaml lists, for every stage, each pipeline/ module the stage imports, directly or not: a change to code
that a stage runs must rerun it, and a module split out of a stage must not slip out of its deps."""

import ast
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
STAGES = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]


def pipeline_imports(module: str) -> set[str]:
    """The pipeline.* modules that `module`'s source imports anywhere in it (functions included)."""
    tree = ast.parse((ROOT / (module.replace(".", "/") + ".py")).read_text())
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module == "pipeline":  # from pipeline import x
            found |= {f"pipeline.{alias.name}" for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("pipeline."):
            found.add(node.module)
        elif isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names if alias.name.startswith("pipeline.")}
    return found


def import_closure(module: str) -> set[str]:
    seen, pending = set(), [module]
    while pending:
        current = pending.pop()
        if current not in seen:
            seen.add(current)
            pending.extend(pipeline_imports(current))
    return seen


@pytest.mark.parametrize("stage", sorted(STAGES))
def test_stage_deps_are_exactly_the_modules_it_imports(stage):
    command = STAGES[stage]["cmd"].split()
    module = command[command.index("-m") + 1]
    imported = {name.replace(".", "/") + ".py" for name in import_closure(module)}
    listed = {dep for dep in STAGES[stage]["deps"] if dep.startswith("pipeline/")}
    assert listed == imported
