"""dvc.yaml holds each stage to what can change its outputs: its code deps are the pipeline modules it imports,
directly or not, except the run bookkeeping (pipeline/tracking), which changes no output; its params are the keys
its module declares it reads (`PARAMS`)."""

import ast
import importlib
import shlex
from pathlib import Path

import pytest
import yaml

from pipeline.tracking.lineage import interpolate

ROOT = Path(__file__).resolve().parents[1]
DVC_YAML = yaml.safe_load((ROOT / "dvc.yaml").read_text())
STAGES = DVC_YAML["stages"]
BOOKKEEPING = "pipeline/tracking/"


def resolve(text: str) -> str:
    return interpolate(text, DVC_YAML)


def module_of(stage: str) -> str:
    argv = shlex.split(resolve(STAGES[stage]["cmd"]))
    return argv[argv.index("-m") + 1]


def source_path(module: str) -> Path:
    path = ROOT / module.replace(".", "/")
    return path / "__init__.py" if path.is_dir() else path.with_suffix(".py")


def pipeline_imports(module: str) -> set[str]:
    """The pipeline.* modules that `module`'s source imports anywhere in it (functions included)."""
    found = set()
    for node in ast.walk(ast.parse(source_path(module).read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("pipeline"):
            for alias in node.names:  # `from pipeline.x import y`: y may itself be a module
                candidate = f"{node.module}.{alias.name}"
                found.add(candidate if source_path(candidate).is_file() else node.module)
        elif isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names if alias.name.startswith("pipeline.")}
    return found


def output_code(module: str) -> set[str]:
    """Repo-relative files of the modules `module` runs, not descending into the bookkeeping; package __init__
    files (docstrings only) are left out."""
    seen, pending = set(), [module]
    while pending:
        current = pending.pop()
        path = source_path(current).relative_to(ROOT).as_posix()
        if current in seen or path.startswith(BOOKKEEPING):
            continue
        seen.add(current)
        pending.extend(pipeline_imports(current))
    files = {source_path(name).relative_to(ROOT).as_posix() for name in seen}
    return {path for path in files if not path.endswith("__init__.py")}


def listed_code(stage: str) -> set[str]:
    """The .py files dvc.yaml's deps cover for `stage` (a folder dep covers every module in it)."""
    files = set()
    for dep in map(resolve, STAGES[stage]["deps"]):
        path = ROOT / dep
        if dep.startswith("pipeline/"):
            found = sorted(path.rglob("*.py")) if path.is_dir() else [path]
            files |= {p.relative_to(ROOT).as_posix() for p in found if p.name != "__init__.py"}
    return files


@pytest.mark.parametrize("stage", sorted(STAGES))
def test_code_deps_are_exactly_the_modules_that_can_change_the_outputs(stage):
    assert listed_code(stage) == output_code(module_of(stage))


@pytest.mark.parametrize("stage", sorted(STAGES))
def test_no_stage_depends_on_the_bookkeeping(stage):
    assert not [dep for dep in STAGES[stage]["deps"] if dep.startswith(BOOKKEEPING.rstrip("/"))]


@pytest.mark.parametrize("stage", sorted(STAGES))
def test_params_deps_are_the_keys_the_stage_module_reads(stage):
    declared = importlib.import_module(module_of(stage)).PARAMS[stage]
    assert sorted(STAGES[stage]["params"]) == sorted(declared)


def test_every_path_a_stage_writes_is_on_its_command_line():
    for name, stage in STAGES.items():
        command = resolve(stage["cmd"])
        written = [
            resolve(entry if isinstance(entry, str) else next(iter(entry)))
            for kind in ("outs", "metrics", "plots")
            for entry in stage.get(kind) or ()
        ]
        assert all(f" {path}" in command for path in written), name


def reads(stage: str, key: str) -> bool:
    """Whether the stage's params deps cover the dotted `key` (a whole section, or the key itself)."""
    return any(key == name or key.startswith(name + ".") for name in STAGES[stage]["params"])


def test_the_folders_local_inputs_must_lie_in_are_the_deps_of_every_stage_that_reads_them():
    from pipeline.input_paths import TRACKED_FOLDERS

    readers = {"corpus": "data.train_file", "models": "model.name_or_path", "tasks": "harness.task_dir"}
    for kind, key in readers.items():
        stages = [stage for stage in STAGES if reads(stage, key)]
        assert stages, key
        for stage in stages:
            assert TRACKED_FOLDERS[kind] in STAGES[stage]["deps"], (stage, kind)
    # And no other local folder is tracked: a dep there would make the loader refuse what DVC tracks.
    local_deps = {dep for stage in STAGES.values() for dep in stage["deps"] if dep.startswith("local/")}
    assert local_deps == set(TRACKED_FOLDERS.values())


def test_only_evaluate_has_an_uncached_output_that_is_no_metric_so_the_run_cache_restores_every_other_stage():
    # DVC saves no run-cache entry for a stage with an uncached output other than a metric or plot (`no_cache_outs`
    # in dvc/stage/__init__.py): a metrics file declared as an uncached `outs` entry made each queued study point
    # run prepare, tokenize, evaluate_base and harness_base again.
    uncached = {
        name: [next(iter(entry)) for entry in stage.get("outs") or () if isinstance(entry, dict)
               and next(iter(entry.values())).get("cache") is False]
        for name, stage in STAGES.items()
    }  # fmt: skip
    assert {name: paths for name, paths in uncached.items() if paths} == {"evaluate": ["${samples_file}"]}
    assert all(resolve(next(iter(entry)) if isinstance(entry, dict) else entry).startswith("metrics/")
               for stage in STAGES.values() for entry in stage.get("metrics") or ())  # fmt: skip
