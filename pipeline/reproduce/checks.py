"""The checks behind `python -m pipeline.reproduce`: run the pipeline in fresh clones, compare hashes and metrics."""

from __future__ import annotations

import logging
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import yaml
from dvc.utils.hydra import apply_overrides

from pipeline.data.files import flatten_metrics, read_json
from pipeline.offline.profile import DEFAULT_MODEL_PROFILES, profile_path
from pipeline.params import hydra_overrides
from pipeline.reproduce.numerics import numerics_verdict, train_numerics

log = logging.getLogger(__name__)

LOCAL_INPUTS = Path("local")
METRICS_DIR = Path("metrics")


@dataclass(frozen=True)
class OutputComparison:
    stage: str
    path: str
    expected: str | None
    actual: str | None

    @property
    def same(self) -> bool:
        return self.expected == self.actual


def fresh_clone(repo: Path, target: Path, rev: str = "HEAD") -> Path:
    """Clone `rev` of `repo` (committed files only) and copy its git-ignored local inputs beside."""
    commit = git_output(repo, "rev-parse", "--verify", f"{rev}^{{commit}}")
    # A local clone copies every object, so any commit of `repo` can be checked out, whatever refs it clones.
    subprocess.run(["git", "clone", "--quiet", "--no-checkout", str(repo), str(target)], check=True)
    subprocess.run(["git", "checkout", "--quiet", "--detach", commit], cwd=target, check=True)
    if (repo / LOCAL_INPUTS).is_dir():
        shutil.copytree(repo / LOCAL_INPUTS, target / LOCAL_INPUTS, dirs_exist_ok=True)
    return target


def git_output(repo: Path, *args: str) -> str:
    return subprocess.run(["git", *args], cwd=repo, check=True, capture_output=True, text=True).stdout.strip()


def profile_overrides(workdir: Path, profile: str) -> list[str]:
    """The profile file of `workdir`'s own revision as `-S` overrides: read as plain YAML, not with this code's
    params loader, since another revision may have other keys (its own stages validate them)."""
    sections = yaml.safe_load((workdir / profile_path(profile)).read_text(encoding="utf-8"))
    dotted = {f"{section}.{key}": value for section, keys in sections.items() for key, value in keys.items()}
    return hydra_overrides(dotted)


def run_pipeline(workdir: Path, overrides: list[str], profile: str | None, generate: bool = True) -> None:
    """`dvc repro` in `workdir`, after a profile's generated inputs (unless already there: `generate=False`) and
    params (if asked), and the overrides."""
    if profile:
        if generate:
            # The clone's own generator, so that another revision runs on the inputs its own code writes; a profile
            # on another model names itself (revisions from before `--profile` know only the default's).
            generator = [sys.executable, "-m", "pipeline.offline", "--root", "."]
            if profile not in DEFAULT_MODEL_PROFILES:
                generator += ["--profile", profile]
            subprocess.run(generator, cwd=workdir, check=True)
        overrides = profile_overrides(workdir, profile) + overrides
    if overrides:
        apply_overrides(workdir / "params.yaml", overrides)  # what `dvc exp run -S` does, comments kept
    log.info("dvc repro in %s", workdir)
    subprocess.run([sys.executable, "-m", "dvc", "repro"], cwd=workdir, check=True)


def locked_outputs(lock_file: Path) -> dict[tuple[str, str], str]:
    """(stage, output path) -> md5, as dvc.lock records them."""
    lock = yaml.safe_load(lock_file.read_text(encoding="utf-8"))
    return {
        (stage, out["path"]): out["md5"] for stage, entry in lock["stages"].items() for out in entry.get("outs", [])
    }


def compare_outputs(expected: dict, actual: dict) -> list[OutputComparison]:
    keys = sorted(expected.keys() | actual.keys())
    return [
        OutputComparison(stage, path, expected.get((stage, path)), actual.get((stage, path))) for stage, path in keys
    ]


def read_metrics(workdir: Path) -> dict[str, float]:
    """Every metric of every metrics/*.json, flattened to `file:key`."""
    flat = {}
    for path in sorted((workdir / METRICS_DIR).glob("*.json")):
        for key, value in flatten_metrics(read_json(path)).items():
            flat[f"{path.name}:{key}"] = value
    return flat


