"""Prove that the pipeline reproduces, for CI: `python -m pipeline.reproduce twice|lock`.

`twice` runs the pipeline from clean in two fresh clones of HEAD and compares every stage output's DVC hash and
every metric. `lock` runs it once in a fresh clone and compares with the committed dvc.lock and metrics files.
Both print one line per output and exit 1 when anything differs, so a change that makes results drift fails CI.

A fresh clone has no DVC cache and no outputs, so `dvc repro` there really recomputes every stage. Git-ignored
inputs under `local/` (local corpus and models) are copied in; `--offline` generates the offline profile's tiny
model and corpus in each clone instead, and points params at them.
"""

from __future__ import annotations

import argparse
import logging
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import yaml
from dvc.utils.hydra import apply_overrides

from pipeline import offline
from pipeline.cli import configure_logging
from pipeline.files import flatten_metrics, read_json

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


def fresh_clone(repo: Path, target: Path) -> Path:
    """Clone HEAD of `repo` (committed files only) and copy its git-ignored local inputs beside."""
    subprocess.run(["git", "clone", "--quiet", str(repo), str(target)], check=True)
    if (repo / LOCAL_INPUTS).is_dir():
        shutil.copytree(repo / LOCAL_INPUTS, target / LOCAL_INPUTS, dirs_exist_ok=True)
    return target


def run_pipeline(workdir: Path, overrides: list[str], offline_profile: bool) -> None:
    """`dvc repro` in `workdir`, after the offline profile's assets and params (if asked) and the overrides."""
    if offline_profile:
        corpus = offline.write_corpus(workdir / offline.OFFLINE_CORPUS_DIR)
        offline.write_tiny_model(workdir / offline.OFFLINE_MODEL_DIR, [corpus["train"]])
        overrides = offline.set_param_args(offline.offline_overrides())[1::2] + overrides
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
    """Lines describing each metric that is missing on one side or differs by more than `tolerance`."""
    problems = []
    for key in sorted(expected.keys() | actual.keys()):
        if key not in expected or key not in actual:
            problems.append(f"{key}: only in {'the second' if key in actual else 'the first'} run")
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


def check_twice(repo: Path, scratch: Path, overrides: list[str], offline_profile: bool) -> tuple[str, bool]:
    runs = [fresh_clone(repo, scratch / f"run{index}") for index in (1, 2)]
    for workdir in runs:
        run_pipeline(workdir, overrides, offline_profile)
    comparisons = compare_outputs(*(locked_outputs(workdir / "dvc.lock") for workdir in runs))
    metric_problems = compare_metrics(*(read_metrics(workdir) for workdir in runs), tolerance=0.0)
    ok = all(c.same for c in comparisons) and not metric_problems
    return report(comparisons, metric_problems, ("run 1", "run 2")), ok


def check_lock(repo: Path, scratch: Path, tolerance: float) -> tuple[str, bool]:
    """Rerun HEAD from clean; with tolerance 0 every output must hash as committed, else metrics decide."""
    workdir = fresh_clone(repo, scratch / "fresh")
    if not (workdir / "dvc.lock").is_file():
        return "HEAD has no committed dvc.lock to check against: run `dvc repro` and commit dvc.lock", False
    committed_outputs, committed_metrics = locked_outputs(workdir / "dvc.lock"), read_metrics(workdir)
    run_pipeline(workdir, [], offline_profile=False)
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


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repo", type=Path, default=Path("."), help="git repo to check (its HEAD)")
    parser.add_argument("--keep", action="store_true", help="keep the scratch clones and print where they are")
    modes = parser.add_subparsers(dest="mode", required=True)
    twice = modes.add_parser("twice", help="run twice from clean and compare")
    twice.add_argument("-S", "--set-param", dest="overrides", action="append", default=[], help="key=value, as dvc")
    twice.add_argument("--offline", action="store_true", help="on the generated offline model and corpus")
    lock = modes.add_parser("lock", help="rerun from clean and compare with the committed dvc.lock and metrics")
    lock.add_argument("--tolerance", type=float, default=0.0, help="absolute tolerance on metrics (default 0)")
    args = parser.parse_args(argv)
    configure_logging()
    repo = args.repo.resolve()
    if subprocess.run(["git", "status", "--porcelain"], cwd=repo, capture_output=True, text=True).stdout.strip():
        log.warning("%s has uncommitted changes: the check runs HEAD without them", repo)
    scratch = Path(tempfile.mkdtemp(prefix="reproduce-"))
    try:
        if args.mode == "twice":
            text, ok = check_twice(repo, scratch, args.overrides, args.offline)
        else:
            text, ok = check_lock(repo, scratch, args.tolerance)
    finally:
        if args.keep:
            log.info("scratch clones kept in %s", scratch)
        else:
            shutil.rmtree(scratch, ignore_errors=True)
    print(text)
    print("REPRODUCED" if ok else "NOT REPRODUCED")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
