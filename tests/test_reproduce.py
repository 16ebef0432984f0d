"""The reproducibility check itself: it passes on the pipeline as it is and catches planted nondeterminism."""

import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import PipelineRepo, reproduce, verdict_lines

from pipeline.offline.profile import load_profile
from pipeline.reproduce import checks
from pipeline.reproduce.checks import compare_metrics, locked_outputs

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def twice_on_the_ci_profile(pipeline_repo_factory):
    """`reproduce twice` on the ci profile, as CI runs it (the default precision, bf16 autocast where the CPU has it;
    shorter than the offline profile), its scratch clones kept: the first is an unbroken run others compare with."""
    repo = pipeline_repo_factory("reproduce-ok")
    result = reproduce(repo, "--keep", "twice", "--profile", "ci")
    kept = Path(re.search(r"scratch clones kept in (\S+)", result.stderr).group(1))
    yield result, kept / "run1"
    shutil.rmtree(kept, ignore_errors=True)


def test_two_clean_runs_of_the_ci_profile_are_bitwise_identical(twice_on_the_ci_profile):
    result, _ = twice_on_the_ci_profile
    assert result.returncode == 0, result.stdout + result.stderr
    verdicts = verdict_lines(result.stdout)
    for output in ("data/prepared", "data/tokenized", "models/finetuned", "metrics/eval.json", "plots/train_curve.csv"):
        assert verdicts[output] == "same"
    assert "metrics: all equal" in result.stdout
    assert "numerics: the same in both runs" in result.stdout
    assert result.stdout.rstrip().endswith("REPRODUCED")


def test_kill_9_of_dvc_repro_during_training_then_dvc_repro_ends_with_an_unbroken_runs_bytes(
    pipeline_repo_factory, twice_on_the_ci_profile
):
    """The whole `dvc repro` process group killed at a random moment of the train stage (before, between or after
    its checkpoints, or while it writes its outputs), then `dvc repro`: every output hashes as in an unbroken run."""
    _, unbroken = twice_on_the_ci_profile
    repo = pipeline_repo_factory("reproduce-killed")
    repo.set_params(load_profile(repo.root, "ci").overrides)
    repo.commit("the ci profile")
    moment = random.uniform(0.0, 12.0)
    process = subprocess.Popen([sys.executable, "-m", "dvc", "repro"], cwd=repo.root, start_new_session=True,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    while process.poll() is None and not (repo.root / "checkpoints").is_dir():  # train has claimed its key
        time.sleep(0.05)
    time.sleep(moment)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    repo.dvc("repro")
    rerun, expected = locked_outputs(repo.root / "dvc.lock"), locked_outputs(unbroken / "dvc.lock")
    assert rerun == expected, f"killed {moment:.1f} s into train"


def test_lock_mode_accepts_a_faithful_commit_and_rejects_a_doctored_one(twice_on_the_ci_profile, git, monkeypatch):
    """On the kept first run of `twice`: its results committed, as a user would, then checked against a fresh run;
    then a doctored metric committed, which the comparison must reject (the fresh run's results are the first
    run's own, copied in: the same bytes a rerun gives, as the faithful check has just shown)."""
    _, run = twice_on_the_ci_profile
    git(run, "add", "-A")
    git(run, "commit", "-qm", "results of the ci profile")  # dvc.lock, metrics/ and the curves, params.yaml
    faithful = reproduce(PipelineRepo(run), "lock")
    assert faithful.returncode == 0, faithful.stdout + faithful.stderr
    assert set(verdict_lines(faithful.stdout).values()) == {"same"}

    true_results = {path: path.read_bytes() for path in [run / "dvc.lock", *(run / "metrics").glob("*.json")]}
    report_path = run / "metrics" / "eval.json"
    report = json.loads(report_path.read_text())
    report["finetuned"]["test"]["loss"] += 0.01
    report_path.write_text(json.dumps(report, indent=2) + "\n")
    git(run, "commit", "-qam", "claim a better test loss than the code gives")

    def rerun(workdir, overrides, profile, generate=True):
        for path, content in true_results.items():
            (workdir / path.relative_to(run)).write_bytes(content)

    monkeypatch.setattr(checks, "run_pipeline", rerun)
    text, ok = checks.check_lock(run, run.parent / "doctored", tolerance=0.001)
    assert not ok
    assert "metric differs: eval.json:finetuned.test.loss" in text


def test_metric_comparison_respects_the_tolerance():
    assert compare_metrics({"a": 1.0}, {"a": 1.0005}, tolerance=0.001) == []
    assert compare_metrics({"a": 1.0}, {"a": 1.0005}, tolerance=0.0) == ["a: 1.0 vs 1.0005 (|diff| > 0.0)"]
    assert compare_metrics({"a": 1.0}, {}, tolerance=0.0) == ["a: only in the first run"]


def test_metrics_that_are_not_numbers_must_be_equal():
    # metrics/harness.json holds lm-eval's version, harness_base.json the task lists it was scored on
    version, tasks = {"v": "0.4.13"}, {"t": ["wikitext", "piqa"]}
    assert compare_metrics(version | tasks, version | tasks, tolerance=0.0) == []
    assert compare_metrics(version, {"v": "0.4.14"}, tolerance=1.0) == ["v: '0.4.13' vs '0.4.14'"]
    assert compare_metrics(tasks, {"t": ["wikitext"]}, tolerance=1.0) == ["t: ['wikitext', 'piqa'] vs ['wikitext']"]