def compare_metrics(expected: dict[str, float], actual: dict[str, float], tolerance: float) -> list[str]:
    """Lines describing each metric that is missing on one side or differs by more than `tolerance`; what is not a
    number (lm-eval's version, a task list) must be equal."""
    problems = []
    for key in sorted(expected.keys() | actual.keys()):
        if key not in expected or key not in actual:
            problems.append(f"{key}: only in {'the second' if key in actual else 'the first'} run")
        elif not all(isinstance(value, int | float) for value in (expected[key], actual[key])):
            if expected[key] != actual[key]:
                problems.append(f"{key}: {expected[key]!r} vs {actual[key]!r}")
        elif abs(expected[key] - actual[key]) > tolerance:
            problems.append(f"{key}: {expected[key]!r} vs {actual[key]!r} (|diff| > {tolerance})")
    return problems


def report(comparisons: list[OutputComparison], metric_problems: list[str], labels: tuple[str, str]) -> str:
    rows = [f"{'stage':<14} {'output':<28} {labels[0]:<12} {labels[1]:<12} verdict"]
    for c in comparisons:
        rows.append(
            f"{c.stage:<14} {c.path:<28} {(c.expected or '-')[:10]:<12} {(c.actual or '-')[:10]:<12} "
            f"{'same' if c.same else 'DIFFERS'}"
        )
    rows += [f"metric differs: {line}" for line in metric_problems] or ["metrics: all equal"]
    return "\n".join(rows)


def check_twice(repo: Path, scratch: Path, overrides: list[str], profile: str | None) -> tuple[str, bool]:
    """Bitwise: every output's DVC md5 equal, and every metric exactly equal (tolerance 0)."""
    runs = [fresh_clone(repo, scratch / f"run{index}") for index in (1, 2)]
    run_pipeline(runs[0], overrides, profile)
    if profile:
        # The same code generates the same bytes (tests/test_offline.py holds it), so run 2 takes run 1's rather
        # than pretraining the tiny model again; a difference then lies in the pipeline, not in its inputs.
        shutil.copytree(runs[0] / LOCAL_INPUTS, runs[1] / LOCAL_INPUTS, dirs_exist_ok=True)
    run_pipeline(runs[1], overrides, profile, generate=False)
    comparisons = compare_outputs(*(locked_outputs(workdir / "dvc.lock") for workdir in runs))
    first, second = (read_metrics(workdir) for workdir in runs)
    metric_problems = compare_metrics(first, second, tolerance=0.0)
    ok = all(c.same for c in comparisons) and not metric_problems
    compared = (
        f"Compared: the DVC md5 of each of the {len(comparisons)} stage outputs in dvc.lock (bitwise) and each of the "
        f"{len(first.keys() | second.keys())} metrics of metrics/*.json (exactly)."
    )
    numerics = numerics_verdict(*(train_numerics(workdir) for workdir in runs))
    return "\n".join([compared, report(comparisons, metric_problems, ("run 1", "run 2")), numerics]), ok


def check_lock(repo: Path, scratch: Path, tolerance: float) -> tuple[str, bool]:
    """Rerun HEAD from clean; with tolerance 0 every output must hash as committed, else metrics decide."""
    workdir = fresh_clone(repo, scratch / "fresh")
    if not (workdir / "dvc.lock").is_file():
        return "HEAD has no committed dvc.lock to check against: run `dvc repro` and commit dvc.lock", False
    committed_outputs, committed_metrics = locked_outputs(workdir / "dvc.lock"), read_metrics(workdir)
    run_pipeline(workdir, [], profile=None)
    comparisons = compare_outputs(committed_outputs, locked_outputs(workdir / "dvc.lock"))
    metric_problems = compare_metrics(committed_metrics, read_metrics(workdir), tolerance) if committed_metrics else []
    status = subprocess.run(
        [sys.executable, "-m", "dvc", "status", "--quiet"], cwd=workdir, check=False, capture_output=True
    )
    hashes_ok = all(c.same for c in comparisons) or tolerance > 0
    ok = hashes_ok and not metric_problems and status.returncode == 0
    text = report(comparisons, metric_problems, ("committed", "fresh"))
    if not committed_metrics:
        text += "\n(no committed metrics/*.json: compared output hashes only)"
    if status.returncode != 0:
        text += "\n`dvc status` is not clean after the fresh run"
    return text, ok
